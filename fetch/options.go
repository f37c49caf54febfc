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
	defaultRequestTimeout = 30 * time.Second
	defaultRetries        = 4
	defaultUserAgent      = "lazyroot"
)

// Option configures a [Client]. Options are checked by [New]; an invalid
// option makes New fail.
type Option func(*options) error

// options is the validated configuration of a Client. It is not changed
// after New returns.
type options struct {
	auth           authn.Authenticator // nil when keychain decides
	keychain       authn.Keychain
	transport      http.RoundTripper
	requestTimeout time.Duration
	retries        int
	userAgent      string
}

// makeOptions applies opts over the defaults and fills in what is left.
func makeOptions(opts ...Option) (*options, error) {
	o := &options{
		requestTimeout: defaultRequestTimeout,
		retries:        defaultRetries,
		userAgent:      defaultUserAgent,
	}
	for _, opt := range opts {
		if opt == nil {
			return nil, errors.New("fetch options: nil option")
		}
		if err := opt(o); err != nil {
			return nil, fmt.Errorf("fetch options: %w", err)
		}
	}
	if o.auth == nil && o.keychain == nil {
		o.auth = authn.Anonymous
	}
	if o.transport == nil {
		o.transport = defaultTransport()
	}
	return o, nil
}

// defaultTransport returns a private copy of http.DefaultTransport, so that
// settings made on one Client never reach another.
func defaultTransport() http.RoundTripper {
	if t, ok := http.DefaultTransport.(*http.Transport); ok {
		return t.Clone()
	}
	return &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true}
}

// WithAuth sets the credentials used for every registry. The default is
// anonymous access. WithAuth wins over [WithKeychain].
func WithAuth(a authn.Authenticator) Option {
	return func(o *options) error {
		if a == nil {
			return errors.New("nil authenticator")
		}
		o.auth = a
		return nil
	}
}

// WithKeychain resolves the credentials for each repository from k, for
// example authn.DefaultKeychain. It is ignored when [WithAuth] is given.
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) error {
		if k == nil {
			return errors.New("nil keychain")
		}
		o.keychain = k
		return nil
	}
}

// WithTransport sets the base HTTP transport that authentication is layered
// on. The default is a clone of http.DefaultTransport.
func WithTransport(rt http.RoundTripper) Option {
	return func(o *options) error {
		if rt == nil {
			return errors.New("nil transport")
		}
		o.transport = rt
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
