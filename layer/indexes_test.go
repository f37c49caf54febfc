package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// textBytes returns n bytes of compressible pseudo-random text.
func textBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	words := []string{"lazy", "root ", "mount", " image\n", "layer", "span ", "gzip", " index"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[rng.IntN(len(words))])
		b.WriteByte(byte('a' + rng.IntN(26)))
	}
	return b.Bytes()[:n]
}

// testSpan is the seek span size the tests build indexes with: small, so
// small layers have many spans.
const testSpan = 128 << 10

// spannedImage pushes a one-layer image in format f whose tar spans
// several testSpan seek spans, with a small file near the end.
func spannedImage(t *testing.T, reg *testutil.Registry, repoTag string, f testutil.Format) (string, map[string][]byte) {
	t.Helper()
	l, ann, files := spannedLayer(t, f)
	return reg.Push(t, repoTag, testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})), files
}

// resolvedSpanned pushes the image of spannedImage and resolves it.
func resolvedSpanned(t *testing.T, reg *testutil.Registry, repoTag string, f testutil.Format) (*layer.Image, map[string][]byte) {
	t.Helper()
	ref, files := spannedImage(t, reg, repoTag, f)
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return img, files
}

func spannedLayer(t *testing.T, f testutil.Format) (v1.Layer, map[string]string, map[string][]byte) {
	t.Helper()
	files := map[string][]byte{
		"data/a.txt":     textBytes(1, 5*testSpan),
		"data/b.txt":     textBytes(2, 6*testSpan+123),
		"data/small.txt": []byte("a small file\n"),
		"data/empty":     nil,
	}
	ents := []testutil.Entry{{Name: "data", Type: tar.TypeDir}}
	for _, name := range []string{"data/a.txt", "data/b.txt", "data/small.txt", "data/empty"} {
		ents = append(ents, testutil.Entry{Name: name, Content: files[name]})
	}
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), f)
	return l, ann, files
}

// openStack opens img over a store at root with opts, failing the test on
// error, and returns the stack and the notices it logged.
func openStack(t *testing.T, img *layer.Image, root string, opts layer.StackOptions) (*layer.Stack, *notes) {
	t.Helper()
	st, err := layer.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	n := &notes{}
	opts.Logf = n.logf
	if opts.SpanSize == 0 {
		opts.SpanSize = testSpan
	}
	stack, err := layer.Open(context.Background(), img, st, newCache(t), opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { stack.Close() })
	return stack, n
}

type notes struct {
	mu    sync.Mutex
	lines []string
}

func (n *notes) logf(format string, args ...any) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lines = append(n.lines, fmt.Sprintf(format, args...))
}

func (n *notes) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.lines, "\n")
}

