package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// writeHosts writes dir/ns/hosts.toml.
func writeHosts(t *testing.T, dir, ns, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, ns), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ns, "hosts.toml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func hostOf(env *testEnv) string { return env.srv.Listener.Addr().String() }

// mirrored is an origin registry and a mirror registry holding the same
// image, and a hosts directory that puts the mirror first.
type mirrored struct {
	origin, mirror *testEnv
	dir            string
}

func newMirrored(t *testing.T, mirrorMW middleware, extra string) *mirrored {
	t.Helper()
	layer := newTestLayer(t, 256<<10)
	m := &mirrored{
		origin: newEnv(t, envConfig{layer: &layer}),
		mirror: newEnv(t, envConfig{layer: &layer, mw: mirrorMW}),
		dir:    t.TempDir(),
	}
	writeHosts(t, m.dir, hostOf(m.origin), fmt.Sprintf(`
# a pull-through cache on the node's network
[host."http://%s"]
  capabilities = ["pull", "resolve"]
%s`, hostOf(m.mirror), extra))
	return m
}

func (m *mirrored) blob(t *testing.T, opts ...Option) (*Client, *RemoteBlob) {
	t.Helper()
	c := m.origin.client(t, append([]Option{WithHostsDir(m.dir)}, opts...)...)
	return c, m.origin.remoteBlob(t, c)
}

func (m *mirrored) check(t *testing.T, p []byte, off int64) {
	t.Helper()
	if !bytes.Equal(p, m.origin.blob[off:off+int64(len(p))]) {
		t.Fatalf("bytes at %d differ from the layer", off)
	}
}

func TestMirrorServesFirst(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	var queries []string
	var mu sync.Mutex
	ns := faultAll(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		mu.Lock()
		queries = append(queries, r.URL.Query().Get("ns"))
		mu.Unlock()
		next.ServeHTTP(w, r)
	})
	m := newMirrored(t, chain(recordBlobGets(rec), ns), "")
	c, b := m.blob(t)
	if n := m.mirror.blobGets.Load() + m.origin.blobGets.Load(); n != 0 {
		t.Fatalf("Blob sent %d blob GETs", n)
	}
	p := make([]byte, 10000)
	for _, off := range []int64{0, 50000} {
		if _, err := b.ReadAt(context.Background(), p, off); err != nil {
			t.Fatal(err)
		}
		m.check(t, p, off)
	}
	rc, err := b.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(all, m.origin.blob) {
		t.Fatalf("Open: %d bytes, %v", len(all), err)
	}
	if g, o := m.mirror.blobGets.Load(), m.origin.blobGets.Load(); g != 3 || o != 0 {
		t.Errorf("mirror saw %d blob GETs and origin %d, want 3 and 0", g, o)
	}
	for _, q := range queries {
		if q != hostOf(m.origin) {
			t.Errorf("mirror request ns=%q, want %q", q, hostOf(m.origin))
		}
	}
	for _, h := range rec.headers() {
		if a := h.Get("Authorization"); a != "" {
			t.Errorf("mirror got Authorization %q", a)
		}
	}
	s := c.Stats()
	mh := s.Hosts[hostOf(m.mirror)]
	if mh.Requests != 3 || mh.Bytes != 2*int64(len(p))+int64(len(all)) || s.Hosts[hostOf(m.origin)].Requests != 0 {
		t.Errorf("Stats = %+v", s)
	}
	if s.Fallbacks != 0 || s.Bytes != mh.Bytes {
		t.Errorf("Stats = %+v", s)
	}
}

