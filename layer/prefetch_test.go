package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// prefetchFiles are the files of the prefetch test layers: a dozen files
// of different sizes, the large ones spanning several chunks or spans.
func prefetchFiles() map[string][]byte {
	files := map[string][]byte{}
	for i := range 12 {
		files[fmt.Sprintf("f/%02d", i)] = textBytes(uint64(i+1), 1000+i*40_000)
	}
	return files
}

func prefetchEntries(files map[string][]byte) []testutil.Entry {
	ents := []testutil.Entry{{Name: "f", Type: tar.TypeDir}}
	for i := range 12 {
		name := fmt.Sprintf("f/%02d", i)
		ents = append(ents, testutil.Entry{Name: name, Content: files[name]})
	}
	return ents
}

// prioritizedLayer builds an eStargz layer of files whose writer put
// prioritized first (before the prefetch landmark).
func prioritizedLayer(t *testing.T, files map[string][]byte, prioritized []string) (v1.Layer, map[string]string) {
	t.Helper()
	raw := testutil.Tar(t, prefetchEntries(files))
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))),
		estargz.WithParallelism(1), estargz.WithChunkSize(32<<10), estargz.WithPrioritizedFiles(prioritized))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return static.NewLayer(blob, types.OCILayer), map[string]string{estargz.TOCJSONDigestAnnotation: b.TOCDigest().String()}
}

// prefetchImage pushes an image of an eStargz layer (with prioritized
// files) under a plain gzip layer, and returns it resolved, with the files
// of each layer.
func prefetchImage(t *testing.T, reg *testutil.Registry, prioritized []string) (*layer.Image, map[string][]byte, map[string][]byte) {
	t.Helper()
	base := prefetchFiles()
	l0, a0 := prioritizedLayer(t, base, prioritized)
	top := map[string][]byte{}
	var ents []testutil.Entry
	for i := range 6 {
		name := fmt.Sprintf("g/%02d", i)
		top[name] = textBytes(uint64(100+i), 300_000+i*1000)
		ents = append(ents, testutil.Entry{Name: name, Content: top[name]})
	}
	l1, a1 := testutil.Layer(t, testutil.Tar(t, append([]testutil.Entry{{Name: "g", Type: tar.TypeDir}}, ents...)), testutil.Gzip)
	ref := reg.Push(t, "pre:latest", testutil.Image(t, []v1.Layer{l0, l1}, []map[string]string{a0, a1}))
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return img, base, top
}

// prefetchStack opens img over a store at root (see openMerged).
func prefetchStack(t *testing.T, img *layer.Image, root string) (*layer.Stack, *layer.Store, *cache.Cache, *index.Tree) {
	t.Helper()
	st, err := layer.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	stack, c, tree := openMerged(t, img, st)
	return stack, st, c, tree
}

// openMerged opens img over st with a cache of its own, and merges its
// layers; stack and cache close with the test.
func openMerged(t *testing.T, img *layer.Image, st *layer.Store) (*layer.Stack, *cache.Cache, *index.Tree) {
	t.Helper()
	c, err := cache.New(cache.Options{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	stack, tree := openTree(t, img, st, c, layer.StackOptions{SpanSize: 256 << 10})
	return stack, c, tree
}

// waitPrefetch waits for p to end, failing the test after a generous bound.
func waitPrefetch(t *testing.T, p *layer.Prefetch) layer.PrefetchStatus {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(60 * time.Second):
		t.Fatalf("prefetch did not end: %+v", p.Status())
	}
	return p.Status()
}

// blobRequests counts the blob GETs the registry answered since its last
// Reset.
func blobRequests(reg *testutil.Registry) int {
	n := 0
	for _, r := range reg.Requests() {
		if r.Blob != "" && r.Method == http.MethodGet {
			n++
		}
	}
	return n
}

// readCheck reads name through r and compares it with want.
func readCheck(t *testing.T, r interface {
	ReadAt(context.Context, *index.Node, []byte, int64) (int, error)
}, tree *index.Tree, name string, want []byte) {
	t.Helper()
	n, ok := tree.Lookup(name)
	if !ok {
		t.Fatalf("%s missing", name)
	}
	got := make([]byte, n.Size)
	if k, err := r.ReadAt(context.Background(), n, got, 0); k != len(got) || (err != nil && !errors.Is(err, io.EOF)) {
		t.Fatalf("%s: read %d of %d: %v", name, k, len(got), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: wrong content", name)
	}
}

func TestPrefetchPrioritizedFiles(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, base, _ := prefetchImage(t, reg, []string{"f/07", "f/02"})
	stack, _, c, tree := prefetchStack(t, img, t.TempDir())
	if got := stack.Layers()[0].Index.Prefetch; got < 2 {
		t.Fatalf("eStargz index keeps %d prefetch entries, want the 2 prioritized files", got)
	}
	reg.Reset()
	p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Tree: tree})
	defer p.Stop()
	st := waitPrefetch(t, p)
	if st.PriorityFiles != 2 || st.Errors != 0 || st.FetchedBytes == 0 || st.State != "done" {
		t.Fatalf("status %+v; want 2 priority files fetched without error", st)
	}
	if n := blobRequests(reg); n != 1 {
		t.Errorf("prefetch of two adjacent prioritized files made %d blob requests, want 1", n)
	}
	reg.Reset()
	fills := c.Stats().Fills
	for _, name := range []string{"f/07", "f/02"} {
		readCheck(t, stack, tree, name, base[name])
	}
	if n := blobRequests(reg); n != 0 || c.Stats().Fills != fills {
		t.Errorf("reading the prioritized files made %d blob requests and %d fills; want none", n, c.Stats().Fills-fills)
	}
	readCheck(t, stack, tree, "f/05", base["f/05"])
	if blobRequests(reg) == 0 {
		t.Error("a file that was not prioritized was prefetched too")
	}
}