// checkFiles reads every file through the stack and compares it.
func checkFiles(t *testing.T, stack *layer.Stack, files map[string][]byte) {
	t.Helper()
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		n, ok := tree.Lookup(name)
		if !ok {
			t.Fatalf("%s missing", name)
		}
		got := make([]byte, n.Size)
		// Read in pieces that cross span boundaries at odd places.
		for off := 0; off < len(got); off += 77_777 {
			end := min(off+77_777, len(got))
			if k, err := stack.ReadAt(context.Background(), n, got[off:end], int64(off)); k != end-off {
				t.Fatalf("%s at %d: read %d: %v", name, off, k, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: wrong content", name)
		}
	}
}

// blobGets counts the GETs of blob d at the registry: whole and ranged.
func blobGets(reg *testutil.Registry, d v1.Hash) (whole, ranged int, bytes int64) {
	for _, r := range reg.Requests() {
		if r.Blob != d.String() || r.Method != "GET" {
			continue
		}
		if r.Range == "" {
			whole++
		} else {
			ranged++
		}
		bytes += r.Bytes
	}
	return
}

func TestSeekableLayersAreBuiltOnceAndReadLazily(t *testing.T) {
	reg := testutil.NewRegistry(t)
	for _, tc := range []struct {
		f      testutil.Format
		format index.Format
		origin layer.Origin
		stored bool // an unpacked copy is kept
	}{
		{testutil.Gzip, index.FormatGzip, layer.Built, false},
		{testutil.PGzip, index.FormatGzip, layer.Built, false},
		{testutil.GzipMulti, index.FormatGzip, layer.Built, false},
		{testutil.ZstdFrames, index.FormatZstd, layer.Built, false},
		{testutil.Uncompressed, index.FormatTar, layer.Built, false},
		{testutil.Zstd, index.FormatTar, layer.Streamed, true},
	} {
		t.Run(string(tc.f), func(t *testing.T) {
			img, files := resolvedSpanned(t, reg, "seek:"+strings.ReplaceAll(string(tc.f), ":", "-"), tc.f)
			root := t.TempDir()
			reg.Reset()
			stack, _ := openStack(t, img, root, layer.StackOptions{})
			ls := stack.Layers()[0]
			if ls.Index.Format != tc.format || ls.Origin != tc.origin {
				t.Fatalf("index %s from %s, want %s from %s", ls.Index.Format, ls.Origin, tc.format, tc.origin)
			}
			d := img.Layers[0].Descriptor.Digest
			if whole, _, _ := blobGets(reg, d); whole != 1 {
				t.Errorf("building the index streamed the layer %d times", whole)
			}
			unpacked, _ := filepath.Glob(filepath.Join(root, "layers", "*.tar"))
			if (len(unpacked) > 0) != tc.stored {
				t.Errorf("unpacked copies: %v", unpacked)
			}
			checkFiles(t, stack, files)

			// Reading one small file from a fresh cache fetches about one
			// span, not the layer.
			if tc.stored {
				return
			}
			reg.Reset()
			stack, _ = openStack(t, img, root, layer.StackOptions{})
			if stack.Layers()[0].Origin != layer.FromStore {
				t.Fatalf("second open: index from %s", stack.Layers()[0].Origin)
			}
			checkFiles(t, stack, map[string][]byte{"data/small.txt": files["data/small.txt"]})
			whole, ranged, n := blobGets(reg, d)
			if whole != 0 || ranged == 0 || n > 2*testSpan {
				t.Errorf("small file read: %d whole and %d ranged GETs, %d bytes", whole, ranged, n)
			}
		})
	}
}

func TestIndexesSharedThroughTheRegistry(t *testing.T) {
	for _, referrers := range []bool{false, true} {
		t.Run(fmt.Sprintf("referrers API %v", referrers), func(t *testing.T) {
			var opts []testutil.RegistryOption
			if referrers {
				opts = append(opts, testutil.WithReferrers())
			}
			reg := testutil.NewRegistry(t, opts...)
			img, files := resolvedSpanned(t, reg, "shared:v1", testutil.GzipCmd9)
			d := img.Layers[0].Descriptor.Digest

			// Node A builds the index and publishes it.
			stack, notes := openStack(t, img, t.TempDir(), layer.StackOptions{Publish: true})
			if stack.Layers()[0].Origin != layer.Built || !strings.Contains(notes.String(), "published") {
				t.Fatalf("node A: index from %s; notes:\n%s", stack.Layers()[0].Origin, notes)
			}

			// Node B never streams the layer.
			reg.Reset()
			rootB := t.TempDir()
			stack, _ = openStack(t, img, rootB, layer.StackOptions{})
			if stack.Layers()[0].Origin != layer.FromRegistry {
				t.Fatalf("node B: index from %s", stack.Layers()[0].Origin)
			}
			checkFiles(t, stack, map[string][]byte{"data/small.txt": files["data/small.txt"]})
			if whole, ranged, _ := blobGets(reg, d); whole != 0 || ranged == 0 {
				t.Errorf("node B: %d whole and %d ranged GETs of the layer", whole, ranged)
			}
			checkFiles(t, stack, files)

			// On its next mount node B uses its stored copy.
			stack, _ = openStack(t, img, rootB, layer.StackOptions{})
			if stack.Layers()[0].Origin != layer.FromRegistry {
				t.Fatalf("node B again: index from %s", stack.Layers()[0].Origin)
			}

			// A cautious node builds its own.
			reg.Reset()
			stack, _ = openStack(t, img, t.TempDir(), layer.StackOptions{IndexSource: layer.IndexLocal})
			if stack.Layers()[0].Origin != layer.Built {
				t.Fatalf("--index-source=local: index from %s", stack.Layers()[0].Origin)
			}
			if whole, _, _ := blobGets(reg, d); whole != 1 {
				t.Errorf("--index-source=local streamed the layer %d times", whole)
			}
			// And --index-source=build ignores even a stored one.
			stack, _ = openStack(t, img, rootB, layer.StackOptions{IndexSource: layer.IndexBuild})
			if stack.Layers()[0].Origin != layer.Built {
				t.Fatalf("--index-source=build: index from %s", stack.Layers()[0].Origin)
			}
		})
	}
}

func TestIndexSourceRegistryNeverStreams(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, _ := resolvedSpanned(t, reg, "noindex:v1", testutil.Gzip)
	st, _ := layer.NewStore(t.TempDir())
	reg.Reset()
	_, err := layer.Open(context.Background(), img, st, newCache(t), layer.StackOptions{IndexSource: layer.IndexRegistry})
	if !errors.Is(err, layer.ErrNoIndex) || !strings.Contains(err.Error(), "--index-source=registry") {
		t.Fatalf("got %v, want ErrNoIndex naming the option", err)
	}
	if whole, _, _ := blobGets(reg, img.Layers[0].Descriptor.Digest); whole != 0 {
		t.Errorf("streamed the layer %d times", whole)
	}
}

func TestBadRegistryIndexesAreRefused(t *testing.T) {
	reg := testutil.NewRegistry(t)
	l, ann, files := spannedLayer(t, testutil.Gzip)
	// Each case gets its own image (a distinct config, the same layer), so
	// its artifact is the only one.
	push := func(tag string) *layer.Image {
		im, err := mutate.Config(testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}), v1.Config{Labels: map[string]string{"case": tag}})
		if err != nil {
			t.Fatal(err)
		}
		img, err := layer.Resolve(context.Background(), reg.Push(t, "bad:"+tag, im))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	img := push("base")
	otherRef, _ := spannedImage(t, reg, "other:v1", testutil.GzipBest)
	other, err := layer.Resolve(context.Background(), otherRef)
	if err != nil {
		t.Fatal(err)
	}
	// Good encodings to damage: this layer's index and another layer's.
	good := encodedIndex(t, img)
	foreign := encodedIndex(t, other)
	d := img.Layers[0].Descriptor.Digest
	for _, tc := range []struct {
		tag, want string
		enc       []byte
	}{
		{"garbage", "not an index", []byte("definitely not an index")},
		{"truncated", "truncated", good[:len(good)/2]},
		{"damaged", "checksum", flipByte(good, len(good)/2)},
		{"version", "unsupported index version", flipByte(good, 11)},
		{"foreign", "it indexes", foreign},
	} {
		t.Run(tc.tag, func(t *testing.T) {
			img := push(tc.tag)
			if _, err := layer.PushIndexes(context.Background(), img, map[v1.Hash][]byte{d: tc.enc}, nil); err != nil {
				t.Fatal(err)
			}
			st, _ := layer.NewStore(t.TempDir())
			_, err := layer.Open(context.Background(), img, st, newCache(t), layer.StackOptions{IndexSource: layer.IndexRegistry})
			if !errors.Is(err, layer.ErrNoIndex) || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("--index-source=registry: %v, want a refusal mentioning %q", err, tc.want)
			}
			stack, notes := openStack(t, img, t.TempDir(), layer.StackOptions{})
			if stack.Layers()[0].Origin != layer.Built || !strings.Contains(notes.String(), tc.want) {
				t.Fatalf("--index-source=any: index from %s; notes:\n%s", stack.Layers()[0].Origin, notes)
			}
			checkFiles(t, stack, files)
		})
	}
}

