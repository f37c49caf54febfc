package testutil

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

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

// NewRegistry starts a Registry that is closed in t.Cleanup.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{
		inner: registry.New(registry.Logger(log.New(io.Discard, "", 0))),
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
