package fs_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/internal/testutil"
)

// commitLower is the lower tree of the overlay tests.
func commitLower() []testutil.Entry {
	return []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir},
		{Name: "etc/attr", Content: []byte("attr\n")},
		{Name: "etc/hosts", Content: []byte("127.0.0.1 localhost\n")},
		{Name: "etc/linkme", Content: []byte("link me\n")},
		{Name: "etc/motd", Content: []byte("welcome\n")},
		{Name: "etc/passwd", Content: []byte("root:x:0:0::/root:/bin/sh\n")},
		{Name: "etc/perm", Content: []byte("perm\n"), Mode: 0o644},
		{Name: "moved", Type: tar.TypeDir, Mode: 0o750, UID: 7, GID: 8},
		{Name: "moved/deep", Type: tar.TypeDir},
		{Name: "moved/deep/y", Content: []byte("y\n"), Xattrs: map[string]string{"user.deep": "1"}},
		{Name: "moved/dev", Type: tar.TypeChar, Devmajor: 1, Devminor: 3},
		{Name: "moved/gone", Content: []byte("gone\n")},
		{Name: "moved/h1", Content: []byte("shared\n")},
		{Name: "moved/h2", Type: tar.TypeLink, Linkname: "moved/h1"},
		{Name: "moved/x", Content: []byte("x\n")},
		{Name: "old", Type: tar.TypeDir},
		{Name: "old/a", Content: []byte("a\n")},
		{Name: "old/sub", Type: tar.TypeDir},
		{Name: "old/sub/b", Content: []byte("b\n")},
		{Name: "usr", Type: tar.TypeDir},
		{Name: "usr/bin", Type: tar.TypeDir},
		{Name: "usr/bin/sh", Type: tar.TypeSymlink, Linkname: "tool"},
		{Name: "usr/bin/tool", Content: []byte("#!/bin/true\n"), Mode: 0o755},
		{Name: "var", Type: tar.TypeDir},
		{Name: "var/lib", Type: tar.TypeDir},
		{Name: "var/lib/state", Content: []byte("state\n")},
	}
}

// mountTestOverlay mounts kernel overlayfs over lower with a fresh upper
// and work directory and returns the upper and the mount point; it is
// unmounted when the test ends. extra is appended to the mount options.
func mountTestOverlay(t *testing.T, lower, extra string) (upper, merged string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("overlay mounts need root")
	}
	dir := t.TempDir()
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,index=off%s", lower, upper, work, extra)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay (%s): %v", opts, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
			unix.Unmount(merged, unix.MNT_DETACH)
		}
	})
	return upper, merged
}

func check(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// tarEntry is one entry of a tar stream as the tests read it.
type tarEntry struct {
	hdr  *tar.Header
	body string
}

func readTarEntries(t *testing.T, b []byte) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		check(t, err)
		body, err := io.ReadAll(tr)
		check(t, err)
		out = append(out, tarEntry{hdr, string(body)})
	}
}

// checkTarShape checks what every layer tar must satisfy: relative names,
// "/" after directories only, parents before children, no overlay xattrs
// (but allowed), no name twice.
func checkTarShape(t *testing.T, entries []tarEntry, allowedOverlayXattr string) {
	t.Helper()
	seen := map[string]bool{}
	for _, e := range entries {
		name := e.hdr.Name
		if strings.HasPrefix(name, "/") || strings.HasPrefix(name, "./") || name == "" {
			t.Errorf("%q: not a plain relative name", name)
		}
		if isDir := e.hdr.Typeflag == tar.TypeDir; isDir != strings.HasSuffix(name, "/") {
			t.Errorf("%q: type %q and trailing slash disagree", name, e.hdr.Typeflag)
		}
		clean := strings.TrimSuffix(name, "/")
		if seen[clean] {
			t.Errorf("%q: written twice", name)
		}
		seen[clean] = true
		if dir := path.Dir(clean); dir != "." && !seen[dir] {
			t.Errorf("%q: comes before its directory", name)
		}
		for k := range e.hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && strings.HasPrefix(x, "trusted.overlay.") && x != allowedOverlayXattr {
				t.Errorf("%q: overlay xattr %s leaked into the layer", name, x)
			}
		}
	}
}

