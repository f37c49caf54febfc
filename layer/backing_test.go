package layer_test

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// backingStack opens img with a cache whose disk tier is in cacheDir; the
// caller closes the stack (Close waits for the copies).
func backingStack(t *testing.T, img *layer.Image, cacheDir string, minSize int64) (*layer.Stack, *cache.Cache, *index.Tree) {
	t.Helper()
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Options{MemoryBytes: 64 << 20, Dir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	stack, err := layer.Open(context.Background(), img, st, c, layer.StackOptions{SpanSize: 256 << 10, BackingMinSize: minSize})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	return stack, c, tree
}

// fileEntries lists the passthrough copies and temp files under dir.
func fileEntries(t *testing.T, dir string) (copies, temps int) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			t.Fatal(err)
		case strings.HasSuffix(d.Name(), ".file"):
			copies++
		case strings.HasPrefix(d.Name(), ".tmp-"):
			temps++
		}
		return nil
	})
	return copies, temps
}

// flipEveryWrite flips a bit in the middle of every write of a body, so
// that no part of a multi-range answer (part headers included) survives.
type flipEveryWrite struct{ http.ResponseWriter }

func (f flipEveryWrite) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	q := bytes.Clone(p)
	q[len(q)/2] ^= 0x10
	return f.ResponseWriter.Write(q)
}

func TestBackingCopies(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, base, top := prefetchImage(t, reg, nil)
	var corrupt atomic.Bool
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if corrupt.Load() && r.Header.Get("Range") != "" && strings.Contains(r.URL.Path, "/blobs/") {
				next.ServeHTTP(flipEveryWrite{w}, r)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	files := map[string][]byte{}
	for name, b := range top { // a gzip layer (seek index)
		files[name] = b
	}
	for name, b := range base { // an eStargz layer
		if len(b) >= 100_000 {
			files[name] = b
		}
	}
	if len(files) < 8 {
		t.Fatalf("only %d files large enough to copy", len(files))
	}
	cacheDir := t.TempDir()

	// Bytes that fail verification never make a copy: any copy made is
	// exact. (Most reads fail, but a chunk of the eStargz layer that lies
	// wholly between two flipped bits of a body verifies, and building the
	// gzip layer's index streams the blob whole, uncorrupted, and may
	// leave its bytes in the cache.)
	stack, c, tree := backingStack(t, img, cacheDir, 100_000)
	corrupt.Store(true)
	for name := range files {
		n, _ := tree.Lookup(name)
		stack.ReadWhole(n)
	}
	stack.Close() // waits for the copies
	c.Flush()     // and the chunk writes, which use temp files too
	if _, temps := fileEntries(t, cacheDir); temps != 0 {
		t.Fatalf("after corrupt fetches: %d temp files; want none", temps)
	}
	for name, want := range files {
		n, _ := tree.Lookup(name)
		f := stack.OpenBacking(n)
		if f == nil {
			continue
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, want) {
			_, ranged := base[name]
			t.Fatalf("after corrupt fetches, a copy of %s (eStargz: %v) is wrong: %d bytes, %v", name, ranged, len(got), err)
		}
	}
	corrupt.Store(false)

	// Good bytes do; a second request for one copy makes no second copy,
	// and small files are left alone.
	stack, c, tree = backingStack(t, img, cacheDir, 100_000)
	for name := range files {
		n, _ := tree.Lookup(name)
		stack.ReadWhole(n)
		stack.ReadWhole(n)
	}
	var small *index.Node
	for name, b := range base {
		if len(b) < 100_000 {
			small, _ = tree.Lookup(name)
			stack.ReadWhole(small)
			break
		}
	}
	stack.Close()
	c.Flush()
	if copies, temps := fileEntries(t, cacheDir); copies != len(files) || temps != 0 {
		t.Fatalf("%d copies and %d temp files for %d files", copies, temps, len(files))
	}
	if f := stack.OpenBacking(small); f != nil {
		f.Close()
		t.Error("a file under the minimum size was copied")
	}

	// Another stack on the same disk tier opens them, each exactly its
	// file's bytes.
	stack, _, tree = backingStack(t, img, cacheDir, 100_000)
	defer stack.Close()
	reg.Reset()
	for name, want := range files {
		n, _ := tree.Lookup(name)
		f := stack.OpenBacking(n)
		if f == nil {
			t.Fatalf("no copy of %s", name)
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("copy of %s: %d bytes, %v; want its %d bytes", name, len(got), err, len(want))
		}
	}
	if n := len(reg.Requests()); n != 0 {
		t.Errorf("opening copies made %d registry requests", n)
	}
}

func TestBackingCopyYieldsToReads(t *testing.T) {
	reg := testutil.NewRegistry(t)
	img, _, top := prefetchImage(t, reg, nil)
	cacheDir := t.TempDir()
	stack, _, tree := backingStack(t, img, cacheDir, 100_000)
	defer stack.Close()
	r := layer.NewTrackedReader(stack, nil)
	var name string
	for name = range top {
		break
	}
	n, _ := tree.Lookup(name)
	readCheck(t, r, tree, name, top[name])
	// While an on-demand read is in flight, the copy waits...
	r.Activity().Begin()
	defer r.Activity().End()
	r.ReadWhole(n)
	time.Sleep(300 * time.Millisecond)
	if f := r.OpenBacking(n); f != nil {
		f.Close()
		t.Fatal("the copy was made while a read was in flight")
	}
	// ...but not forever: reads that never pause still let it go on.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if f := r.OpenBacking(n); f != nil {
			f.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no copy 10s into reads that never pause")
		}
	}
}
