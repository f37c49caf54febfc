package layer_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// manifestGets returns the statuses of the GETs of a manifest reg answered
// since its last Reset.
func manifestGets(reg *testutil.Registry) []int {
	var statuses []int
	for _, r := range reg.Requests() {
		if r.Method == http.MethodGet && strings.HasSuffix(r.Path, "/manifests/v1") {
			statuses = append(statuses, r.Status)
		}
	}
	return statuses
}

// TestManifestAskedForBesideThePing: the first resolution from a registry
// asks for the manifest while the ping is still out, not after its answer,
// and asks once: the library's request is answered with that one. A later
// resolution, whose ping the store answers, asks once as well.
func TestManifestAskedForBesideThePing(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, _ := pushOne(t, reg, "app:v1", "app", testutil.Gzip)
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	manifest := make(chan struct{}, 16)
	var pingSawManifest atomic.Bool
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
				manifest <- struct{}{}
			}
			if r.URL.Path == "/v2/" {
				// The ping is answered once a manifest request came, or
				// after 2 s: a request sent only after the ping's answer
				// comes late.
				select {
				case <-manifest:
					pingSawManifest.Store(true)
				case <-time.After(2 * time.Second):
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	reg.Reset()
	if got := resolveAndRead(t, ref, st, layer.WithStore(st)); got != "app" {
		t.Fatalf("read %q; want app", got)
	}
	if gets := manifestGets(reg); len(gets) != 1 || gets[0] != http.StatusOK {
		t.Errorf("first resolution: manifest GETs answered %v; want one 200", gets)
	}
	if !pingSawManifest.Load() {
		t.Error("the manifest was not asked for while the ping was out")
	}
	settle(reg)
	reg.Reset()
	if got := resolveAndRead(t, ref, st, layer.WithStore(st)); got != "app" || pings(reg) != 0 {
		t.Fatalf("later: read %q after %d pings; want app and none", got, pings(reg))
	}
	if gets := manifestGets(reg); len(gets) != 1 {
		t.Errorf("later resolution: manifest GETs answered %v; want one", gets)
	}
}

// TestManifestAheadOfATokenRegistry: a registry that asks for a token
// refuses the manifest asked for ahead; the resolution then asks again
// with the token and reads the image.
func TestManifestAheadOfATokenRegistry(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, _ := pushOne(t, reg, "app:v1", "app", testutil.Gzip)
	requireToken(reg)
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg.Reset()
	if got := resolveAndRead(t, ref, st, layer.WithStore(st)); got != "app" {
		t.Fatalf("read %q; want app", got)
	}
	gets := manifestGets(reg)
	if len(gets) != 2 || gets[0] != http.StatusUnauthorized || gets[1] != http.StatusOK {
		t.Errorf("manifest GETs answered %v; want 401 (ahead, without the token), then 200", gets)
	}
}
