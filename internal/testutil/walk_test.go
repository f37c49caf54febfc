//go:build linux

package testutil

import (
	"archive/tar"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var walkTime = time.Date(2023, 3, 4, 5, 6, 7, 0, time.UTC)

func TestWalk(t *testing.T) {
	dir := t.TempDir()
	at := func(p string) string { return filepath.Join(dir, filepath.FromSlash(p)) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(at("d"), 0o755))
	must(unix.Chmod(at("d"), 0o2755))
	must(os.Mkdir(at("sticky"), 0o755))
	must(unix.Chmod(at("sticky"), 0o1777))
	must(os.WriteFile(at("d/f"), []byte("hello"), 0o644))
	must(os.Chmod(at("d/f"), 0o640))
	must(os.WriteFile(at("suid"), []byte("#!/bin/sh\n"), 0o644))
	must(unix.Chmod(at("suid"), 0o4755))
	must(os.WriteFile(at(".hidden"), nil, 0o644))
	must(os.Chmod(at(".hidden"), 0o644))
	must(os.Symlink("f", at("d/link")))
	must(os.Link(at("d/f"), at("d/hard")))
	must(unix.Mkfifo(at("fifo"), 0o600))
	must(os.Chmod(at("fifo"), 0o600))
	xattrs := map[string]string{"user.test": "value"}
	if err := unix.Lsetxattr(at("d/f"), "user.test", []byte("value"), 0); errors.Is(err, unix.ENOTSUP) {
		t.Logf("setxattr: %v; not checking xattrs", err)
		xattrs = nil
	} else {
		must(err)
	}
	for _, p := range []string{"d/f", "suid", ".hidden", "fifo", "d", "sticky", "."} {
		must(os.Chtimes(at(p), walkTime, walkTime))
	}
	must(unix.Lutimes(at("d/link"), []unix.Timeval{unix.NsecToTimeval(walkTime.UnixNano()), unix.NsecToTimeval(walkTime.UnixNano())}))
	must(os.Chmod(dir, 0o755))

	uid, gid := os.Getuid(), os.Getgid()
	node := func(p string, typ byte, mode uint32) Node {
		return Node{Path: p, Type: typ, Mode: mode, UID: uid, GID: gid, ModTime: walkTime}
	}
	hello := node("/d/f", tar.TypeReg, 0o640)
	hello.Size, hello.SHA256, hello.Xattrs, hello.LinkGroup = 5, sha256Hex([]byte("hello")), xattrs, "hello"
	hard := hello
	hard.Path = "/d/hard"
	suid := node("/suid", tar.TypeReg, 0o4755)
	suid.Size, suid.SHA256 = 10, sha256Hex([]byte("#!/bin/sh\n"))
	hidden := node("/.hidden", tar.TypeReg, 0o644)
	hidden.SHA256 = sha256Hex(nil)
	link := node("/d/link", tar.TypeSymlink, 0o777)
	link.Linkname = "f"
	want := map[string]Node{
		"/":        node("/", tar.TypeDir, 0o755),
		"/d":       node("/d", tar.TypeDir, 0o2755),
		"/sticky":  node("/sticky", tar.TypeDir, 0o1777),
		"/d/f":     hello,
		"/d/hard":  hard,
		"/suid":    suid,
		"/.hidden": hidden,
		"/d/link":  link,
		"/fifo":    node("/fifo", tar.TypeFifo, 0o600),
	}

	got := Walk(t, dir)
	if gp, wp := slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)); !slices.Equal(gp, wp) {
		t.Fatalf("paths:\n got %q\nwant %q", gp, wp)
	}
	if g := got["/d/f"].LinkGroup; g == "" || g != got["/d/hard"].LinkGroup {
		t.Errorf("hardlinks: groups %q and %q", g, got["/d/hard"].LinkGroup)
	}
	if got["/suid"].LinkGroup != "" || got["/d"].LinkGroup != "" {
		t.Errorf("unexpected link groups: %+v %+v", got["/suid"], got["/d"])
	}
	CompareTrees(t, want, got)
}

// TestWalkMatchesOracle writes an image's oracle tree to disk with plain
// file system calls and checks that Walk reads back the same tree.
func TestWalkMatchesOracle(t *testing.T) {
	want := Oracle(t, threeLayerImage(t, Gzip, EStargz, ZstdChunked))
	want = DropEStargzMetadata(want)
	dir := t.TempDir()
	materialize(t, dir, want)
	CompareTrees(t, want, Walk(t, dir))
}