// encodedIndex builds img's first layer index on a fresh node and returns
// its encoding.
func encodedIndex(t *testing.T, img *layer.Image) []byte {
	t.Helper()
	stack, _ := openStack(t, img, t.TempDir(), layer.StackOptions{IndexSource: layer.IndexLocal})
	var buf bytes.Buffer
	if err := stack.Layers()[0].Index.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func flipByte(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 0x40
	return b
}

func TestDamagedStoredIndexesAreRebuilt(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, files := spannedImage(t, reg, "stored:v1", testutil.Gzip)
	otherRef, _ := spannedImage(t, reg, "stored-other:v1", testutil.GzipFast)
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	other, err := layer.Resolve(context.Background(), otherRef)
	if err != nil {
		t.Fatal(err)
	}
	d := img.Layers[0].Descriptor.Digest
	foreign := encodedIndex(t, other)
	for _, tc := range []struct {
		name, want string
		damage     func([]byte) []byte
	}{
		{"truncated", "truncated", func(b []byte) []byte { return b[:len(b)-40] }},
		{"damaged", "checksum", func(b []byte) []byte { return flipByte(b, len(b)/3) }},
		{"older version", "unsupported index version 1", func(b []byte) []byte { c := bytes.Clone(b); c[11] = 1; return c }},
		{"another layer's", "it indexes", func([]byte) []byte { return foreign }},
		{"empty", "header", func([]byte) []byte { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			openStack(t, img, root, layer.StackOptions{})
			path := filepath.Join(root, "index", d.Algorithm+"-"+d.Hex+".idx")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			reg.Reset()
			stack, notes := openStack(t, img, root, layer.StackOptions{IndexSource: layer.IndexLocal})
			if stack.Layers()[0].Origin != layer.Built || !strings.Contains(notes.String(), tc.want) {
				t.Fatalf("index from %s; notes:\n%s", stack.Layers()[0].Origin, notes)
			}
			if whole, _, _ := blobGets(reg, d); whole != 1 {
				t.Errorf("rebuilding streamed the layer %d times", whole)
			}
			checkFiles(t, stack, files)
			// The rebuilt index replaced the bad file.
			if _, notes := openStack(t, img, root, layer.StackOptions{}); notes.String() != "" {
				t.Errorf("the rebuilt index was not stored: %s", notes)
			}
		})
	}
}

func TestForgedIndexCannotPoisonASharedCache(t *testing.T) {
	reg := testutil.NewRegistry(t)
	l, ann, files := spannedLayer(t, testutil.Gzip)
	push := func(tag string) *layer.Image {
		im, err := mutate.Config(testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}), v1.Config{Labels: map[string]string{"image": tag}})
		if err != nil {
			t.Fatal(err)
		}
		img, err := layer.Resolve(context.Background(), reg.Push(t, "poison:"+tag, im))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	evil, victim := push("evil"), push("victim")
	// An index of the shared layer whose windows were forged: its span
	// digests still match the real compressed bytes.
	x, err := index.Decode(bytes.NewReader(encodedIndex(t, evil)))
	if err != nil {
		t.Fatal(err)
	}
	windows := forgeWindows(x, true)
	var forged bytes.Buffer
	if err := x.Encode(&forged); err != nil {
		t.Fatal(err)
	}
	d := evil.Layers[0].Descriptor.Digest
	if _, err := layer.PushIndexes(context.Background(), evil, map[v1.Hash][]byte{d: forged.Bytes()}, map[v1.Hash][]byte{d: windows}); err != nil {
		t.Fatal(err)
	}

	c := newCache(t)
	read := func(img *layer.Image, src layer.IndexSource) (map[string][]byte, layer.Origin) {
		st, _ := layer.NewStore(t.TempDir())
		stack, err := layer.Open(context.Background(), img, st, c, layer.StackOptions{IndexSource: src, SpanSize: testSpan})
		if err != nil {
			t.Fatal(err)
		}
		defer stack.Close()
		tree, _ := index.Merge(stack.Indexes())
		got := map[string][]byte{}
		for name := range files {
			n, _ := tree.Lookup(name)
			buf := make([]byte, n.Size)
			stack.ReadAt(context.Background(), n, buf, 0)
			got[name] = buf
		}
		return got, stack.Layers()[0].Origin
	}
	// The forged index is used for the image it was pushed for (that is
	// the documented risk of --index-source=any)...
	bad, origin := read(evil, layer.IndexAny)
	if origin != layer.FromRegistry || bytes.Equal(bad["data/b.txt"], files["data/b.txt"]) {
		t.Fatalf("the forged index was not used (origin %s); the test proves nothing", origin)
	}
	// ...but a node that builds its own index, sharing the cache, reads
	// the true bytes.
	good, origin := read(victim, layer.IndexLocal)
	if origin != layer.Built {
		t.Fatalf("victim: index from %s", origin)
	}
	for name, want := range files {
		if !bytes.Equal(good[name], want) {
			t.Errorf("%s: the victim was served bytes decoded with the forged index", name)
		}
	}
}

