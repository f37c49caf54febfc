package fetch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tokenServer makes the registry demand bearer tokens, which it issues at
// /token with a short lifetime, like Docker Hub's auth service.
type tokenServer struct {
	ttl    time.Duration
	issued atomic.Int64
	pings  atomic.Int64

	mu     sync.Mutex
	expiry map[string]time.Time // protected by mu
}

func newTokenServer(ttl time.Duration) *tokenServer {
	return &tokenServer{ttl: ttl, expiry: map[string]time.Time{}}
}

func (ts *tokenServer) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			tok := fmt.Sprintf("tok-%d", ts.issued.Add(1))
			ts.mu.Lock()
			ts.expiry[tok] = time.Now().Add(ts.ttl)
			ts.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": int(ts.ttl / time.Second)})
			return
		}
		if r.URL.Path == "/v2/" {
			ts.pings.Add(1)
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		ts.mu.Lock()
		exp, known := ts.expiry[tok]
		ts.mu.Unlock()
		if !ok || !known || time.Now().After(exp) {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test"`, r.Host))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}`, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// TestTokenExpires: tokens live 300ms; reads after that still succeed.
func TestTokenExpires(t *testing.T) {
	t.Parallel()
	ts := newTokenServer(300 * time.Millisecond)
	env := newEnv(t, envConfig{mw: ts.middleware})
	c := env.client(t)
	b := env.remoteBlob(t, c)
	before := ts.issued.Load()
	for i := range 3 {
		if i > 0 {
			time.Sleep(400 * time.Millisecond)
		}
		if _, err := b.ReadAt(context.Background(), make([]byte, 100), int64(i)*100); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if n := ts.issued.Load() - before; n < 2 {
		t.Errorf("%d tokens issued for 3 reads 400ms apart, want a new one for each of the last 2", n)
	}
	if s := c.Stats(); s.Errors != 0 || s.Retries != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

// TestUnauthorizedRedoesHandshake: a registry that answers a blob GET with
// a bare 401 (no challenge, so the token transport cannot refresh by
// itself) gets a new handshake and the request again; if it keeps saying
// 401, the read fails with ErrUnauthorized after that one new handshake.
func TestUnauthorizedRedoesHandshake(t *testing.T) {
	for _, tt := range []struct {
		name    string
		times   int64
		wantErr error
	}{
		{"once", 1, nil},
		{"always", 1 << 40, ErrUnauthorized},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTokenServer(time.Hour)
			env := newEnv(t, envConfig{mw: chain(faultFirst(tt.times, statusFault(http.StatusUnauthorized)), ts.middleware)})
			c := env.client(t)
			b := env.remoteBlob(t, c)
			pings, issued := ts.pings.Load(), ts.issued.Load()
			_, err := b.ReadAt(context.Background(), make([]byte, 100), 0)
			if !errors.Is(err, tt.wantErr) && (err != nil || tt.wantErr != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if n := ts.pings.Load() - pings; n != 1 {
				t.Errorf("%d pings after the 401, want 1", n)
			}
			if n := ts.issued.Load() - issued; n != 1 {
				t.Errorf("%d tokens issued after the 401, want 1", n)
			}
			if s := c.Stats(); s.Reauthentications != 1 || s.Requests != 2 || s.Retries != 0 {
				t.Errorf("Stats = %+v, want 1 reauthentication and 2 requests", s)
			}
		})
	}
}

// pingFault counts pings (GET /v2/) in pings and answers those that make
// it 1 to n with code. Pings pass while pings is negative.
func pingFault(n int64, code int, pings *atomic.Int64) middleware {
	pings.Store(-1 << 40) // the test setup's own pings pass
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				if p := pings.Add(1); p >= 1 && p <= n {
					w.WriteHeader(code)
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

// TestHandshakeFailureIsOneAttempt: a handshake that fails during a read
// is one attempt of the read's retry loop, not a retry loop of its own.
func TestHandshakeFailureIsOneAttempt(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	var pings atomic.Int64
	origin := newEnv(t, envConfig{layer: &layer, mw: pingFault(1<<40, http.StatusServiceUnavailable, &pings)})
	// A mirror that is gone: Blob does not shake hands with the origin,
	// the first read does.
	gone := newServer(t, http.NotFoundHandler())
	gone.Close()
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.%q]\n", gone.URL))
	c := origin.client(t, WithHostsDir(dir), WithRetries(2))
	b := origin.remoteBlob(t, c)
	pings.Store(0)
	_, err := b.ReadAt(context.Background(), make([]byte, 100), 0)
	var fe *Error
	if !errors.As(err, &fe) || !fe.Temporary {
		t.Fatalf("err = %v, want a temporary *Error", err)
	}
	if n := pings.Load(); n != 3 {
		t.Errorf("%d pings for a read with 2 retries, want 3", n)
	}
	if s := c.Stats(); s.Retries != 2 {
		t.Errorf("Stats = %+v, want 2 retries", s)
	}
}

// TestBlobRetriesHandshake: Blob's own handshake is retried like a read.
func TestBlobRetriesHandshake(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	var pings atomic.Int64
	env := newEnv(t, envConfig{layer: &layer, mw: pingFault(2, http.StatusServiceUnavailable, &pings)})
	pings.Store(0)
	c := env.client(t)
	b, err := c.Blob(context.Background(), env.repo, env.desc)
	if err != nil {
		t.Fatalf("Blob: %v", err)
	}
	if n := pings.Load(); n != 3 {
		t.Errorf("%d pings, want 3", n)
	}
	if _, err := b.ReadAt(context.Background(), make([]byte, 100), 0); err != nil {
		t.Fatal(err)
	}
}

func TestPlainHTTPRules(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:5000": true, "127.9.9.9": true, "[::1]:5000": true, "::1": true, "localhost:5000": true, "LOCALHOST.": true,
		"10.0.0.1:5000": false, "mirror.internal": false, "localhost.example:80": false, "": false,
	} {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", host, got, want)
		}
	}
	for ch, want := range map[string]bool{
		`Basic realm="lazyroot-test"`:                                  true,
		`Bearer realm="https://auth.example/token",service="x"`:        true,
		`Bearer realm="http://127.0.0.1:5000/token",service="x"`:       true,
		`Bearer realm="http://auth.example/token",service="x"`:         false,
		`Bearer service="x",REALM=http://auth.example/token`:           false,
		`Bearer realm="https://a.example/t", Basic realm="http://b/x"`: false,
		`Bearer realm="http://%zz/token"`:                              false,
	} {
		if got := safeRealm(ch); got != want {
			t.Errorf("safeRealm(%q) = %v, want %v", ch, got, want)
		}
	}
	var sent atomic.Int64
	g := plainGuard{next: roundTripperFunc(func(*http.Request) (*http.Response, error) {
		sent.Add(1)
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}, nil
	})}
	for _, tt := range []struct {
		url   string
		basic bool
		want  bool // sent
	}{
		{"http://mirror.example/v2/", true, false},
		{"http://mirror.example/v2/", false, true},
		{"https://mirror.example/v2/", true, true},
		{"http://127.0.0.1:5000/v2/", true, true},
	} {
		req, _ := http.NewRequest(http.MethodGet, tt.url, nil)
		if tt.basic {
			req.SetBasicAuth("u", "p")
		}
		before := sent.Load()
		_, err := g.RoundTrip(req)
		if got := sent.Load() > before; got != tt.want || (err == nil) != tt.want {
			t.Errorf("%s basic %v: sent %v, err %v; want sent %v", tt.url, tt.basic, got, err, tt.want)
		}
		if err != nil && !errors.Is(err, errPlainCredentials) {
			t.Errorf("err = %v", err)
		}
	}
}
