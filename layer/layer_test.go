package layer_test

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

func entries(content string) []testutil.Entry {
	return []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir},
		{Name: "etc/which", Content: []byte(content)},
	}
}

func pushOne(t *testing.T, reg *testutil.Registry, repoTag, content string, f testutil.Format) (string, v1.Image) {
	t.Helper()
	l, ann := testutil.Layer(t, testutil.Tar(t, entries(content)), f)
	img := testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})
	return reg.Push(t, repoTag, img), img
}

func newCache(t testing.TB) *cache.Cache {
	t.Helper()
	c, err := cache.New(cache.Options{MemoryBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// openTree opens img in a stack over st and c, closed with the test, and
// merges its layers.
func openTree(t testing.TB, img *layer.Image, st *layer.Store, c *cache.Cache, opts layer.StackOptions) (*layer.Stack, *index.Tree) {
	t.Helper()
	stack, err := layer.Open(context.Background(), img, st, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close() })
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	return stack, tree
}

// readFile opens img in a stack over st and reads path from the merged tree.
func readFile(t *testing.T, img *layer.Image, st *layer.Store, path string) (string, *layer.Stack) {
	t.Helper()
	stack, tree := openTree(t, img, st, newCache(t), layer.StackOptions{})
	n, ok := tree.Lookup(path)
	if !ok {
		t.Fatalf("%s not in the tree", path)
	}
	buf := make([]byte, n.Size+10)
	got, err := stack.ReadAt(context.Background(), n, buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	return string(buf[:got]), stack
}

func TestResolvePlatformFromIndex(t *testing.T) {
	reg := testutil.NewRegistry(t)
	_, amd := pushOne(t, reg, "tmp:amd", "amd64", testutil.EStargz)
	_, arm := pushOne(t, reg, "tmp:arm", "arm64", testutil.Gzip)
	ref := reg.PushIndex(t, "multi:latest", map[string]v1.Image{"linux/amd64": amd, "linux/arm64": arm})
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		platform string
		want     string
	}{{"linux/amd64", "amd64"}, {"linux/arm64", "arm64"}} {
		p, _ := v1.ParsePlatform(tc.platform)
		img, err := layer.Resolve(context.Background(), ref, layer.WithPlatform(*p))
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := readFile(t, img, st, "etc/which"); got != tc.want {
			t.Errorf("%s: read %q, want %q", tc.platform, got, tc.want)
		}
	}
	p, _ := v1.ParsePlatform("linux/s390x")
	if _, err := layer.Resolve(context.Background(), ref, layer.WithPlatform(*p)); err == nil {
		t.Error("resolved a platform the index does not have")
	}
}

func TestResolveByDigestAndDockerMediaTypes(t *testing.T) {
	reg := testutil.NewRegistry(t)
	l, _ := testutil.Layer(t, testutil.Tar(t, entries("docker")), testutil.Gzip)
	img, err := mutate.Append(mutate.MediaType(testutil.Image(t, nil, nil), types.DockerManifestSchema2),
		mutate.Addendum{Layer: l, MediaType: types.DockerLayer})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	ref := reg.Push(t, "docker:v2", img)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	byDigest := strings.Split(ref, ":v2")[0] + "@" + d.String()
	st, _ := layer.NewStore(t.TempDir())
	im, err := layer.Resolve(context.Background(), byDigest)
	if err != nil {
		t.Fatal(err)
	}
	if im.Digest != d || im.Layers[0].Descriptor.MediaType != types.DockerLayer {
		t.Errorf("resolved %s with layer type %s", im.Digest, im.Layers[0].Descriptor.MediaType)
	}
	if got, _ := readFile(t, im, st, "etc/which"); got != "docker" {
		t.Errorf("read %q", got)
	}
}

func TestStoredIndexReusedAndDamagedOneRebuilt(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, _ := pushOne(t, reg, "app:v1", "streamed once", testutil.Gzip)
	root := t.TempDir()
	st, _ := layer.NewStore(root)
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	if got, stack := readFile(t, img, st, "etc/which"); got != "streamed once" || stack.Layers()[0].Origin != layer.Built {
		t.Fatalf("first open: %q from %s", got, stack.Layers()[0].Origin)
	}
	layerDigest := img.Layers[0].Descriptor.Digest.String()
	// Whole-blob GETs: a seek index is built by streaming the layer once;
	// file reads after that are ranged.
	countLayerGets := func() int {
		n := 0
		for _, r := range reg.Requests() {
			if r.Blob == layerDigest && r.Range == "" {
				n++
			}
		}
		return n
	}

	reg.Reset()
	if got, stack := readFile(t, img, st, "etc/which"); got != "streamed once" || stack.Layers()[0].Origin != layer.FromStore {
		t.Errorf("second open: %q from %s", got, stack.Layers()[0].Origin)
	}
	if n := countLayerGets(); n != 0 {
		t.Errorf("second open fetched the layer %d times", n)
	}

	// Damage every stored index: the next open must notice and rebuild.
	idx, _ := filepath.Glob(filepath.Join(root, "index", "*.idx"))
	if len(idx) != 1 {
		t.Fatalf("stored indexes: %v", idx)
	}
	b, _ := os.ReadFile(idx[0])
	b[len(b)/2] ^= 0xff
	os.WriteFile(idx[0], b, 0o600)
	reg.Reset()
	if got, stack := readFile(t, img, st, "etc/which"); got != "streamed once" || stack.Layers()[0].Origin != layer.Built {
		t.Errorf("open after damage: %q from %s", got, stack.Layers()[0].Origin)
	}
	if n := countLayerGets(); n != 1 {
		t.Errorf("rebuilding fetched the layer %d times, want 1", n)
	}
	if _, err := st.LoadIndex(img.Layers[0].Descriptor.Digest, layer.BuiltHere); err != nil {
		t.Errorf("rebuilt index not stored: %v", err)
	}
}

func TestStoreRefusesIndexOfAnotherLayer(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, _ := pushOne(t, reg, "app:v1", "a", testutil.Gzip)
	root := t.TempDir()
	st, _ := layer.NewStore(root)
	img, _ := layer.Resolve(context.Background(), ref)
	readFile(t, img, st, "etc/which")
	d := img.Layers[0].Descriptor.Digest
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	src := filepath.Join(root, "index", d.Algorithm+"-"+d.Hex+".idx")
	dst := filepath.Join(root, "index", other.Algorithm+"-"+other.Hex+".idx")
	b, _ := os.ReadFile(src)
	os.WriteFile(dst, b, 0o600)
	if _, err := st.LoadIndex(other, layer.BuiltHere); err == nil || !strings.Contains(err.Error(), "it indexes") {
		t.Errorf("LoadIndex of a copied index: %v", err)
	}
	if _, err := st.LoadIndex(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)}, layer.BuiltHere); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadIndex of a missing index: %v", err)
	}
}