// applyLayer extracts the layer tar b over root with overlay rules:
// ".wh.NAME" removes NAME, ".wh..wh..opq" removes what earlier layers put
// in its directory, an entry replaces what is there unless both are
// directories, and a directory entry sets the attributes of an existing
// one. Directory mtimes are set last.
func applyLayer(t *testing.T, root string, b []byte) {
	t.Helper()
	type dirTime struct {
		p     string
		mtime time.Time
	}
	var dirs []dirTime
	written := map[string]bool{} // names of this layer
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		check(t, err)
		name := path.Clean(strings.TrimPrefix(hdr.Name, "/"))
		dir, base := path.Split(name)
		target := filepath.Join(root, name)
		if base == ".wh..wh..opq" {
			ents, err := os.ReadDir(filepath.Join(root, dir))
			check(t, err)
			for _, e := range ents {
				if !written[path.Join(dir, e.Name())] {
					check(t, os.RemoveAll(filepath.Join(root, dir, e.Name())))
				}
			}
			continue
		}
		if gone, ok := strings.CutPrefix(base, ".wh."); ok {
			check(t, os.RemoveAll(filepath.Join(root, dir, gone)))
			continue
		}
		written[name] = true
		if fi, err := os.Lstat(target); err == nil && !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			check(t, os.RemoveAll(target))
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				t.Fatal(err)
			}
		case tar.TypeReg:
			body, err := io.ReadAll(tr)
			check(t, err)
			check(t, os.WriteFile(target, body, 0o600))
		case tar.TypeSymlink:
			check(t, os.Symlink(hdr.Linkname, target))
		case tar.TypeLink:
			check(t, os.Link(filepath.Join(root, hdr.Linkname), target))
			continue // one inode: its attributes are the target's
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			mode := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			check(t, unix.Mknod(target, mode|0o600, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))))
		default:
			t.Fatalf("%s: unexpected tar type %q", name, hdr.Typeflag)
		}
		check(t, os.Lchown(target, hdr.Uid, hdr.Gid))
		if hdr.Typeflag != tar.TypeSymlink {
			check(t, unix.Fchmodat(unix.AT_FDCWD, target, uint32(hdr.Mode&0o7777), 0))
		}
		for k, v := range hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				check(t, unix.Lsetxattr(target, x, []byte(v), 0))
			}
		}
		if hdr.Typeflag == tar.TypeDir {
			dirs = append(dirs, dirTime{target, hdr.ModTime})
			continue
		}
		setMtime(t, target, hdr.ModTime)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		setMtime(t, dirs[i].p, dirs[i].mtime)
	}
}

func setMtime(t *testing.T, p string, mtime time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(mtime.UnixNano())
	check(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
}

// walkWithoutRoot walks dir without its root, which a layer does not carry.
func walkWithoutRoot(t *testing.T, dir string) map[string]testutil.Node {
	t.Helper()
	tree := testutil.Walk(t, dir)
	delete(tree, "/")
	return tree
}

// checkRoundTrip applies base and then upper over an empty directory and
// compares the result with the merged view, and does the same with
// go-containerregistry's mutate.Extract of an image of the two layers.
func checkRoundTrip(t *testing.T, base, upper []byte, merged string) {
	t.Helper()
	want := walkWithoutRoot(t, merged)

	applied := t.TempDir()
	applyLayer(t, applied, base)
	applyLayer(t, applied, upper)
	t.Run("apply", func(t *testing.T) {
		testutil.CompareTrees(t, want, walkWithoutRoot(t, applied))
	})
	t.Run("oracle", func(t *testing.T) {
		lb, _ := testutil.Layer(t, base, testutil.Uncompressed)
		lu, _ := testutil.Layer(t, upper, testutil.Uncompressed)
		testutil.CompareTrees(t, testutil.Oracle(t, testutil.Image(t, []v1.Layer{lb, lu}, nil)), want)
	})
}

// upperTar writes the upper's tar.
func upperTar(t *testing.T, upper, merged string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := fs.WriteUpperTar(t.Context(), &buf, upper, merged); err != nil {
		t.Fatalf("WriteUpperTar: %v", err)
	}
	return buf.Bytes()
}

func logUpper(t *testing.T, upper string) {
	t.Helper()
	check(t, filepath.WalkDir(upper, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		var attrs []string
		sz, _ := unix.Llistxattr(p, nil)
		if sz > 0 {
			buf := make([]byte, sz)
			sz, _ = unix.Llistxattr(p, buf)
			for _, k := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
				v := make([]byte, 256)
				n, _ := unix.Lgetxattr(p, k, v)
				attrs = append(attrs, fmt.Sprintf("%s=%q", k, v[:max(n, 0)]))
			}
		}
		rel, _ := filepath.Rel(upper, p)
		t.Logf("upper %-20s mode %07o rdev %d:%d nlink %d size %d %s", rel, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Nlink, st.Size, strings.Join(attrs, " "))
		return nil
	}))
}

