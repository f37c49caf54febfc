package layer_test

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// builtHere opens img on a fresh node that builds its own indexes, and
// returns the stack.
func builtHere(t *testing.T, img *layer.Image) *layer.Stack {
	t.Helper()
	stack, _ := openStack(t, img, t.TempDir(), layer.StackOptions{IndexSource: layer.IndexLocal})
	if ls := stack.Layers()[0]; ls.Origin != layer.Built || ls.Index.Windows == nil {
		t.Fatalf("index from %s, windows %v", ls.Origin, ls.Index.Windows)
	}
	return stack
}

func TestWindowsComeFromTheRegistryBesideTheIndex(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, files := resolvedSpanned(t, reg, "windows:v1", testutil.Gzip)
	built := builtHere(t, img)
	if _, n, err := layer.Publish(context.Background(), img, built.Layers()); err != nil || n != 1 {
		t.Fatalf("publish: %d indexes, %v", n, err)
	}
	w := built.Layers()[0].Index.Windows

	// Another node reads through the registry's index: every window it
	// needs comes from the windows blob, in ranges, and is not stored.
	root := t.TempDir()
	stack, _ := openStack(t, img, root, layer.StackOptions{IndexSource: layer.IndexRegistry})
	if ls := stack.Layers()[0]; ls.Origin != layer.FromRegistry || ls.Index.Windows == nil || *ls.Index.Windows != *w {
		t.Fatalf("index from %s naming windows %v, want %v", ls.Origin, ls.Index.Windows, w)
	}
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	// A read in the middle of the big file starts in a span after the
	// first, with nothing before it cached: its window must be fetched.
	n, _ := tree.Lookup("data/b.txt")
	got := make([]byte, 1000)
	if _, err := stack.ReadAt(context.Background(), n, got, 3*testSpan); err != nil || !bytes.Equal(got, files["data/b.txt"][3*testSpan:3*testSpan+1000]) {
		t.Fatalf("read in the middle: %v", err)
	}
	wd, _ := v1.NewHash(w.Digest)
	whole, ranged, fetched := blobGets(reg, wd)
	if whole != 0 || ranged == 0 || fetched >= w.Size {
		t.Fatalf("windows blob of %d bytes: %d whole GETs, %d ranged, %d bytes", w.Size, whole, ranged, fetched)
	}
	checkFiles(t, stack, files)
	if m, _ := filepath.Glob(filepath.Join(root, "index", "*.windows")); len(m) != 0 {
		t.Fatalf("windows stored from the registry: %v", m)
	}
}

func TestForgedWindowsFailTheirDigest(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, files := resolvedSpanned(t, reg, "forged-windows:v1", testutil.Gzip)
	built := builtHere(t, img)
	x := built.Layers()[0].Index
	// A windows blob whose windows are all wrong, named by the index with
	// its true digest and size; the per-window digests are left alone.
	y := *x
	y.Spans = append([]index.Span(nil), x.Spans...)
	windows := forgeWindows(&y, false)
	var enc bytes.Buffer
	if err := y.Encode(&enc); err != nil {
		t.Fatal(err)
	}
	d := img.Layers[0].Descriptor.Digest
	if _, err := layer.PushIndexes(context.Background(), img, map[v1.Hash][]byte{d: enc.Bytes()}, map[v1.Hash][]byte{d: windows}); err != nil {
		t.Fatal(err)
	}
	stack, _ := openStack(t, img, t.TempDir(), layer.StackOptions{IndexSource: layer.IndexRegistry})
	tree, _ := index.Merge(stack.Indexes())
	n, _ := tree.Lookup("data/b.txt")
	got := make([]byte, 1000)
	k, err := stack.ReadAt(context.Background(), n, got, 3*testSpan)
	if !errors.Is(err, layer.ErrDigest) || k != 0 {
		t.Fatalf("read through forged windows: %d bytes, error %v, want ErrDigest", k, err)
	}
	// The first span needs no window and still reads.
	a, _ := tree.Lookup("data/a.txt")
	if _, err := stack.ReadAt(context.Background(), a, got, 0); err != nil && err != io.EOF || !bytes.Equal(got, files["data/a.txt"][:1000]) {
		t.Fatalf("first span: %v", err)
	}
}