func TestProfileRecordSaveAndReplay(t *testing.T) {
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	img, base, top := prefetchImage(t, reg, nil)
	root := t.TempDir()
	stack, st, _, tree := prefetchStack(t, img, root)

	// Mount 1: record reads of A, B, C (and A again).
	rec := layer.NewRecorder(stack, layer.RecorderOptions{})
	r := layer.NewTrackedReader(stack, rec)
	order := []string{"g/03", "f/09", "f/01", "g/03"}
	for _, name := range order {
		want := base[name]
		if want == nil {
			want = top[name]
		}
		readCheck(t, r, tree, name, want)
	}
	rec.Stop()
	readCheck(t, r, tree, "f/04", base["f/04"]) // after the recording
	prof := rec.Profile(img)
	if prof == nil || len(prof.Files) != 3 || prof.Files[0].Path != "g/03" || prof.Files[1].Path != "f/09" || prof.Files[2].Path != "f/01" ||
		prof.Files[0].Layer != img.Layers[1].Descriptor.Digest.String() || prof.Files[1].Layer != img.Layers[0].Descriptor.Digest.String() {
		t.Fatalf("profile %+v; want g/03, f/09, f/01 with their layers", prof)
	}
	if err := st.SaveProfile(prof, layer.BuiltHere); err != nil {
		t.Fatal(err)
	}
	if d, err := layer.PushProfile(context.Background(), img, prof); err != nil || d.Hex == "" {
		t.Fatalf("push profile: %v", err)
	}

	check := func(t *testing.T, p *layer.Prefetch, stack *layer.Stack, c *cache.Cache, tree *index.Tree, source string) {
		t.Helper()
		defer p.Stop()
		s := waitPrefetch(t, p)
		if s.ProfileSource != source || s.PriorityFiles != 3 || s.Errors != 0 {
			t.Fatalf("status %+v; want the 3 files of the %s profile", s, source)
		}
		reg.Reset()
		fills := c.Stats().Fills
		readCheck(t, stack, tree, "g/03", top["g/03"])
		readCheck(t, stack, tree, "f/09", base["f/09"])
		readCheck(t, stack, tree, "f/01", base["f/01"])
		if n := blobRequests(reg); n != 0 || c.Stats().Fills != fills {
			t.Errorf("reading the profile's files made %d blob requests and %d fills; want none", n, c.Stats().Fills-fills)
		}
	}
	t.Run("same store", func(t *testing.T) {
		stack, st, c, tree := prefetchStack(t, img, root) // fresh cache
		check(t, layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Image: img, Store: st}), stack, c, tree, "store")
	})
	t.Run("registry", func(t *testing.T) {
		img, err := layer.Resolve(context.Background(), img.Ref.String())
		if err != nil {
			t.Fatal(err)
		}
		root := t.TempDir()
		stack, st, c, tree := prefetchStack(t, img, root) // fresh root
		check(t, layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Image: img, Store: st}), stack, c, tree, "registry")
		if _, err := st.LoadProfile(img.Digest, layer.FetchedFromRegistry); err != nil {
			t.Errorf("the registry's profile was not stored: %v", err)
		}
		// The profile artifact does not hide the index artifact.
		if _, n, err := layer.Publish(context.Background(), img, stack.Layers()); err != nil || n != 1 {
			t.Fatalf("publish: %d, %v", n, err)
		}
		found, err := layer.FindIndexes(context.Background(), img, []v1.Hash{img.Layers[1].Descriptor.Digest})
		if err != nil || len(found) != 1 {
			t.Fatalf("find indexes beside a profile: %d, %v", len(found), err)
		}
		if p, err := layer.FindProfile(context.Background(), img); err != nil || p == nil || len(p.Files) != 3 {
			t.Fatalf("find profile beside indexes: %+v, %v", p, err)
		}
	})
	t.Run("registry, looked up early", func(t *testing.T) {
		img, err := layer.Resolve(context.Background(), img.Ref.String())
		if err != nil {
			t.Fatal(err)
		}
		root := t.TempDir()
		st, _ := layer.NewStore(root)
		lookup := layer.LookupProfile(context.Background(), img, st)
		if lookup == nil {
			t.Fatal("no lookup for a store without the profile")
		}
		stack, st, c, tree := prefetchStack(t, img, root)
		check(t, layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Image: img, Store: st, Lookup: lookup}), stack, c, tree, "registry")
		// Now the store holds it: nothing to look up.
		if l := layer.LookupProfile(context.Background(), img, st); l != nil {
			t.Error("a lookup started though the store holds the profile")
		}
	})
}

