package fetch

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// writeClientCert writes a self-signed client certificate and its key to
// dir/client.crt and dir/client.key.
func writeClientCert(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "lazyroot test client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "client.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "client.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsStorage is HTTPS blob storage (with httptest's certificate, the same
// every httptest server has) that asks for client certificates.
type tlsStorage struct {
	srv         *httptest.Server
	reqs        atomic.Int64 // requests that got through TLS
	clientCerts atomic.Int64 // of which presented a client certificate
}

func newTLSStorage(t *testing.T, blob []byte) *tlsStorage {
	t.Helper()
	s := &tlsStorage{}
	s.srv = httptest.NewUnstartedServer(guardHead(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.reqs.Add(1)
		if len(r.TLS.PeerCertificates) > 0 {
			s.clientCerts.Add(1)
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	})))
	s.srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

// redirectTo sends blob GETs to base + path.
func redirectTo(base string) middleware {
	return faultAll(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		http.Redirect(w, r, base+"/storage"+r.URL.Path+"?sig=x", http.StatusTemporaryRedirect)
	})
}

// TestStorageGetsNoEndpointTLS: a mirror's skip_verify and client
// certificate are for the mirror; the storage host it redirects to is
// reached with the base transport.
func TestStorageGetsNoEndpointTLS(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer})
	storage := newTLSStorage(t, layer.blob)
	var mirrorClientCerts atomic.Int64
	sawCert := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && len(r.TLS.PeerCertificates) > 0 {
				mirrorClientCerts.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	}
	mirror := newEnv(t, envConfig{
		layer: &layer, tls: true, tlsConfig: &tls.Config{ClientAuth: tls.RequestClientCert},
		mw: redirectTo(storage.srv.URL), front: sawCert,
	})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mirror.srv.Certificate().Raw})
	trusting := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}
	trusting.TLSClientConfig.RootCAs.AppendCertsFromPEM(certPEM)
	t.Cleanup(trusting.CloseIdleConnections)

	for _, tt := range []struct {
		name        string
		settings    string
		opts        []Option
		fromStorage bool // else the mirror fails and the origin serves
	}{
		// The base transport does not trust storage: skip_verify must
		// not reach it.
		{name: "skip_verify", settings: "skip_verify = true"},
		// The base transport trusts storage; the client certificate is
		// for the mirror only.
		{
			name: "client certificate", settings: "ca = \"mirror.crt\"\n  client = [[\"client.crt\", \"client.key\"]]",
			opts: []Option{WithTransport(trusting)}, fromStorage: true,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reqs, certs, mcerts := storage.reqs.Load(), storage.clientCerts.Load(), mirrorClientCerts.Load()
			dir := t.TempDir()
			writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.%q]\n  %s\n", mirror.srv.URL, tt.settings))
			hostDir := filepath.Join(dir, hostOf(origin))
			if err := os.WriteFile(filepath.Join(hostDir, "mirror.crt"), certPEM, 0o644); err != nil {
				t.Fatal(err)
			}
			writeClientCert(t, hostDir)
			c := origin.client(t, append([]Option{WithHostsDir(dir), WithRetries(0)}, tt.opts...)...)
			b := origin.remoteBlob(t, c)
			p := make([]byte, 1000)
			if _, err := b.ReadAt(context.Background(), p, 10); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, layer.blob[10:1010]) {
				t.Fatal("bytes differ")
			}
			s := c.Stats()
			storageHost := storage.srv.Listener.Addr().String()
			if got := s.Hosts[storageHost].Bytes == int64(len(p)); got != tt.fromStorage {
				t.Errorf("Stats = %+v, want from storage: %v", s, tt.fromStorage)
			}
			if !tt.fromStorage && storage.reqs.Load() != reqs {
				t.Errorf("storage answered %d requests: the mirror's skip_verify reached it", storage.reqs.Load()-reqs)
			}
			if n := storage.clientCerts.Load() - certs; n != 0 {
				t.Errorf("storage saw the mirror's client certificate on %d requests", n)
			}
			if tt.fromStorage && mirrorClientCerts.Load() == mcerts {
				t.Error("the mirror never saw its client certificate")
			}
		})
	}
}

