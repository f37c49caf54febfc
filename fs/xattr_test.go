package fs_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// TestTreeWithoutXattrs: a tree with no extended attribute at all tells
// the kernel so once (ENOSYS), and everything that asks for attributes,
// overlay copy-up included, still works.
func TestTreeWithoutXattrs(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	entries := []testutil.Entry{
		{Name: "etc/passwd", Content: []byte("root:x:0:0::/root:/bin/sh\n")},
		{Name: "bin/tool", Content: []byte("tool"), Mode: 0o755},
	}
	l, ann := testutil.Layer(t, testutil.Tar(t, entries), testutil.Gzip)
	ref := reg.Push(t, "noxattr:v1", testutil.Image(t, []v1.Layer{l}, []map[string]string{ann}))
	dir, _ := mountImage(t, ref)
	buf := make([]byte, 64)
	for i := 0; i < 2; i++ {
		if _, err := unix.Lgetxattr(filepath.Join(dir, "bin/tool"), "security.capability", buf); !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("getxattr %d: %v, want EOPNOTSUPP", i, err)
		}
	}
	if n, err := unix.Llistxattr(filepath.Join(dir, "etc/passwd"), buf); err != nil && !errors.Is(err, unix.EOPNOTSUPP) || n > 0 {
		t.Errorf("listxattr: %d, %v", n, err)
	}
	merged, u := mountOverlay(t, dir, t.TempDir())
	if err := os.WriteFile(filepath.Join(merged, "etc/passwd"), []byte("changed\n"), 0o644); err != nil {
		t.Fatalf("copy-up from a tree without xattrs: %v", err)
	}
	if err := unix.Setxattr(filepath.Join(merged, "bin/tool"), "user.note", []byte("x"), 0); err != nil {
		t.Fatalf("setxattr on the overlay: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(u.Diff, "etc/passwd")); err != nil || string(b) != "changed\n" {
		t.Errorf("upper: %q, %v", b, err)
	}
}