func TestRecorderBound(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, base, _ := prefetchImage(t, reg, nil)
	stack, _, _, tree := prefetchStack(t, img, t.TempDir())
	rec := layer.NewRecorder(stack, layer.RecorderOptions{MaxFiles: 2})
	r := layer.NewTrackedReader(stack, rec)
	for _, name := range []string{"f/00", "f/01", "f/02"} {
		readCheck(t, r, tree, name, base[name])
	}
	select {
	case <-rec.Ended():
	default:
		t.Fatal("recording did not end at its bound")
	}
	if p := rec.Profile(img); p == nil || len(p.Files) != 2 {
		t.Fatalf("profile %+v; want 2 files", p)
	}
}

func TestPrefetchAllFillsTheCacheAndStops(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, base, top := prefetchImage(t, reg, nil)
	stack, _, c, tree := prefetchStack(t, img, t.TempDir())
	reg.Reset()
	p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchAll, Tree: tree, Rate: 0})
	defer p.Stop()
	st := waitPrefetch(t, p)
	if st.State != "done" || st.LayerBytes == 0 || st.LayerDoneBytes != st.LayerBytes || st.Errors != 0 {
		t.Fatalf("status %+v; want every layer byte handled", st)
	}
	requests := blobRequests(reg)
	fills := c.Stats().Fills
	for name, want := range base {
		readCheck(t, stack, tree, name, want)
	}
	for name, want := range top {
		readCheck(t, stack, tree, name, want)
	}
	if n := blobRequests(reg); n != requests || c.Stats().Fills != fills {
		t.Errorf("reads after a whole prefetch made %d blob requests and %d fills; want none", n-requests, c.Stats().Fills-fills)
	}
}

func TestPrefetchYieldsToOnDemandReads(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, base, _ := prefetchImage(t, reg, nil)
	stack, _, _, tree := prefetchStack(t, img, t.TempDir())
	r := layer.NewTrackedReader(stack, nil)
	act := r.Activity()
	// An on-demand read is in flight (as if it waited for the registry)
	// when prefetch starts.
	act.Begin()
	reg.Reset()
	p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchAll, Activity: act})
	defer p.Stop()
	// Another read starts and completes; prefetch still waits, for the
	// first one.
	readCheck(t, r, tree, "f/10", base["f/10"])
	onDemand := reg.Requests()
	if len(onDemand) == 0 {
		t.Fatal("the on-demand read made no request")
	}
	for _, q := range onDemand {
		if q.Blob != img.Layers[0].Descriptor.Digest.String() {
			t.Fatalf("a request for %s %s came before the on-demand read ended; background prefetch did not wait", q.Blob, q.Range)
		}
	}
	act.End()
	if st := waitPrefetch(t, p); st.State != "done" || st.LayerDoneBytes != st.LayerBytes {
		t.Fatalf("status %+v after the read ended", st)
	}
	if len(reg.Requests()) <= len(onDemand) {
		t.Error("background prefetch fetched nothing once reads were done")
	}
}

func TestPrefetchErrorsNeverFailReadsNorCacheWrongBytes(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, base, top := prefetchImage(t, reg, []string{"f/03"})
	stack, _, _, tree := prefetchStack(t, img, t.TempDir())
	var corrupt atomic.Bool
	corrupt.Store(true)
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !corrupt.Load() || r.Header.Get("Range") == "" || !strings.Contains(r.URL.Path, "/blobs/") {
				next.ServeHTTP(w, r)
				return
			}
			next.ServeHTTP(&flipWriter{ResponseWriter: w}, r)
		})
	})
	p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchAll, Tree: tree})
	defer p.Stop()
	if st := waitPrefetch(t, p); st.Errors == 0 || st.State != "done" {
		t.Fatalf("status %+v; want errors counted and prefetch done", st)
	}
	corrupt.Store(false)
	for name, want := range base {
		readCheck(t, stack, tree, name, want)
	}
	for name, want := range top {
		readCheck(t, stack, tree, name, want)
	}
}

// flipWriter flips one bit in the middle of every body it writes.
type flipWriter struct {
	http.ResponseWriter
	done bool
}

func (f *flipWriter) Write(p []byte) (int, error) {
	if !f.done && len(p) > 0 {
		q := bytes.Clone(p)
		q[len(q)/2] ^= 0x10
		f.done = true
		return f.ResponseWriter.Write(q)
	}
	return f.ResponseWriter.Write(p)
}