func xattr(t *testing.T, p, key string) (string, bool) {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(p, key, buf)
	if errors.Is(err, unix.ENODATA) {
		return "", false
	}
	check(t, err)
	return string(buf[:n]), true
}

// TestWriteUpperTar changes a lower tree through a real overlay mount in
// every way a job can, checks the layer tar entry by entry, and checks that
// the lower plus the layer is the merged view.
func TestWriteUpperTar(t *testing.T) {
	base := testutil.Tar(t, commitLower())
	lower := t.TempDir()
	if os.Geteuid() == 0 {
		applyLayer(t, lower, base)
	}
	upper, merged := mountTestOverlay(t, lower, ",metacopy=off")
	m := func(p string) string { return filepath.Join(merged, p) }

	stamp := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	check(t, os.WriteFile(m("etc/new"), []byte("new file\n"), 0o640))
	check(t, os.WriteFile(m("etc/hosts"), []byte("changed\n"), 0o644))
	check(t, os.Remove(m("etc/motd")))
	check(t, os.RemoveAll(m("old")))
	check(t, os.Mkdir(m("old"), 0o700))
	check(t, os.WriteFile(m("old/fresh"), []byte("fresh\n"), 0o644))
	check(t, os.Rename(m("moved"), m("renamed")))                        // same parent: relative redirect
	check(t, os.WriteFile(m("renamed/x"), []byte("x changed\n"), 0o644)) // changes below a renamed dir
	check(t, os.WriteFile(m("renamed/added"), []byte("added\n"), 0o644))
	check(t, os.Remove(m("renamed/gone")))
	check(t, os.Rename(m("var/lib"), m("usr/lib"))) // other parent: absolute redirect
	check(t, os.Chmod(m("etc/perm"), 0o600))
	check(t, os.Lchown(m("etc/perm"), 1234, 5678))
	check(t, os.Chtimes(m("etc/perm"), stamp, stamp))
	check(t, unix.Lsetxattr(m("etc/attr"), "user.x", []byte("y"), 0))
	check(t, os.Link(m("etc/linkme"), m("etc/linked")))
	check(t, os.Symlink("../etc/passwd", m("usr/link")))
	check(t, unix.Mkfifo(m("usr/fifo"), 0o640))
	check(t, os.Chmod(m("usr/fifo"), 0o640))
	// A user's own trusted.overlay.* xattr is stored escaped in the upper
	// (Linux 6.7+); the layer must carry it unescaped.
	escaped := unix.Lsetxattr(m("etc/passwd"), "trusted.overlay.mine", []byte("v"), 0) == nil
	if !escaped {
		t.Log("this kernel refuses trusted.overlay.* xattrs through the overlay; escaping not tested")
	}

	// What overlayfs wrote in the upper.
	logUpper(t, upper)
	for _, old := range []string{"moved", "var/lib"} {
		var st unix.Stat_t
		check(t, unix.Lstat(filepath.Join(upper, old), &st))
		_, xw := xattr(t, filepath.Join(upper, old), "trusted.overlay.whiteout")
		if !(st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0) && !(st.Mode&unix.S_IFMT == unix.S_IFREG && xw) {
			t.Errorf("upper %s: mode %o rdev %d: not a whiteout after renaming it away", old, st.Mode, st.Rdev)
		}
	}
	for p, want := range map[string]string{"renamed": "moved", "usr/lib": "/var/lib"} {
		if got, ok := xattr(t, filepath.Join(upper, p), "trusted.overlay.redirect"); !ok || got != want {
			t.Errorf("upper %s: redirect %q (present %v), want %q", p, got, ok, want)
		}
	}
	if got, _ := xattr(t, filepath.Join(upper, "old"), "trusted.overlay.opaque"); got != "y" {
		t.Errorf("upper old: opaque %q, want y", got)
	}
	if escaped {
		if got, ok := xattr(t, filepath.Join(upper, "etc/passwd"), "trusted.overlay.overlay.mine"); !ok || got != "v" {
			t.Errorf("upper etc/passwd: escaped xattr %q (present %v)", got, ok)
		}
	}

	layer := upperTar(t, upper, merged)
	entries := readTarEntries(t, layer)
	checkTarShape(t, entries, "trusted.overlay.mine")
	byName := map[string]int{}
	for i, e := range entries {
		byName[e.hdr.Name] = i
		t.Logf("tar %c %-28s %04o %d:%d %q %s", e.hdr.Typeflag, e.hdr.Name, e.hdr.Mode, e.hdr.Uid, e.hdr.Gid, e.hdr.Linkname, e.hdr.PAXRecords)
	}
	get := func(name string) *tarEntry {
		t.Helper()
		i, ok := byName[name]
		if !ok {
			t.Errorf("%s: not in the layer", name)
			return &tarEntry{hdr: &tar.Header{}}
		}
		return &entries[i]
	}
	followedBy := func(dir, next string) {
		t.Helper()
		if i, ok := byName[dir]; ok && (i+1 >= len(entries) || entries[i+1].hdr.Name != next) {
			t.Errorf("%s is not followed by %s", dir, next)
		}
	}
	for _, tc := range []struct {
		name string
		typ  byte
		body string
		link string
	}{
		{"etc/", tar.TypeDir, "", ""},
		{"etc/new", tar.TypeReg, "new file\n", ""},
		{"etc/hosts", tar.TypeReg, "changed\n", ""},
		{"etc/.wh.motd", tar.TypeReg, "", ""},
		{"etc/perm", tar.TypeReg, "perm\n", ""},
		{"etc/attr", tar.TypeReg, "attr\n", ""},
		{"etc/linked", tar.TypeReg, "link me\n", ""},
		{"etc/linkme", tar.TypeLink, "", "etc/linked"},
		{"old/", tar.TypeDir, "", ""},
		{"old/.wh..wh..opq", tar.TypeReg, "", ""},
		{"old/fresh", tar.TypeReg, "fresh\n", ""},
		{".wh.moved", tar.TypeReg, "", ""},
		{"renamed/", tar.TypeDir, "", ""},
		{"renamed/.wh..wh..opq", tar.TypeReg, "", ""},
		{"renamed/added", tar.TypeReg, "added\n", ""},
		{"renamed/deep/", tar.TypeDir, "", ""},
		{"renamed/deep/y", tar.TypeReg, "y\n", ""},
		{"renamed/dev", tar.TypeChar, "", ""},
		{"renamed/h1", tar.TypeReg, "shared\n", ""},
		{"renamed/h2", tar.TypeLink, "", "renamed/h1"},
		{"renamed/x", tar.TypeReg, "x changed\n", ""},
		{"var/", tar.TypeDir, "", ""},
		{"var/.wh.lib", tar.TypeReg, "", ""},
		{"usr/", tar.TypeDir, "", ""},
		{"usr/lib/", tar.TypeDir, "", ""},
		{"usr/lib/.wh..wh..opq", tar.TypeReg, "", ""},
		{"usr/lib/state", tar.TypeReg, "state\n", ""},
		{"usr/link", tar.TypeSymlink, "", "../etc/passwd"},
		{"usr/fifo", tar.TypeFifo, "", ""},
	} {
		e := get(tc.name)
		if e.hdr.Typeflag != tc.typ || e.body != tc.body || e.hdr.Linkname != tc.link {
			t.Errorf("%s: type %q body %q link %q, want %q %q %q", tc.name, e.hdr.Typeflag, e.body, e.hdr.Linkname, tc.typ, tc.body, tc.link)
		}
	}
	for _, name := range []string{"old/a", "old/.wh.a", "old/sub/", "old/.wh.sub", "renamed/gone", "renamed/.wh.gone", "moved/", "var/lib/", "etc/motd"} {
		if _, ok := byName[name]; ok {
			t.Errorf("%s: in the layer", name)
		}
	}
	followedBy("old/", "old/.wh..wh..opq")
	followedBy("renamed/", "renamed/.wh..wh..opq")
	followedBy("usr/lib/", "usr/lib/.wh..wh..opq")
	if h := get("etc/perm").hdr; h.Mode != 0o600 || h.Uid != 1234 || h.Gid != 5678 || !h.ModTime.Equal(stamp) {
		t.Errorf("etc/perm: mode %o owner %d:%d mtime %s", h.Mode, h.Uid, h.Gid, h.ModTime)
	}
	if h := get("renamed/").hdr; h.Mode != 0o750 || h.Uid != 7 || h.Gid != 8 {
		t.Errorf("renamed/: mode %o owner %d:%d, want the lower directory's 750 7:8", h.Mode, h.Uid, h.Gid)
	}
	if h := get("old/").hdr; h.Mode != 0o700 {
		t.Errorf("old/: mode %o, want 700", h.Mode)
	}
	if h := get("renamed/dev").hdr; h.Devmajor != 1 || h.Devminor != 3 {
		t.Errorf("renamed/dev: device %d,%d, want 1,3", h.Devmajor, h.Devminor)
	}
	if h := get("usr/fifo").hdr; h.Mode != 0o640 {
		t.Errorf("usr/fifo: mode %o, want 640", h.Mode)
	}
	if v := get("etc/attr").hdr.PAXRecords["SCHILY.xattr.user.x"]; v != "y" {
		t.Errorf("etc/attr: user.x = %q, want y", v)
	}
	if v := get("renamed/deep/y").hdr.PAXRecords["SCHILY.xattr.user.deep"]; v != "1" {
		t.Errorf("renamed/deep/y: user.deep = %q, want 1", v)
	}
	if escaped {
		if v := get("etc/passwd").hdr.PAXRecords["SCHILY.xattr.trusted.overlay.mine"]; v != "v" {
			t.Errorf("etc/passwd: trusted.overlay.mine = %q, want v", v)
		}
	}

	checkRoundTrip(t, base, layer, merged)
}