// TestMirrorFails: when the mirror fails, the origin serves, without a
// pause; the mirror is then skipped for a while (for this blob only, when
// it just lacks the blob).
func TestMirrorFails(t *testing.T) {
	tests := []struct {
		name  string
		fault fault
	}{
		{"503", statusFault(http.StatusServiceUnavailable)},
		{"500", statusFault(http.StatusInternalServerError)},
		{"404", statusFault(http.StatusNotFound)},
		{"403", statusFault(http.StatusForbidden)},
		{"connection reset", resetFault},
		{"bad content-range", badRangeFault},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := newMirrored(t, faultAll(tt.fault), "")
			c, b := m.blob(t)
			p := make([]byte, 5000)
			start := time.Now()
			if _, err := b.ReadAt(context.Background(), p, 1000); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("read took %s", d)
			}
			m.check(t, p, 1000)
			mirrorGets := m.mirror.blobGets.Load()
			if mirrorGets < 1 || m.origin.blobGets.Load() != 1 {
				t.Errorf("mirror saw %d blob GETs, origin %d; want at least 1 and 1", mirrorGets, m.origin.blobGets.Load())
			}
			// Skipped now.
			if _, err := b.ReadAt(context.Background(), p, 20000); err != nil {
				t.Fatal(err)
			}
			m.check(t, p, 20000)
			if g := m.mirror.blobGets.Load(); g != mirrorGets || m.origin.blobGets.Load() != 2 {
				t.Errorf("mirror saw %d blob GETs (then %d), origin %d; want the mirror skipped", g, mirrorGets, m.origin.blobGets.Load())
			}
			s := c.Stats()
			if s.Fallbacks != 1 || s.Retries != 0 || s.Errors != 0 {
				t.Errorf("Stats = %+v, want 1 fallback, no retry, no error", s)
			}
			if h := s.Hosts[hostOf(m.mirror)]; h.Failures < 1 || h.Bytes != 0 {
				t.Errorf("mirror host stats %+v", h)
			}
			if h := s.Hosts[hostOf(m.origin)]; h.Requests != 2 || h.Bytes != 2*int64(len(p)) {
				t.Errorf("origin host stats %+v", h)
			}
			key := m.endpointKey(b, 0)
			c.mu.Lock()
			_, endpointWide := c.penalties[key]
			c.mu.Unlock()
			if wantWide := tt.name != "404"; endpointWide != wantWide {
				t.Errorf("endpoint-wide penalty %v, want %v", endpointWide, wantWide)
			}
		})
	}
}

func (m *mirrored) endpointKey(b *RemoteBlob, i int) string { return b.endpoints[i].key }

// TestMirrorPenaltyEnds: after the penalty, the mirror is asked again.
func TestMirrorPenaltyEnds(t *testing.T) {
	t.Parallel()
	var broken atomic.Bool
	broken.Store(true)
	m := newMirrored(t, faultAll(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if broken.Load() {
			statusFault(http.StatusBadGateway)(w, r, next)
			return
		}
		next.ServeHTTP(w, r)
	}), "")
	shortPenalty := func(o *options) error { o.penalty = 200 * time.Millisecond; return nil }
	_, b := m.blob(t, shortPenalty)
	p := make([]byte, 100)
	for i := range 2 {
		if _, err := b.ReadAt(context.Background(), p, int64(i)*100); err != nil {
			t.Fatal(err)
		}
	}
	if g := m.mirror.blobGets.Load(); g != 1 {
		t.Fatalf("mirror saw %d blob GETs, want 1", g)
	}
	broken.Store(false)
	time.Sleep(300 * time.Millisecond)
	if _, err := b.ReadAt(context.Background(), p, 300); err != nil {
		t.Fatal(err)
	}
	if g, o := m.mirror.blobGets.Load(), m.origin.blobGets.Load(); g != 2 || o != 2 {
		t.Errorf("mirror saw %d blob GETs and origin %d, want 2 and 2", g, o)
	}
}

// TestMirrorIgnoresRange: a cold pull-through cache answers a Range
// request with 200 and starts streaming the whole blob. fetch drops that
// answer without reading it and takes the range from the origin.
func TestMirrorIgnoresRange(t *testing.T) {
	t.Parallel()
	const offered = 64 << 20
	var written atomic.Int64
	var handlers sync.WaitGroup
	cold := faultAll(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		handlers.Add(1)
		defer handlers.Done()
		w.WriteHeader(http.StatusOK)
		chunk := make([]byte, 64<<10)
		for sent := 0; sent < offered; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			written.Add(int64(len(chunk)))
			time.Sleep(time.Millisecond) // an upstream pull at network speed
		}
	})
	m := newMirrored(t, cold, "")
	c, b := m.blob(t)
	p := make([]byte, 4096)
	start := time.Now()
	if _, err := b.ReadAt(context.Background(), p, 100000); err != nil {
		t.Fatal(err)
	}
	t.Logf("read in %s", time.Since(start))
	m.check(t, p, 100000)
	// A read of the whole blob may take a 200 from the mirror.
	all := make([]byte, len(m.origin.blob))
	if _, err := b.ReadAt(context.Background(), all, 0); err != nil {
		t.Fatal(err)
	}
	m.check(t, all, 0)

	handlers.Wait()
	if w := written.Load(); w > 4<<20 {
		t.Errorf("the mirror got %d bytes of its 200 answer out, want the answer dropped at once", w)
	}
	s := c.Stats()
	if h := s.Hosts[hostOf(m.mirror)]; h.Bytes != 0 || h.Requests != 1 {
		t.Errorf("mirror host stats %+v, want 1 request and no body bytes read", h)
	}
	if s.Bytes != int64(len(p)+len(all)) || s.Fallbacks != 1 {
		t.Errorf("Stats = %+v", s)
	}
}

