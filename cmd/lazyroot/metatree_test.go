package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// overlayLowers returns the lowerdir option of the overlay at dir.
func overlayLowers(t *testing.T, dir string) string {
	t.Helper()
	_, super, _ := strings.Cut(mountinfoLine(t, dir), " - ")
	for _, opt := range strings.Split(strings.Fields(super)[2], ",") {
		if v, ok := strings.CutPrefix(opt, "lowerdir="); ok {
			return v
		}
	}
	t.Fatalf("the mount at %s has no lowerdir", dir)
	return ""
}

// TestLaterMountsUseTheMetadataTree: the server of an image's first mount
// writes the image's metadata tree as it exits; the next server stacks it
// over its tree, and the image reads and writes as before.
func TestLaterMountsUseTheMetadataTree(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "meta:v1")
	root := t.TempDir()
	dir := mountDir(t)

	first := mountRec(t, root, ref, dir)
	if lowers := overlayLowers(t, dir); lowers != first.Lower {
		t.Errorf("first mount's lowers %q, want the tree %s alone", lowers, first.Lower)
	}
	if _, err := os.Lstat(filepath.Join(first.Lower, ".i")); !os.IsNotExist(err) {
		t.Errorf("a tree with no metadata tree above it serves its inode directory: %v", err)
	}
	umountOK(t, root, dir)
	// Beside each tree lies its writers' lock.
	trees, _ := filepath.Glob(filepath.Join(root, "trees", "*[^k]"))
	if len(trees) != 1 {
		t.Fatalf("trees under the root after the first mount: %q, want one", trees)
	}
	if _, err := os.Stat(filepath.Join(trees[0], "etc", "motd")); err != nil {
		t.Errorf("the metadata tree has no etc/motd: %v", err)
	}

	second := mountRec(t, root, ref, dir)
	if lowers, want := overlayLowers(t, dir), trees[0]+"::"+second.Lower; lowers != want {
		t.Errorf("second mount's lowers %q, want %q", lowers, want)
	}
	if fi, err := os.Lstat(filepath.Join(second.Lower, ".i")); err != nil || !fi.IsDir() {
		t.Errorf("the tree beneath a metadata tree has no inode directory: %v", err)
	}
	out := chrootOut(t, dir, "cat /etc/motd; ls -l /bin/busybox | (read mode n u g size rest; echo $mode $size); "+
		"echo new >> /etc/motd; cat /etc/motd; sha256sum /bin/busybox")
	bb := busybox(t)
	want := fmt.Sprintf("hello from the gzip layer\n-rwxr-xr-x %d\nhello from the gzip layer\nnew\n%x  /bin/busybox\n", len(bb), sha256.Sum256(bb))
	if out != want {
		t.Errorf("job output:\n%s\nwant:\n%s", out, want)
	}
	umountOK(t, root, dir)

	// A tree shown through an id map is another tree.
	mapped := mountRec(t, root, ref, dir, "--uid-map", "0:100000:65536")
	if lowers := overlayLowers(t, dir); lowers != mapped.Lower {
		t.Errorf("id-mapped mount's lowers %q, want its tree alone", lowers)
	}
	umountOK(t, root, dir)
}