func TestMislabelledLayersStillMount(t *testing.T) {
	reg := testutil.NewRegistry(t)
	for _, tc := range []struct {
		f     testutil.Format
		label types.MediaType
	}{
		{testutil.Uncompressed, types.OCILayer},
		{testutil.Gzip, types.OCIUncompressedLayer},
		{testutil.Zstd, types.OCILayer},
		{testutil.Gzip, types.OCILayerZStd},
	} {
		t.Run(fmt.Sprintf("%s as %s", tc.f, tc.label), func(t *testing.T) {
			l, _, files := spannedLayer(t, tc.f)
			im, err := mutate.Append(testutil.Image(t, nil, nil), mutate.Addendum{Layer: l, MediaType: tc.label})
			if err != nil {
				t.Fatal(err)
			}
			img, err := layer.Resolve(context.Background(), reg.Push(t, "mislabelled:"+strings.NewReplacer("/", "-", "+", "-").Replace(string(tc.f)+string(tc.label)), im))
			if err != nil {
				t.Fatal(err)
			}
			root := t.TempDir()
			stack, notes := openStack(t, img, root, layer.StackOptions{})
			if stack.Layers()[0].Origin != layer.Streamed || !strings.Contains(notes.String(), "labelled") {
				t.Fatalf("index from %s; notes:\n%s", stack.Layers()[0].Origin, notes)
			}
			checkFiles(t, stack, files)
			// The next mount reuses the stored copy.
			stack, _ = openStack(t, img, root, layer.StackOptions{})
			if stack.Layers()[0].Origin != layer.FromStore {
				t.Fatalf("second open: index from %s", stack.Layers()[0].Origin)
			}
			checkFiles(t, stack, files)
		})
	}
}