// TestMirrorTruncates: a mirror that breaks off part way gives what it
// sent; the origin gives the rest, for ReadAt and for Open.
func TestMirrorTruncates(t *testing.T) {
	t.Parallel()
	m := newMirrored(t, faultAll(truncateFault), "")
	c, b := m.blob(t)
	p := make([]byte, 100000)
	if _, err := b.ReadAt(context.Background(), p, 1000); err != nil {
		t.Fatal(err)
	}
	m.check(t, p, 1000)
	if s := c.Stats(); s.Fallbacks != 1 || s.Retries != 0 || s.Hosts[hostOf(m.mirror)].Bytes != 50000 || s.Hosts[hostOf(m.origin)].Bytes != 50000 {
		t.Errorf("Stats = %+v, want half from each", s)
	}
}

// TestMirrorCapabilities: hosts without "pull" serve no blobs; a server
// line replaces the origin.
func TestMirrorCapabilities(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer})
	resolver := newEnv(t, envConfig{layer: &layer})
	server := newEnv(t, envConfig{layer: &layer})
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf(`
server = "http://%s"

[host."http://%s"]
  capabilities = ["resolve"]
`, hostOf(server), hostOf(resolver)))
	c := origin.client(t, WithHostsDir(dir))
	b := origin.remoteBlob(t, c)
	p := make([]byte, 1000)
	if _, err := b.ReadAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, layer.blob[:1000]) {
		t.Fatal("bytes differ")
	}
	if o, r, s := origin.blobGets.Load(), resolver.blobGets.Load(), server.blobGets.Load(); o != 0 || r != 0 || s != 1 {
		t.Errorf("blob GETs: origin %d, resolve-only host %d, server %d; want 0, 0, 1", o, r, s)
	}
}

// TestMirrorWithOriginDown: with a mirror configured, neither Blob nor
// reads need the origin.
func TestMirrorWithOriginDown(t *testing.T) {
	t.Parallel()
	m := newMirrored(t, nil, "")
	m.origin.srv.Close()
	c, b := m.blob(t)
	p := make([]byte, 1000)
	if _, err := b.ReadAt(context.Background(), p, 500); err != nil {
		t.Fatal(err)
	}
	m.check(t, p, 500)
	if s := c.Stats(); s.Fallbacks != 0 || s.Errors != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

// TestMirrorCredentials: the registry's credentials never reach a mirror
// that does not ask for any; a mirror that asks gets its own from the
// keychain, through its own handshake.
func TestMirrorCredentials(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	originCreds := &authn.Basic{Username: "origin", Password: "secret"}
	mirrorCreds := &authn.Basic{Username: "mirror", Password: "other"}
	origin := newEnv(t, envConfig{layer: &layer, auth: originCreds})
	openRec, authRec := &recorder{}, &recorder{}
	open := newEnv(t, envConfig{layer: &layer, mw: recordBlobGets(openRec)})
	guarded := newEnv(t, envConfig{layer: &layer, auth: mirrorCreds, mw: recordBlobGets(authRec)})

	for _, tt := range []struct {
		name   string
		mirror *testEnv
		rec    *recorder
		opts   []Option
		want   string // Authorization the mirror sees on blob GETs
	}{
		{"open mirror, one authenticator", open, openRec, []Option{WithAuth(originCreds)}, ""},
		{"open mirror, keychain", open, openRec, []Option{WithKeychain(hostKeychain{hostOf(origin): originCreds})}, ""},
		{
			"mirror with its own credentials", guarded, authRec,
			[]Option{WithKeychain(hostKeychain{hostOf(origin): originCreds, hostOf(guarded): mirrorCreds})},
			"Basic bWlycm9yOm90aGVy",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.\"http://%s\"]\n", hostOf(tt.mirror)))
			c := origin.client(t, append([]Option{WithHostsDir(dir)}, tt.opts...)...)
			b := origin.remoteBlob(t, c)
			before := len(tt.rec.headers())
			if _, err := b.ReadAt(context.Background(), make([]byte, 100), 0); err != nil {
				t.Fatal(err)
			}
			hs := tt.rec.headers()[before:]
			if len(hs) != 1 {
				t.Fatalf("mirror saw %d blob GETs, want 1", len(hs))
			}
			if got := hs[0].Get("Authorization"); got != tt.want {
				t.Errorf("mirror saw Authorization %q, want %q", got, tt.want)
			}
			if n := origin.blobGets.Load(); n != 0 {
				t.Errorf("origin saw %d blob GETs", n)
			}
		})
	}
}

