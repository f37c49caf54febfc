package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// docEnv is an origin and a mirror holding the same image, counting the
// manifest and config GETs each gets, with a hosts directory that names
// the mirror.
type docEnv struct {
	origin, mirror *testEnv
	originGets     atomic.Int64 // manifest and config GETs
	mirrorGets     atomic.Int64
	dir            string
	manifest       []byte // the image's manifest as pushed
	digest         v1.Hash
	mediaType      types.MediaType
	config         v1.Descriptor
}

// docConfig says how to build a docEnv.
type docConfig struct {
	mirrorFault, originFault fault  // on manifest and config GETs; nil for none
	caps                     string // the mirror's capabilities line; "" for all
	mirrorAddr               string // the mirror's address in hosts.toml; "" for the mirror's own
}

func newDocEnv(t *testing.T, cfg docConfig) *docEnv {
	t.Helper()
	layer := newTestLayer(t, 16<<10)
	env := &docEnv{dir: t.TempDir()}
	var err error
	if env.manifest, err = layer.img.RawManifest(); err != nil {
		t.Fatal(err)
	}
	if env.digest, err = layer.img.Digest(); err != nil {
		t.Fatal(err)
	}
	m, err := layer.img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	env.config, env.mediaType = m.Config, m.MediaType
	env.origin = newEnv(t, envConfig{layer: &layer, mw: env.docGets(&env.originGets, cfg.originFault)})
	env.mirror = newEnv(t, envConfig{layer: &layer, mw: env.docGets(&env.mirrorGets, cfg.mirrorFault)})
	env.originGets.Store(0)
	env.mirrorGets.Store(0)
	addr := cfg.mirrorAddr
	if addr == "" {
		addr = hostOf(env.mirror)
	}
	writeHosts(t, env.dir, hostOf(env.origin), fmt.Sprintf("[host.\"http://%s\"]\n%s\n", addr, cfg.caps))
	return env
}

