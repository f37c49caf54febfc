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