// materialize creates tree under dir. Where the system refuses (no
// CAP_MKNOD, CAP_CHOWN, or user xattrs), it logs and adjusts tree instead.
func materialize(t *testing.T, dir string, tree map[string]Node) {
	t.Helper()
	at := func(p string) string { return filepath.Join(dir, filepath.FromSlash(p)) }
	must := func(p string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	linked := map[string]string{} // link group -> first name created
	paths := slices.Sorted(maps.Keys(tree))
	for _, p := range paths {
		n := tree[p]
		fp := at(p)
		must(p, os.MkdirAll(filepath.Dir(fp), 0o755))
		if n.LinkGroup != "" {
			if first, ok := linked[n.LinkGroup]; ok {
				must(p, os.Link(at(first), fp))
				continue
			}
			linked[n.LinkGroup] = p
		}
		switch n.Type {
		case tar.TypeDir:
			if p != "/" {
				must(p, os.Mkdir(fp, 0o700))
			}
		case tar.TypeReg:
			// Content is not in the tree; only files with known bodies appear
			// in the test images, so look the body up by hash.
			body, ok := bodies[n.SHA256]
			if !ok {
				t.Fatalf("%s: no body for sha256 %s", p, n.SHA256)
			}
			must(p, os.WriteFile(fp, body, 0o600))
		case tar.TypeSymlink:
			must(p, os.Symlink(n.Linkname, fp))
		case tar.TypeFifo:
			must(p, unix.Mkfifo(fp, 0o600))
		case tar.TypeChar, tar.TypeBlock:
			mode := uint32(unix.S_IFCHR)
			if n.Type == tar.TypeBlock {
				mode = unix.S_IFBLK
			}
			if err := unix.Mknod(fp, mode|0o600, int(unix.Mkdev(n.Devmajor, n.Devminor))); err != nil {
				t.Logf("%s: mknod: %v; dropped from the expected tree", p, err)
				delete(tree, p)
				continue
			}
		default:
			t.Fatalf("%s: cannot create %s", p, typeName(n.Type))
		}
	}
	for _, p := range paths {
		n, ok := tree[p]
		if !ok || (n.LinkGroup != "" && linked[n.LinkGroup] != p) {
			continue // dropped, or a further name of an inode already set up
		}
		fp := at(p)
		if err := os.Lchown(fp, n.UID, n.GID); err != nil {
			t.Logf("%s: chown: %v; expecting the current owner", p, err)
			setOwner(tree, n, os.Getuid(), os.Getgid())
		}
		if n.Type != tar.TypeSymlink {
			must(p, unix.Chmod(fp, n.Mode))
		}
		for k, v := range n.Xattrs {
			if err := unix.Lsetxattr(fp, k, []byte(v), 0); errors.Is(err, unix.ENOTSUP) {
				t.Logf("%s: setxattr %s: %v; not expected", p, k, err)
				setXattrs(tree, n, nil)
			} else {
				must(p, err)
			}
		}
	}
	// Times last, children before parents, since creating a child changes
	// its parent's mtime.
	for _, p := range slices.Backward(paths) {
		n, ok := tree[p]
		if !ok {
			continue
		}
		ts := []unix.Timespec{unix.NsecToTimespec(n.ModTime.UnixNano()), unix.NsecToTimespec(n.ModTime.UnixNano())}
		must(p, unix.UtimesNanoAt(unix.AT_FDCWD, at(p), ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// setOwner changes n and every name sharing its inode.
func setOwner(tree map[string]Node, n Node, uid, gid int) {
	for p, m := range tree {
		if p == n.Path || (n.LinkGroup != "" && m.LinkGroup == n.LinkGroup) {
			m.UID, m.GID = uid, gid
			tree[p] = m
		}
	}
}

// setXattrs changes n and every name sharing its inode.
func setXattrs(tree map[string]Node, n Node, x map[string]string) {
	for p, m := range tree {
		if p == n.Path || (n.LinkGroup != "" && m.LinkGroup == n.LinkGroup) {
			m.Xattrs = x
			tree[p] = m
		}
	}
}

// bodies maps the sha256 of every file body in threeLayers to the body.
var bodies = func() map[string][]byte {
	m := map[string][]byte{}
	for _, layer := range threeLayers() {
		for _, e := range layer {
			m[sha256Hex(e.Content)] = e.Content
		}
	}
	return m
}()