// docGets counts the GETs of manifests and of the config into n and
// applies f to them.
func (env *docEnv) docGets(n *atomic.Int64, f fault) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/manifests/") && !strings.HasSuffix(r.URL.Path, env.config.Digest.String()) {
				next.ServeHTTP(w, r)
				return
			}
			n.Add(1)
			if f != nil {
				f(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func (env *docEnv) client(t *testing.T, opts ...Option) *Client {
	t.Helper()
	return env.origin.client(t, append([]Option{WithHostsDir(env.dir)}, opts...)...)
}

// otherBytes answers 200 with a well-formed manifest that is not the one
// asked for.
func otherBytes(w http.ResponseWriter, r *http.Request, next http.Handler) {
	w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
	fmt.Fprint(w, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`)
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

var manifestAccept = []string{string(types.OCIManifestSchema1), string(types.DockerManifestSchema2)}

// TestManifestEndpoints: tags go to the endpoints that may resolve, digests
// to those that may pull, mirrors first; a mirror that fails or serves
// other bytes than the digest names passes the request on to the origin.
func TestManifestEndpoints(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		cfg    docConfig
		byTag  bool
		mirror bool  // the mirror serves
		asked  int64 // manifest GETs at the mirror; -1 for one or more
	}{
		{name: "tag from the mirror", byTag: true, mirror: true, asked: 1},
		{name: "digest from the mirror", mirror: true, asked: 1},
		{name: "mirror 503", cfg: docConfig{mirrorFault: statusFault(http.StatusServiceUnavailable)}, byTag: true, asked: 1},
		{name: "mirror 500", cfg: docConfig{mirrorFault: statusFault(http.StatusInternalServerError)}, asked: 1},
		{name: "mirror 404", cfg: docConfig{mirrorFault: statusFault(http.StatusNotFound)}, byTag: true, asked: 1},
		{
			name:  "mirror 401 without credentials",
			cfg:   docConfig{mirrorFault: statusFault(http.StatusUnauthorized, "WWW-Authenticate", `Basic realm="mirror"`)},
			byTag: true, asked: 2, // asked again after a new handshake
		},
		// net/http sends a GET again once when a reused connection breaks.
		{name: "mirror connection reset", cfg: docConfig{mirrorFault: resetFault}, byTag: true, asked: -1},
		{name: "mirror serves other bytes for the digest", cfg: docConfig{mirrorFault: otherBytes}, asked: 1},
		{name: "pull-only mirror, tag", cfg: docConfig{caps: `capabilities = ["pull"]`}, byTag: true, asked: 0},
		{name: "pull-only mirror, digest", cfg: docConfig{caps: `capabilities = ["pull"]`}, mirror: true, asked: 1},
		{name: "resolve-only mirror, tag", cfg: docConfig{caps: `capabilities = ["resolve"]`}, byTag: true, mirror: true, asked: 1},
		{name: "resolve-only mirror, digest", cfg: docConfig{caps: `capabilities = ["resolve"]`}, asked: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newDocEnv(t, tt.cfg)
			c := env.client(t)
			ref := env.digest.String()
			if tt.byTag {
				ref = "latest"
			}
			m, err := c.Manifest(context.Background(), env.origin.repo, ref, manifestAccept)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(m.Bytes, env.manifest) || m.Digest != env.digest || m.MediaType != env.mediaType {
				t.Errorf("got %d bytes, digest %s, media type %q; want the image's manifest %s", len(m.Bytes), m.Digest, m.MediaType, env.digest)
			}
			wantHost, originAsked := hostOf(env.origin), int64(1)
			if tt.mirror {
				wantHost, originAsked = hostOf(env.mirror), 0
			}
			if m.Host != wantHost {
				t.Errorf("served by %s, want %s", m.Host, wantHost)
			}
			o, mi := env.originGets.Load(), env.mirrorGets.Load()
			if tt.asked < 0 && mi > 0 {
				tt.asked = mi
			}
			if o != originAsked || mi != tt.asked {
				t.Errorf("manifest GETs: origin %d, mirror %d; want %d and %d", o, mi, originAsked, tt.asked)
			}
			if s := c.Stats(); s.Requests != 0 || s.Retries != 0 {
				t.Errorf("Stats = %+v, want no blob requests counted", s)
			}
		})
	}
}

// TestManifestMirrorUnreachable: a mirror on a closed port passes the
// request on to the origin.
func TestManifestMirrorUnreachable(t *testing.T) {
	t.Parallel()
	env := newDocEnv(t, docConfig{mirrorAddr: closedAddr(t)})
	m, err := env.client(t).Manifest(context.Background(), env.origin.repo, "latest", manifestAccept)
	if err != nil {
		t.Fatal(err)
	}
	if m.Host != hostOf(env.origin) || !bytes.Equal(m.Bytes, env.manifest) || env.originGets.Load() != 1 {
		t.Errorf("served by %s (%d bytes), origin GETs %d; want the origin's manifest", m.Host, len(m.Bytes), env.originGets.Load())
	}
}

// TestBlobBytes: the config comes from the mirror when it serves the right
// bytes, else from the origin; other bytes are never returned.
func TestBlobBytes(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		fault  fault
		mirror bool
	}{
		{"mirror serves", nil, true},
		{"mirror serves other bytes", otherBytes, false},
		{"mirror 502", statusFault(http.StatusBadGateway), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := newDocEnv(t, docConfig{mirrorFault: tt.fault})
			p, err := env.client(t).BlobBytes(context.Background(), env.origin.repo, env.config)
			if err != nil {
				t.Fatal(err)
			}
			if h := sha256Of(p); h != env.config.Digest {
				t.Fatalf("got bytes of digest %s, want %s", h, env.config.Digest)
			}
			o, m := env.originGets.Load(), env.mirrorGets.Load()
			if want := map[bool]int64{true: 0, false: 1}[tt.mirror]; m != 1 || o != want {
				t.Errorf("config GETs: origin %d, mirror %d; want %d and 1", o, m, want)
			}
		})
	}
}

// TestManifestAllFail: when every endpoint fails, the error names the
// reference and each endpoint's failure, and matches the origin's.
func TestManifestAllFail(t *testing.T) {
	t.Parallel()
	env := newDocEnv(t, docConfig{
		mirrorFault: statusFault(http.StatusBadGateway),
		originFault: statusFault(http.StatusNotFound),
	})
	_, err := env.client(t).Manifest(context.Background(), env.origin.repo, "latest", manifestAccept)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	for _, want := range []string{env.origin.repo.Name() + ":latest", hostOf(env.mirror) + ": 502", hostOf(env.origin) + ": 404"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %q", msg, want)
		}
	}
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("error %q is not ErrNotFound", msg)
	}
	if strings.Contains(msg, "blob") {
		t.Errorf("error %q speaks of a blob", msg)
	}
}

// TestManifestTooLarge: a manifest over MaxManifestSize is refused, not
// read whole.
func TestManifestTooLarge(t *testing.T) {
	t.Parallel()
	huge := func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
		chunk := bytes.Repeat([]byte(" "), 64<<10)
		for range (MaxManifestSize / len(chunk)) + 2 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
	env := newDocEnv(t, docConfig{mirrorFault: huge})
	m, err := env.client(t).Manifest(context.Background(), env.origin.repo, "latest", manifestAccept)
	if err != nil {
		t.Fatal(err)
	}
	if m.Host != hostOf(env.origin) {
		t.Errorf("served by %s, want the origin", m.Host)
	}
}

func sha256Of(p []byte) v1.Hash {
	h, _, _ := v1.SHA256(bytes.NewReader(p))
	return h
}

func TestReferrers(t *testing.T) {
	apiIndex := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("1", 64) + `","size":1}]}`)
	tagIndex := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("2", 64) + `","size":2}]}`)
	type answer struct {
		status int
		ctype  string
		body   []byte
	}
	index, notFound := string(types.OCIImageIndex), answer{http.StatusNotFound, "text/plain", []byte("no")}
	for _, tc := range []struct {
		name     string
		api, tag answer
		want     []byte // nil: an error
		wantErr  error
	}{
		{"the API's index", answer{http.StatusOK, index, apiIndex}, answer{http.StatusOK, index, tagIndex}, apiIndex, nil},
		{"no API (404): the tag's", notFound, answer{http.StatusOK, index, tagIndex}, tagIndex, nil},
		{"no API (400): the tag's", answer{http.StatusBadRequest, "text/plain", nil}, answer{http.StatusOK, index, tagIndex}, tagIndex, nil},
		{"no API (406): the tag's", answer{http.StatusNotAcceptable, "text/plain", nil}, answer{http.StatusOK, index, tagIndex}, tagIndex, nil},
		{"a web page: the tag's", answer{http.StatusOK, "text/html", []byte("<html></html>")}, answer{http.StatusOK, index, tagIndex}, tagIndex, nil},
		{"no API, no tag: empty", notFound, notFound, emptyIndex, nil},
		{"API refused", answer{http.StatusForbidden, "text/plain", nil}, notFound, nil, ErrUnauthorized},
		{"tag not an index", notFound, answer{http.StatusOK, "application/json", []byte(`{"x":1}`)}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var apiAsked, tagAsked atomic.Int64
			serve := func(w http.ResponseWriter, r *http.Request, a answer) {
				w.Header().Set("Content-Type", a.ctype)
				w.WriteHeader(a.status)
				w.Write(a.body)
			}
			env := newEnv(t, envConfig{mw: func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					switch {
					case strings.Contains(r.URL.Path, "/referrers/"):
						apiAsked.Add(1)
						serve(w, r, tc.api)
					case strings.Contains(r.URL.Path, "/manifests/sha256-"):
						tagAsked.Add(1)
						serve(w, r, tc.tag)
					default:
						next.ServeHTTP(w, r)
						return
					}
					if got := r.Header.Get("Accept"); got != index {
						t.Errorf("%s: Accept %q", r.URL.Path, got)
					}
				})
			}})
			subject := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
			m, err := env.client(t).Referrers(context.Background(), env.repo, subject)
			if apiAsked.Load() != 1 || tagAsked.Load() > 1 {
				t.Errorf("asked the API %d times and the tag %d times, want once and at most once", apiAsked.Load(), tagAsked.Load())
			}
			if tc.want != nil {
				if err != nil || !bytes.Equal(m.Bytes, tc.want) || m.MediaType != types.OCIImageIndex {
					t.Fatalf("Referrers = %+v, %v; want %s", m, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Referrers = %s, want an error", m.Bytes)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), subject.String()) && !strings.Contains(err.Error(), subject.Hex) {
				t.Errorf("error %q does not name the subject", err)
			}
		})
	}
}