func TestProfileStoreRefusesBadProfiles(t *testing.T) {
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := &layer.Profile{Version: layer.ProfileVersion, Image: "sha256:" + strings.Repeat("a", 64),
		Files: []layer.ProfileFile{{Layer: "sha256:" + strings.Repeat("b", 64), Path: "usr/bin/x"}}}
	if err := st.SaveProfile(good, layer.BuiltHere); err != nil {
		t.Fatal(err)
	}
	d, _ := v1.NewHash(good.Image)
	if p, err := st.LoadProfile(d, layer.BuiltHere); err != nil || len(p.Files) != 1 {
		t.Fatalf("load: %+v, %v", p, err)
	}
	for _, bad := range []layer.Profile{
		{Version: 2, Image: good.Image},
		{Version: layer.ProfileVersion, Image: "nope"},
		{Version: layer.ProfileVersion, Image: good.Image, Files: []layer.ProfileFile{{Layer: good.Files[0].Layer, Path: "../etc/passwd"}}},
		{Version: layer.ProfileVersion, Image: good.Image, Files: []layer.ProfileFile{{Layer: "x", Path: "a"}}},
	} {
		if err := st.SaveProfile(&bad, layer.BuiltHere); err == nil {
			t.Errorf("saved a bad profile %+v", bad)
		}
	}
}

// multiRangeMiddleware answers blob GETs asking for several ranges with a
// multipart/byteranges body, as registries serving blobs from a file do;
// the in-process registry alone honours only the first range.
func multiRangeMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.Header.Get("Range"), ",") {
			next.ServeHTTP(w, r)
			return
		}
		whole := r.Clone(r.Context())
		whole.Header.Del("Range")
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, whole)
		if rec.Code != http.StatusOK {
			w.WriteHeader(rec.Code)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(rec.Body.Bytes()))
	})
}

// TestPrefetchProfileInFewRequests: the files of a profile scattered over
// a layer are fetched in one multi-range request where the registry takes
// them, and in single ranges where it does not (found out once); either
// way later reads of them need no request and get the right bytes.
func TestPrefetchProfileInFewRequests(t *testing.T) {
	files := map[string][]byte{}
	ents := []testutil.Entry{{Name: "m", Type: tar.TypeDir}}
	for i := range 200 {
		name := fmt.Sprintf("m/%03d.py", i)
		files[name] = textBytes(uint64(i+7), 2000+(i%7)*300)
		ents = append(ents, testutil.Entry{Name: name, Content: files[name]})
	}
	for _, tc := range []struct {
		name  string
		multi bool
	}{{"multi-range registry", true}, {"single-range registry", false}} {
		t.Run(tc.name, func(t *testing.T) {
			reg := testutil.NewRegistry(t)
			if tc.multi {
				reg.Wrap(multiRangeMiddleware)
			}
			l, ann := testutil.Layer(t, testutil.Tar(t, ents), testutil.EStargz)
			ref := reg.Push(t, "many:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}))
			img, err := layer.Resolve(context.Background(), ref)
			if err != nil {
				t.Fatal(err)
			}
			stack, _, _, tree := prefetchStack(t, img, t.TempDir())
			prof := &layer.Profile{Version: 1, Image: img.Digest.String(), Created: time.Now()}
			var names []string
			for i := 190; i >= 0; i -= 10 {
				name := fmt.Sprintf("m/%03d.py", i)
				names = append(names, name)
				prof.Files = append(prof.Files, layer.ProfileFile{Layer: img.Layers[0].Descriptor.Digest.String(), Path: name})
			}
			reg.Reset()
			p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Profile: prof})
			defer p.Stop()
			st := waitPrefetch(t, p)
			if st.PriorityFiles != len(names) || st.Errors != 0 {
				t.Fatalf("prefetch: %+v", st)
			}
			var multi, single int
			for _, r := range reg.Requests() {
				if r.Blob == "" || r.Method != http.MethodGet {
					continue
				}
				if strings.Contains(r.Range, ",") {
					multi++
				} else {
					single++
				}
			}
			if tc.multi && (multi != 1 || single != 0) {
				t.Errorf("%d multi-range and %d single-range requests, want one multi-range request", multi, single)
			}
			if !tc.multi && (multi != 1 || single < 2) {
				t.Errorf("%d multi-range and %d single-range requests, want the one refused, then single ranges", multi, single)
			}
			// The pieces, not the range they lie in: far less than the
			// layer (of which the 20 files are a tenth).
			if size := img.Layers[0].Descriptor.Size; tc.multi && st.FetchedBytes > size/4 {
				t.Errorf("fetched %d bytes of a %d byte layer for a tenth of its files", st.FetchedBytes, size)
			}
			reg.Reset()
			for _, name := range names {
				readCheck(t, stack, tree, name, files[name])
			}
			if n := blobRequests(reg); n != 0 {
				t.Errorf("reading the prefetched files took %d blob requests, want 0", n)
			}
		})
	}
}

