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
// ahead: a mount's first reads go out several at a time (a span and its
// window, the prefetch batches of each layer), and over HTTP/1.1 each
// connection dialed then would cost them the TCP handshake's round trip.
const predialedConns = 4

// predialedMaxIdle is how long a connection dialed ahead waits to be used
// before it is closed (well within the idle timeouts of servers).
const predialedMaxIdle = 20 * time.Second

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
	t = t.Clone()
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

// predial dials n connections to the host of u at once and keeps them for
// DialContext, closing those still unused after predialedMaxIdle. Dial
// failures are of no consequence: the transport dials again when it needs
// to.
func (p *predialer) predial(ctx context.Context, u *url.URL, n int) {
	addr := dialAddr(u)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		mine []net.Conn
	)
	for range n {
		wg.Go(func() {
			c, err := p.dial(dctx, "tcp", addr)
			if err != nil {
				return
			}
			mu.Lock()
			mine = append(mine, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	p.mu.Lock()
	p.ready[addr] = append(p.ready[addr], mine...)
	p.mu.Unlock()
	time.AfterFunc(predialedMaxIdle, func() {
		p.mu.Lock()
		var keep, stale []net.Conn
		for _, c := range p.ready[addr] {
			if slices.Contains(mine, c) {
				stale = append(stale, c)
			} else {
				keep = append(keep, c)
			}
		}
		p.ready[addr] = keep
		p.mu.Unlock()
		for _, c := range stale {
			c.Close()
		}
	})
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
