package layer_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// randomBytes returns n bytes from rng: data that does not compress.
func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// resolveOneLayer pushes an image of one layer, ents in format f, as
// repoTag and resolves it; it returns the image and the layer's digest.
func resolveOneLayer(t *testing.T, reg *testutil.Registry, repoTag string, ents []testutil.Entry, f testutil.Format) (*layer.Image, v1.Hash) {
	t.Helper()
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), f)
	ref := reg.Push(t, repoTag, testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}))
	digest, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return img, digest
}

// TestReadaheadFollowsSequentialMisses: reading every file of a chunked
// layer in layer order costs a few widened requests, not one per file;
// reads that jump around, in a directory too large to fetch whole, fetch
// about their own chunks; every byte read is right either way.
func TestReadaheadFollowsSequentialMisses(t *testing.T) {
	const files = 300
	var ents []testutil.Entry
	want := map[string][]byte{}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range files {
		name := fmt.Sprintf("data/f%03d", i)
		content := randomBytes(rng, 2500+i) // does not compress: 780 KB stored
		ents = append(ents, testutil.Entry{Name: name, Content: content})
		want[name] = content
	}
	for _, f := range []testutil.Format{testutil.EStargz, testutil.ZstdChunked, testutil.Uncompressed} {
		t.Run(string(f), func(t *testing.T) {
			reg := testutil.NewRegistry(t)
			img, digest := resolveOneLayer(t, reg, "ahead:v1", ents, f)
			st, _ := layer.NewStore(t.TempDir())
			open := func() (*layer.Stack, *index.Tree) {
				stack, _, tree := openMerged(t, img, st)
				return stack, tree
			}
			read := func(stack *layer.Stack, tree *index.Tree, name string) {
				t.Helper()
				readCheck(t, stack, tree, name, want[name])
			}
			blobGets := func() (n int, bytes int64) {
				for _, r := range reg.Requests() {
					if r.Blob == digest.String() && r.Method == "GET" {
						n++
						bytes += r.Bytes
					}
				}
				return n, bytes
			}

			stack, tree := open()
			reg.Reset()
			for i := range files {
				read(stack, tree, fmt.Sprintf("data/f%03d", i))
			}
			if n, _ := blobGets(); n > files/10 {
				t.Errorf("reading %d files in layer order took %d blob requests; want at most %d", files, n, files/10)
			}

			stack, tree = open()
			reg.Reset()
			for _, i := range []int{0, 150, 75, 299, 30} {
				read(stack, tree, fmt.Sprintf("data/f%03d", i))
			}
			// Each fetches its chunk and at most 32 KiB of whole chunks
			// after it (files next to a file are often read next).
			if n, b := blobGets(); n < 4 || n > 5 || b > 5*(8000+32<<10) {
				t.Errorf("5 scattered reads took %d blob requests, %d bytes; want 4 or 5, about their own chunks and neighbours", n, b)
			}
		})
	}
}