// TestWriteUpperTarMetacopy: with metacopy=on, a chmod or a rename copies
// only metadata up; the layer must still carry the content.
func TestWriteUpperTarMetacopy(t *testing.T) {
	base := testutil.Tar(t, []testutil.Entry{
		{Name: "data", Type: tar.TypeDir},
		{Name: "data/big", Content: bytes.Repeat([]byte("0123456789abcdef"), 4096)},
		{Name: "data/file", Content: []byte("file\n")},
	})
	lower := t.TempDir()
	if os.Geteuid() == 0 {
		applyLayer(t, lower, base)
	}
	upper, merged := mountTestOverlay(t, lower, ",metacopy=on")
	check(t, os.Chmod(filepath.Join(merged, "data/big"), 0o600))
	check(t, os.Rename(filepath.Join(merged, "data/file"), filepath.Join(merged, "data/renamed")))
	logUpper(t, upper)
	if _, ok := xattr(t, filepath.Join(upper, "data/big"), "trusted.overlay.metacopy"); !ok {
		t.Fatal("upper data/big: no metacopy xattr after chmod with metacopy=on")
	}

	var buf bytes.Buffer
	err := fs.WriteUpperTar(t.Context(), &buf, upper, "")
	if err == nil || !strings.Contains(err.Error(), "merged") || !strings.Contains(err.Error(), "data/big") {
		t.Errorf("metacopy without the merged view: error %v, want one naming data/big and the merged view", err)
	}

	layer := upperTar(t, upper, merged)
	entries := readTarEntries(t, layer)
	checkTarShape(t, entries, "")
	for _, e := range entries {
		t.Logf("tar %c %-20s %04o size %d", e.hdr.Typeflag, e.hdr.Name, e.hdr.Mode, e.hdr.Size)
	}
	checkRoundTrip(t, base, layer, merged)
}

