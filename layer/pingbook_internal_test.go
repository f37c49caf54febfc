package layer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func TestPingRecordOutcome(t *testing.T) {
	const host = "registry.test:5000"
	now := time.Now()
	challenge := http.Header{"Www-Authenticate": {`Bearer realm="https://auth.test/token"`}, "X-Other": {"dropped"}}
	for _, tc := range []struct {
		name string
		r    pingRecord
		ok   bool
	}{
		{"https answered", pingRecord{Version: 1, Host: host, At: now.Add(-time.Minute), HTTPS: &pingRecordAnswer{Status: 401, Header: challenge}}, true},
		{"http answered", pingRecord{Version: 1, Host: host, At: now, HTTPSError: "no TLS", HTTP: &pingRecordAnswer{Status: 200}}, true},
		{"another version", pingRecord{Version: 2, Host: host, At: now, HTTPS: &pingRecordAnswer{Status: 200}}, false},
		{"another host", pingRecord{Version: 1, Host: "other.test", At: now, HTTPS: &pingRecordAnswer{Status: 200}}, false},
		{"too old", pingRecord{Version: 1, Host: host, At: now.Add(-pingBookAge - time.Second), HTTPS: &pingRecordAnswer{Status: 200}}, false},
		{"from the future", pingRecord{Version: 1, Host: host, At: now.Add(time.Hour), HTTPS: &pingRecordAnswer{Status: 200}}, false},
		{"not a registry's answer", pingRecord{Version: 1, Host: host, At: now, HTTPS: &pingRecordAnswer{Status: 404}}, false},
		{"no answer", pingRecord{Version: 1, Host: host, At: now}, false},
		{"https failed, no http answer", pingRecord{Version: 1, Host: host, At: now, HTTPSError: "no TLS"}, false},
		{"https failed and answered", pingRecord{Version: 1, Host: host, At: now, HTTPSError: "no TLS", HTTPS: &pingRecordAnswer{Status: 200}, HTTP: &pingRecordAnswer{Status: 200}}, false},
		{"https answered, and http", pingRecord{Version: 1, Host: host, At: now, HTTPS: &pingRecordAnswer{Status: 200}, HTTP: &pingRecordAnswer{Status: 200}}, false},
		{"body too large", pingRecord{Version: 1, Host: host, At: now, HTTPS: &pingRecordAnswer{Status: 200, Body: make([]byte, maxPingBody+1)}}, false},
	} {
		o, err := tc.r.outcome(host, now)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v; want ok %v", tc.name, err, tc.ok)
			continue
		}
		if err != nil {
			continue
		}
		if !o.fromBook {
			t.Errorf("%s: not marked as from the book", tc.name)
		}
		if tc.r.HTTPSError != "" && (o.httpsErr == nil || !strings.Contains(o.httpsErr.Error(), tc.r.HTTPSError) || o.plain == nil) {
			t.Errorf("%s: https error %v, http answer %v", tc.name, o.httpsErr, o.plain)
		}
		if tc.r.HTTPS != nil && (o.httpsErr != nil || o.secure == nil || o.secure.status != tc.r.HTTPS.Status) {
			t.Errorf("%s: https error %v, https answer %v", tc.name, o.httpsErr, o.secure)
		}
	}
}