// TestReadaheadFetchesASmallDirectory: a lone miss of a file in a small
// directory fetches that directory's other files with it, those before
// it in the layer too (a locale's categories are read in no layer order);
// a lone miss in a large directory does not, nor one in a small directory
// whose files lie apart. A second miss in a directory of up to 512 KiB
// fetches it whole (a compiler's headers); in a larger one it does not.
func TestReadaheadFetchesASmallDirectory(t *testing.T) {
	var ents []testutil.Entry
	want := map[string][]byte{}
	add := func(name string, content []byte) {
		ents = append(ents, testutil.Entry{Name: name, Content: content})
		want[name] = content
	}
	rng := rand.New(rand.NewPCG(3, 4))
	// A small directory whose files lie apart in the layer, a large file
	// of another between them.
	for i := range 6 {
		if i == 3 {
			add("other/big", randomBytes(rng, 300<<10))
		}
		add(fmt.Sprintf("split/f%d", i), textBytes(uint64(100+i), 3000))
	}
	for i := range 24 { // 192 KiB that do not compress: over smallDir
		add(fmt.Sprintf("big/f%02d", i), randomBytes(rng, 8<<10))
	}
	for i := range 10 {
		add(fmt.Sprintf("loc/f%d", i), textBytes(uint64(i), 3000))
	}
	for i := range 80 { // 640 KiB that do not compress: over dirAhead
		add(fmt.Sprintf("huge/f%02d", i), randomBytes(rng, 8<<10))
	}
	// A directory whose files lie among its subdirectories' 600 KiB, as
	// a tar puts them.
	for i, part := range []string{"a", "b", "c"} {
		for j := range 5 {
			add(fmt.Sprintf("inc/%s%d", part, j), textBytes(uint64(200+10*i+j), 3000))
		}
		if i < 2 {
			add(fmt.Sprintf("inc/sub%d/big", i), randomBytes(rng, 300<<10))
		}
	}
	for _, f := range []testutil.Format{testutil.EStargz, testutil.ZstdChunked} {
		t.Run(string(f), func(t *testing.T) {
			reg := testutil.NewRegistry(t)
			img, digest := resolveOneLayer(t, reg, "dir:v1", ents, f)
			st, _ := layer.NewStore(t.TempDir())
			stack, _, tree := openMerged(t, img, st)
			blobGets := func() (n int) {
				for _, r := range reg.Requests() {
					if r.Blob == digest.String() && r.Method == "GET" {
						n++
					}
				}
				return n
			}
			read := func(name string) {
				t.Helper()
				readCheck(t, stack, tree, name, want[name])
			}
			blobBytes := func() (n int64) {
				for _, r := range reg.Requests() {
					if r.Blob == digest.String() && r.Method == "GET" {
						n += r.Bytes
					}
				}
				return n
			}
			// Two misses in a directory, then a read of each of its files:
			// the second miss fetches its files, and only its own (where
			// they lie among others', in the background, as ranges of one
			// request where the registry serves several at once; this one
			// answers a range at a time).
			twoMissesThenAll := func(dir string, misses []string, files []string, maxBytes int64) {
				t.Helper()
				reg.Reset()
				read(misses[0])
				if n := blobGets(); n != 1 {
					t.Fatalf("a lone miss in %s took %d blob requests", dir, n)
				}
				read(misses[1])
				settle(reg)
				n := blobGets()
				for _, name := range files {
					read(name)
				}
				if more := blobGets() - n; more != 0 || blobBytes() > maxBytes {
					t.Errorf("reading the files of %s after two misses in it took %d more blob requests, %d bytes in all; want none more, at most %d bytes", dir, more, blobBytes(), maxBytes)
				}
			}
			var splitFiles []string
			for i := range 6 {
				splitFiles = append(splitFiles, fmt.Sprintf("split/f%d", i))
			}
			twoMissesThenAll("split/", []string{"split/f4", "split/f0"}, splitFiles, 100<<10)
			reg.Reset()
			read("loc/f6")
			if n := blobGets(); n != 1 {
				t.Fatalf("a lone miss took %d blob requests", n)
			}
			for i := range 10 {
				read(fmt.Sprintf("loc/f%d", i))
			}
			if n := blobGets(); n != 1 {
				t.Errorf("reading the rest of a small directory after a miss in it took %d more blob requests; want none", n-1)
			}
			reg.Reset()
			read("big/f20")
			read("big/f03")
			if n := blobGets(); n != 2 {
				t.Errorf("two lone misses in a large directory took %d blob requests; want 2", n)
			}
			for i := range 24 {
				read(fmt.Sprintf("big/f%02d", i))
			}
			if n := blobGets(); n != 2 {
				t.Errorf("reading the rest of a 192 KiB directory after two misses in it took %d more blob requests; want none", n-2)
			}
			reg.Reset()
			for _, name := range []string{"huge/f70", "huge/f05", "huge/f40", "huge/f20"} {
				read(name)
			}
			if n := blobGets(); n != 4 {
				t.Errorf("four misses far apart in a 640 KiB directory took %d blob requests; want 4", n)
			}
			var incFiles []string
			for _, part := range []string{"a", "b", "c"} {
				for j := range 5 {
					incFiles = append(incFiles, fmt.Sprintf("inc/%s%d", part, j))
				}
			}
			twoMissesThenAll("inc/", []string{"inc/b2", "inc/c3"}, incFiles, 100<<10)
		})
	}
}