// TestWriteUpperTarMarkers writes a hand-made upper (a plain directory
// with overlay's markers set by hand), so each translation is checked
// independently of what a kernel chooses to write.
func TestWriteUpperTarMarkers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("trusted xattrs and device nodes need root")
	}
	upper := t.TempDir()
	u := func(p string) string { return filepath.Join(upper, p) }
	check(t, os.MkdirAll(u("a/opaque"), 0o755))
	check(t, unix.Lsetxattr(u("a/opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	check(t, os.Mkdir(u("a/notopaque"), 0o755))
	check(t, unix.Lsetxattr(u("a/notopaque"), "trusted.overlay.opaque", []byte("x"), 0))
	check(t, unix.Mknod(u("a/chardev-whiteout"), unix.S_IFCHR|0o000, 0))
	check(t, os.Link(u("a/chardev-whiteout"), u("a/shared-whiteout"))) // overlayfs shares one whiteout inode
	check(t, os.WriteFile(u("a/xattr-whiteout"), nil, 0o644))
	check(t, unix.Lsetxattr(u("a/xattr-whiteout"), "trusted.overlay.whiteout", nil, 0))
	check(t, os.WriteFile(u("a/file"), []byte("content"), 0o644))
	check(t, unix.Lsetxattr(u("a/file"), "trusted.overlay.origin", []byte{0, 1, 2}, 0))
	check(t, unix.Lsetxattr(u("a/file"), "trusted.overlay.overlay.user", []byte("escaped"), 0))
	check(t, unix.Lsetxattr(u("a/file"), "user.kept", []byte("kept"), 0))
	check(t, unix.Lsetxattr(u("a/file"), "security.capability", []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	check(t, os.Link(u("a/file"), u("a/file2")))
	check(t, os.Link(u("a/file"), u("a/opaque/file3")))
	check(t, os.Symlink("/etc", u("a/escape")))
	check(t, os.Symlink("../../..", u("a/up")))
	check(t, unix.Mknod(u("a/blk"), unix.S_IFBLK|0o660, int(unix.Mkdev(8, 1))))
	check(t, unix.Mknod(u("a/chr"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))))
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: u("a/sock"), Net: "unix"})
	check(t, err)
	defer l.Close()

	entries := readTarEntries(t, upperTar(t, upper, ""))
	checkTarShape(t, entries, "trusted.overlay.user")
	var got []string
	for _, e := range entries {
		s := fmt.Sprintf("%c %s", e.hdr.Typeflag, e.hdr.Name)
		switch e.hdr.Typeflag {
		case tar.TypeSymlink, tar.TypeLink:
			s += " -> " + e.hdr.Linkname
		case tar.TypeReg:
			s += fmt.Sprintf(" %q", e.body)
		case tar.TypeChar, tar.TypeBlock:
			s += fmt.Sprintf(" %d,%d", e.hdr.Devmajor, e.hdr.Devminor)
		}
		got = append(got, s)
	}
	want := []string{
		`5 a/`,
		`4 a/blk 8,1`,
		`0 a/.wh.chardev-whiteout ""`,
		`3 a/chr 1,5`,
		`2 a/escape -> /etc`,
		`0 a/file "content"`,
		`1 a/file2 -> a/file`,
		`5 a/notopaque/`,
		`5 a/opaque/`,
		`0 a/opaque/.wh..wh..opq ""`,
		`1 a/opaque/file3 -> a/file`,
		`0 a/.wh.shared-whiteout ""`,
		`2 a/up -> ../../..`,
		`0 a/.wh.xattr-whiteout ""`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, e := range entries {
		if e.hdr.Name != "a/file" {
			continue
		}
		wantX := map[string]string{
			"SCHILY.xattr.user.kept":            "kept",
			"SCHILY.xattr.trusted.overlay.user": "escaped",
			"SCHILY.xattr.security.capability":  string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}),
		}
		for k, v := range wantX {
			if e.hdr.PAXRecords[k] != v {
				t.Errorf("a/file: %s = %q, want %q", k, e.hdr.PAXRecords[k], v)
			}
		}
		for k := range e.hdr.PAXRecords {
			if _, ok := wantX[k]; !ok && strings.HasPrefix(k, "SCHILY.xattr.") {
				t.Errorf("a/file: unexpected %s", k)
			}
		}
	}
}

