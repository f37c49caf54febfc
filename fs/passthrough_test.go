package fs_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// countingReader counts the reads that reach the server.
type countingReader struct {
	fs.ContentReader
	reads atomic.Int64
}

func (r *countingReader) ReadAt(ctx context.Context, n *index.Node, p []byte, off int64) (int, error) {
	r.reads.Add(1)
	return r.ContentReader.ReadAt(ctx, n, p, off)
}

// passthroughMount mounts ref with a disk cache in cacheDir and passthrough
// on, counting the reads that reach the server.
func passthroughMount(t *testing.T, ref, cacheDir string) (string, *layer.Stack, *index.Tree, *countingReader) {
	t.Helper()
	reader := &countingReader{}
	dir, stack, tree := mountWith(t, ref, mountConfig{
		cacheDir: cacheDir,
		reader:   func(s *layer.Stack) fs.ContentReader { reader.ContentReader = s; return reader },
		backing:  true,
	})
	return dir, stack, tree, reader
}

// readUncached reads the whole file at path after dropping its pages from
// the page cache, so that a file not passed through is read from the
// server again.
func readUncached(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise %s: %v", path, err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

// waitBacking waits for the copy of the node at p to appear.
func waitBacking(t *testing.T, stack *layer.Stack, tree *index.Tree, p string) {
	t.Helper()
	n, ok := tree.Lookup(p)
	if !ok {
		t.Fatalf("no %s in the tree", p)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if f := stack.OpenBacking(n); f != nil {
			f.Close()
			return
		}
	}
	t.Fatalf("no passthrough copy of %s after 20s", p)
}

func TestPassthroughAfterWholeRead(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	for _, f := range []testutil.Format{testutil.EStargz, testutil.Gzip, testutil.ZstdChunked} {
		t.Run(string(f), func(t *testing.T) {
			ref, _ := pushStack(t, reg, "pt/"+string(f), []testutil.Format{f, f, f})
			want := stackContent(t, "data/big")
			cacheDir := t.TempDir()
			dir, stack, tree, reader := passthroughMount(t, ref, cacheDir)
			big := filepath.Join(dir, "data/big")

			// A partial read makes no copy.
			f, err := os.Open(big)
			if err != nil {
				t.Fatal(err)
			}
			head := make([]byte, 4096)
			if _, err := io.ReadFull(f, head); err != nil {
				t.Fatal(err)
			}
			f.Close()
			n, _ := tree.Lookup("data/big")
			if b := stack.OpenBacking(n); b != nil {
				b.Close()
				t.Fatal("a copy was made after a partial read")
			}

			// The first whole read goes through the server and starts a copy.
			reader.reads.Store(0)
			if got := readUncached(t, big); !bytes.Equal(got, want) {
				t.Fatal("first read: wrong bytes")
			}
			if reader.reads.Load() == 0 {
				t.Fatal("the first read never reached the server")
			}
			waitBacking(t, stack, tree, "data/big")

			// Now the kernel reads the copy: no read reaches the server,
			// though the page cache was dropped. The kernel sends the
			// RELEASE of the read before in the background, and an open
			// that comes first is still served by the server (a file is
			// never passed through while a handle reads it the other
			// way): a few tries give that release time to arrive.
			for try := 0; try < 50; try++ {
				reader.reads.Store(0)
				if got := readUncached(t, big); !bytes.Equal(got, want) {
					t.Fatal("passthrough read: wrong bytes")
				}
				if reader.reads.Load() == 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if got := mapFile(t, big); got != fmt.Sprintf("%x", sha256.Sum256(want)) {
				t.Fatal("passthrough mmap: wrong bytes")
			}
			if r := reader.reads.Load(); r != 0 {
				t.Errorf("%d reads reached the server with a copy on disk", r)
			}

			// A second mount sharing the cache directory finds the copy.
			dir2, _, _, reader2 := passthroughMount(t, ref, cacheDir)
			if got := readUncached(t, filepath.Join(dir2, "data/big")); !bytes.Equal(got, want) {
				t.Fatal("second mount: wrong bytes")
			}
			if r := reader2.reads.Load(); r != 0 {
				t.Errorf("second mount: %d reads reached the server", r)
			}
			// Small files are never copied.
			if got, err := os.ReadFile(filepath.Join(dir2, "etc/passwd")); err != nil || len(got) == 0 {
				t.Fatalf("read etc/passwd: %v", err)
			}
			small, _ := tree.Lookup("etc/passwd")
			if b := stack.OpenBacking(small); b != nil {
				b.Close()
				t.Error("a small file was copied")
			}
		})
	}
}

// stackContent is the content stackLayers gives the file at name.
func stackContent(t *testing.T, name string) []byte {
	t.Helper()
	for _, l := range stackLayers() {
		for _, e := range l {
			if e.Name == name {
				return e.Content
			}
		}
	}
	t.Fatalf("no %s in stackLayers", name)
	return nil
}

// mapFile returns the hex sha256 of the file at path read through a shared
// mapping, in a child process: a page fault on the mount must not stop
// this process, which serves it (a garbage collection waiting for the
// faulting goroutine would stop the server too).
func mapFile(t *testing.T, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMapFileHelper$")
	cmd.Env = append(os.Environ(), mapFileEnv+"="+path)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("map %s in a child: %v", path, err)
	}
	sum, _, ok := strings.Cut(string(out), "\n")
	if !ok {
		t.Fatalf("map %s in a child: output %q", path, out)
	}
	return sum
}

// mapFileEnv names the file TestMapFileHelper maps.
const mapFileEnv = "LAZYROOT_TEST_MAP_FILE"

// TestMapFileHelper is mapFile's child: it prints the sha256 of the file
// $LAZYROOT_TEST_MAP_FILE read through a shared mapping.
func TestMapFileHelper(t *testing.T) {
	path := os.Getenv(mapFileEnv)
	if path == "" {
		t.Skip("run by mapFile only")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap %s: %v", path, err)
	}
	defer unix.Munmap(m)
	fmt.Printf("%x\n", sha256.Sum256(m))
}

func TestPassthroughKeepsOpenHandlesWorking(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushStack(t, reg, "pt/handles", []testutil.Format{testutil.EStargz, testutil.EStargz, testutil.EStargz})
	want := stackContent(t, "data/big2")
	dir, stack, tree, reader := passthroughMount(t, ref, t.TempDir())
	p := filepath.Join(dir, "data/big2")

	// A handle opened before the copy exists is served by the server...
	held, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if got, err := io.ReadAll(held); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read through the held handle: %v", err)
	}
	waitBacking(t, stack, tree, "data/big2")
	// ...and while it is open, new opens are served the same way (the
	// kernel refuses to mix the two on one inode).
	for range 3 {
		if got := readUncached(t, p); !bytes.Equal(got, want) {
			t.Fatal("read while a served handle is open: wrong bytes")
		}
	}
	if _, err := held.ReadAt(make([]byte, 10), 100); err != nil {
		t.Fatalf("the held handle fails: %v", err)
	}
	held.Close()
	// Once it is closed, the next open is passed through. The kernel
	// sends RELEASE after close returns, so an open right away may still
	// find the handle counted: try a few times.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		reader.reads.Store(0)
		if got := readUncached(t, p); !bytes.Equal(got, want) {
			t.Fatal("read after the held handle closed: wrong bytes")
		}
		r := reader.reads.Load()
		if r == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reads reached the server 10s after the last served handle closed", r)
		}
	}
}
