package fetch

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fakeRegistryHost has no address in DNS: only the test proxy knows where
// it is, so a read from it succeeds only through the proxy.
const fakeRegistryHost = "registry.lazyroot.test"

// forwardProxy is a plain-HTTP forward proxy that knows where
// fakeRegistryHost is.
type forwardProxy struct {
	real      string // host:port the fake host stands for
	requests  atomic.Int64
	blobGets  atomic.Int64
	transport *http.Transport
}

func (p *forwardProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect || !r.URL.IsAbs() {
		http.Error(w, "this proxy forwards http:// URLs only", http.StatusMethodNotAllowed)
		return
	}
	p.requests.Add(1)
	if isBlobGet(r) {
		p.blobGets.Add(1)
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	if h, port, _ := net.SplitHostPort(out.URL.Host); h == fakeRegistryHost {
		_, realPort, _ := net.SplitHostPort(p.real)
		if port != realPort {
			http.Error(w, "unknown port", http.StatusBadGateway)
			return
		}
		out.URL.Host = p.real
	}
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// nonLoopbackIPv4 returns an address of this machine that Go's proxy rules
// do not treat as local, or "".
func nonLoopbackIPv4() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}

// TestProxyFromEnvironment runs reads in child processes (net/http reads
// the proxy environment once per process) with a default Client and
// HTTP_PROXY pointing at a test proxy.
func TestProxyFromEnvironment(t *testing.T) {
	if os.Getenv("LAZYROOT_FETCH_PROXY_CHILD") != "" {
		proxyChild(t)
		return
	}
	if testing.Short() {
		t.Skip("starts child processes")
	}
	t.Parallel()
	ip := nonLoopbackIPv4()
	listen := ""
	if ip != "" {
		listen = ip + ":0"
	}
	env := newEnv(t, envConfig{listen: listen})
	proxy := &forwardProxy{real: hostOf(env), transport: &http.Transport{}}
	t.Cleanup(proxy.transport.CloseIdleConnections)
	psrv := newServer(t, proxy)
	_, port, _ := net.SplitHostPort(hostOf(env))

	type proxyCase struct {
		name        string
		host        string // registry host the child reads from
		noProxy     string
		wantProxied bool
	}
	tests := []proxyCase{{"through the proxy", fakeRegistryHost + ":" + port, "", true}}
	if ip != "" {
		tests = append(tests,
			proxyCase{"address through the proxy", hostOf(env), "", true},
			proxyCase{"NO_PROXY", hostOf(env), "localhost," + ip, false},
		)
	} else {
		t.Log("no non-loopback address: NO_PROXY not tested")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, beforeBlobs := proxy.requests.Load(), proxy.blobGets.Load()
			cmd := exec.Command(os.Args[0], "-test.run=^TestProxyFromEnvironment$", "-test.count=1")
			cmd.Env = append(withoutProxyEnv(os.Environ()),
				"LAZYROOT_FETCH_PROXY_CHILD=1",
				"HTTP_PROXY="+psrv.URL,
				"NO_PROXY="+tt.noProxy,
				"LAZYROOT_TEST_REPO="+tt.host+"/lazyroot/test",
				"LAZYROOT_TEST_DIGEST="+env.desc.Digest.String(),
				"LAZYROOT_TEST_SIZE="+strconv.FormatInt(env.desc.Size, 10),
				"LAZYROOT_TEST_WANT="+hex.EncodeToString(env.blob[1000:2000]),
			)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			proxied, proxiedBlobs := proxy.requests.Load()-before, proxy.blobGets.Load()-beforeBlobs
			t.Logf("proxy forwarded %d requests, %d blob GETs", proxied, proxiedBlobs)
			if tt.wantProxied && proxiedBlobs != 1 {
				t.Errorf("proxy forwarded %d blob GETs, want 1", proxiedBlobs)
			}
			if !tt.wantProxied && proxied != 0 {
				t.Errorf("proxy forwarded %d requests, want none", proxied)
			}
		})
	}
}

func withoutProxyEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(k) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// proxyChild reads 1000 bytes with a default Client.
func proxyChild(t *testing.T) {
	repo, err := name.NewRepository(os.Getenv("LAZYROOT_TEST_REPO"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	d, err := v1.NewHash(os.Getenv("LAZYROOT_TEST_DIGEST"))
	if err != nil {
		t.Fatal(err)
	}
	size, _ := strconv.ParseInt(os.Getenv("LAZYROOT_TEST_SIZE"), 10, 64)
	want, _ := hex.DecodeString(os.Getenv("LAZYROOT_TEST_WANT"))
	c, err := New(WithHostsDir(""), WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := c.Blob(ctx, repo, v1.Descriptor{Digest: d, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, len(want))
	if _, err := b.ReadAt(ctx, p, 1000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, want) {
		t.Fatal(fmt.Errorf("bytes differ"))
	}
}

// TestCustomTransport: a transport given with WithTransport carries every
// request, and endpoints with TLS settings of their own use a clone of it
// (here: its dialer, which alone knows where the fake hosts are).
func TestCustomTransport(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer})
	mirror := newEnv(t, envConfig{layer: &layer, tls: true})
	addrs := map[string]string{"origin.lazyroot.test": hostOf(origin), "mirror.lazyroot.test": hostOf(mirror)}
	var dials atomic.Int64
	custom := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			h, _, _ := net.SplitHostPort(addr)
			real, ok := addrs[h]
			if !ok {
				return nil, fmt.Errorf("test dialer: unknown host %s", addr)
			}
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, real)
		},
	}
	t.Cleanup(custom.CloseIdleConnections)
	_, mport, _ := net.SplitHostPort(hostOf(mirror))
	_, oport, _ := net.SplitHostPort(hostOf(origin))
	dir := t.TempDir()
	originHost := "origin.lazyroot.test:" + oport
	writeHosts(t, dir, originHost, fmt.Sprintf("[host.\"https://mirror.lazyroot.test:%s\"]\n  skip_verify = true\n", mport))
	repo, err := name.NewRepository(originHost+"/lazyroot/test", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		hostsDir   string
		fromMirror bool
	}{{"origin", "", false}, {"mirror with skip_verify", dir, true}} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(WithTransport(custom), WithHostsDir(tt.hostsDir), WithRetries(0))
			if err != nil {
				t.Fatal(err)
			}
			b, err := c.Blob(context.Background(), repo, layer.desc)
			if err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 1000)
			if _, err := b.ReadAt(context.Background(), p, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, layer.blob[:1000]) {
				t.Fatal("bytes differ")
			}
			s := c.Stats()
			if got := s.Hosts["mirror.lazyroot.test:"+mport].Bytes == 1000; got != tt.fromMirror || s.Fallbacks != 0 {
				t.Errorf("Stats = %+v, want from mirror: %v", s, tt.fromMirror)
			}
		})
	}
	if dials.Load() == 0 {
		t.Error("the custom dialer was never used")
	}
}
