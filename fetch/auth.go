package fetch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Credentials and hosts other than the registry's own.
//
// WithAuth's credentials are the user's for the registry named in the
// image reference, and go only to endpoints on that host. An endpoint on
// another host (a mirror, or a server override elsewhere) authenticates
// with the keychain's credentials for its own host, or anonymously
// without a keychain; and anonymously, whatever the keychain holds, when
// it is reached over plain http:// on a host that is not loopback, where
// anyone on the way could read them.
//
// go-containerregistry's handshake hands the credentials to any registry
// whose ping does not ask for a bearer token, even one that needs no
// credentials at all. So an endpoint named in hosts.toml gets nothing
// until its host itself challenges for credentials with a 401 and
// WWW-Authenticate: then it gets them through the usual handshake (bearer
// token exchange or basic). go-containerregistry also lets an endpoint
// reached over plain HTTP name a token service (realm) over plain HTTP
// anywhere: a challenge that does so gets no credentials either, and
// plainGuard refuses, as a last line, any request that would carry Basic
// credentials over plain HTTP beyond loopback.

// challengedAuth hides inner's credentials until asked is set, and for
// good once unsafe is.
type challengedAuth struct {
	inner  authn.Authenticator
	asked  *atomic.Bool // the host challenged for credentials
	unsafe *atomic.Bool // a challenge named a token service over plain HTTP beyond loopback
}

var _ authn.ContextAuthenticator = (*challengedAuth)(nil)

// Authorization implements authn.Authenticator.
func (a *challengedAuth) Authorization() (*authn.AuthConfig, error) {
	return a.AuthorizationContext(context.Background())
}

// AuthorizationContext implements authn.ContextAuthenticator: no
// credentials until the host asked for them, nor for a token service
// that would get them in clear.
func (a *challengedAuth) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	if !a.asked.Load() || a.unsafe.Load() {
		return &authn.AuthConfig{}, nil
	}
	return authn.Authorization(ctx, a.inner)
}

// challengeSpy sets asked when host answers 401 with a challenge, and
// unsafe when a challenge names a realm over plain HTTP beyond loopback.
type challengeSpy struct {
	next   http.RoundTripper
	host   string
	asked  *atomic.Bool
	unsafe *atomic.Bool
}

// RoundTrip implements http.RoundTripper.
func (s *challengeSpy) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	challenges := resp.Header.Values("WWW-Authenticate")
	for _, ch := range challenges {
		if !safeRealm(ch) {
			s.unsafe.Store(true)
		}
	}
	if len(challenges) > 0 && strings.EqualFold(req.URL.Host, s.host) {
		s.asked.Store(true)
	}
	return resp, err
}

// realmParam finds the realm parameters of a WWW-Authenticate value.
var realmParam = regexp.MustCompile(`(?i)(?:^|[\s,])realm\s*=\s*(?:"([^"]*)"|([^\s,]+))`)

// safeRealm reports whether a WWW-Authenticate value names no token
// service reached over plain HTTP beyond loopback. Only realms that are
// URLs name a service (a Basic realm is free text); one that has a
// scheme but does not parse is not safe.
func safeRealm(challenge string) bool {
	for _, m := range realmParam.FindAllStringSubmatch(challenge, -1) {
		realm := m[1] + m[2]
		if !strings.Contains(realm, "://") {
			continue
		}
		u, err := url.Parse(realm)
		if err != nil {
			return false
		}
		if !strings.EqualFold(u.Scheme, "https") && !isLoopback(u.Host) {
			return false
		}
	}
	return true
}

// plainGuard refuses requests that carry Basic credentials over plain
// HTTP to a host that is not loopback.
type plainGuard struct{ next http.RoundTripper }

// errPlainCredentials is why plainGuard refused a request.
var errPlainCredentials = errors.New("refusing to send credentials over plain HTTP")

// RoundTrip implements http.RoundTripper.
func (g plainGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" && !isLoopback(req.URL.Host) {
		if _, _, ok := req.BasicAuth(); ok {
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, &failure{err: fmt.Errorf("%w to %s", errPlainCredentials, req.URL.Host)}
		}
	}
	return g.next.RoundTrip(req)
}

// challenged returns the flag that says whether host has asked for
// credentials; it outlives handshakes, so a host that asks only on a blob
// request gets them at the next handshake.
func (c *Client) challenged(host string) *atomic.Bool {
	host = strings.ToLower(host)
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.asked[host]
	if f == nil {
		f = &atomic.Bool{}
		c.asked[host] = f
	}
	return f
}

// isLoopback reports whether host[:port] names this machine by a loopback
// address or as localhost, so plain HTTP to it does not leave the machine.
func isLoopback(hostport string) bool {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}