func TestBuiltIndexNeedsItsStoredWindows(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, files := resolvedSpanned(t, reg, "stored-windows:v1", testutil.Gzip)
	root := t.TempDir()
	first, _ := openStack(t, img, root, layer.StackOptions{IndexSource: layer.IndexLocal})
	first.Close()
	m, _ := filepath.Glob(filepath.Join(root, "index", "*.windows"))
	if len(m) != 1 {
		t.Fatalf("stored windows: %v", m)
	}
	// With its windows, the stored index is used again.
	again, _ := openStack(t, img, root, layer.StackOptions{IndexSource: layer.IndexLocal})
	if o := again.Layers()[0].Origin; o != layer.FromStore {
		t.Fatalf("second open: index from %s", o)
	}
	checkFiles(t, again, files)
	again.Close()
	// Damaged on disk: the read fails its digest, never serves the wrong
	// bytes, and the file is dropped so that the next mount rebuilds.
	data, err := os.ReadFile(m[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := range data {
		data[i] ^= 0x55
	}
	if err := os.WriteFile(m[0], data, 0o600); err != nil {
		t.Fatal(err)
	}
	damaged, _ := openStack(t, img, root, layer.StackOptions{IndexSource: layer.IndexLocal})
	if o := damaged.Layers()[0].Origin; o != layer.FromStore {
		t.Fatalf("damaged windows: index from %s", o)
	}
	tree, _ := index.Merge(damaged.Indexes())
	n, _ := tree.Lookup("data/b.txt")
	buf := make([]byte, 1000)
	if k, err := damaged.ReadAt(context.Background(), n, buf, 3*testSpan); !errors.Is(err, layer.ErrDigest) || k != 0 {
		t.Fatalf("read through damaged windows: %d bytes, %v", k, err)
	}
	damaged.Close()
	if _, err := os.Stat(m[0]); !os.IsNotExist(err) {
		t.Fatalf("damaged windows file kept: %v", err)
	}
	if rebuilt, _ := openStack(t, img, root, layer.StackOptions{IndexSource: layer.IndexLocal}); rebuilt.Layers()[0].Origin != layer.Built {
		t.Fatalf("after damaged windows: index from %s", rebuilt.Layers()[0].Origin)
	} else {
		checkFiles(t, rebuilt, files)
		rebuilt.Close()
	}
	// Without them, it is built again (never read with windows missing).
	if err := os.Remove(m[0]); err != nil {
		t.Fatal(err)
	}
	rebuilt, notes := openStack(t, img, root, layer.StackOptions{IndexSource: layer.IndexLocal})
	if o := rebuilt.Layers()[0].Origin; o != layer.Built || !bytes.Contains([]byte(notes.String()), []byte("not stored")) {
		t.Fatalf("without windows: index from %s; notes:\n%s", o, notes)
	}
	checkFiles(t, rebuilt, files)
}

func TestSequentialSpanMissesShareRequests(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, files := resolvedSpanned(t, reg, "span-ahead:v1", testutil.Gzip)
	stack := builtHere(t, img)
	ls := stack.Layers()[0]
	fresh, tree := coldSpanned(t, img)
	n, _ := tree.Lookup("data/b.txt")
	first := ls.Index.FindSpan(n.Chunks[0].BlobOffset)
	last := ls.Index.FindSpan(n.Chunks[0].BlobOffset + n.Size - 1)
	spans := last - first + 1
	before := img.FetchStats().Requests
	got := make([]byte, n.Size)
	for off := int64(0); off < n.Size; off += 64 << 10 {
		end := min(off+64<<10, n.Size)
		if k, err := fresh.ReadAt(context.Background(), n, got[off:end], off); int64(k) != end-off {
			t.Fatalf("read at %d: %d bytes, %v", off, k, err)
		}
	}
	if !bytes.Equal(got, files["data/b.txt"]) {
		t.Fatal("wrong content")
	}
	if reqs := img.FetchStats().Requests - before; spans < 5 || reqs >= int64(spans) {
		t.Fatalf("%d requests for %d spans read in order", reqs, spans)
	}
}

// coldSpanned opens img, a spannedImage, on a fresh node that builds its
// own index with testSpan spans, with a cold cache: every span is a miss.
// The stack closes with the test.
func coldSpanned(t *testing.T, img *layer.Image) (*layer.Stack, *index.Tree) {
	t.Helper()
	return openTree(t, img, mustStore(t, t.TempDir()), newCache(t), layer.StackOptions{IndexSource: layer.IndexLocal, SpanSize: testSpan})
}

func mustStore(t *testing.T, root string) *layer.Store {
	t.Helper()
	st, err := layer.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// warmAfterCold opens img as one node's successive mount servers would:
// each with a new cache (its memory tier empty) over the same disk cache
// and store, building the indexes itself. The first reads every file of
// files and closes; the second, returned, closes with the test.
func warmAfterCold(t *testing.T, img *layer.Image, files map[string][]byte) *layer.Stack {
	t.Helper()
	root, cacheDir := t.TempDir(), t.TempDir()
	open := func() (*layer.Stack, *cache.Cache) {
		c, err := cache.New(cache.Options{MemoryBytes: 16 << 20, Dir: cacheDir})
		if err != nil {
			t.Fatal(err)
		}
		s, err := layer.Open(context.Background(), img, mustStore(t, root), c, layer.StackOptions{IndexSource: layer.IndexLocal, SpanSize: testSpan})
		if err != nil {
			t.Fatal(err)
		}
		return s, c
	}
	cold, c := open()
	checkFiles(t, cold, files)
	cold.Close()
	c.Close()
	warm, c := open()
	t.Cleanup(c.Close)
	t.Cleanup(func() { warm.Close() })
	return warm
}

func TestSpansReadAheadAreCachedForTheNextMount(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, files := resolvedSpanned(t, reg, "span-warm:v1", testutil.Gzip)
	warm := warmAfterCold(t, img, files)
	before := img.FetchStats().Requests
	checkFiles(t, warm, files)
	if n := img.FetchStats().Requests - before; n != 0 {
		t.Fatalf("a warm read made %d requests", n)
	}
}

// forgeWindows replaces every window x's spans need with 'X's in a new
// windows blob, which it returns and x names; with rehash, the spans'
// window digests are made to match the forgery.
func forgeWindows(x *index.Index, rehash bool) []byte {
	var windows bytes.Buffer
	for i := range x.Spans {
		sp := &x.Spans[i]
		if sp.WinSize == 0 {
			continue
		}
		w := bytes.Repeat([]byte{'X'}, int(sp.WinSize))
		start := windows.Len()
		fw, _ := flate.NewWriter(&windows, flate.BestSpeed)
		fw.Write(w)
		fw.Close()
		sp.WinOff, sp.WinLen = int64(start), int64(windows.Len()-start)
		if rehash {
			sum := sha256.Sum256(w)
			sp.WinDigest = "sha256:" + hex.EncodeToString(sum[:])
		}
	}
	sum := sha256.Sum256(windows.Bytes())
	x.Windows = &index.BlobRef{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(windows.Len())}
	return windows.Bytes()
}

// TestWarmPrefetchFetchesNothingTheDiskHolds: a node's later mount, with
// its memory cold and its disk cache holding every span, replays a
// profile of every file without a request: prefetch leaves out what the
// disk tier holds instead of fetching it (and its windows) again.
func TestWarmPrefetchFetchesNothingTheDiskHolds(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, files := resolvedSpanned(t, reg, "span-warm-prefetch:v1", testutil.Gzip)
	prof := &layer.Profile{Version: 1, Image: img.Digest.String(), Created: time.Now()}
	for name := range files {
		prof.Files = append(prof.Files, layer.ProfileFile{Layer: img.Layers[0].Descriptor.Digest.String(), Path: name})
	}
	warm := warmAfterCold(t, img, files)
	before := img.FetchStats()
	p := layer.StartPrefetch(context.Background(), warm, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Profile: prof})
	st := waitPrefetch(t, p)
	p.Stop()
	if d := img.FetchStats(); d.Requests != before.Requests || st.FetchedBytes != 0 || st.Errors != 0 {
		t.Fatalf("prefetch over a warm disk cache made %d requests: %+v", d.Requests-before.Requests, st)
	}
	checkFiles(t, warm, files)
	if n := img.FetchStats().Requests - before.Requests; n != 0 {
		t.Fatalf("warm reads made %d requests", n)
	}
}

// gatedLayer is the spanned gzip image, its index and windows published as
// the registry's, opened on a fresh node that takes them; the registry
// holds every range read of the layer until release is closed, so that a
// prefetch batch is under way, its windows in, when a test's read comes.
type gatedLayer struct {
	reg     *testutil.Registry
	img     *layer.Image
	files   map[string][]byte
	blob    string // the layer's digest
	windows string // the windows blob's digest
	stack   *layer.Stack
	tree    *index.Tree
	release chan struct{}
}

func newGatedLayer(t *testing.T, repoTag string) *gatedLayer {
	t.Helper()
	g := &gatedLayer{reg: testutil.NewRegistry(t), release: make(chan struct{})}
	g.img, g.files = resolvedSpanned(t, g.reg, repoTag, testutil.Gzip)
	built := builtHere(t, g.img)
	if _, n, err := layer.Publish(context.Background(), g.img, built.Layers()); err != nil || n != 1 {
		t.Fatalf("publish: %d indexes, %v", n, err)
	}
	g.windows = built.Layers()[0].Index.Windows.Digest
	g.blob = g.img.Layers[0].Descriptor.Digest.String()
	g.reg.Wrap(func(next http.Handler) http.Handler {
		mr := multiRangeMiddleware(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, g.blob) && r.Header.Get("Range") != "" {
				<-g.release
			}
			mr.ServeHTTP(w, r)
		})
	})
	g.stack, _ = openStack(t, g.img, t.TempDir(), layer.StackOptions{IndexSource: layer.IndexRegistry})
	if o := g.stack.Layers()[0].Origin; o != layer.FromRegistry {
		t.Fatalf("index from %s", o)
	}
	var err error
	if g.tree, err = index.Merge(g.stack.Indexes()); err != nil {
		t.Fatal(err)
	}
	return g
}