func TestPingBookRoundTrip(t *testing.T) {
	st, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const host = "[::1]:5000"
	if o := st.loadPing(host); o != nil {
		t.Fatalf("an empty store holds %+v", o)
	}
	challenge := `Basic realm="test"`
	st.savePing(host, &pingOutcome{
		at:       time.Now(),
		httpsErr: errors.New("server gave HTTP response to HTTPS client"),
		plain:    &pingAnswer{status: 401, header: http.Header{"Www-Authenticate": {challenge}, "Set-Cookie": {"x"}}, body: []byte("{}")},
	})
	o := st.loadPing(host)
	if o == nil || o.plain == nil || o.secure != nil || !o.fromBook {
		t.Fatalf("loaded %+v", o)
	}
	if got := o.plain.header.Get("WWW-Authenticate"); got != challenge || o.plain.header.Get("Set-Cookie") != "" || string(o.plain.body) != "{}" {
		t.Errorf("loaded answer: challenge %q, headers %v, body %q", got, o.plain.header, o.plain.body)
	}
	if o.httpsErr == nil || !strings.Contains(o.httpsErr.Error(), "HTTP response to HTTPS client") {
		t.Errorf("loaded https error %v", o.httpsErr)
	}
	if err := os.WriteFile(st.pingPath(host), []byte(`{"version":1,`), 0o600); err != nil {
		t.Fatal(err)
	}
	if o := st.loadPing(host); o != nil {
		t.Errorf("a torn record loaded as %+v", o)
	}
	st.forgetPing(host)
	if _, err := os.Stat(st.pingPath(host)); !os.IsNotExist(err) {
		t.Errorf("forgotten record: %v", err)
	}
}

// schemeLog records the scheme of every request sent through it.
type schemeLog struct {
	next    http.RoundTripper
	mu      sync.Mutex
	schemes []string
}

func (l *schemeLog) RoundTrip(req *http.Request) (*http.Response, error) {
	l.mu.Lock()
	l.schemes = append(l.schemes, req.URL.Scheme)
	l.mu.Unlock()
	return l.next.RoundTrip(req)
}

// TestPingBookOfATLSOnlyRegistry: a registry not allowed plain HTTP is
// pinged over TLS alone, and its kept answer spares later handshakes the
// ping; an outcome kept while the host was allowed plain HTTP (https
// failed) does not answer for it: it is pinged over TLS again.
func TestPingBookOfATLSOnlyRegistry(t *testing.T) {
	var tlsPings atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v2/" {
			tlsPings.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	const host = "registry.test"
	base := srv.Client().Transport.(*http.Transport).Clone()
	base.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	base.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
	}
	t.Cleanup(base.CloseIdleConnections)
	log := &schemeLog{next: base}
	reg, err := name.NewRegistry(host)
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	handshake := func() {
		t.Helper()
		guard := newSchemeGuard(log, nil, newPingRace(st))
		if _, err := transport.NewWithContext(context.Background(), reg, authn.Anonymous, guard, nil); err != nil {
			t.Fatalf("handshake: %v", err)
		}
	}
	for range 2 {
		handshake()
	}
	if n := tlsPings.Load(); n != 1 {
		t.Errorf("2 handshakes sent %d pings; want 1", n)
	}
	st.savePing(host, &pingOutcome{at: time.Now(), httpsErr: errors.New("no TLS"), plain: &pingAnswer{status: 200, header: http.Header{}}})
	handshake()
	if n := tlsPings.Load(); n != 2 {
		t.Errorf("with an outcome kept for plain HTTP, %d pings in all; want 2", n)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, s := range log.schemes {
		if s != "https" {
			t.Errorf("requests went out as %v; want https alone", log.schemes)
			break
		}
	}
}

func TestSpeaksNoTLS(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, true},
		{fmt.Errorf("ping: %w", http.ErrSchemeMismatch), true},
		{io.EOF, false},
		{context.DeadlineExceeded, false},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, false},
	} {
		if got := speaksNoTLS(tc.err); got != tc.want {
			t.Errorf("speaksNoTLS(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestPingBookKeepsNoPassingFailure: an https ping that failed in a way
// that may pass (here the connection closed) is not kept as "plain HTTP",
// though the http ping answered.
func TestPingBookKeepsNoPassingFailure(t *testing.T) {
	r := newPlainRegistry(t)
	reg, err := name.NewRegistry(r.addr, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	st, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(base.CloseIdleConnections)
	guard := newSchemeGuard(base, []string{r.addr}, newPingRace(st))
	if _, err := transport.NewWithContext(context.Background(), reg, authn.Anonymous, guard, nil); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if o := st.loadPing(r.addr); o != nil {
		t.Errorf("kept %+v after a closed TLS connection", o)
	}
}
