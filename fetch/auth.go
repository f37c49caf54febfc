package fetch

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
)

// Credentials and hosts other than the registry's own.
//
// go-containerregistry's handshake hands the credentials to any registry
// whose ping does not ask for a bearer token, even one that needs no
// credentials at all. That is what the user asked for with the registry
// named in the image reference, but a mirror (or a server override) on
// another host gets nothing until that host itself challenges for
// credentials with a 401 and WWW-Authenticate: then it gets the same
// authenticator through the usual handshake (bearer token exchange or
// basic). With a keychain the credentials are the mirror host's own.

// challengedAuth hides inner's credentials until asked is set.
type challengedAuth struct {
	inner authn.Authenticator
	asked *atomic.Bool
}

var _ authn.ContextAuthenticator = (*challengedAuth)(nil)

func (a *challengedAuth) Authorization() (*authn.AuthConfig, error) {
	return a.AuthorizationContext(context.Background())
}

func (a *challengedAuth) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	if !a.asked.Load() {
		return &authn.AuthConfig{}, nil
	}
	return authn.Authorization(ctx, a.inner)
}

// challengeSpy sets asked when host answers 401 with a challenge.
type challengeSpy struct {
	next  http.RoundTripper
	host  string
	asked *atomic.Bool
}

func (s *challengeSpy) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != "" &&
		strings.EqualFold(req.URL.Host, s.host) {
		s.asked.Store(true)
	}
	return resp, err
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