// windowGets counts the GETs of the windows blob since the registry's last
// Reset, and those answered.
func (g *gatedLayer) windowGets() (all, done int) {
	for _, r := range g.reg.Requests() {
		if r.Blob == g.windows && r.Method == http.MethodGet {
			all++
			if r.Status != 0 {
				done++
			}
		}
	}
	return all, done
}

// prefetchHeld starts prefetching file as a profile would and waits for
// its batch's windows to come in, its bytes held back.
func (g *gatedLayer) prefetchHeld(t *testing.T, file string) *layer.Prefetch {
	t.Helper()
	g.reg.Reset()
	prof := &layer.Profile{Version: 1, Image: g.img.Digest.String(), Created: time.Now(),
		Files: []layer.ProfileFile{{Layer: g.blob, Path: file}}}
	p := layer.StartPrefetch(context.Background(), g.stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Profile: prof})
	t.Cleanup(p.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for _, done := g.windowGets(); done == 0; _, done = g.windowGets() {
		if time.Now().After(deadline) {
			close(g.release)
			t.Fatal("the prefetch batch fetched no window")
		}
		time.Sleep(time.Millisecond)
	}
	return p
}

// checkOneWindowGet fails t unless the windows blob was asked for once,
// by the batch.
func (g *gatedLayer) checkOneWindowGet(t *testing.T) {
	t.Helper()
	if all, _ := g.windowGets(); all != 1 {
		for _, r := range g.reg.Requests() {
			t.Logf("%s %s %q", r.Method, r.Path, r.Range)
		}
		t.Errorf("%d requests for windows, want the batch's one", all)
	}
}