// TestReadaheadRunsAheadOfAnOrderedReader: once a job reads a layer's
// files in order, the fetch of the next window starts as its reads reach
// the last one, before they need it: after every read, the layer's bytes
// are on their way past the file just read (misses alone would fetch
// nothing past the end of a window until a read fell beyond it), and no
// byte twice. A read far past the last, in bytes fetched ahead, fetches
// nothing more: a job reading a few files apart gets what it reads.
func TestReadaheadRunsAheadOfAnOrderedReader(t *testing.T) {
	const files = 400
	var ents []testutil.Entry
	want := map[string][]byte{}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range files {
		b := randomBytes(rng, 16<<10) // does not compress: 6.4 MiB stored
		name := fmt.Sprintf("data/f%03d", i)
		ents = append(ents, testutil.Entry{Name: name, Content: b})
		want[name] = b
	}
	for _, f := range []testutil.Format{testutil.EStargz, testutil.ZstdChunked, testutil.Uncompressed, testutil.Gzip} {
		t.Run(string(f), func(t *testing.T) {
			reg := testutil.NewRegistry(t)
			img, digest := resolveOneLayer(t, reg, "run-ahead:v1", ents, f)
			stack, _, tree := openMerged(t, img, mustStore(t, t.TempDir()))
			ix := stack.Layers()[0].Index
			// end is where the stored bytes holding name end in the blob.
			end := func(name string) int64 {
				n, _ := tree.Lookup(name)
				last := n.Chunks[len(n.Chunks)-1]
				if !ix.Format.Seekable() {
					return last.BlobEnd
				}
				_, in := ix.SpanRanges(ix.FindSpan(last.BlobOffset + last.Size - 1))
				return in.End
			}
			// fetched is the end of the furthest range asked of the blob.
			fetched := func() int64 {
				var far int64
				for _, r := range reg.Requests() {
					if r.Blob != digest.String() || r.Method != "GET" {
						continue
					}
					for _, rg := range strings.Split(strings.TrimPrefix(r.Range, "bytes="), ",") {
						if _, last, ok := strings.Cut(rg, "-"); ok {
							if e, err := strconv.ParseInt(last, 10, 64); err == nil {
								far = max(far, e+1)
							}
						}
					}
				}
				return far
			}
			blobBytes := func() (n int64) {
				for _, r := range reg.Requests() {
					if r.Blob == digest.String() && r.Method == "GET" {
						n += r.Bytes
					}
				}
				return n
			}
			// settled waits until no request is in flight and none has
			// come for a while.
			settled := func() {
				t.Helper()
				quiet, deadline := time.Now(), time.Now().Add(10*time.Second)
				seen := -1
				for time.Since(quiet) < 200*time.Millisecond {
					rs := reg.Requests()
					busy := false
					for _, r := range rs {
						busy = busy || r.Status == 0
					}
					if busy || len(rs) != seen {
						quiet, seen = time.Now(), len(rs)
					}
					if time.Now().After(deadline) {
						t.Fatal("requests kept coming for 10s")
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			layerEnd := end(fmt.Sprintf("data/f%03d", files-1))
			reg.Reset()
			checked := 0
			for i := range files {
				name := fmt.Sprintf("data/f%03d", i)
				readCheck(t, stack, tree, name, want[name])
				// A few misses in a row make a run; the layer's end stops it.
				ahead := end(name) + 64<<10
				if i < 48 || ahead > layerEnd {
					continue
				}
				checked++
				deadline := time.Now().Add(10 * time.Second)
				for fetched() < ahead {
					if time.Now().After(deadline) {
						t.Fatalf("after reading %s (to blob offset %d) in order, nothing was asked for past %d; want a fetch under way to %d at least", name, end(name), fetched(), ahead)
					}
					time.Sleep(time.Millisecond)
				}
			}
			if checked < files/2 {
				t.Fatalf("checked after %d reads only", checked)
			}
			settled()
			if b := blobBytes(); b > layerEnd+layerEnd/10 {
				t.Errorf("reading a %d-byte layer in order fetched %d bytes", layerEnd, b)
			}

			stack, _, tree = openMerged(t, img, mustStore(t, t.TempDir()))
			reg.Reset()
			for i := range 64 {
				name := fmt.Sprintf("data/f%03d", i)
				readCheck(t, stack, tree, name, want[name])
			}
			settled()
			far := fetched()
			k := files - 1
			for k > 0 && end(fmt.Sprintf("data/f%03d", k)) > far {
				k--
			}
			if end(fmt.Sprintf("data/f%03d", k))-end("data/f063") < 256<<10 {
				t.Fatalf("reading 64 files in order fetched to %d, only a little past f063 (%d)", far, end("data/f063"))
			}
			name := fmt.Sprintf("data/f%03d", k)
			readCheck(t, stack, tree, name, want[name])
			settled()
			if got := fetched(); got != far {
				t.Errorf("a read of %s, far past the last read but fetched ahead already, fetched on to %d (from %d)", name, got, far)
			}
		})
	}
}

// TestReadaheadDirectoryMissesInOneFile: two misses in one file of a
// directory (a large file read in two places, chunk by chunk) are not two
// misses in the directory: its other files are not fetched with them.
func TestReadaheadDirectoryMissesInOneFile(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var ents []testutil.Entry
	want := map[string][]byte{}
	for i := range 10 {
		name := fmt.Sprintf("one/small%d", i)
		ents = append(ents, testutil.Entry{Name: name, Content: randomBytes(rng, 4<<10)})
		want[name] = ents[len(ents)-1].Content
	}
	big := randomBytes(rng, 256<<10) // four chunks of 64 KiB
	ents = append(ents, testutil.Entry{Name: "one/big", Content: big})
	reg := testutil.NewRegistry(t)
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), testutil.EStargz, testutil.WithChunkSize(64<<10))
	digest, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := layer.Resolve(context.Background(), reg.Push(t, "one-file:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})))
	if err != nil {
		t.Fatal(err)
	}
	stack, _, tree := openMerged(t, img, mustStore(t, t.TempDir()))
	blobGets := func() (n int) {
		for _, r := range reg.Requests() {
			if r.Blob == digest.String() && r.Method == "GET" {
				n++
			}
		}
		return n
	}
	n, _ := tree.Lookup("one/big")
	if len(n.Chunks) < 4 {
		t.Fatalf("one/big has %d chunks, want 4", len(n.Chunks))
	}
	reg.Reset()
	for _, off := range []int64{0, 192 << 10} {
		p := make([]byte, 16<<10)
		if _, err := stack.ReadAt(context.Background(), n, p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, big[off:off+int64(len(p))]) {
			t.Fatalf("one/big at %d: wrong bytes", off)
		}
	}
	settle(reg)
	before := blobGets()
	for i := range 10 {
		name := fmt.Sprintf("one/small%d", i)
		readCheck(t, stack, tree, name, want[name])
	}
	if blobGets() == before {
		t.Error("two misses in one file fetched its directory's other files")
	}
}

// TestReadaheadInOrderFetchesNoByteTwice: a job reading every file of
// small directories in layer order, each with a subdirectory among its
// files (one small, one larger than the directory's own files), fetches
// no byte of the blob twice: the misses that fetch a directory's files
// add nothing the run's windows fetch again.
func TestReadaheadInOrderFetchesNoByteTwice(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	var ents []testutil.Entry
	want := map[string][]byte{}
	var names []string
	add := func(name string, n int) {
		b := randomBytes(rng, n)
		ents = append(ents, testutil.Entry{Name: name, Content: b})
		want[name] = b
		names = append(names, name)
	}
	for _, d := range []struct {
		dir string
		sub int
	}{{"mid", 64 << 10}, {"wide", 300 << 10}} {
		for i := range 20 {
			add(fmt.Sprintf("%s/f%02d", d.dir, i), 8<<10)
			if i == 9 {
				add(d.dir+"/sub/g", d.sub)
			}
		}
	}
	for _, f := range []testutil.Format{testutil.EStargz, testutil.ZstdChunked} {
		t.Run(string(f), func(t *testing.T) {
			reg := testutil.NewRegistry(t)
			img, digest := resolveOneLayer(t, reg, "in-order:v1", ents, f)
			stack, _, tree := openMerged(t, img, mustStore(t, t.TempDir()))
			reg.Reset()
			for _, name := range names {
				readCheck(t, stack, tree, name, want[name])
			}
			settle(reg)
			type span struct{ a, b int64 }
			var spans []span
			var asked int64
			for _, r := range reg.Requests() {
				if r.Blob != digest.String() || r.Method != "GET" {
					continue
				}
				for _, rg := range strings.Split(strings.TrimPrefix(r.Range, "bytes="), ",") {
					first, last, ok := strings.Cut(rg, "-")
					a, err1 := strconv.ParseInt(first, 10, 64)
					b, err2 := strconv.ParseInt(last, 10, 64)
					if !ok || err1 != nil || err2 != nil {
						t.Fatalf("range %q", r.Range)
					}
					spans = append(spans, span{a, b + 1})
					asked += b + 1 - a
				}
			}
			slices.SortFunc(spans, func(x, y span) int { return cmp.Compare(x.a, y.a) })
			var union, end int64
			for _, s := range spans {
				if s.b > end {
					union += s.b - max(s.a, end)
					end = s.b
				}
			}
			if asked != union {
				t.Errorf("reading %d files in layer order asked for %d bytes of the blob, %d of them twice", len(names), asked, asked-union)
			}
		})
	}
}