// roundTripperFunc is a RoundTripper that is not an *http.Transport.
type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestOpaqueTransportNotBypassed: a base transport that is not an
// *http.Transport cannot take an endpoint's TLS settings; rather than
// going around it, Blob says so.
func TestOpaqueTransportNotBypassed(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer})
	mirror := newEnv(t, envConfig{layer: &layer, tls: true})
	inner := &http.Transport{}
	t.Cleanup(inner.CloseIdleConnections)
	var seen atomic.Int64
	opaque := roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		seen.Add(1)
		return inner.RoundTrip(r)
	})
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.%q]\n  skip_verify = true\n", mirror.srv.URL))
	c := origin.client(t, WithHostsDir(dir), WithTransport(opaque))
	b, err := c.Blob(context.Background(), origin.repo, origin.desc)
	if err == nil {
		_, err = b.ReadAt(context.Background(), make([]byte, 10), 0)
		t.Fatalf("Blob and ReadAt worked (ReadAt: %v); the mirror's requests bypassed the transport: %d requests through it, mirror saw %d blob GETs",
			err, seen.Load(), mirror.blobGets.Load())
	}
	t.Logf("Blob: %v", err)
	if !strings.Contains(err.Error(), "WithTransportWrapper") {
		t.Errorf("err = %v, want one that points to WithTransportWrapper", err)
	}
}

// hostRecorder is a transport wrapper that records the host of every
// request and refuses those to the hosts in deny, like a guard would.
type hostRecorder struct {
	deny  map[string]bool
	mu    sync.Mutex
	hosts map[string]int // requests by host; protected by mu
	wraps atomic.Int64   // transports wrapped
}

func (h *hostRecorder) wrap(next http.RoundTripper) http.RoundTripper {
	h.wraps.Add(1)
	return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		h.mu.Lock()
		if h.hosts == nil {
			h.hosts = map[string]int{}
		}
		h.hosts[r.URL.Host]++
		h.mu.Unlock()
		if h.deny[r.URL.Host] {
			return nil, fmt.Errorf("guard: %s is not allowed", r.URL.Host)
		}
		return next.RoundTrip(r)
	})
}

func (h *hostRecorder) count(host string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hosts[host]
}

// TestTransportWrapper: the wrapper sees every request, to the registry,
// to a mirror with TLS settings of its own and to the storage host the
// mirror redirects to; what it refuses is not sent.
func TestTransportWrapper(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer})
	var storageReqs atomic.Int64
	storage := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageReqs.Add(1)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(layer.blob))
	}))
	mirror := newEnv(t, envConfig{layer: &layer, tls: true, mw: redirectTo(storage.URL)})
	mirrorHost, storageHost := hostOf(mirror), storage.Listener.Addr().String()
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.%q]\n  skip_verify = true\n", mirror.srv.URL))

	for _, tt := range []struct {
		name     string
		deny     string
		fromHost string // where the bytes come from
	}{
		{"all allowed", "", storageHost},
		{"mirror refused", mirrorHost, hostOf(origin)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := &hostRecorder{deny: map[string]bool{tt.deny: true}}
			mirrorGets, storageBefore := mirror.blobGets.Load(), storageReqs.Load()
			c := origin.client(t, WithHostsDir(dir), WithTransportWrapper(rec.wrap))
			b := origin.remoteBlob(t, c)
			p := make([]byte, 1000)
			if _, err := b.ReadAt(context.Background(), p, 10); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, layer.blob[10:1010]) {
				t.Fatal("bytes differ")
			}
			if s := c.Stats(); s.Hosts[tt.fromHost].Bytes != int64(len(p)) {
				t.Errorf("Stats = %+v, want the bytes from %s", s, tt.fromHost)
			}
			if n := rec.wraps.Load(); n != 2 {
				t.Errorf("%d transports wrapped, want 2 (the base and the mirror's)", n)
			}
			if rec.count(mirrorHost) < 1 {
				t.Error("the wrapper saw no request to the mirror")
			}
			if tt.deny == "" && rec.count(storageHost) != 1 {
				t.Errorf("the wrapper saw %d requests to storage, want 1", rec.count(storageHost))
			}
			if tt.deny != "" {
				if n := mirror.blobGets.Load() - mirrorGets; n != 0 {
					t.Errorf("the refused mirror got %d blob GETs", n)
				}
				if n := storageReqs.Load() - storageBefore; n != 0 {
					t.Errorf("storage got %d requests", n)
				}
				if rec.count(hostOf(origin)) < 1 {
					t.Error("the wrapper saw no request to the origin")
				}
			}
		})
	}
}