// TestOnDemandSpanReadTakesItsBatchWindow: a read of a span that a prefetch
// batch is fetching takes the span's window from the batch, which fetched
// it beside the span's bytes, rather than asking the windows blob again.
func TestOnDemandSpanReadTakesItsBatchWindow(t *testing.T) {
	g := newGatedLayer(t, "batch-window:v1")
	// data/small.txt lies in a span after data/b.txt's: the batch of it
	// alone needs that span's window.
	p := g.prefetchHeld(t, "data/small.txt")
	read := make(chan struct{})
	go func() {
		defer close(read)
		readCheck(t, g.stack, g.tree, "data/small.txt", g.files["data/small.txt"])
	}()
	// Give the read time to ask for the window itself, if it would.
	time.Sleep(200 * time.Millisecond)
	close(g.release)
	<-read
	waitPrefetch(t, p)
	g.checkOneWindowGet(t)
}

// TestReadInsideABatchDecodesTheSpansBefore: a read that lands in a later
// span of a prefetch batch under way, before the batch's in-order
// decoding got there, takes its window from decoding the spans before it
// (their bytes are the batch's), not from a window request of its own.
func TestReadInsideABatchDecodesTheSpansBefore(t *testing.T) {
	g := newGatedLayer(t, "chained-window:v1")
	// data/b.txt begins inside a span and covers six more: its batch
	// fetches the first one's window alone.
	p := g.prefetchHeld(t, "data/b.txt")
	n, ok := g.tree.Lookup("data/b.txt")
	if !ok {
		t.Fatal("data/b.txt missing")
	}
	want := g.files["data/b.txt"]
	off := int64(len(want)) - testSpan/2
	got := make([]byte, testSpan/2)
	read := make(chan error, 1)
	go func() {
		k, err := g.stack.ReadAt(context.Background(), n, got, off)
		if err == nil || errors.Is(err, io.EOF) {
			if k != len(got) {
				err = fmt.Errorf("read %d of %d bytes", k, len(got))
			} else {
				err = nil
			}
		}
		read <- err
	}()
	// Give the read time to ask for the window itself, if it would.
	time.Sleep(200 * time.Millisecond)
	close(g.release)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[off:]) {
		t.Fatal("the end of data/b.txt reads wrong")
	}
	waitPrefetch(t, p)
	g.checkOneWindowGet(t)
}

