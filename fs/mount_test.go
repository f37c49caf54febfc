package fs_test

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

// mountImage resolves ref, indexes it into a fresh state root and mounts it
// in a temporary directory, unmounted when the test ends. Each setup
// function is applied to the root before mounting.
func mountImage(t *testing.T, ref string, setup ...func(*fs.Root)) (string, *layer.Stack) {
	t.Helper()
	dir, stack, _ := mountWith(t, ref, mountConfig{setup: setup})
	return dir, stack
}

// mountConfig says how mountWith mounts an image.
type mountConfig struct {
	// cacheDir holds the cache's disk tier; "" for none.
	cacheDir string
	// reader, if set, wraps the stack as the tree's ContentReader.
	reader func(*layer.Stack) fs.ContentReader
	// backing serves files through the stack's passthrough copies.
	backing bool
	setup   []func(*fs.Root)
}

// mountWith is mountImage as cfg says, also returning the merged tree.
func mountWith(t *testing.T, ref string, cfg mountConfig) (string, *layer.Stack, *index.Tree) {
	t.Helper()
	ctx := context.Background()
	img, err := layer.Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Options{MemoryBytes: 64 << 20, Dir: cfg.cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	// Small spans, so seekable layers have many and reads cross them.
	stack, err := layer.Open(ctx, img, st, c, layer.StackOptions{SpanSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	var reader fs.ContentReader = stack
	if cfg.reader != nil {
		reader = cfg.reader(stack)
	}
	root := fs.NewRoot(tree, reader, nil)
	if cfg.backing {
		root.UseBacking(stack)
	}
	for _, f := range cfg.setup {
		f(root)
	}
	dir := t.TempDir()
	server, err := fs.Mount(dir, root, fs.Options{FsName: ref})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		stack.Close()
		c.Close()
	})
	return dir, stack, tree
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// stackLayers are three layers exercising every entry type and overlay rule.
func stackLayers() [][]testutil.Entry {
	dir := func(name string, mode int64) testutil.Entry {
		return testutil.Entry{Name: name, Type: tar.TypeDir, Mode: mode}
	}
	file := func(name, content string) testutil.Entry {
		return testutil.Entry{Name: name, Content: []byte(content)}
	}
	return [][]testutil.Entry{
		{
			dir("./", 0755), dir("bin", 0755), dir("etc", 0755), dir("tmp", 01777), dir("dev", 0755),
			dir("home", 0755), {Name: "home/user", Type: tar.TypeDir, Mode: 0700, UID: 1000, GID: 1000},
			{Name: "home/user/notes", Content: []byte("mine"), Mode: 0600, UID: 1000, GID: 1000},
			file("bin/sh", "#!shell binary"),
			{Name: "bin/suid", Content: []byte("s"), Mode: 04755},
			{Name: "bin/sgid", Content: []byte("g"), Mode: 02711, GID: 50},
			{Name: "bin/ping", Content: []byte("ping"), Mode: 0755, Xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
			{Name: "bin/link", Type: tar.TypeSymlink, Linkname: "sh"},
			{Name: "bin/abs", Type: tar.TypeSymlink, Linkname: "/bin/sh"},
			{Name: "bin/hard", Type: tar.TypeLink, Linkname: "bin/sh"},
			{Name: "etc/passwd", Content: []byte("root:x:0:0::/root:/bin/sh\n"), Xattrs: map[string]string{"user.comment": "base"}},
			{Name: "etc/shadow", Content: []byte("root:*:1::::::\n"), Mode: 0640, GID: 42},
			{Name: "dev/null", Type: tar.TypeChar, Mode: 0666, Devmajor: 1, Devminor: 3},
			{Name: "dev/sda", Type: tar.TypeBlock, Mode: 0660, Devmajor: 8, Devminor: 0, GID: 6},
			{Name: "dev/fifo", Type: tar.TypeFifo, Mode: 0600},
			dir("data", 0755),
			{Name: "data/big", Content: randomBytes(1, 3<<20+12345)},
			file("data/empty", ""),
			dir("gone", 0755), file("gone/file", "x"), dir("gone/sub", 0755), file("gone/sub/deep", "y"),
			dir("opq", 0755), file("opq/lower", "l"), dir("opq/sub", 0755), file("opq/sub/x", "x"),
			dir("replace", 0755), file("replace/child", "c"),
			file("willbedir", "f"),
			dir("usr", 0755), dir("usr/lib", 0755),
		},
		{
			file(".wh.gone", ""),
			file("bin/.wh.link", ""),
			dir("opq", 0750), file("opq/.wh..wh..opq", ""), file("opq/new", "n"),
			{Name: "replace", Content: []byte("now a file"), Mode: 0600},
			dir("willbedir", 0711), file("willbedir/child", "c"),
			file("usr/lib/libfoo.so.1", "lib"),
			{Name: "etc/passwd", Content: []byte("root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"), Xattrs: map[string]string{"user.comment": "upper"}},
			{Name: "data/big2", Content: randomBytes(2, 1<<20)},
		},
		{
			file("deep/a/b/c/file", "implicit parents"),
			file("lib2/real", "shared inode"),
			{Name: "lib2/alias", Type: tar.TypeLink, Linkname: "lib2/real"},
			file("usr/lib/.wh.libfoo.so.1", ""),
			file("dup", "first"),
			{Name: "dup", Content: []byte("second wins"), Mode: 0640},
		},
	}
}

func pushStack(t *testing.T, reg *testutil.Registry, repo string, formats []testutil.Format) (string, v1.Image) {
	t.Helper()
	var layers []v1.Layer
	var anns []map[string]string
	for i, entries := range stackLayers() {
		l, ann := testutil.Layer(t, testutil.Tar(t, entries), formats[i], testutil.WithChunkSize(256<<10))
		layers = append(layers, l)
		anns = append(anns, ann)
	}
	img := testutil.Image(t, layers, anns)
	return reg.Push(t, repo, img), img
}

func TestMountMatchesOracle(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	cases := map[string][]testutil.Format{}
	for _, f := range append(testutil.Formats, testutil.GzipFormats[1:]...) {
		cases[string(f)] = []testutil.Format{f, f, f}
	}
	cases["mixed"] = []testutil.Format{testutil.EStargz, testutil.Gzip, testutil.ZstdChunked}
	for name, formats := range cases {
		t.Run(name, func(t *testing.T) {
			ref, img := pushStack(t, reg, "stack/"+strings.ReplaceAll(name, ":", "-")+":v1", formats)
			dir, _ := mountImage(t, ref)
			want := testutil.DropEStargzMetadata(testutil.Oracle(t, img))
			got := testutil.Walk(t, dir)
			if len(want) < 30 {
				t.Fatalf("oracle has only %d entries", len(want))
			}
			testutil.CompareTrees(t, want, got)
			// Spot checks that do not depend on the oracle.
			if g := got["/bin/hard"]; g.LinkGroup == "" || g.LinkGroup != got["/bin/sh"].LinkGroup {
				t.Errorf("bin/sh and bin/hard do not share an inode: %q %q", got["/bin/sh"].LinkGroup, g.LinkGroup)
			}
			var st syscall.Stat_t
			if err := syscall.Lstat(filepath.Join(dir, "bin/sh"), &st); err != nil || st.Nlink != 2 {
				t.Errorf("bin/sh nlink = %d (%v), want 2", st.Nlink, err)
			}
			if err := syscall.Lstat(filepath.Join(dir, "dev/sda"), &st); err != nil || unix.Major(st.Rdev) != 8 || st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
				t.Errorf("dev/sda: mode %o rdev %d:%d (%v)", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
			}
			for _, gone := range []string{"gone", "bin/link", "opq/lower", "usr/lib/libfoo.so.1", "replace/child"} {
				if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) && !errors.Is(err, syscall.ENOTDIR) {
					t.Errorf("%s: %v, want not exist", gone, err)
				}
			}
		})
	}
}

func TestRandomReadsAcrossChunks(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	for _, f := range append(testutil.Formats, testutil.GzipFormats[1:]...) {
		t.Run(string(f), func(t *testing.T) {
			ref, _ := pushStack(t, reg, "reads/"+strings.ReplaceAll(string(f), ":", "-")+":v1", []testutil.Format{f, f, f})
			dir, stack := mountImage(t, ref)
			want := randomBytes(1, 3<<20+12345)
			fh, err := os.Open(filepath.Join(dir, "data/big"))
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			rng := rand.New(rand.NewPCG(7, 8))
			offsets := []int64{0, 256<<10 - 1, 256 << 10, 256<<10 + 1, int64(len(want)) - 1, int64(len(want)) - 100}
			// Every span boundary inside the file, and either side of it.
			tree, _ := index.Merge(stack.Indexes())
			node, _ := tree.Lookup("data/big")
			if l := stack.Layers()[node.Layer]; l.Index.Format.Seekable() {
				start := node.Chunks[0].BlobOffset
				for _, sp := range l.Index.Spans {
					if rel := sp.Out - start; rel > 0 && rel < int64(len(want)) {
						offsets = append(offsets, rel-1, rel, max(rel-5000, 0))
					}
				}
				if len(offsets) < 20 {
					t.Fatalf("only %d span boundaries inside the file", len(offsets)-6)
				}
			}
			for range 40 {
				offsets = append(offsets, rng.Int64N(int64(len(want))))
			}
			for _, off := range offsets {
				n := min(int64(1+rng.IntN(700<<10)), int64(len(want))-off)
				buf := make([]byte, n)
				if _, err := fh.ReadAt(buf, off); err != nil && err != io.EOF {
					t.Fatalf("read [%d,+%d): %v", off, n, err)
				}
				if sha256.Sum256(buf) != sha256.Sum256(want[off:off+n]) {
					t.Fatalf("read [%d,+%d): wrong bytes", off, n)
				}
			}
			if n, err := fh.ReadAt(make([]byte, 10), int64(len(want))); n != 0 || err != io.EOF {
				t.Errorf("read at end: %d, %v", n, err)
			}
		})
	}
}

func TestStatfsAndXattrs(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushStack(t, reg, "statfs:v1", []testutil.Format{testutil.EStargz, testutil.EStargz, testutil.EStargz})
	dir, _ := mountImage(t, ref)
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Blocks == 0 || sfs.Files < 30 || sfs.Bfree != 0 {
		t.Errorf("statfs: blocks %d files %d free %d", sfs.Blocks, sfs.Files, sfs.Bfree)
	}
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(dir, "bin/ping"), "security.capability", buf)
	if err != nil || n != 20 || buf[0] != 1 {
		t.Errorf("security.capability: %d bytes %x, %v", n, buf[:max(n, 0)], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(dir, "bin/sh"), "user.none", buf); err != unix.ENODATA {
		t.Errorf("missing xattr: %v, want ENODATA", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("x"), 0644); err == nil {
		t.Errorf("wrote to a read-only mount")
	}
}

// gzipLevel0 keeps building a 200 MiB eStargz layer fast.
var gzipLevel0 = testutil.WithGzipLevel(gzip.NoCompression)

func TestLazinessCountedAtRegistry(t *testing.T) {
	requireFUSE(t)
	if testing.Short() {
		t.Skip("builds a 200 MiB image")
	}
	reg := testutil.NewRegistry(t)
	var entries []testutil.Entry
	entries = append(entries, testutil.Entry{Name: "files", Type: tar.TypeDir})
	for i := range 199 {
		entries = append(entries, testutil.Entry{Name: fmt.Sprintf("files/f%03d", i), Content: randomBytes(uint64(i), 1<<20)})
	}
	for i := range 500 {
		entries = append(entries, testutil.Entry{Name: fmt.Sprintf("small/s%03d", i), Content: []byte(fmt.Sprint(i))})
	}
	l0, a0 := testutil.Layer(t, testutil.Tar(t, entries), testutil.EStargz, gzipLevel0)
	l1, a1 := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{{Name: "top", Content: []byte("top layer")}}), testutil.EStargz)
	img := testutil.Image(t, []v1.Layer{l0, l1}, []map[string]string{a0, a1})
	size, _ := l0.Size()
	if size < 199<<20 {
		t.Fatalf("image layer is only %d bytes", size)
	}
	ref := reg.Push(t, "lazy:v1", img)
	reg.Reset()
	dir, _ := mountImage(t, ref)

	// stat (and readlink, listxattr) every name: only footers and TOCs.
	count := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if _, err := os.Lstat(p); err != nil {
			return err
		}
		// A tree without extended attributes says so (EOPNOTSUPP).
		if _, err := unix.Llistxattr(p, make([]byte, 1024)); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		count++
		return nil
	})
	if err != nil || count < 700 {
		t.Fatalf("walked %d names: %v", count, err)
	}
	layerDigests := map[string]bool{}
	for _, l := range []v1.Layer{l0, l1} {
		d, _ := l.Digest()
		layerDigests[d.String()] = true
	}
	var blobGets int
	for _, r := range reg.Requests() {
		if !layerDigests[r.Blob] {
			continue
		}
		blobGets++
		if r.Range == "" {
			t.Errorf("blob GET without Range: %+v", r)
		}
	}
	// The tail of each layer holds its footer and its whole TOC (these
	// TOCs are small): one request per layer.
	if blobGets != 2 {
		t.Errorf("mount and stat of everything made %d blob requests, want 2 (the tail of each of 2 layers)", blobGets)
	}
	metaBytes := layerBytes(reg, layerDigests)
	if metaBytes > 1<<20 {
		t.Errorf("footers and TOCs took %d bytes", metaBytes)
	}

	// Reading one 1 MiB file fetches about that file.
	b, err := os.ReadFile(filepath.Join(dir, "files/f123"))
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(b) != sha256.Sum256(randomBytes(123, 1<<20)) {
		t.Fatal("files/f123: wrong content")
	}
	if fetched := layerBytes(reg, layerDigests) - metaBytes; fetched > 2<<20 || fetched < 1<<20 {
		t.Errorf("reading a 1 MiB file fetched %d bytes of a %d byte image", fetched, size)
	}
}

// layerBytes sums the body bytes the registry served for the given blobs.
func layerBytes(reg *testutil.Registry, blobs map[string]bool) int64 {
	var n int64
	for _, r := range reg.Requests() {
		if blobs[r.Blob] && r.Status/100 == 2 {
			n += r.Bytes
		}
	}
	return n
}
