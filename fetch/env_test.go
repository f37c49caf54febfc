package fetch

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// middleware wraps the test registry to inject faults or record requests.
type middleware func(next http.Handler) http.Handler

// testEnv is an in-process registry holding one pushed image, reached
// through optional middleware.
type testEnv struct {
	srv  *httptest.Server
	repo name.Repository
	desc v1.Descriptor // the image's first layer
	blob []byte        // its compressed bytes

	blobGets atomic.Int64 // blob GETs that reached the front of the server
}

// testLayer is a random image and the bytes of its first layer.
type testLayer struct {
	img  v1.Image
	desc v1.Descriptor
	blob []byte
}

func newTestLayer(t *testing.T, size int64) testLayer {
	t.Helper()
	img, err := random.Image(size, 1)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	desc := m.Layers[0]
	l, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blob, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(blob)) != desc.Size {
		t.Fatalf("layer has %d bytes, descriptor says %d", len(blob), desc.Size)
	}
	return testLayer{img: img, desc: desc, blob: blob}
}

// envConfig says how to build a testEnv.
type envConfig struct {
	layer  *testLayer   // nil: a fresh random layer
	mw     middleware   // nil: none
	auth   *authn.Basic // nil: no authentication; else required on every request
	tls    bool         // serve HTTPS with httptest's own certificate
	listen string       // address to listen on; "" for a loopback port
	// front, if set, sees every request first, even those auth refuses.
	front middleware
	// tlsConfig, if set, is the server's TLS configuration (with tls);
	// httptest adds its certificate.
	tlsConfig *tls.Config
}

func newEnv(t *testing.T, cfg envConfig) *testEnv {
	t.Helper()
	if cfg.layer == nil {
		l := newTestLayer(t, 256<<10)
		cfg.layer = &l
	}
	env := &testEnv{desc: cfg.layer.desc, blob: cfg.layer.blob}

	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if cfg.mw != nil {
		h = cfg.mw(h)
	}
	if cfg.auth != nil {
		h = requireBasic(cfg.auth, h)
	}
	h = env.countBlobGets(h)
	if cfg.front != nil {
		h = cfg.front(h)
	}
	env.srv = httptest.NewUnstartedServer(guardHead(h))
	env.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if cfg.listen != "" {
		l, err := net.Listen("tcp", cfg.listen)
		if err != nil {
			t.Fatal(err)
		}
		env.srv.Listener.Close()
		env.srv.Listener = l
	}
	if cfg.tls {
		env.srv.TLS = cfg.tlsConfig
		env.srv.StartTLS()
	} else {
		env.srv.Start()
	}
	t.Cleanup(env.srv.Close)

	host := env.srv.Listener.Addr().String()
	ref, err := name.ParseReference(host+"/lazyroot/test:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	env.repo = ref.Context()
	var opts []remote.Option
	if cfg.auth != nil {
		opts = append(opts, remote.WithAuth(cfg.auth))
	}
	if cfg.tls {
		opts = append(opts, remote.WithTransport(env.srv.Client().Transport))
	}
	if err := remote.Write(ref, cfg.layer.img, opts...); err != nil {
		t.Fatal(err)
	}
	env.blobGets.Store(0)
	return env
}

func (env *testEnv) countBlobGets(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isBlobGet(r) {
			env.blobGets.Add(1)
		}
		next.ServeHTTP(w, r)
	})
}

// headsFromUs counts HEAD requests sent by fetch to any test server. fetch
// must never send one; TestMain fails the run if it did.
var headsFromUs atomic.Int64

// guardHead counts HEAD requests that carry our User-Agent (the test
// setup's own pushes, by go-containerregistry, send HEADs of their own).
func guardHead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.HasPrefix(r.UserAgent(), "lazyroot") {
			headsFromUs.Add(1)
		}
		next.ServeHTTP(w, r)
	})
}

// newServer starts an httptest server for h with the HEAD guard.
func newServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(guardHead(h))
	t.Cleanup(srv.Close)
	return srv
}

func TestMain(m *testing.M) {
	code := m.Run()
	if n := headsFromUs.Load(); n != 0 {
		fmt.Fprintf(os.Stderr, "FAIL: fetch sent %d HEAD requests\n", n)
		code = 1
	}
	os.Exit(code)
}

