package fetch

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
)

// predialedConns is how many connections to a registry Prepare dials
// ahead: the manifest is asked for beside the ping; once it is in, a
// mount asks for the config, the referrers (API and fallback tag) and the
// layers' TOCs at once, and its first reads go out several at a time (a
// span and its window, the prefetch batches of each layer); over HTTP/1.1
// each connection dialed then would cost them the TCP handshake's round
// trip.
const predialedConns = 8

// predialedMaxIdle is how long a connection dialed ahead waits to be used
// before it is closed: a mount's first reads come within a second, and a
// server or load balancer may drop a connection that stays silent much
// longer (net/http would not retry a request on it: the connection is new
// to it).
const predialedMaxIdle = 5 * time.Second

// predialer is the dialer of the base transport: it hands out the
// connections dialed ahead for an address before dialing new ones. Its
// methods are safe for concurrent use.
type predialer struct {
	transport *http.Transport // the transport it dials for
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	mu        sync.Mutex
	ready     map[string][]net.Conn // by "host:port"; guarded by mu
}

// withPredialer returns a clone of t whose dials go through a predialer,
// and the predialer.
func withPredialer(t *http.Transport) (*http.Transport, *predialer) {
	// net/http tries HTTP/2 by default only on a transport with neither a
	// dialer nor a TLS configuration of its own: keep that so.
	h2 := t.ForceAttemptHTTP2 || t.TLSNextProto == nil && t.DialContext == nil && t.Dial == nil &&
		t.DialTLSContext == nil && t.DialTLS == nil && t.TLSClientConfig == nil
	t = t.Clone()
	t.ForceAttemptHTTP2 = h2
	p := &predialer{transport: t, dial: t.DialContext, ready: map[string][]net.Conn{}}
	if p.dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		p.dial = d.DialContext
	}
	t.DialContext = p.DialContext
	return t, p
}

// DialContext returns a connection dialed ahead to addr if one waits,
// else a new one.
func (p *predialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if network == "tcp" {
		p.mu.Lock()
		if cs := p.ready[addr]; len(cs) > 0 {
			c := cs[len(cs)-1]
			p.ready[addr] = cs[:len(cs)-1]
			p.mu.Unlock()
			return c, nil
		}
		p.mu.Unlock()
	}
	return p.dial(ctx, network, addr)
}

// predial dials n connections to the host of u at once, each kept for
// DialContext as soon as it is up, and returns when the dials have ended
// (or ctx has). Connections still unused after predialedMaxIdle are
// closed. Dial failures are of no consequence: the transport dials again
// when it needs to.
func (p *predialer) predial(ctx context.Context, u *url.URL, n int) {
	addr := dialAddr(u)
	ctx, cancel := context.WithTimeout(ctx, predialTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			c, err := p.dial(ctx, "tcp", addr)
			if err != nil {
				return
			}
			p.mu.Lock()
			p.ready[addr] = append(p.ready[addr], c)
			p.mu.Unlock()
			time.AfterFunc(predialedMaxIdle, func() { p.drop(addr, c) })
		})
	}
	wg.Wait()
}

// predialTimeout bounds the dials made ahead: one that takes longer is
// slower than dialing when needed.
const predialTimeout = 3 * time.Second

// drop closes c, a connection dialed ahead to addr, unless it was handed
// out.
func (p *predialer) drop(addr string, c net.Conn) {
	p.mu.Lock()
	cs := p.ready[addr]
	i := slices.Index(cs, c)
	if i >= 0 {
		p.ready[addr] = slices.Delete(cs, i, i+1)
	}
	p.mu.Unlock()
	if i >= 0 {
		c.Close()
	}
}

// dialAddr is the address the transport dials for u: host:port, the port
// the scheme's default when u names none.
func dialAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// direct reports whether t reaches u without a proxy, so that connections
// dialed to u's host are the ones it would use.
func direct(t *http.Transport, u *url.URL) bool {
	if t.Proxy == nil {
		return true
	}
	pu, err := t.Proxy(&http.Request{Method: http.MethodGet, URL: u, Header: http.Header{}})
	return err == nil && pu == nil
}

// SharedTransport returns the base transport c sends its requests over,
// before any wrapping: other requests sent through it to the same hosts
// share c's connections, those Prepare dials ahead included.
func (c *Client) SharedTransport() http.RoundTripper { return c.opts.transport }