func TestPlainHTTPOnlyForLoopbackAndInsecure(t *testing.T) {
	// A registry reached by a non-loopback name must be spoken to over
	// TLS unless named insecure: the request must arrive as https.
	for _, tc := range []struct {
		ref       string
		insecure  []string
		plainHTTP bool
	}{
		{"10.1.2.3:5000/app:latest", nil, false},
		{"registry.local/app:latest", nil, false},
		{"10.1.2.3:5000/app:latest", []string{"10.1.2.3:5000"}, true},
		{"registry.local/app:latest", []string{"registry.local"}, true},
		{"localhost:5000/app:latest", nil, true},
		{"127.0.0.1:5000/app:latest", nil, true},
	} {
		// Resolve's own requests and the blob client's handshake come
		// from several goroutines, some of which may outlive Resolve: each
		// case records into its own list.
		var mu sync.Mutex
		var schemes []string
		rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			defer mu.Unlock()
			schemes = append(schemes, r.URL.Scheme+"://"+r.URL.Host)
			return nil, errors.New("stop here")
		})
		layer.Resolve(context.Background(), tc.ref, layer.WithTransport(rt), layer.WithInsecureRegistries(tc.insecure...))
		mu.Lock()
		seen := slices.Clone(schemes)
		mu.Unlock()
		sawHTTP := false
		for _, s := range seen {
			sawHTTP = sawHTTP || strings.HasPrefix(s, "http://")
		}
		if len(seen) == 0 || sawHTTP != tc.plainHTTP {
			t.Errorf("%s insecure=%v: requests went to %v; plain HTTP wanted: %v", tc.ref, tc.insecure, seen, tc.plainHTTP)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestParseReferenceDefaults(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"busybox", "index.docker.io/library/busybox:latest"},
		{"user/app:1.0", "index.docker.io/user/app:1.0"},
		{"127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"},
	} {
		r, err := layer.ParseReference(tc.in, nil)
		if err != nil || r.Name() != tc.want {
			t.Errorf("ParseReference(%q) = %v, %v; want %s", tc.in, r, err, tc.want)
		}
	}
	if _, err := layer.ParseReference("UPPER/case", nil); err == nil {
		t.Error("accepted an invalid reference")
	}
}