// TestOnDemandReadJoinsPrefetchBatch: a read of a file whose bytes a
// prefetch request is fetching waits for that request instead of sending
// its own.
func TestOnDemandReadJoinsPrefetchBatch(t *testing.T) {
	files := map[string][]byte{}
	ents := []testutil.Entry{{Name: "m", Type: tar.TypeDir}}
	for i := range 50 {
		name := fmt.Sprintf("m/%03d.py", i)
		files[name] = textBytes(uint64(i+3), 3000)
		ents = append(ents, testutil.Entry{Name: name, Content: files[name]})
	}
	reg := testutil.NewRegistry(t)
	release := make(chan struct{})
	reg.Wrap(func(next http.Handler) http.Handler {
		mr := multiRangeMiddleware(next)
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.Header.Get("Range"), ",") {
				<-release
			}
			mr.ServeHTTP(w, r)
		})
	})
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), testutil.EStargz)
	ref := reg.Push(t, "join:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}))
	img, err := layer.Resolve(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	stack, _, _, tree := prefetchStack(t, img, t.TempDir())
	prof := &layer.Profile{Version: 1, Image: img.Digest.String(), Created: time.Now()}
	for _, i := range []int{40, 5, 25} {
		prof.Files = append(prof.Files, layer.ProfileFile{Layer: img.Layers[0].Descriptor.Digest.String(), Path: fmt.Sprintf("m/%03d.py", i)})
	}
	reg.Reset()
	p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Profile: prof})
	defer p.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for blobRequests(reg) == 0 {
		if time.Now().After(deadline) {
			close(release)
			t.Fatal("prefetch sent no request")
		}
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		readCheck(t, stack, tree, "m/025.py", files["m/025.py"])
	}()
	// Give the read time to send a request of its own, if it would.
	time.Sleep(200 * time.Millisecond)
	close(release)
	<-done
	waitPrefetch(t, p)
	if n := blobRequests(reg); n != 1 {
		for _, r := range reg.Requests() {
			t.Logf("%s %s %q", r.Method, r.Path, r.Range)
		}
		t.Errorf("%d blob requests, want the prefetch's one", n)
	}
}

// followingReader pushes an image of layer l (with annotations ann) as
// repoTag, opens it, starts prefetch (its priority phase done) and
// returns the stack, its tree, the prefetch and a reader whose reads have
// it follow programs and ELF files. The prefetch stops with the test.
func followingReader(t *testing.T, reg *testutil.Registry, repoTag string, l v1.Layer, ann map[string]string) (*layer.Stack, *index.Tree, *layer.Prefetch, *layer.TrackedReader) {
	t.Helper()
	img, err := layer.Resolve(context.Background(), reg.Push(t, repoTag, testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})))
	if err != nil {
		t.Fatal(err)
	}
	stack, _, _, tree := prefetchStack(t, img, t.TempDir())
	// An empty profile: no start-up files, the followers alone fetch.
	p := layer.StartPrefetch(context.Background(), stack, layer.PrefetchOptions{Mode: layer.PrefetchProfile, Tree: tree, Profile: &layer.Profile{}})
	t.Cleanup(p.Stop)
	waitPrefetch(t, p)
	r := layer.NewTrackedReader(stack, nil)
	r.FollowELF(p)
	return stack, tree, p, r
}