// hostKeychain gives credentials by registry host.
type hostKeychain map[string]authn.Authenticator

func (k hostKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if a, ok := k[r.RegistryStr()]; ok {
		return a, nil
	}
	return authn.Anonymous, nil
}

// TestMirrorOpenResumes: a stream from a mirror that breaks resumes at the
// origin with a range for the rest.
func TestMirrorOpenResumes(t *testing.T) {
	t.Parallel()
	m := newMirrored(t, faultAll(truncateFault), "")
	c, b := m.blob(t)
	rc, err := b.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(all, m.origin.blob) {
		t.Fatalf("Open: %d bytes, %v", len(all), err)
	}
	if s := c.Stats(); s.Fallbacks != 1 || m.origin.blobGets.Load() != 1 {
		t.Errorf("Stats = %+v, origin saw %d blob GETs", s, m.origin.blobGets.Load())
	}
}

// TestOriginFailsAfterMirror: when both fail, the error is the origin's.
func TestOriginFailsAfterMirror(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer, mw: faultAll(statusFault(http.StatusNotFound))})
	mirror := newEnv(t, envConfig{layer: &layer, mw: faultAll(statusFault(http.StatusBadGateway))})
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.\"http://%s\"]\n", hostOf(mirror)))
	c := origin.client(t, WithHostsDir(dir))
	b := origin.remoteBlob(t, c)
	_, err := b.ReadAt(context.Background(), make([]byte, 10), 0)
	var fe *Error
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &fe) || fe.Status != http.StatusNotFound {
		t.Fatalf("err = %v, want the origin's 404", err)
	}
	if !strings.Contains(err.Error(), "404") {
		t.Errorf("message %q", err)
	}
}

// authLog records the Authorization header of every request a server
// sees, with its path.
type authLog struct {
	mu      sync.Mutex
	entries []string // "PATH AUTHORIZATION"; protected by mu
}

func (l *authLog) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.entries = append(l.entries, r.URL.Path+" "+r.Header.Get("Authorization"))
		l.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

// saw reports whether any request carried Authorization auth.
func (l *authLog) saw(auth string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		if strings.HasSuffix(e, " "+auth) {
			return true
		}
	}
	return false
}

// sawAny reports whether any request carried an Authorization header.
func (l *authLog) sawAny() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		if !strings.HasSuffix(e, " ") {
			return true
		}
	}
	return false
}

func (l *authLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = nil
}

func (l *authLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.entries, "; ")
}

// basicHeader is the Authorization value for b.
func basicHeader(b *authn.Basic) string {
	r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	r.SetBasicAuth(b.Username, b.Password)
	return r.Header.Get("Authorization")
}