// TestWriteUpperTarErrors: what cannot be written fails with an error that
// names the path.
func TestWriteUpperTarErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("trusted xattrs need root")
	}
	write := func(ctx context.Context, upper, merged string) error {
		return fs.WriteUpperTar(ctx, io.Discard, upper, merged)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	if err := write(t.Context(), missing, ""); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing upper: %v", err)
	}

	wh := t.TempDir()
	check(t, os.WriteFile(filepath.Join(wh, ".wh.file"), nil, 0o644))
	if err := write(t.Context(), wh, ""); err == nil || !strings.Contains(err.Error(), ".wh.file") {
		t.Errorf("file named like a whiteout: %v", err)
	}

	redirected := t.TempDir()
	check(t, os.MkdirAll(filepath.Join(redirected, "d/new"), 0o755))
	check(t, unix.Lsetxattr(filepath.Join(redirected, "d/new"), "trusted.overlay.redirect", []byte("old"), 0))
	err := write(t.Context(), redirected, "")
	if err == nil || !strings.Contains(err.Error(), "d/new") || !strings.Contains(err.Error(), "merged") {
		t.Errorf("redirect without a merged view: %v", err)
	}
	plain := t.TempDir()
	err = write(t.Context(), redirected, plain)
	if err == nil || !strings.Contains(err.Error(), "not an overlay mount") {
		t.Errorf("redirect with a merged view that is no overlay: %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := write(ctx, redirected, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}