// readHead reads the first 4 KiB of name through r, as the kernel starting
// a program does.
func readHead(t *testing.T, r *layer.TrackedReader, tree *index.Tree, name string) {
	t.Helper()
	n, ok := tree.Lookup(name)
	if !ok {
		t.Fatalf("%s missing", name)
	}
	if _, err := r.ReadAt(context.Background(), n, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// waitStatus waits until done holds of p's status and returns it, failing
// the test, doing what, after a generous bound.
func waitStatus(t *testing.T, p *layer.Prefetch, what string, done func(layer.PrefetchStatus) bool) layer.PrefetchStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	st := p.Status()
	for ; !done(st); st = p.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %+v", what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return st
}

// TestPrefetchFollowsELF: when a job starts reading a program, its loader,
// the loader's cache and its libraries are fetched before the loader asks
// for them (real Debian binaries, laid out as Debian does, with symlinks).
func TestPrefetchFollowsELF(t *testing.T) {
	host := map[string]string{
		"usr/bin/env":                                   "/usr/bin/env",
		"usr/lib/x86_64-linux-gnu/libc.so.6":            "/lib/x86_64-linux-gnu/libc.so.6",
		"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
	}
	files := map[string][]byte{"etc/ld.so.cache": textBytes(3, 30000)}
	for name, from := range host {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Skipf("no %s: %v", from, err)
		}
		files[name] = b
	}
	ents := []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir}, {Name: "usr", Type: tar.TypeDir}, {Name: "usr/bin", Type: tar.TypeDir},
		{Name: "usr/lib", Type: tar.TypeDir}, {Name: "usr/lib/x86_64-linux-gnu", Type: tar.TypeDir},
		{Name: "lib", Type: tar.TypeSymlink, Linkname: "usr/lib"}, {Name: "lib64", Type: tar.TypeDir},
		{Name: "lib64/ld-linux-x86-64.so.2", Type: tar.TypeSymlink, Linkname: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
		{Name: "usr/share", Type: tar.TypeDir},
	}
	// Files in between, so that nothing comes along with a neighbour.
	for i, name := range []string{"usr/bin/env", "etc/ld.so.cache", "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"} {
		ents = append(ents, testutil.Entry{Name: name, Content: files[name], Mode: 0o755})
		for j := range 10 {
			ents = append(ents, testutil.Entry{Name: fmt.Sprintf("usr/share/%d%d", i, j), Content: textBytes(uint64(10*i+j), 40000)})
		}
	}
	reg := testutil.NewRegistry(t)
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), testutil.EStargz)
	stack, tree, p, r := followingReader(t, reg, "elf:v1", l, ann)

	readHead(t, r, tree, "usr/bin/env")
	st := waitStatus(t, p, "following /usr/bin/env", func(st layer.PrefetchStatus) bool { return st.ELFFiles >= 3 && st.ELFFollowing == 0 })
	if st.ELFFiles != 3 || st.ELFBytes == 0 || st.ELFDoneBytes != st.ELFBytes {
		t.Errorf("followed /usr/bin/env: %+v; want its loader, the loader's cache and libc fetched", st)
	}
	reg.Reset()
	for _, name := range []string{"etc/ld.so.cache", "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"} {
		readCheck(t, stack, tree, name, files[name])
	}
	if n := blobRequests(reg); n != 0 {
		t.Errorf("reading what /usr/bin/env needs took %d blob requests, want 0", n)
	}
	// Not a program: nothing is followed.
	readHead(t, r, tree, "usr/share/07")
	if st := p.Status(); st.ELFFiles != 3 || st.ELFFollowing != 0 {
		t.Errorf("after reading a text file: %+v", st)
	}
}

// TestPrefetchStartsWithTheLoader: a mount without a profile fetches, as
// soon as it starts, the files nearly every job reads first: the loader at
// its standard path, its cache, the C library, the local time zone and the
// files of the C.UTF-8 locale, found through the tree's symlinks; a musl image's loader alone (it is the C library); a
// static image nothing. A mount with a profile goes by the profile alone.
func TestPrefetchStartsWithTheLoader(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the layouts below are amd64's")
	}
	glibc := []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir}, {Name: "usr", Type: tar.TypeDir}, {Name: "usr/lib", Type: tar.TypeDir},
		{Name: "usr/lib/x86_64-linux-gnu", Type: tar.TypeDir}, {Name: "lib", Type: tar.TypeSymlink, Linkname: "usr/lib"},
		{Name: "lib64", Type: tar.TypeDir},
		{Name: "lib64/ld-linux-x86-64.so.2", Type: tar.TypeSymlink, Linkname: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
		{Name: "usr/lib/x86_64-linux-gnu/libc.so.6", Content: textBytes(1, 300_000), Mode: 0o755},
		{Name: "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", Content: textBytes(2, 100_000), Mode: 0o755},
		{Name: "etc/ld.so.cache", Content: textBytes(3, 20_000)},
		{Name: "usr/share", Type: tar.TypeDir}, {Name: "usr/share/zoneinfo", Type: tar.TypeDir},
		{Name: "usr/share/zoneinfo/UTC", Content: textBytes(6, 3_000)},
		{Name: "etc/localtime", Type: tar.TypeSymlink, Linkname: "/usr/share/zoneinfo/UTC"},
		{Name: "usr/lib/locale", Type: tar.TypeDir}, {Name: "usr/lib/locale/C.utf8", Type: tar.TypeDir},
		{Name: "usr/lib/locale/C.utf8/LC_CTYPE", Content: textBytes(7, 50_000)},
		{Name: "usr/lib/locale/C.utf8/LC_NUMERIC", Content: textBytes(8, 100)},
		{Name: "usr/lib/x86_64-linux-gnu/gconv", Type: tar.TypeDir},
		{Name: "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache", Content: textBytes(9, 27_000)},
	}
	musl := []testutil.Entry{
		{Name: "lib", Type: tar.TypeDir},
		{Name: "lib/ld-musl-x86_64.so.1", Content: textBytes(4, 300_000), Mode: 0o755},
		{Name: "lib/libc.musl-x86_64.so.1", Type: tar.TypeSymlink, Linkname: "ld-musl-x86_64.so.1"},
	}
	static := []testutil.Entry{{Name: "bin", Type: tar.TypeDir}, {Name: "bin/app", Content: textBytes(5, 300_000), Mode: 0o755}}
	for _, tc := range []struct {
		name    string
		ents    []testutil.Entry
		profile bool
		want    []string // the files fetched before any read
	}{
		{"glibc", glibc, false, []string{"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "etc/ld.so.cache", "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/share/zoneinfo/UTC",
			"usr/lib/locale/C.utf8/LC_CTYPE", "usr/lib/locale/C.utf8/LC_NUMERIC", "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache"}},
		{"glibc with a profile", glibc, true, nil},
		{"musl", musl, false, []string{"lib/ld-musl-x86_64.so.1"}},
		{"static", static, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Files in between, so that nothing comes along with a
			// neighbour.
			ents := []testutil.Entry{{Name: "share", Type: tar.TypeDir}}
			for i, e := range tc.ents {
				ents = append(ents, e, testutil.Entry{Name: fmt.Sprintf("share/%02d", i), Content: textBytes(uint64(100+i), 60_000)})
			}
			reg := testutil.NewRegistry(t)
			l, ann := testutil.Layer(t, testutil.Tar(t, ents), testutil.EStargz)
			img, err := layer.Resolve(context.Background(), reg.Push(t, "start:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})))
			if err != nil {
				t.Fatal(err)
			}
			stack, _, _, tree := prefetchStack(t, img, t.TempDir())
			opts := layer.PrefetchOptions{Mode: layer.PrefetchProfile, Tree: tree}
			if tc.profile {
				opts.Profile = &layer.Profile{}
			}
			p := layer.StartPrefetch(context.Background(), stack, opts)
			t.Cleanup(p.Stop)
			if st := waitPrefetch(t, p); st.PriorityFiles != len(tc.want) || st.PriorityDoneBytes != st.PriorityBytes {
				t.Fatalf("prefetch: %+v; want %d files fetched", st, len(tc.want))
			}
			reg.Reset()
			for _, name := range tc.want {
				n, _ := tree.Lookup(name)
				want := make([]byte, n.Size)
				if _, err := stack.ReadAt(context.Background(), n, want, 0); err != nil && !errors.Is(err, io.EOF) {
					t.Fatal(err)
				}
			}
			if n := blobRequests(reg); n != 0 {
				t.Errorf("reading %v after prefetch took %d blob requests, want 0", tc.want, n)
			}
			// Nothing else came: a file beside them is still read on demand.
			readCheck(t, stack, tree, "share/00", textBytes(100, 60_000))
			if n := blobRequests(reg); n == 0 {
				t.Error("share/00 was fetched ahead of its reads")
			}
		})
	}
}

