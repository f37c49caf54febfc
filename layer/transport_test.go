package layer

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// plainRegistry is a plain-HTTP registry's ping endpoint on a listener of
// its own, which tells a TLS handshake from an HTTP request: a handshake
// is held until the first plain ping has come (at most 10 s), as a slow
// TLS failure would be, then the connection is closed.
type plainRegistry struct {
	addr      string
	plainSeen chan struct{}
	seenOnce  sync.Once
	pings     atomic.Int32 // plain pings answered
	tls       atomic.Int32 // TLS handshakes begun
	waited    atomic.Int32 // handshakes that waited 10 s in vain
}

func newPlainRegistry(t *testing.T) *plainRegistry {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &plainRegistry{addr: ln.Addr().String(), plainSeen: make(chan struct{})}
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v2/" {
			http.NotFound(w, req)
			return
		}
		r.pings.Add(1)
		r.seenOnce.Do(func() { close(r.plainSeen) })
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	})
	conns, done := make(chan net.Conn), make(chan struct{})
	srv := &http.Server{Handler: handler}
	go srv.Serve(&chanListener{conns: conns, addr: ln.Addr(), done: make(chan struct{})})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				br := bufio.NewReader(c)
				first, err := br.Peek(1)
				if err != nil {
					c.Close()
					return
				}
				if first[0] != 0x16 { // not a TLS handshake record
					select {
					case conns <- &peekedConn{Conn: c, r: br}:
					case <-done:
						c.Close()
					}
					return
				}
				r.tls.Add(1)
				select {
				case <-r.plainSeen:
				case <-time.After(10 * time.Second):
					r.waited.Add(1)
				}
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() { close(done); ln.Close(); srv.Close() })
	return r
}

// chanListener hands the HTTP server the connections given to it.
type chanListener struct {
	conns     chan net.Conn
	addr      net.Addr
	done      chan struct{}
	closeOnce sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// peekedConn is a connection whose first bytes were peeked into r.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestPingRaceOfAPlainRegistry: the handshakes of a plain-HTTP registry
// allowed plain HTTP send the http ping without waiting for the https one
// to fail, and the handshakes that follow (the blob client's, after the
// manifest client's) are answered from the race: one TLS attempt and one
// plain ping in all.
func TestPingRaceOfAPlainRegistry(t *testing.T) {
	r := newPlainRegistry(t)
	reg, err := name.NewRegistry(r.addr, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	pings := newPingRace(nil)
	base := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(base.CloseIdleConnections)
	scopes := []string{reg.Repo("app").Scope(transport.PullScope)}
	var wg sync.WaitGroup
	for range 3 { // the manifest client's and the blob client's, at once, and another
		wg.Add(1)
		go func() {
			defer wg.Done()
			guard := newSchemeGuard(base, []string{r.addr}, pings)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := transport.NewWithContext(ctx, reg, authn.Anonymous, guard, scopes); err != nil {
				t.Errorf("handshake: %v", err)
			}
		}()
	}
	wg.Wait()
	guard := newSchemeGuard(base, []string{r.addr}, pings)
	if _, err := transport.NewWithContext(context.Background(), reg, authn.Anonymous, guard, scopes); err != nil {
		t.Errorf("a later handshake: %v", err)
	}
	if r.waited.Load() != 0 {
		t.Errorf("%d TLS attempts were left waiting for the plain ping", r.waited.Load())
	}
	if r.tls.Load() != 1 || r.pings.Load() != 1 {
		t.Errorf("%d TLS attempts and %d plain pings for 4 handshakes; want 1 and 1", r.tls.Load(), r.pings.Load())
	}
}

// TestPingRaceOfATLSRegistry: a registry allowed plain HTTP that speaks
// TLS is talked to over TLS, and later handshakes take the first one's
// answer.
func TestPingRaceOfATLSRegistry(t *testing.T) {
	var pings atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v2/" {
			pings.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")
	reg, err := name.NewRegistry(host, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	base := srv.Client().Transport.(*http.Transport).Clone()
	base.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	t.Cleanup(base.CloseIdleConnections)
	pr := newPingRace(nil)
	for i := range 2 {
		guard := newSchemeGuard(base, []string{host}, pr)
		rt, err := transport.NewWithContext(context.Background(), reg, authn.Anonymous, guard, nil)
		if err != nil {
			t.Fatalf("handshake %d: %v", i, err)
		}
		// Sent as http://, as go-containerregistry builds the URLs of an
		// insecure registry: the handshake's scheme must win.
		req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/v2/app/tags/list", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil || resp.Request.URL.Scheme != "https" {
			t.Fatalf("request after handshake %d: %v; want it sent over TLS", i, err)
		}
		resp.Body.Close()
	}
	if n := pings.Load(); n != 1 {
		t.Errorf("the TLS registry saw %d pings for 2 handshakes; want 1", n)
	}
}
