package fetch

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
)

// endpointTransport returns the transport for an endpoint with TLS, proxy
// or dial settings of its own: a clone of the base transport with the
// settings applied, wrapped like the base. The base must be an
// *http.Transport: another RoundTripper cannot be given the settings, and
// going around it would drop whatever it does. Transports are shared by
// endpoints with the same settings and the same certificate file
// contents, so connections are reused.
func (c *Client) endpointTransport(e *Endpoint) (http.RoundTripper, error) {
	bt, ok := c.opts.transport.(*http.Transport)
	if !ok {
		return nil, fmt.Errorf("hosts.toml gives it TLS, proxy or dial settings, which need the base transport to be an *http.Transport, not %T "+
			"(wrap the default transport with WithTransportWrapper instead of replacing it with WithTransport)", c.opts.transport)
	}
	tc, key, err := e.tlsConfig()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	rt, ok := c.transports[key]
	c.mu.Unlock()
	if ok {
		return rt, nil
	}
	t := e.apply(bt, tc)
	// The wrapper is the caller's code: no lock is held while it runs.
	rt, err = c.finish(t)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.transports[key]; ok {
		return prev, nil // another Blob call built it first
	}
	c.transports[key] = rt
	return rt, nil
}

// Transport returns a clone of base with e's TLS, proxy and dial settings
// applied: what requests to e, other than blob reads through a Client,
// should use (manifests, say).
func (e *Endpoint) Transport(base *http.Transport) (*http.Transport, error) {
	tc, _, err := e.tlsConfig()
	if err != nil {
		return nil, err
	}
	return e.apply(base, tc), nil
}

// tlsConfig reads e's CA and client certificate files into a TLS config,
// and returns with it a key that is equal for endpoints whose settings and
// file contents are.
func (e *Endpoint) tlsConfig() (*tls.Config, string, error) {
	tc := &tls.Config{InsecureSkipVerify: e.SkipVerify} //nolint:gosec // asked for in hosts.toml
	h := sha256.New()
	fmt.Fprintf(h, "skip=%v proxy=%v dial=%v\n", e.SkipVerify, e.Proxy, e.DialTimeout)
	if len(e.CAs) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		for _, f := range e.CAs {
			pem, err := os.ReadFile(f)
			if err != nil {
				return nil, "", fmt.Errorf("ca: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, "", fmt.Errorf("ca %s: no PEM certificates", f)
			}
			fmt.Fprintf(h, "ca %q %x\n", f, sha256.Sum256(pem))
		}
		tc.RootCAs = pool
	}
	for _, pair := range e.ClientCerts {
		certPEM, err := os.ReadFile(pair[0])
		if err != nil {
			return nil, "", fmt.Errorf("client certificate: %w", err)
		}
		keyPEM := certPEM
		if pair[1] != "" {
			if keyPEM, err = os.ReadFile(pair[1]); err != nil {
				return nil, "", fmt.Errorf("client key: %w", err)
			}
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, "", fmt.Errorf("client certificate %s: %w", pair[0], err)
		}
		tc.Certificates = append(tc.Certificates, cert)
		fmt.Fprintf(h, "client %q %x %x\n", pair[0], sha256.Sum256(certPEM), sha256.Sum256(keyPEM))
	}
	return tc, hex.EncodeToString(h.Sum(nil)), nil
}

// apply returns a clone of base with tc merged into its TLS config and e's
// proxy and dial timeout set.
func (e *Endpoint) apply(base *http.Transport, tc *tls.Config) *http.Transport {
	t := base.Clone()
	if t.TLSClientConfig != nil {
		merged := t.TLSClientConfig.Clone()
		merged.InsecureSkipVerify = merged.InsecureSkipVerify || tc.InsecureSkipVerify
		if tc.RootCAs != nil {
			merged.RootCAs = tc.RootCAs
		}
		merged.Certificates = append(merged.Certificates, tc.Certificates...)
		tc = merged
	}
	t.TLSClientConfig = tc
	if e.Proxy != nil {
		t.Proxy = http.ProxyURL(e.Proxy)
	}
	if d := e.DialTimeout; d > 0 {
		dial := t.DialContext
		if dial == nil {
			dial = (&net.Dialer{}).DialContext
		}
		t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			return dial(ctx, network, addr)
		}
	}
	return t
}

// finish wraps a transport fetch built with the caller's wrapper, if any,
// and then with our User-Agent.
func (c *Client) finish(rt http.RoundTripper) (http.RoundTripper, error) {
	if c.opts.wrap != nil {
		if rt = c.opts.wrap(rt); rt == nil {
			return nil, errors.New("the transport wrapper returned nil")
		}
	}
	return c.withUserAgent(rt), nil
}

// hostLimits bounds the requests in flight per host.
type hostLimits struct {
	n     int
	mu    sync.Mutex
	slots map[string]chan struct{} // by host; protected by mu
}

func (l *hostLimits) init(n int) {
	l.n = n
	l.slots = make(map[string]chan struct{})
}

// acquire waits for a free slot for host, as long as ctx allows, and
// returns the function that frees it.
func (l *hostLimits) acquire(ctx context.Context, host string) (func(), error) {
	host = strings.ToLower(host)
	l.mu.Lock()
	ch := l.slots[host]
	if ch == nil {
		ch = make(chan struct{}, l.n)
		l.slots[host] = ch
	}
	l.mu.Unlock()
	select {
	case ch <- struct{}{}:
	default:
		select {
		case ch <- struct{}{}:
		case <-ctx.Done():
			return nil, &failure{ended: true, err: fmt.Errorf("waiting for a connection to %s: %w", host, ctx.Err())}
		}
	}
	var once sync.Once
	return func() { once.Do(func() { <-ch }) }, nil
}