// TestPrefetchFetchesAPlansWindowsTogether: a profile whose files lie far
// apart in a gzip layer, a prefetch batch each, fetches the span windows
// of all of them in one request, not one a batch; the files then read
// right without another request.
func TestPrefetchFetchesAPlansWindowsTogether(t *testing.T) {
	const islands = 4
	files := map[string][]byte{}
	var ents []testutil.Entry
	rng := rand.New(rand.NewPCG(3, 5))
	for i := range islands {
		// Incompressible filler puts each file more than a batch's reach
		// from the one before.
		noise := make([]byte, 3<<19)
		for j := range noise {
			noise[j] = byte(rng.Uint32())
		}
		ents = append(ents, testutil.Entry{Name: fmt.Sprintf("noise%d", i), Content: noise})
		name := fmt.Sprintf("file%d.txt", i)
		files[name] = textBytes(uint64(10+i), 3000)
		ents = append(ents, testutil.Entry{Name: name, Content: files[name]})
	}
	reg := testutil.NewRegistry(t)
	reg.Wrap(multiRangeMiddleware)
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), testutil.Gzip)
	ref := reg.Push(t, "islands:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}))
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	built := builtHere(t, img)
	if _, n, err := layer.Publish(context.Background(), img, built.Layers()); err != nil || n != 1 {
		t.Fatalf("publish: %d indexes, %v", n, err)
	}
	windows := built.Layers()[0].Index.Windows.Digest
	stack, _ := openStack(t, img, t.TempDir(), layer.StackOptions{IndexSource: layer.IndexRegistry})
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	prof := &layer.Profile{Version: 1, Image: img.Digest.String(), Created: time.Now()}
	for i := range islands {
		prof.Files = append(prof.Files, layer.ProfileFile{Layer: img.Layers[0].Descriptor.Digest.String(), Path: fmt.Sprintf("file%d.txt", i)})
	}
	reg.Reset()
	p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Profile: prof})
	defer p.Stop()
	if st := waitPrefetch(t, p); st.PriorityFiles != islands || st.Errors != 0 {
		t.Fatalf("prefetch: %+v", st)
	}
	var windowGets, layerGets int
	for _, r := range reg.Requests() {
		switch {
		case r.Method != http.MethodGet:
		case r.Blob == windows:
			windowGets++
		case r.Blob == img.Layers[0].Descriptor.Digest.String():
			layerGets++
		}
	}
	if windowGets != 1 || layerGets < 2 {
		for _, r := range reg.Requests() {
			t.Logf("%s %s %q", r.Method, r.Path, r.Range)
		}
		t.Fatalf("%d requests for windows and %d for the layer's bytes; want one for the windows of several batches", windowGets, layerGets)
	}
	reg.Reset()
	for name, want := range files {
		readCheck(t, stack, tree, name, want)
	}
	if n := blobRequests(reg); n != 0 {
		t.Errorf("reading the prefetched files took %d blob requests, want 0", n)
	}
}

// TestOneReadFetchesItsSpansTogether: a read that needs several spans of a
// cold gzip layer asks for them in one request, not one after another.
func TestOneReadFetchesItsSpansTogether(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, files := resolvedSpanned(t, reg, "one-read:v1", testutil.Gzip)
	fresh, tree := coldSpanned(t, img)
	n, _ := tree.Lookup("data/b.txt")
	ix := fresh.Layers()[0].Index
	off, size := int64(testSpan/2), int64(4*testSpan)
	first, last := ix.FindSpan(n.Chunks[0].BlobOffset+off), ix.FindSpan(n.Chunks[0].BlobOffset+off+size-1)
	if last-first < 2 {
		t.Fatalf("the read covers spans %d-%d only", first, last)
	}
	reg.Reset()
	got := make([]byte, size)
	if k, err := fresh.ReadAt(context.Background(), n, got, off); int64(k) != size {
		t.Fatalf("read %d bytes: %v", k, err)
	}
	if !bytes.Equal(got, files["data/b.txt"][off:off+size]) {
		t.Fatal("wrong content")
	}
	gets := 0
	for _, r := range reg.Requests() {
		if r.Blob == img.Layers[0].Descriptor.Digest.String() && r.Method == http.MethodGet {
			gets++
		}
	}
	if gets != 1 {
		t.Errorf("one read of spans %d-%d took %d requests of the layer; want 1", first, last, gets)
	}
}
