package testutil

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// Lock order: Registry.mu is a leaf; it is never held while calling a
// handler or writing to the network.

// Registry is an in-process OCI registry for tests: go-containerregistry's
// pkg/registry served by httptest on 127.0.0.1, behind middleware that
// records every request. It is safe for concurrent use.
//
// Note that pkg/registry accepts only closed byte ranges ("bytes=a-b").
type Registry struct {
	// Host is "127.0.0.1:PORT", the registry part of references.
	Host string

	srv   *httptest.Server
	inner http.Handler // the registry itself; immutable

	mu        sync.Mutex
	requests  []*Request   // guarded by mu; in arrival order
	blobBytes int64        // guarded by mu; body bytes of 2xx GET blob responses
	wrapped   http.Handler // guarded by mu; Wrap's middleware around inner, or inner
	gen       uint64       // guarded by mu; bumped by Reset
}

// Request is one request the Registry answered, as the client saw it
// (including answers given by middleware installed with Wrap).
type Request struct {
	Method string
	Path   string // URL path, e.g. "/v2/app/blobs/sha256:…"
	Range  string // the Range request header, "" if none
	Status int    // response status; 0 while the request is still in flight
	Bytes  int64  // response body bytes written so far
	Blob   string // the digest if Path names a blob (/v2/<name>/blobs/<digest>), else ""
}

// RegistryOption configures NewRegistry.
type RegistryOption func(*registryOptions)

type registryOptions struct {
	referrers bool
}

// WithReferrers makes the registry answer the OCI 1.1 referrers API
// (GET /v2/<name>/referrers/<digest>) with an OCI index of the manifests
// whose subject is <digest>. Without it the registry answers that path 404,
// as registries without the API do, and clients fall back to the referrers
// tag schema.
//
// Note that go-containerregistry's registry reports a referrer's
// artifactType as its config media type, even when the manifest has an
// artifactType of its own, and lists referrers in no particular order.
func WithReferrers() RegistryOption {
	return func(o *registryOptions) { o.referrers = true }
}

// NewRegistry starts a Registry that is closed in t.Cleanup.
func NewRegistry(t testing.TB, opts ...RegistryOption) *Registry {
	t.Helper()
	var o registryOptions
	for _, opt := range opts {
		opt(&o)
	}
	r := &Registry{
		inner: registry.New(
			registry.Logger(log.New(io.Discard, "", 0)),
			registry.WithReferrersSupport(o.referrers),
		),
	}
	r.wrapped = r.inner
	r.srv = httptest.NewServer(http.HandlerFunc(r.serveHTTP))
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	t.Cleanup(r.srv.Close)
	return r
}

// URL returns the registry's base URL, "http://127.0.0.1:PORT".
func (r *Registry) URL() string { return r.srv.URL }

// Requests returns a snapshot of the recorded requests in arrival order.
func (r *Registry) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Request, len(r.requests))
	for i, q := range r.requests {
		out[i] = *q
	}
	return out
}

// Reset forgets the recorded requests and zeroes BlobBytes. Requests still
// in flight when Reset is called are not counted afterwards.
func (r *Registry) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = nil
	r.blobBytes = 0
	r.gen++
}

// BlobBytes returns the response body bytes written for GET
// /v2/.../blobs/<digest> requests with a 2xx status since the last Reset:
// the blob bytes served, not counting error bodies. (Request.Bytes counts
// every body byte.)
func (r *Registry) BlobBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blobBytes
}

