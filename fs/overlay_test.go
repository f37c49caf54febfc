package fs_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/internal/testutil"
)

// mountOverlay mounts an overlay at a new directory over lower with the
// upper in upperDir, unmounted when the test ends.
func mountOverlay(t *testing.T, lower, upperDir string) (string, *fs.Upper) {
	t.Helper()
	u, err := fs.OpenUpper(upperDir, "test-image", "sha256:0123")
	if err != nil {
		t.Fatal(err)
	}
	merged := t.TempDir()
	if err := fs.MountOverlay(merged, lower, u, fs.OverlayOptions{}); err != nil {
		u.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(merged, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("unmount overlay: %v", err)
		}
		u.Close()
	})
	return merged, u
}

// posixSubset are go-fuse's POSIX checks that hold for any local writable
// file system; the others test FUSE server details (direct I/O, fd leaks
// of the server, ...) that an overlay does not have. FcntlFlockLocksFile is
// left out too: it expects two descriptors of one process to conflict,
// which POSIX record locks never do on a local file system (ext4 fails it
// the same way).
var posixSubset = []string{
	"AppendWrite", "DirSeek", "FileBasic", "FileLarge", "FstatDeleted", "Link",
	"LinkUnlinkRename", "MkdirRmdir", "NlinkZero", "OpenAt", "ParallelFileOpen",
	"ReadDirBasic", "ReadDirConsistency", "RenameOpenDir", "RenameOverwriteDestExist",
	"RenameOverwriteDestNoExist", "SetattrSymlink", "SymlinkReadlink", "TruncateFile",
	"TruncateNoFile", "XAttr", "FcntlFlockSetLk", "Fallocate",
}

func TestOverlayPOSIX(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushStack(t, reg, "overlay/posix:v1", []testutil.Format{testutil.Gzip, testutil.EStargz, testutil.Uncompressed})
	lower, _ := mountImage(t, ref)
	for _, name := range posixSubset {
		test, ok := posixtest.All[name]
		if !ok {
			t.Fatalf("posixtest has no %s", name)
		}
		t.Run(name, func(t *testing.T) {
			merged, _ := mountOverlay(t, lower, t.TempDir())
			work := filepath.Join(merged, "work")
			if err := os.Mkdir(work, 0o755); err != nil {
				t.Fatal(err)
			}
			test(t, work)
		})
	}
}