// TestPrefetchFetchesAProgramWhole: a job's first read of a file with an
// execute bit (the kernel starting a program) has the rest of the file
// fetched beside it, in one batch, so that the program's later page-ins
// find it cached; a file without one is left to its reads.
func TestPrefetchFetchesAProgramWhole(t *testing.T) {
	for _, f := range []testutil.Format{testutil.EStargz, testutil.Gzip} {
		t.Run(string(f), func(t *testing.T) {
			files := map[string][]byte{"bin/prog": textBytes(41, 1<<20), "share/data": textBytes(42, 1<<20)}
			// The program after a large file: its file offsets are not
			// its offsets in the tar.
			ents := []testutil.Entry{
				{Name: "share", Type: tar.TypeDir}, {Name: "share/data", Content: files["share/data"]},
				{Name: "bin", Type: tar.TypeDir}, {Name: "bin/prog", Content: files["bin/prog"], Mode: 0o755},
			}
			reg := testutil.NewRegistry(t)
			l, ann := testutil.Layer(t, testutil.Tar(t, ents), f, testutil.WithChunkSize(64<<10))
			_, tree, p, r := followingReader(t, reg, "prog:v1", l, ann)
			reg.Reset()

			readHead(t, r, tree, "bin/prog")
			waitStatus(t, p, "fetching the rest of bin/prog", func(st layer.PrefetchStatus) bool { return st.ELFFiles >= 1 && st.ELFDoneBytes >= st.ELFBytes })
			// The head's unit, the rest in one batch, and for gzip the
			// window the batch's first span starts from; no byte twice.
			if n := blobRequests(reg); n > 3 {
				t.Errorf("the head and the rest of bin/prog took %d blob requests, want at most 3", n)
			}
			checkNoByteTwice(t, reg)
			reg.Reset()
			readCheck(t, r, tree, "bin/prog", files["bin/prog"])
			if n := blobRequests(reg); n != 0 {
				t.Errorf("reading bin/prog after its head took %d blob requests, want 0", n)
			}

			readHead(t, r, tree, "share/data")
			reg.Reset()
			readCheck(t, r, tree, "share/data", files["share/data"])
			if n := blobRequests(reg); n == 0 {
				t.Error("share/data, not executable, was fetched ahead of its reads")
			}
			if st := p.Status(); st.ELFFiles != 1 {
				t.Errorf("files fetched whole: %d, want bin/prog alone", st.ELFFiles)
			}
		})
	}
}

