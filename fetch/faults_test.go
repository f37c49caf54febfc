package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestReadAtFaults(t *testing.T) {
	tests := []struct {
		name        string
		mw          middleware
		opts        []Option
		wantErr     error // nil: the read succeeds
		wantStatus  int   // of the *Error, when wantErr is set
		wantTemp    bool  // of the *Error, when wantErr is set
		wantRetries int64
		minElapsed  time.Duration // the read takes at least this long
		// net/http itself resends a GET once when a reused connection
		// breaks before the answer: then wantRetries is a lower bound.
		retriesAtLeast bool
	}{
		{name: "503 burst", mw: faultFirst(3, statusFault(http.StatusServiceUnavailable)), wantRetries: 3},
		{name: "502 504 500 burst", mw: chain(
			faultFirst(1, statusFault(http.StatusBadGateway)),
			faultFirst(1, statusFault(http.StatusGatewayTimeout)),
			faultFirst(1, statusFault(http.StatusInternalServerError)),
		), wantRetries: 3},
		{
			name: "429 with Retry-After", mw: faultFirst(1, statusFault(http.StatusTooManyRequests, "Retry-After", "1")),
			wantRetries: 1, minElapsed: 900 * time.Millisecond,
		},
		{name: "connection reset", mw: faultFirst(3, resetFault), wantRetries: 1, retriesAtLeast: true},
		{name: "truncated body", mw: faultFirst(2, truncateFault), wantRetries: 2},
		{name: "stalled attempt", mw: faultFirst(1, stallFault), opts: []Option{WithRequestTimeout(200 * time.Millisecond)}, wantRetries: 1},
		{name: "range ignored", mw: faultAll(ignoreRangeFault)},
		{
			name: "500 past retries", mw: faultAll(statusFault(http.StatusInternalServerError)), opts: []Option{WithRetries(2)},
			wantErr: errAny, wantStatus: http.StatusInternalServerError, wantTemp: true, wantRetries: 2,
		},
		{
			name: "403", mw: faultAll(statusFault(http.StatusForbidden)),
			wantErr: ErrUnauthorized, wantStatus: http.StatusForbidden,
		},
		{
			name: "wrong content-range", mw: faultAll(badRangeFault),
			wantErr: errAny, wantStatus: http.StatusPartialContent,
		},
		{
			name: "400", mw: faultAll(statusFault(http.StatusBadRequest)),
			wantErr: errAny, wantStatus: http.StatusBadRequest,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, envConfig{mw: tt.mw})
			c := env.client(t, tt.opts...)
			b := env.remoteBlob(t, c)

			off, p := int64(1000), make([]byte, 100<<10)
			start := time.Now()
			n, err := b.ReadAt(context.Background(), p, off)
			elapsed := time.Since(start)
			t.Logf("ReadAt: %v after %s", err, elapsed)
			if elapsed < tt.minElapsed {
				t.Errorf("ReadAt took %s, want at least %s", elapsed, tt.minElapsed)
			}
			s := c.Stats()
			if tt.retriesAtLeast && s.Retries >= tt.wantRetries && s.Requests == s.Retries+1 {
				// as expected
			} else if s.Retries != tt.wantRetries || s.Requests != tt.wantRetries+1 {
				t.Errorf("Stats = %+v, want %d retries and one request more", s, tt.wantRetries)
			}
			if tt.wantErr == nil {
				if err != nil || n != len(p) {
					t.Fatalf("ReadAt = %d, %v; want %d, nil", n, err, len(p))
				}
				if !bytes.Equal(p, env.blob[off:off+int64(len(p))]) {
					t.Fatal("bytes differ from the layer")
				}
				return
			}
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want an *Error", err)
			}
			if tt.wantErr != errAny && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if fe.Status != tt.wantStatus || fe.Temporary != tt.wantTemp {
				t.Errorf("status %d temporary %v, want %d %v (%v)", fe.Status, fe.Temporary, tt.wantStatus, tt.wantTemp, err)
			}
			if n >= len(p) {
				t.Errorf("n = %d with an error", n)
			}
			if s.Errors != 1 {
				t.Errorf("Stats.Errors = %d, want 1", s.Errors)
			}
		})
	}
}

// errAny in a test table accepts any error.
var errAny = errors.New("any error")

func TestReadAtGivesUpInBoundedTime(t *testing.T) {
	tests := []struct {
		name     string
		mw       middleware
		down     bool // close the registry after Blob
		wantCtx  bool // the error wraps context.DeadlineExceeded
		wantCode int
	}{
		{name: "stalled registry", mw: faultAll(stallFault), wantCtx: true},
		{name: "registry gone", down: true},
		{
			name: "Retry-After past deadline",
			mw:   faultAll(statusFault(http.StatusServiceUnavailable, "Retry-After", "20")), wantCode: http.StatusServiceUnavailable,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, envConfig{mw: tt.mw})
			c := env.client(t, WithRetries(100))
			b := env.remoteBlob(t, c)
			if tt.down {
				env.srv.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			_, err := b.ReadAt(ctx, make([]byte, 10), 0)
			t.Logf("ReadAt: %v", err)
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want an *Error", err)
			}
			if tt.wantCtx && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want DeadlineExceeded", err)
			}
			if tt.wantCode != 0 && fe.Status != tt.wantCode {
				t.Errorf("status %d, want %d (%v)", fe.Status, tt.wantCode, err)
			}
		})
	}
}

