package fetch

import (
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

func TestNewOptions(t *testing.T) {
	custom := &http.Transport{}
	tests := []struct {
		name    string
		opts    []Option
		wantErr bool
		check   func(*options) bool
	}{
		{name: "defaults", check: func(o *options) bool {
			t, ok := o.transport.(*http.Transport)
			return o.auth == nil && o.keychain == nil && o.wrap == nil && o.requestTimeout == defaultRequestTimeout &&
				o.retries == defaultRetries && o.userAgent == defaultUserAgent && ok && t != http.DefaultTransport &&
				t.Proxy != nil && t.MaxIdleConnsPerHost >= defaultMaxConnsPerHost &&
				o.maxConns == defaultMaxConnsPerHost && o.hostsDir == DefaultHostsDir &&
				o.redirectMaxAge == defaultRedirectMaxAge && o.penalty == defaultMirrorPenalty
		}},
		{name: "max conns", opts: []Option{WithMaxConnsPerHost(2)}, check: func(o *options) bool { return o.maxConns == 2 }},
		{name: "hosts dir", opts: []Option{WithHostsDir("/x")}, check: func(o *options) bool { return o.hostsDir == "/x" }},
		{name: "no hosts dir", opts: []Option{WithHostsDir("")}, check: func(o *options) bool { return o.hostsDir == "" }},
		{name: "no redirect reuse", opts: []Option{WithRedirectMaxAge(0)}, check: func(o *options) bool { return o.redirectMaxAge == 0 }},
		{name: "zero max conns", opts: []Option{WithMaxConnsPerHost(0)}, wantErr: true},
		{name: "negative redirect max age", opts: []Option{WithRedirectMaxAge(-time.Second)}, wantErr: true},
		{name: "transport", opts: []Option{WithTransport(custom)}, check: func(o *options) bool { return o.transport == custom }},
		{name: "timeout", opts: []Option{WithRequestTimeout(time.Second)}, check: func(o *options) bool { return o.requestTimeout == time.Second }},
		{name: "no retries", opts: []Option{WithRetries(0)}, check: func(o *options) bool { return o.retries == 0 }},
		{name: "keychain only", opts: []Option{WithKeychain(authn.DefaultKeychain)}, check: func(o *options) bool {
			return o.auth == nil && o.keychain == authn.DefaultKeychain
		}},
		{name: "auth and keychain", opts: []Option{WithAuth(authn.Anonymous), WithKeychain(authn.DefaultKeychain)}, check: func(o *options) bool {
			return o.auth == authn.Anonymous && o.keychain == authn.DefaultKeychain
		}},
		{name: "transport wrapper", opts: []Option{WithTransportWrapper(func(rt http.RoundTripper) http.RoundTripper { return rt })}, check: func(o *options) bool {
			return o.wrap != nil
		}},
		{name: "nil transport wrapper", opts: []Option{WithTransportWrapper(nil)}, wantErr: true},
		{name: "nil option", opts: []Option{nil}, wantErr: true},
		{name: "nil auth", opts: []Option{WithAuth(nil)}, wantErr: true},
		{name: "nil keychain", opts: []Option{WithKeychain(nil)}, wantErr: true},
		{name: "nil transport", opts: []Option{WithTransport(nil)}, wantErr: true},
		{name: "zero timeout", opts: []Option{WithRequestTimeout(0)}, wantErr: true},
		{name: "negative retries", opts: []Option{WithRetries(-1)}, wantErr: true},
		{name: "empty user agent", opts: []Option{WithUserAgent("")}, wantErr: true},
		{name: "user agent with newline", opts: []Option{WithUserAgent("a\r\nX-Evil: 1")}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := makeOptions(tt.opts...)
			if (err != nil) != tt.wantErr {
				t.Fatalf("makeOptions: err = %v, want error %v", err, tt.wantErr)
			}
			if tt.check != nil && !tt.check(o) {
				t.Errorf("options %+v", o)
			}
			if _, err := New(tt.opts...); (err != nil) != tt.wantErr {
				t.Fatalf("New: err = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}
