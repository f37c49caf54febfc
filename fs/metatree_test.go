package fs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
)

// mountMetaOverlay mounts ref's tree (serving inodes, through the maps),
// writes its metadata tree (over what partial, if set, leaves as an
// earlier, interrupted write) and mounts an overlay of the two. It returns
// the tree, the metadata tree, the overlay and its upper.
func mountMetaOverlay(t *testing.T, ref string, uids, gids fs.IDMap, partial func(dir string)) (lower, meta, merged string, u *fs.Upper) {
	t.Helper()
	lower, _, tree := mountWith(t, ref, mountConfig{setup: []func(*fs.Root){func(r *fs.Root) {
		r.MapIDs(uids, gids)
		r.ServeInodes()
	}}})
	meta = filepath.Join(t.TempDir(), "meta")
	if partial != nil {
		partial(meta + ".partial")
	}
	if err := fs.WriteMetaTree(context.Background(), meta, tree, uids, gids); err != nil {
		t.Fatal(err)
	}
	u, err := fs.OpenUpper(t.TempDir(), "test-image", "sha256:0123")
	if err != nil {
		t.Fatal(err)
	}
	merged = t.TempDir()
	if err := fs.MountOverlay(merged, lower, u, fs.OverlayOptions{MetaTree: meta}); err != nil {
		u.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil {
			t.Errorf("unmount overlay: %v", err)
		}
		u.Close()
	})
	return lower, meta, merged, u
}

// compareBelowRoot compares two walks but for their roots: an overlay's
// root directory is its upper's.
func compareBelowRoot(t *testing.T, want, got map[string]testutil.Node) {
	t.Helper()
	delete(want, "/")
	delete(got, "/")
	testutil.CompareTrees(t, want, got)
}

func TestMetaTreeOverlayShowsTheTree(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushStack(t, reg, "meta/stack:v1", []testutil.Format{testutil.Gzip, testutil.EStargz, testutil.ZstdChunked})
	mapped, err := fs.ParseIDMap([]string{"0:100000:65536"})
	if err != nil {
		t.Fatal(err)
	}
	// An interrupted write: entries made, some without their attributes.
	interrupted := func(dir string) {
		for _, d := range []string{dir, dir + "/etc", dir + "/bin"} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		for _, f := range []string{"etc/shadow", "bin/sh"} {
			if err := os.WriteFile(filepath.Join(dir, f), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("sh", filepath.Join(dir, "bin/abs")); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		ids     fs.IDMap
		partial func(string)
	}{{"image ids", nil, nil}, {"mapped ids over an interrupted write", mapped, interrupted}} {
		t.Run(tc.name, func(t *testing.T) {
			lower, meta, merged, u := mountMetaOverlay(t, ref, tc.ids, tc.ids, tc.partial)
			want := testutil.Walk(t, lower)
			if _, ok := want["/.i"]; ok {
				t.Errorf("the tree lists its inode directory")
			}
			if len(want) < 30 {
				t.Fatalf("the tree has only %d entries", len(want))
			}
			// Contents hash alike: the sparse metadata files are read from
			// the tree beneath.
			compareBelowRoot(t, want, testutil.Walk(t, merged))
			if tc.ids != nil && want["/home/user"].UID != 101000 {
				t.Errorf("home/user owner %d, want the mapped 101000", want["/home/user"].UID)
			}

			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(meta, "data/big"), &st); err != nil || st.Blocks != 0 || st.Size != 3<<20+12345 {
				t.Errorf("metadata tree's data/big: size %d, %d blocks (%v); want the file's size and no blocks", st.Size, st.Blocks, err)
			}

			// A write copies the whole file up, its data from the tree.
			p := filepath.Join(merged, "data/big")
			big, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			big[5] ^= 0xff
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(big[5:6], 5); err != nil {
				t.Fatal(err)
			}
			f.Close()
			up, err := os.ReadFile(filepath.Join(u.Diff, "data/big"))
			if err != nil || !bytes.Equal(up, big) {
				t.Errorf("the upper's copy of data/big differs from the written file (%v)", err)
			}
			if _, err := unix.Lgetxattr(filepath.Join(u.Diff, "data/big"), "trusted.overlay.metacopy", nil); !errors.Is(err, unix.ENODATA) {
				t.Errorf("the upper's data/big is a metacopy (%v): its bytes would not be in the upper", err)
			}
		})
	}
}

// TestMetaTreeKeepsImageOverlayXattrs mounts an image whose files carry
// overlayfs's own attributes: overlayfs must show them, not follow them.
func TestMetaTreeKeepsImageOverlayXattrs(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	entries := []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir, Mode: 0o755},
		{Name: "etc/shadow", Content: []byte("secret"), Mode: 0o600},
		{Name: "evil", Content: []byte("own bytes"), Xattrs: map[string]string{
			"trusted.overlay.metacopy": "", "trusted.overlay.redirect": "/etc/shadow"}},
		// Takes the inode directory's first name.
		{Name: ".i", Type: tar.TypeDir, Mode: 0o755},
		{Name: ".i/1", Content: []byte("an image file")},
	}
	l, ann := testutil.Layer(t, testutil.Tar(t, entries), testutil.EStargz)
	ref := reg.Push(t, "meta/xattrs:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}))
	lower, _, merged, _ := mountMetaOverlay(t, ref, nil, nil, nil)
	compareBelowRoot(t, testutil.Walk(t, lower), testutil.Walk(t, merged))
	for p, want := range map[string]string{"evil": "own bytes", ".i/1": "an image file"} {
		if got, err := os.ReadFile(filepath.Join(merged, p)); err != nil || string(got) != want {
			t.Errorf("%s reads %q (%v), want %q", p, got, err, want)
		}
	}
	v := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(merged, "evil"), "trusted.overlay.redirect", v)
	if err != nil || string(v[:n]) != "/etc/shadow" {
		t.Errorf("evil's trusted.overlay.redirect is %q (%v), want the image's value", v[:max(n, 0)], err)
	}
}

func TestCheckMetaTrees(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	if err := fs.CheckMetaTrees(dir); err != nil {
		t.Fatalf("this kernel (6.16+ expected) does not stack metadata trees: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the probe left %d entries behind", len(left))
	}
}

func TestInodeDirName(t *testing.T) {
	for _, tc := range []struct {
		taken []string
		want  string
	}{
		{nil, ".i"},
		{[]string{".i"}, ".i0"},
		{[]string{".i", ".i0", ".i1"}, ".i2"},
		{[]string{".i0", "i"}, ".i"},
	} {
		root := &index.Node{Children: map[string]*index.Node{}}
		for _, name := range tc.taken {
			root.Children[name] = &index.Node{}
		}
		if got := fs.InodeDirName(&index.Tree{Root: root}); got != tc.want {
			t.Errorf("taken %s: %q, want %q", strings.Join(tc.taken, ","), got, tc.want)
		}
	}
}
