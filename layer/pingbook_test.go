package layer_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// pings counts the registry pings (GET /v2/) reg answered since its last
// Reset.
func pings(reg *testutil.Registry) int {
	n := 0
	for _, r := range reg.Requests() {
		if r.Method == http.MethodGet && r.Path == "/v2/" {
			n++
		}
	}
	return n
}

// settle waits until reg has had no request for 200 ms (at most 5 s): for
// what an earlier resolution left running (a ping race) to end.
func settle(reg *testutil.Registry) {
	n := len(reg.Requests())
	for quiet, deadline := time.Now(), time.Now().Add(5*time.Second); time.Since(quiet) < 200*time.Millisecond && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		if m := len(reg.Requests()); m != n {
			n, quiet = m, time.Now()
		}
	}
}

// requireToken has reg ask every request for a bearer token, which it
// hands out at /token without credentials.
func requireToken(reg *testutil.Registry) {
	const token = "t0ken"
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.URL.Path == "/token":
				fmt.Fprintf(w, `{"token":%q}`, token)
			case r.Header.Get("Authorization") != "Bearer "+token:
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, reg.URL()))
				w.WriteHeader(http.StatusUnauthorized)
			default:
				next.ServeHTTP(w, r)
			}
		})
	})
}

// resolveAndRead resolves ref with opts and reads etc/which from it.
func resolveAndRead(t *testing.T, ref string, st *layer.Store, opts ...layer.Option) string {
	t.Helper()
	img, err := layer.Resolve(context.Background(), ref, opts...)
	if err != nil {
		t.Fatalf("resolve %s: %v", ref, err)
	}
	t.Cleanup(func() { img.Close() })
	got, _ := readFile(t, img, st, "etc/which")
	return got
}

// TestPingBookAnswersLaterMounts: the first resolution of an image with a
// store pings its registry and keeps the answer under the store's pings/,
// readable by root alone; the next ones, of the same image or another on
// that registry, ping no more, and still read the layers.
func TestPingBookAnswersLaterMounts(t *testing.T) {
	reg := testutil.NewRegistry(t)
	one, _ := pushOne(t, reg, "one:v1", "one", testutil.EStargz)
	two, _ := pushOne(t, reg, "two:v1", "two", testutil.Gzip)
	root := t.TempDir()
	st, err := layer.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}

	reg.Reset()
	if got := resolveAndRead(t, one, st); got != "one" || pings(reg) == 0 {
		t.Fatalf("without the store: read %q after %d pings; want one and some", got, pings(reg))
	}
	reg.Reset()
	if got := resolveAndRead(t, one, st, layer.WithStore(st)); got != "one" || pings(reg) == 0 {
		t.Fatalf("first with the store: read %q after %d pings; want one and some", got, pings(reg))
	}
	fi, err := os.Stat(filepath.Join(root, "pings", url.QueryEscape(reg.Host)+".json"))
	if err != nil {
		t.Fatalf("the ping is not kept: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the kept ping has mode %v; want 0600", fi.Mode().Perm())
	}
	for _, ref := range []string{one, two} {
		reg.Reset()
		want := map[string]string{one: "one", two: "two"}[ref]
		if got := resolveAndRead(t, ref, st, layer.WithStore(st)); got != want || pings(reg) != 0 {
			t.Errorf("%s later: read %q after %d pings; want %q and none", ref, got, pings(reg), want)
		}
	}
}

// TestPingBookStaleAnswerIsReplaced: when the registry has begun to ask
// for a bearer token since its ping was kept, the resolution that the
// kept answer misled is tried again with a fresh ping, and the new answer
// is kept for the next ones.
func TestPingBookStaleAnswerIsReplaced(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, _ := pushOne(t, reg, "app:v1", "app", testutil.Gzip)
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	resolveAndRead(t, ref, st, layer.WithStore(st)) // keeps "200, anonymous"

	requireToken(reg)
	// The first resolution pings afresh (the failed try's blob client may
	// ping too: its race outlives the try); the next one does not.
	for i, fresh := range []bool{true, false} {
		if i > 0 {
			settle(reg)
		}
		reg.Reset()
		if got := resolveAndRead(t, ref, st, layer.WithStore(st)); got != "app" || (pings(reg) > 0) != fresh {
			for _, q := range reg.Requests() {
				t.Logf("%s %s %d", q.Method, q.Path, q.Status)
			}
			t.Errorf("resolution %d behind tokens: read %q after %d pings; want app, and pings %v", i+1, got, pings(reg), fresh)
		}
	}

	// An error that is not the book's comes out at once: a missing tag
	// sends no fresh ping, and the kept answer stays.
	reg.Reset()
	if _, err := layer.Resolve(context.Background(), reg.Host+"/app:missing", layer.WithStore(st)); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("a missing tag: %v; want not found", err)
	}
	if n := pings(reg); n != 0 {
		t.Errorf("a missing tag: %d pings; want none", n)
	}
}

// TestPingBookDroppedWhenARequestIsRefused: a request to a registry whose
// ping the book answered, refused with 401, drops the kept answer, so the
// next mount pings again.
func TestPingBookDroppedWhenARequestIsRefused(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, _ := pushOne(t, reg, "app:v1", "app", testutil.Gzip)
	root := t.TempDir()
	st, err := layer.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	resolveAndRead(t, ref, st, layer.WithStore(st))
	kept := filepath.Join(root, "pings", url.QueryEscape(reg.Host)+".json")
	if _, err := os.Stat(kept); err != nil {
		t.Fatalf("the ping is not kept: %v", err)
	}
	reg.Reset()
	img, err := layer.Resolve(context.Background(), ref, layer.WithStore(st))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if n := pings(reg); n != 0 {
		t.Fatalf("%d pings with the answer kept; want none", n)
	}
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/") {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	// A store without the layer's index: Open reads the layer.
	fresh, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if stack, err := layer.Open(context.Background(), img, fresh, newCache(t), layer.StackOptions{}); err == nil {
		stack.Close()
		t.Fatal("opened a layer the registry refuses")
	}
	if _, err := os.Stat(kept); !os.IsNotExist(err) {
		t.Errorf("the kept answer outlived a refused request: %v", err)
	}
}
