package fs

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/internal/testutil"
)

// TestWarmReadAllocatesNothing checks that a FUSE read of a file whose
// bytes are in the memory cache allocates nothing in this package or
// below it (fs → layer.Stack.ReadAt → cache): the read result is
// recycled when go-fuse is done with it. (go-fuse's bridge allocates a
// request context per READ of its own, outside this path.)
func TestWarmReadAllocatesNothing(t *testing.T) {
	content := benchBytes(3<<20 + 777)
	ents := []testutil.Entry{{Name: "data", Type: tar.TypeDir, Mode: 0755}, {Name: "data/file", Content: content, Mode: 0644}}
	c, err := cache.New(cache.Options{MemoryBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	stack, tree := benchStack(t, ents, c)
	n, ok := tree.Lookup("data/file")
	if !ok {
		t.Fatal("data/file not in tree")
	}
	root := NewRoot(tree, stack, nil)
	f := &fileNode{baseNode: baseNode{entry: n, root: root}}
	ctx := context.Background()
	dest := make([]byte, 1<<20)
	read := func(off int64) []byte {
		res, errno := f.Read(ctx, nil, dest, off)
		if errno != 0 {
			t.Fatalf("read at %d: %v", off, errno)
		}
		b, _ := res.Bytes(nil)
		got := bytes.Clone(b)
		res.Done()
		return got
	}
	offs := []int64{0, 1 << 20, 3<<20 - 5, int64(len(content)) - 100}
	for _, off := range offs {
		want := content[off:min(off+int64(len(dest)), int64(len(content)))]
		if got := read(off); !bytes.Equal(got, want) {
			t.Fatalf("read at %d: %d bytes, want %d", off, len(got), len(want))
		}
	}
	i := 0
	allocs := testutil.LeastAllocsPerRun(t, 200, func() {
		res, errno := f.Read(ctx, nil, dest, offs[i%len(offs)])
		i++
		if errno != 0 {
			t.Fatal(errno)
		}
		res.Done()
	})
	if allocs != 0 {
		t.Errorf("warm Read allocates %v times per call, want 0", allocs)
	}
}

// TestMountReadPathSettings checks that a mount gets the readahead window
// Mount sets and lists directories correctly through the cached readdir.
func TestMountReadPathSettings(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	ents := []testutil.Entry{{Name: "d", Type: tar.TypeDir, Mode: 0755}}
	var want []string
	for i := range 300 {
		name := fmt.Sprintf("f%03d", i)
		want = append(want, name)
		ents = append(ents, testutil.Entry{Name: "d/" + name, Content: []byte(name), Mode: 0644})
	}
	c, err := cache.New(cache.Options{MemoryBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	stack, tree := benchStack(t, ents, c)
	dir := t.TempDir()
	server, err := Mount(dir, NewRoot(tree, stack, nil), Options{FsName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	ra, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(ra)); got != strconv.Itoa(readAheadKB) {
		t.Errorf("read_ahead_kb = %s, want %d", got, readAheadKB)
	}
	// Twice: the second listing comes from the kernel's cache.
	for range 2 {
		des, err := os.ReadDir(filepath.Join(dir, "d"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, de := range des {
			if !de.Type().IsRegular() {
				t.Errorf("%s: type %v", de.Name(), de.Type())
			}
			got = append(got, de.Name())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("listing: %d names, want %d", len(got), len(want))
		}
	}
}