// client returns a Client for env with test-friendly defaults before opts:
// no hosts directory unless opts name one.
func (env *testEnv) client(t *testing.T, opts ...Option) *Client {
	t.Helper()
	c, err := New(append([]Option{WithRequestTimeout(10 * time.Second), WithHostsDir("")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// remoteBlob returns the env's layer through c.
func (env *testEnv) remoteBlob(t *testing.T, c *Client) *RemoteBlob {
	t.Helper()
	b, err := c.Blob(context.Background(), env.repo, env.desc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
}

// requireBasic answers 401 with a Basic challenge unless the request
// carries the credentials of want.
func requireBasic(want *authn.Basic, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || user != want.Username || pass != want.Password {
			w.Header().Set("WWW-Authenticate", `Basic realm="lazyroot-test"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// fault handles a blob GET instead of (or around) the registry.
type fault func(w http.ResponseWriter, r *http.Request, next http.Handler)

// faultFirst applies f to the first n blob GETs; everything else passes.
func faultFirst(n int64, f fault) middleware {
	return func(next http.Handler) http.Handler {
		var seen atomic.Int64
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && seen.Add(1) <= n {
				f(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// faultAll applies f to every blob GET.
func faultAll(f fault) middleware {
	return faultFirst(1<<62, f)
}

func statusFault(code int, header ...string) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(code)
	}
}

// truncateFault lets the registry answer but cuts the body after half of
// its Content-Length and drops the connection.
func truncateFault(w http.ResponseWriter, r *http.Request, next http.Handler) {
	next.ServeHTTP(&truncWriter{ResponseWriter: w}, r)
}

type truncWriter struct {
	http.ResponseWriter
	limit, written int64
}

func (tw *truncWriter) WriteHeader(code int) {
	if cl := tw.Header().Get("Content-Length"); cl != "" {
		var n int64
		for _, c := range cl {
			n = n*10 + int64(c-'0')
		}
		tw.limit = n / 2
	}
	tw.ResponseWriter.WriteHeader(code)
}

func (tw *truncWriter) Write(p []byte) (int, error) {
	if room := tw.limit - tw.written; int64(len(p)) > room {
		n, _ := tw.ResponseWriter.Write(p[:room])
		tw.written += int64(n)
		if f, ok := tw.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	n, err := tw.ResponseWriter.Write(p)
	tw.written += int64(n)
	return n, err
}

// resetFault drops the connection without an answer.
func resetFault(w http.ResponseWriter, r *http.Request, _ http.Handler) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // a reset, not an orderly close
	}
	conn.Close()
}

// delayFault holds a blob GET for d before the registry answers.
func delayFault(d time.Duration) fault {
	return func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		next.ServeHTTP(w, r)
	}
}

// stallFault sends nothing until the client gives up (or a long while).
func stallFault(w http.ResponseWriter, r *http.Request, _ http.Handler) {
	select {
	case <-r.Context().Done():
	case <-time.After(30 * time.Second):
	}
}

// ignoreRangeFault makes the registry answer 200 with the whole blob.
func ignoreRangeFault(w http.ResponseWriter, r *http.Request, next http.Handler) {
	r.Header.Del("Range")
	next.ServeHTTP(w, r)
}

// badRangeFault rewrites the Content-Range of the registry's answer.
func badRangeFault(w http.ResponseWriter, r *http.Request, next http.Handler) {
	next.ServeHTTP(&rangeRewriter{ResponseWriter: w}, r)
}

type rangeRewriter struct{ http.ResponseWriter }

func (rw *rangeRewriter) WriteHeader(code int) {
	if rw.Header().Get("Content-Range") != "" {
		rw.Header().Set("Content-Range", "bytes 1-1/2")
	}
	rw.ResponseWriter.WriteHeader(code)
}

// recorder keeps selected headers of the requests it sees.
type recorder struct {
	mu   sync.Mutex
	reqs []http.Header // protected by mu
}

func (rec *recorder) record(r *http.Request) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.reqs = append(rec.reqs, r.Header.Clone())
}

func (rec *recorder) headers() []http.Header {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]http.Header(nil), rec.reqs...)
}

// recordBlobGets records the headers of blob GETs into rec.
func recordBlobGets(rec *recorder) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) {
				rec.record(r)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// chain applies middleware so that the first one sees requests first.
func chain(mws ...middleware) middleware {
	return func(next http.Handler) http.Handler {
		for i := len(mws) - 1; i >= 0; i-- {
			next = mws[i](next)
		}
		return next
	}
}
