package fetch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

const (
	defaultRequestTimeout  = 30 * time.Second
	defaultRetries         = 4
	defaultUserAgent       = "lazyroot"
	defaultMaxConnsPerHost = 8
	defaultRedirectMaxAge  = 5 * time.Minute
	defaultMirrorPenalty   = 30 * time.Second
)

// Option configures a [Client]. Options are checked by [New]; an invalid
// option makes New fail.
type Option func(*options) error

// options is the validated configuration of a Client. It is not changed
// after New returns.
type options struct {
	auth           authn.Authenticator // for the registry's own host; nil if not given
	keychain       authn.Keychain      // nil if not given
	transport      http.RoundTripper
	wrap           func(http.RoundTripper) http.RoundTripper // nil for none
	requestTimeout time.Duration
	retries        int
	userAgent      string
	maxConns       int           // requests in flight per host
	hostsDir       string        // "" for none
	redirectMaxAge time.Duration // longest reuse of a storage URL
	penalty        time.Duration // how long a misbehaving mirror is skipped
}

// makeOptions applies opts over the defaults and fills in what is left.
func makeOptions(opts ...Option) (*options, error) {
	o := &options{
		requestTimeout: defaultRequestTimeout,
		retries:        defaultRetries,
		userAgent:      defaultUserAgent,
		maxConns:       defaultMaxConnsPerHost,
		hostsDir:       DefaultHostsDir,
		redirectMaxAge: defaultRedirectMaxAge,
		penalty:        defaultMirrorPenalty,
	}
	for _, opt := range opts {
		if opt == nil {
			return nil, errors.New("fetch options: nil option")
		}
		if err := opt(o); err != nil {
			return nil, fmt.Errorf("fetch options: %w", err)
		}
	}
	if o.transport == nil {
		o.transport = defaultTransport(o.maxConns)
	}
	return o, nil
}

// defaultTransport returns a private copy of http.DefaultTransport (so
// settings made for one Client never reach another) that keeps enough idle
// connections for maxConns requests per host. Like http.DefaultTransport,
// it takes its proxy from HTTPS_PROXY, HTTP_PROXY and NO_PROXY.
func defaultTransport(maxConns int) *http.Transport {
	t, ok := http.DefaultTransport.(*http.Transport)
	if ok {
		t = t.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
	}
	t.MaxIdleConnsPerHost = max(t.MaxIdleConnsPerHost, maxConns)
	return t
}

// WithAuth sets the credentials for the registry named in the image
// reference: for endpoints on its own host (the registry itself, and a
// hosts.toml server or mirror on that same host). They are never sent to
// an endpoint on another host (a mirror, or a server override elsewhere),
// nor to the storage hosts registries redirect to. Without WithAuth the
// registry's credentials come from [WithKeychain], else access is
// anonymous. WithAuth and WithKeychain may be given together: then
// WithAuth serves the registry's host and the keychain the other hosts.
func WithAuth(a authn.Authenticator) Option {
	return func(o *options) error {
		if a == nil {
			return errors.New("nil authenticator")
		}
		o.auth = a
		return nil
	}
}

// WithKeychain resolves credentials per host from k, for example
// authn.DefaultKeychain, as containerd does per host: for the registry's
// own host (for the repository) unless [WithAuth] is given, and for each
// endpoint on another host (mirror or server override), for that
// endpoint's host. Such an endpoint gets its credentials only after it
// asked for them (a 401 with WWW-Authenticate), and never when it is
// reached over plain http:// on a host that is not loopback. Without a
// keychain, endpoints on other hosts are reached anonymously (a bearer
// token flow runs without credentials).
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) error {
		if k == nil {
			return errors.New("nil keychain")
		}
		o.keychain = k
		return nil
	}
}

// WithTransport sets the base HTTP transport, mainly for tests. The
// default is a clone of http.DefaultTransport, which honours HTTPS_PROXY,
// HTTP_PROXY and NO_PROXY. An *http.Transport is cloned, not used itself:
// the clone keeps an idle connection for each request allowed in flight
// per host and dials through Prepare's connections dialed ahead (so later
// changes to rt do not reach the client); it tries HTTP/2 where rt would. Endpoints that hosts.toml gives TLS, proxy or
// dial settings of their own use a clone of rt with those settings, which
// needs rt to be an *http.Transport: with another RoundTripper, [Client.Blob]
// fails for a registry that has such an endpoint rather than go around
// rt. To add behaviour to every request (a guard, a logger), keep the
// default and use [WithTransportWrapper].
func WithTransport(rt http.RoundTripper) Option {
	return func(o *options) error {
		if rt == nil {
			return errors.New("nil transport")
		}
		o.transport = rt
		return nil
	}
}

// WithTransportWrapper has fetch wrap every transport it builds with wrap:
// the base transport (see [WithTransport]) and each endpoint's transport
// with hosts.toml's TLS, proxy and dial settings, so every request fetch
// sends, to registries, mirrors, token services and storage hosts, goes
// through the RoundTripper wrap returns. wrap is called once per distinct
// transport, from New and from Blob, and must not return nil. The
// User-Agent header is set before the wrapper sees a request.
func WithTransportWrapper(wrap func(http.RoundTripper) http.RoundTripper) Option {
	return func(o *options) error {
		if wrap == nil {
			return errors.New("nil transport wrapper")
		}
		o.wrap = wrap
		return nil
	}
}

// WithRequestTimeout bounds each HTTP attempt: an attempt fails (and may be
// retried) when no response, or no further body bytes, arrive within d. The
// default is 30s.
func WithRequestTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("request timeout %s: must be positive", d)
		}
		o.requestTimeout = d
		return nil
	}
}

// WithRetries sets how many extra attempts a read makes after retryable
// failures (connection errors, truncated bodies, 5xx, 408 and 429). Zero
// disables retries. The default is 4.
func WithRetries(n int) Option {
	return func(o *options) error {
		if n < 0 {
			return fmt.Errorf("retries %d: must not be negative", n)
		}
		o.retries = n
		return nil
	}
}

// WithUserAgent sets the product that leads the User-Agent header. The
// default is "lazyroot".
func WithUserAgent(s string) Option {
	return func(o *options) error {
		if s == "" {
			return errors.New("empty user agent")
		}
		if strings.ContainsAny(s, "\r\n\x00") {
			return fmt.Errorf("user agent %q: control characters", s)
		}
		o.userAgent = s
		return nil
	}
}

// WithMaxConnsPerHost bounds the blob requests in flight to any one host
// (registry, mirror or storage host a registry redirects to) to n. A read
// that finds no free slot waits for one as long as its context allows.
// The default is 8.
func WithMaxConnsPerHost(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("max conns per host %d: must be at least 1", n)
		}
		o.maxConns = n
		return nil
	}
}

// WithHostsDir reads registry mirror and TLS settings from dir, laid out as
// containerd's hosts directory: dir/HOST[:PORT]/hosts.toml, with
// dir/_default as the fallback (see [LoadHosts]). The default is
// [DefaultHostsDir]; "" turns mirrors off. A missing directory is not an
// error.
func WithHostsDir(dir string) Option {
	return func(o *options) error {
		o.hostsDir = dir
		return nil
	}
}

// WithRedirectMaxAge bounds how long the storage URL a registry redirected
// a blob to is reused without asking the registry again. It is reused no
// longer than its own expiry (X-Amz-Expires and similar query parameters)
// allows, and is dropped at once when storage refuses it. The default is
// 5 minutes; 0 turns the reuse off.
func WithRedirectMaxAge(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("redirect max age %s: must not be negative", d)
		}
		o.redirectMaxAge = d
		return nil
	}
}