func TestRedirectDropsCredentials(t *testing.T) {
	layer := newTestLayer(t, 128<<10)
	storageRec := &recorder{}
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageRec.record(r)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(layer.blob))
	}))
	defer storage.Close()

	redirect := faultAll(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		http.Redirect(w, r, storage.URL+r.URL.Path+"?signature=secret", http.StatusTemporaryRedirect)
	})
	creds := &authn.Basic{Username: "lazy", Password: "root"}
	env := newEnv(t, envConfig{layer: &layer, mw: redirect, auth: creds})
	c := env.client(t, WithAuth(creds))
	b := env.remoteBlob(t, c)

	off, p := int64(4096), make([]byte, 8192)
	if _, err := b.ReadAt(context.Background(), p, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, layer.blob[off:off+int64(len(p))]) {
		t.Fatal("bytes differ from the layer")
	}
	rc, err := b.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(all, layer.blob) {
		t.Fatalf("Open: %d bytes, err %v; want the layer", len(all), err)
	}

	hs := storageRec.headers()
	if len(hs) != 2 {
		t.Fatalf("storage saw %d requests, want 2", len(hs))
	}
	for i, h := range hs {
		if a := h.Get("Authorization"); a != "" {
			t.Errorf("request %d to storage carried Authorization %q", i, a)
		}
	}
	if r := hs[0].Get("Range"); r != "bytes=4096-12287" {
		t.Errorf("storage got Range %q, want bytes=4096-12287", r)
	}
}

func TestAuthOptions(t *testing.T) {
	creds := &authn.Basic{Username: "lazy", Password: "root"}
	wrong := &authn.Basic{Username: "lazy", Password: "wrong"}
	env := newEnv(t, envConfig{auth: creds})
	tests := []struct {
		name    string
		opts    []Option
		wantErr error
	}{
		{name: "auth", opts: []Option{WithAuth(creds)}},
		{name: "keychain", opts: []Option{WithKeychain(staticKeychain{creds})}},
		{name: "auth wins over keychain", opts: []Option{WithKeychain(staticKeychain{wrong}), WithAuth(creds)}},
		{name: "anonymous", wantErr: ErrUnauthorized},
		{name: "wrong password", opts: []Option{WithAuth(wrong)}, wantErr: ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := env.client(t, tt.opts...)
			b, err := c.Blob(context.Background(), env.repo, env.desc)
			if err == nil {
				_, err = b.ReadAt(context.Background(), make([]byte, 10), 0)
			}
			t.Logf("err: %v", err)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("err = %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if s := c.Stats(); s.Retries != 0 {
				t.Errorf("Stats.Retries = %d, want 0", s.Retries)
			}
		})
	}
}

// staticKeychain resolves every resource to the same authenticator.
type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

func TestHandshakeOncePerRepository(t *testing.T) {
	var pings atomic.Int64
	countPings := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v2/" {
				pings.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	}
	env := newEnv(t, envConfig{mw: countPings})
	pings.Store(0)
	c := env.client(t)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			_, err := c.Blob(context.Background(), env.repo, env.desc)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	other := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("1", 64)}, Size: 1}
	if _, err := c.Blob(context.Background(), env.repo, other); err != nil {
		t.Fatal(err)
	}
	if n := pings.Load(); n != 1 {
		t.Errorf("%d pings, want 1", n)
	}
	if n := env.blobGets.Load(); n != 0 {
		t.Errorf("%d blob GETs, want 0", n)
	}
}

func TestUserAgent(t *testing.T) {
	rec := &recorder{}
	env := newEnv(t, envConfig{mw: recordBlobGets(rec)})
	c := env.client(t, WithUserAgent("lazyroot-test/1"))
	b := env.remoteBlob(t, c)
	if _, err := b.ReadAt(context.Background(), make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	hs := rec.headers()
	if len(hs) != 1 || !strings.HasPrefix(hs[0].Get("User-Agent"), "lazyroot-test/1") {
		t.Fatalf("headers %v, want one request with our User-Agent", hs)
	}
}

func TestReadAtResumesWhereItStopped(t *testing.T) {
	rec := &recorder{}
	env := newEnv(t, envConfig{mw: chain(recordBlobGets(rec), faultFirst(1, truncateFault))})
	c := env.client(t)
	b := env.remoteBlob(t, c)

	off, p := int64(100), make([]byte, 64<<10)
	if _, err := b.ReadAt(context.Background(), p, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, env.blob[off:off+int64(len(p))]) {
		t.Fatal("bytes differ from the layer")
	}
	hs := rec.headers()
	if len(hs) != 2 {
		t.Fatalf("%d blob GETs, want 2", len(hs))
	}
	// The first answer is cut after half of its bytes; the retry asks
	// for the rest only.
	end := off + int64(len(p)) - 1
	want := []string{fmt.Sprintf("bytes=%d-%d", off, end), fmt.Sprintf("bytes=%d-%d", off+int64(len(p))/2, end)}
	for i, h := range hs {
		if got := h.Get("Range"); got != want[i] {
			t.Errorf("request %d: Range %q, want %q", i, got, want[i])
		}
	}
}

func TestReadAtCanceled(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := env.client(t)
	b := env.remoteBlob(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := b.ReadAt(ctx, make([]byte, 10), 0)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := b.Open(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open: err = %v, want context.Canceled", err)
	}
	if n := env.blobGets.Load(); n != 0 {
		t.Errorf("%d blob GETs, want 0", n)
	}
}
