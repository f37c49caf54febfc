package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// warmReadFormats are the layer formats whose warm read path the tests
// below cover: chunks keyed by their own digests (eStargz, zstd:chunked)
// and spans of a seekable index (gzip, zstd frames, plain tar).
var warmReadFormats = []testutil.Format{testutil.EStargz, testutil.ZstdChunked, testutil.Gzip, testutil.ZstdFrames, testutil.Uncompressed}

// warmStack opens a one-layer image holding a file of size bytes in
// format f, with a memory cache (and a disk tier if disk is set), reads
// the file once so that every chunk it touches is cached, and returns
// the stack, the file's node and its content.
func warmStack(t testing.TB, f testutil.Format, size int, disk bool) (*layer.Stack, *index.Node, []byte) {
	t.Helper()
	reg := testutil.NewRegistry(t)
	content := textBytes(3, size)
	ents := []testutil.Entry{{Name: "data", Type: tar.TypeDir}, {Name: "data/file", Content: content}}
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), f, testutil.WithChunkSize(256<<10))
	ref := reg.Push(t, "warm:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}))
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts := cache.Options{MemoryBytes: 64 << 20}
	if disk {
		opts.Dir = t.TempDir()
	}
	c, err := cache.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	stack, tree := openTree(t, img, st, c, layer.StackOptions{SpanSize: testSpan})
	n, ok := tree.Lookup("data/file")
	if !ok {
		t.Fatal("data/file not in tree")
	}
	got := make([]byte, size)
	if k, err := stack.ReadAt(context.Background(), n, got, 0); k != size || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("first read: %d bytes, %v", k, err)
	}
	if !bytes.Equal(got, content) {
		t.Fatal("first read returned wrong bytes")
	}
	return stack, n, content
}

// TestWarmReadAtAllocatesNothing checks that a read whose bytes are all in
// the memory cache allocates nothing: no timeout context, key, closure or
// error per call. Reads that cross chunk or span boundaries and the read
// that reaches the end of the file (io.EOF) are included.
func TestWarmReadAtAllocatesNothing(t *testing.T) {
	const size = 1<<20 + 4321
	for _, f := range warmReadFormats {
		for _, disk := range []bool{false, true} {
			name := string(f)
			if disk {
				name += "+disk"
			}
			t.Run(name, func(t *testing.T) {
				stack, n, content := warmStack(t, f, size, disk)
				ctx := context.Background()
				buf := make([]byte, 128<<10)
				offs := []int64{0, 200 << 10, 256<<10 - 100, size - 1000}
				for _, off := range offs {
					k, err := stack.ReadAt(ctx, n, buf, off)
					if err != nil && !errors.Is(err, io.EOF) {
						t.Fatalf("read at %d: %v", off, err)
					}
					if !bytes.Equal(buf[:k], content[off:off+int64(k)]) {
						t.Fatalf("read at %d: wrong bytes", off)
					}
				}
				i := 0
				allocs := testutil.LeastAllocsPerRun(t, 200, func() {
					off := offs[i%len(offs)]
					i++
					if _, err := stack.ReadAt(ctx, n, buf, off); err != nil && !errors.Is(err, io.EOF) {
						t.Fatal(err)
					}
				})
				if allocs != 0 {
					t.Errorf("warm ReadAt allocates %v times per call, want 0", allocs)
				}
			})
		}
	}
}

// BenchmarkWarmReadAt measures Stack.ReadAt of 128 KiB (the size of a
// FUSE read) from a file whose bytes are all in the memory cache, reading
// it sequentially; run with -benchmem to see allocations per read.
func BenchmarkWarmReadAt(b *testing.B) {
	const size = 8 << 20
	for _, f := range warmReadFormats {
		b.Run(string(f), func(b *testing.B) {
			stack, n, _ := warmStack(b, f, size, false)
			ctx := context.Background()
			buf := make([]byte, 128<<10)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			b.ResetTimer()
			off := int64(0)
			for b.Loop() {
				if _, err := stack.ReadAt(ctx, n, buf, off); err != nil && !errors.Is(err, io.EOF) {
					b.Fatal(err)
				}
				off += int64(len(buf))
				if off >= size {
					off = 0
				}
			}
		})
	}
}