// TestForeignEndpointCredentials: WithAuth is for the registry's own host.
// A mirror on another host that asks for credentials (Basic, or a bearer
// token service) never gets them: it gets the keychain's credentials for
// its own host, or none. A plain-http mirror on a host that is not
// loopback gets none even from the keychain.
func TestForeignEndpointCredentials(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	originCreds := &authn.Basic{Username: "origin", Password: "secret"}
	mirrorCreds := &authn.Basic{Username: "mirror", Password: "other"}
	origin := newEnv(t, envConfig{layer: &layer, auth: originCreds})

	basicLog := &authLog{}
	basicMirror := newEnv(t, envConfig{layer: &layer, auth: mirrorCreds, front: basicLog.middleware})
	tokenLog := &authLog{}
	tokenMirror := newEnv(t, envConfig{layer: &layer, mw: newTokenServer(time.Hour).middleware, front: tokenLog.middleware})

	// A name for the Basic mirror that is not loopback: only this dialer
	// knows where it is.
	const fakeMirror = "mirror.lazyroot.test"
	_, port, _ := net.SplitHostPort(hostOf(basicMirror))
	fakeHost := fakeMirror + ":" + port
	dialer := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if h, _, _ := net.SplitHostPort(addr); h == fakeMirror {
				addr = hostOf(basicMirror)
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(dialer.CloseIdleConnections)

	for _, tt := range []struct {
		name       string
		mirror     string // host[:port] in hosts.toml, as http://
		log        *authLog
		opts       []Option
		fromMirror bool
		want       string // Authorization the mirror must see on its blob GET; "" for none
	}{
		{name: "basic mirror, auth only", mirror: hostOf(basicMirror), log: basicLog, opts: []Option{WithAuth(originCreds)}},
		{
			name: "basic mirror, auth and keychain for the mirror", mirror: hostOf(basicMirror), log: basicLog,
			opts:       []Option{WithAuth(originCreds), WithKeychain(hostKeychain{hostOf(basicMirror): mirrorCreds})},
			fromMirror: true, want: basicHeader(mirrorCreds),
		},
		{
			// The keychain has nothing for the origin: WithAuth serves it.
			name: "basic mirror, auth and keychain without the mirror", mirror: hostOf(basicMirror), log: basicLog,
			opts: []Option{WithAuth(originCreds), WithKeychain(hostKeychain{})},
		},
		{name: "token mirror, auth only", mirror: hostOf(tokenMirror), log: tokenLog, opts: []Option{WithAuth(originCreds)}, fromMirror: true},
		{
			name: "plain http, not loopback", mirror: fakeHost, log: basicLog,
			opts: []Option{WithAuth(originCreds), WithKeychain(hostKeychain{fakeHost: mirrorCreds}), WithTransport(dialer)},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.log.reset()
			dir := t.TempDir()
			writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.\"http://%s\"]\n", tt.mirror))
			c := origin.client(t, append([]Option{WithHostsDir(dir)}, tt.opts...)...)
			b := origin.remoteBlob(t, c)
			p := make([]byte, 1000)
			if _, err := b.ReadAt(context.Background(), p, 100); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, layer.blob[100:1100]) {
				t.Fatal("bytes differ from the layer")
			}
			t.Logf("mirror saw: %s", tt.log)
			if tt.log.saw(basicHeader(originCreds)) {
				t.Errorf("the mirror saw the origin's credentials")
			}
			s := c.Stats()
			if got := s.Hosts[tt.mirror].Bytes == int64(len(p)); got != tt.fromMirror {
				t.Errorf("Stats = %+v, want from the mirror: %v", s, tt.fromMirror)
			}
			switch {
			case tt.want != "" && !tt.log.saw(tt.want):
				t.Errorf("the mirror never saw Authorization %q", tt.want)
			case tt.want == "" && tt.log != tokenLog && tt.log.sawAny():
				t.Errorf("the mirror saw credentials")
			}
		})
	}
}

// TestNoCredentialsToPlainHTTPRealm: a loopback plain-http mirror that
// sends its token requests to a plain-http token service elsewhere does
// not get the keychain's credentials sent there.
func TestNoCredentialsToPlainHTTPRealm(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	mirrorCreds := &authn.Basic{Username: "mirror", Password: "other"}
	origin := newEnv(t, envConfig{layer: &layer})
	tokens := &authLog{}
	tokenSrv := newServer(t, tokens.middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"token": "tok", "expires_in": 3600}`)
	})))
	const fakeRealm = "token.lazyroot.test"
	_, port, _ := net.SplitHostPort(tokenSrv.Listener.Addr().String())
	var armed atomic.Bool
	bearer := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && r.Header.Get("Authorization") != "Bearer tok" {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s:%s/token",service="test"`, fakeRealm, port))
				http.Error(w, "token required", http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	mirror := newEnv(t, envConfig{layer: &layer, mw: bearer})
	armed.Store(true)
	dialer := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if h, _, _ := net.SplitHostPort(addr); h == fakeRealm {
				addr = tokenSrv.Listener.Addr().String()
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(dialer.CloseIdleConnections)
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.\"http://%s\"]\n", hostOf(mirror)))
	c := origin.client(t, WithHostsDir(dir), WithTransport(dialer), WithKeychain(hostKeychain{hostOf(mirror): mirrorCreds}))
	b := origin.remoteBlob(t, c)
	p := make([]byte, 1000)
	if _, err := b.ReadAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, layer.blob[:1000]) {
		t.Fatal("bytes differ from the layer")
	}
	t.Logf("token service saw: %s", tokens)
	if tokens.sawAny() {
		t.Error("the token service got credentials over plain HTTP")
	}
}