// Wrap installs mw in front of the registry handler, replacing any earlier
// middleware. mw receives the registry handler as next and may answer a
// request itself (fault injection) or call next. Wrap(nil) removes it.
// Requests are recorded outside mw, so what mw answers is what is recorded.
func (r *Registry) Wrap(mw func(next http.Handler) http.Handler) {
	h := r.inner
	if mw != nil {
		h = mw(r.inner)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.wrapped = h
}

func (r *Registry) serveHTTP(w http.ResponseWriter, req *http.Request) {
	rec := &Request{
		Method: req.Method,
		Path:   req.URL.Path,
		Range:  req.Header.Get("Range"),
		Blob:   blobDigest(req.URL.Path),
	}
	r.mu.Lock()
	r.requests = append(r.requests, rec)
	h := r.wrapped
	gen := r.gen
	r.mu.Unlock()

	rw := &recordingWriter{
		ResponseWriter: w,
		reg:            r,
		rec:            rec,
		gen:            gen,
		countBlob:      req.Method == http.MethodGet && rec.Blob != "",
	}
	h.ServeHTTP(rw, req)

	r.mu.Lock()
	defer r.mu.Unlock()
	if rec.Status == 0 {
		rec.Status = http.StatusOK
	}
}

// blobDigest returns the digest in a path of the form
// /v2/<name>/blobs/<digest>, or "" for any other path (uploads included).
func blobDigest(p string) string {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return ""
	}
	i := strings.LastIndex(rest, "/blobs/")
	if i <= 0 {
		return ""
	}
	d := rest[i+len("/blobs/"):]
	if d == "" || strings.Contains(d, "/") || !strings.Contains(d, ":") {
		return ""
	}
	return d
}

// recordingWriter updates its Request as the handler writes.
type recordingWriter struct {
	http.ResponseWriter
	reg       *Registry
	rec       *Request
	gen       uint64 // Reset generation the request arrived in
	countBlob bool   // count written bytes into Registry.blobBytes
}

var (
	_ http.ResponseWriter = (*recordingWriter)(nil)
	_ http.Flusher        = (*recordingWriter)(nil)
)

func (w *recordingWriter) WriteHeader(code int) {
	w.reg.mu.Lock()
	if w.rec.Status == 0 {
		w.rec.Status = code
	}
	w.reg.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

// Write counts p before passing it on, so a client that has read the bytes
// always finds them counted; a short write takes back what was not sent.
func (w *recordingWriter) Write(p []byte) (int, error) {
	w.count(int64(len(p)))
	n, err := w.ResponseWriter.Write(p)
	if n < len(p) {
		w.count(int64(n - len(p)))
	}
	return n, err
}

func (w *recordingWriter) count(n int64) {
	w.reg.mu.Lock()
	defer w.reg.mu.Unlock()
	if w.rec.Status == 0 {
		w.rec.Status = http.StatusOK
	}
	w.rec.Bytes += n
	if w.countBlob && w.gen == w.reg.gen && w.rec.Status/100 == 2 {
		w.reg.blobBytes += n
	}
}

// Flush passes through to the underlying writer when it can flush.
func (w *recordingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *recordingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// DistributionBinary is where Debian's docker-registry package installs the
// CNCF Distribution registry (version 2.8, without the referrers API).
const DistributionBinary = "/usr/bin/docker-registry"

// StartDistribution runs a real registry, DistributionBinary, on 127.0.0.1
// with its storage in a temporary directory, waits until it answers /v2/,
// and returns its host ("127.0.0.1:PORT"). The process is stopped in
// t.Cleanup; its log is shown if the test failed. The test is skipped when
// the binary is not installed. It speaks plain HTTP and needs no
// credentials.
func StartDistribution(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(DistributionBinary); err != nil {
		t.Skipf("real registry not available: %v", err)
	}
	dir := t.TempDir()
	host := freeLoopbackAddr(t)
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "storage"), host)
	configPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatalf("distribution config: %v", err)
	}

	var out lockedBuffer
	cmd := exec.Command(DistributionBinary, "serve", configPath)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", DistributionBinary, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s log:\n%s", DistributionBinary, out.String())
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if err := ping(ctx, "http://"+host+"/v2/"); err == nil {
			return host
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("%s exited: %v\n%s", DistributionBinary, err, out.String())
		case <-ctx.Done():
			t.Fatalf("%s did not answer on %s: %v\n%s", DistributionBinary, host, ctx.Err(), out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port that was free a
// moment ago.
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ping returns nil when url answers 200.
func ping(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// lockedBuffer collects a child process's output; safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// UnreachableAddr returns a loopback HOST:PORT where nothing listens (a
// port just released), for a registry that is down.
func UnreachableAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