// TestPrefetchFetchesPythonStart: a job starting a CPython interpreter
// has the byte code the interpreter imports before the job's own code
// fetched beside the program, so that its imports find it cached; a
// program that is not Python fetches none of it.
func TestPrefetchFetchesPythonStart(t *testing.T) {
	for _, f := range []testutil.Format{testutil.EStargz, testutil.Gzip} {
		t.Run(string(f), func(t *testing.T) {
			pyc := "usr/lib/python3.11/encodings/__pycache__/"
			start := []string{pyc + "__init__.cpython-311.pyc", pyc + "aliases.cpython-311.pyc", pyc + "utf_8.cpython-311.pyc"}
			ents := []testutil.Entry{
				{Name: "usr", Type: tar.TypeDir}, {Name: "usr/bin", Type: tar.TypeDir},
				{Name: "usr/bin/python3.11", Content: textBytes(50, 300_000), Mode: 0o755},
				{Name: "usr/bin/tool", Content: textBytes(51, 1<<20), Mode: 0o755},
				{Name: "usr/lib", Type: tar.TypeDir}, {Name: "usr/lib/python3.11", Type: tar.TypeDir},
				{Name: "usr/lib/python3.11/encodings", Type: tar.TypeDir}, {Name: pyc, Type: tar.TypeDir},
			}
			// Other modules in between, so that nothing comes along
			// with a neighbour, and one before them with others around
			// it: readahead follows reads forward.
			ents = append(ents, testutil.Entry{Name: pyc + "base64.cpython-311.pyc", Content: textBytes(82, 300_000)},
				testutil.Entry{Name: pyc + "json.cpython-311.pyc", Content: textBytes(80, 20_000)},
				testutil.Entry{Name: pyc + "pad.cpython-311.pyc", Content: textBytes(81, 300_000)})
			for i, name := range start {
				ents = append(ents, testutil.Entry{Name: name, Content: textBytes(uint64(60+i), 20_000)},
					testutil.Entry{Name: fmt.Sprintf("%sother%d.cpython-311.pyc", pyc, i), Content: textBytes(uint64(70+i), 300_000)})
			}
			reg := testutil.NewRegistry(t)
			l, ann := testutil.Layer(t, testutil.Tar(t, ents), f, testutil.WithChunkSize(64<<10))
			stack, tree, p, r := followingReader(t, reg, "py:v1", l, ann)

			readHead(t, r, tree, "usr/bin/tool")
			if st := waitStatus(t, p, "fetching the rest of usr/bin/tool", func(st layer.PrefetchStatus) bool { return st.ELFFiles >= 1 && st.ELFDoneBytes >= st.ELFBytes }); st.ELFFiles != 1 {
				t.Errorf("files fetched for usr/bin/tool: %d, want its rest alone", st.ELFFiles)
			}
			readHead(t, r, tree, "usr/bin/python3.11")
			// The modules are planned (and claimed) before the read
			// returns: their reads join the fetch if it is still on.
			// (Modules that share a gzip span count once.)
			waitStatus(t, p, "fetching what python3.11 imports first", func(st layer.PrefetchStatus) bool {
				return st.ELFFiles >= 3 && st.ELFDoneBytes >= st.ELFBytes
			})
			reg.Reset()
			for i, name := range start {
				readCheck(t, stack, tree, name, textBytes(uint64(60+i), 20_000))
			}
			if n := blobRequests(reg); n != 0 {
				t.Errorf("reading python3.11's first imports took %d blob requests, want 0", n)
			}
			readCheck(t, stack, tree, pyc+"json.cpython-311.pyc", textBytes(80, 20_000))
			if n := blobRequests(reg); n == 0 {
				t.Error("a module python3.11 does not import at start was fetched ahead of its reads")
			}
		})
	}
}

// checkNoByteTwice fails the test if two of the range requests the
// registry answered since its last Reset asked for the same bytes of one
// blob (more than a byte where they meet).
func checkNoByteTwice(t *testing.T, reg *testutil.Registry) {
	t.Helper()
	type span struct{ from, to int64 }
	got := map[string][]span{}
	for _, r := range reg.Requests() {
		spec, ok := strings.CutPrefix(r.Range, "bytes=")
		if r.Blob == "" || !ok {
			continue
		}
		for _, one := range strings.Split(spec, ",") {
			var s span
			if _, err := fmt.Sscanf(strings.TrimSpace(one), "%d-%d", &s.from, &s.to); err != nil {
				t.Fatalf("range %q: %v", r.Range, err)
			}
			for _, o := range got[r.Blob] {
				// Gzip spans share the byte that holds the bit where
				// one ends and the next starts.
				if s.from < o.to && o.from < s.to {
					t.Errorf("blob %s: bytes %d-%d asked for again (%d-%d)", r.Blob, o.from, o.to, s.from, s.to)
				}
			}
			got[r.Blob] = append(got[r.Blob], s)
		}
	}
}