// TestOverlayOnLowerFiles changes files the image has and checks the merged
// view, the upper and that the tree beneath never changes.
func TestOverlayOnLowerFiles(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	ref, img := pushStack(t, reg, "overlay/lower:v1", []testutil.Format{testutil.Gzip, testutil.EStargz, testutil.ZstdChunked})
	reg.Reset()
	lower, _ := mountImage(t, ref)
	before := testutil.Walk(t, lower)
	upperDir := t.TempDir()
	merged, u := mountOverlay(t, lower, upperDir)
	mp := func(p string) string { return filepath.Join(merged, p) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Copy-up of a large lower file: change one byte in the middle.
	big, err := os.ReadFile(mp("data/big"))
	must(err)
	f, err := os.OpenFile(mp("data/big"), os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteAt([]byte{^big[2<<20]}, 2<<20)
	must(err)
	must(f.Close())
	big[2<<20] = ^big[2<<20]

	must(os.Remove(mp("bin/sh")))                   // delete a lower file (hardlinked)
	must(os.RemoveAll(mp("opq")))                   // rmdir a lower directory...
	must(os.Mkdir(mp("opq"), 0o700))                // ...and make it again: opaque
	must(os.WriteFile(mp("opq/fresh"), nil, 0o644)) //
	must(os.Rename(mp("deep/a"), mp("deep/moved"))) // rename a lower directory
	must(os.Chmod(mp("etc/shadow"), 0o600))
	must(os.Lchown(mp("etc/passwd"), 7, 8))
	mtime := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	must(os.Chtimes(mp("data/empty"), mtime, mtime))
	must(unix.Setxattr(mp("bin/ping"), "user.note", []byte("set"), 0))
	must(os.Link(mp("lib2/real"), mp("lib2/third"))) // hardlink to a lower file

	checks := []struct {
		name string
		ok   func() error
	}{
		{"copied-up big file", func() error {
			got, err := os.ReadFile(mp("data/big"))
			if err == nil && !bytes.Equal(got, big) {
				return errors.New("content differs")
			}
			return err
		}},
		{"deleted file gone, its hardlink stays", func() error {
			if _, err := os.Lstat(mp("bin/sh")); !os.IsNotExist(err) {
				return errors.New("bin/sh still there")
			}
			_, err := os.Lstat(mp("bin/hard"))
			return err
		}},
		{"opaque dir holds only the new file", func() error {
			return sameNames(mp("opq"), "fresh")
		}},
		{"renamed dir", func() error {
			if _, err := os.Lstat(mp("deep/a")); !os.IsNotExist(err) {
				return errors.New("deep/a still there")
			}
			b, err := os.ReadFile(mp("deep/moved/b/c/file"))
			if err == nil && string(b) != "implicit parents" {
				return errors.New("moved content differs")
			}
			return err
		}},
		{"chmod", func() error { return wantMode(mp("etc/shadow"), 0o600) }},
		{"chown", func() error {
			var st unix.Stat_t
			if err := unix.Lstat(mp("etc/passwd"), &st); err != nil {
				return err
			}
			if st.Uid != 7 || st.Gid != 8 {
				return errors.New("owner not changed")
			}
			return nil
		}},
		{"utimes", func() error {
			fi, err := os.Lstat(mp("data/empty"))
			if err == nil && !fi.ModTime().Equal(mtime) {
				return errors.New("mtime " + fi.ModTime().String())
			}
			return err
		}},
		{"xattr", func() error {
			buf := make([]byte, 16)
			n, err := unix.Getxattr(mp("bin/ping"), "user.note", buf)
			if err == nil && string(buf[:n]) != "set" {
				return errors.New("xattr value " + string(buf[:n]))
			}
			return err
		}},
		{"hardlink", func() error {
			var a, b unix.Stat_t
			if err := unix.Lstat(mp("lib2/real"), &a); err != nil {
				return err
			}
			if err := unix.Lstat(mp("lib2/third"), &b); err != nil {
				return err
			}
			if a.Ino != b.Ino {
				return errors.New("not one inode")
			}
			return nil
		}},
		{"upper holds the changes", func() error {
			if _, err := os.Lstat(filepath.Join(u.Diff, "data/big")); err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(u.Diff, "bin/sh"), &st); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
				return errors.New("bin/sh in the upper is not a whiteout")
			}
			return nil
		}},
	}
	for _, c := range checks {
		if err := c.ok(); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// The tree beneath is what the image says, byte for byte.
	testutil.CompareTrees(t, before, testutil.Walk(t, lower))
	testutil.CompareTrees(t, testutil.DropEStargzMetadata(testutil.Oracle(t, img)), testutil.Walk(t, lower))
	for _, r := range reg.Requests() {
		if r.Method != "GET" && r.Method != "HEAD" {
			t.Errorf("the mount sent %s %s to the registry", r.Method, r.Path)
		}
	}
}

// TestUpperKeepsChanges: a named upper survives unmount and mount; one
// upper cannot serve two mounts or another image; two mounts of one image
// keep separate changes.
func TestUpperKeepsChanges(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushStack(t, reg, "overlay/keep:v1", []testutil.Format{testutil.Gzip, testutil.Gzip, testutil.Gzip})
	lower, _ := mountImage(t, ref)
	upperDir := t.TempDir()

	u, err := fs.OpenUpper(upperDir, "test-image", "sha256:0123")
	if err != nil {
		t.Fatal(err)
	}
	merged := t.TempDir()
	if err := fs.MountOverlay(merged, lower, u, fs.OverlayOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(merged, "etc/new"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(merged, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.OpenUpper(upperDir, "test-image", "sha256:0123"); !errors.Is(err, fs.ErrUpperInUse) {
		t.Errorf("second open of a held upper: %v, want ErrUpperInUse", err)
	}
	if err := syscall.Unmount(merged, 0); err != nil {
		t.Fatal(err)
	}
	u.Close()

	if _, err := fs.OpenUpper(upperDir, "other", "sha256:bb"); err == nil {
		t.Error("an upper made over one image opened for another")
	}
	again, _ := mountOverlay(t, lower, upperDir)
	if b, err := os.ReadFile(filepath.Join(again, "etc/new")); err != nil || string(b) != "kept" {
		t.Errorf("etc/new after remount: %q, %v", b, err)
	}
	if _, err := os.Lstat(filepath.Join(again, "etc/passwd")); !os.IsNotExist(err) {
		t.Errorf("etc/passwd came back after remount: %v", err)
	}

	// A second mount of the same image with its own upper sees none of it.
	other, _ := mountOverlay(t, lower, t.TempDir())
	if _, err := os.Lstat(filepath.Join(other, "etc/new")); !os.IsNotExist(err) {
		t.Errorf("etc/new leaked into another mount: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(other, "etc/passwd")); err != nil {
		t.Errorf("etc/passwd missing in another mount: %v", err)
	}
}

func sameNames(dir string, want ...string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	sort.Strings(got)
	sort.Strings(want)
	if len(got) != len(want) {
		return errors.New("entries " + joinNames(got))
	}
	for i := range got {
		if got[i] != want[i] {
			return errors.New("entries " + joinNames(got))
		}
	}
	return nil
}

func joinNames(names []string) string {
	var b bytes.Buffer
	for i, n := range names {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(n)
	}
	return b.String()
}

func wantMode(p string, mode os.FileMode) error {
	fi, err := os.Lstat(p)
	if err == nil && fi.Mode().Perm() != mode {
		return errors.New("mode " + fi.Mode().String())
	}
	return err
}
