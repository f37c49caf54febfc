package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// serverReads is the number of chunk lookups the mount server at dir has
// made for reads: memory hits and misses.
func serverReads(t *testing.T, root, dir string) uint64 {
	t.Helper()
	out, errOut, code := lazyroot(t, "status", "--json", "--root", root, dir)
	if code != 0 {
		t.Fatalf("status: code %d: %s", code, errOut)
	}
	var st struct {
		CacheHits   uint64 `json:"cacheHits"`
		CacheMisses uint64 `json:"cacheMisses"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return st.CacheHits + st.CacheMisses
}

func TestPassthroughAcrossMounts(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "pt:latest")
	want := fmt.Sprintf("%x", sha256.Sum256(busybox(t)))
	root := t.TempDir()
	dir := mountDir(t)

	// mount, hash busybox with itself, unmount; returns the hash and the
	// server's chunk lookups.
	run := func(extra ...string) (string, uint64) {
		t.Helper()
		args := append([]string{"mount", "--root", root, "--prefetch", "none"}, extra...)
		if _, errOut, code := lazyroot(t, append(args, ref, dir)...); code != 0 {
			t.Fatalf("mount: code %d: %s", code, errOut)
		}
		out, err := exec.Command("chroot", dir, "/bin/sha256sum", "/bin/busybox").CombinedOutput()
		if err != nil {
			t.Fatalf("sha256sum in the chroot: %v: %s", err, out)
		}
		reads := serverReads(t, root, dir)
		if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
			t.Fatalf("umount: code %d: %s", code, errOut)
		}
		sum, _, _ := strings.Cut(string(out), " ")
		return sum, reads
	}

	// The first mount reads busybox through the server and, as it
	// unmounts, has copied it into the disk cache.
	if sum, reads := run(); sum != want || reads == 0 {
		t.Fatalf("first mount: sha256 %s (want %s), %d server reads", sum, want, reads)
	}
	if copies, _ := filepath.Glob(filepath.Join(root, "cache", "*", "*.file")); len(copies) != 1 {
		t.Fatalf("%d passthrough copies in the cache after the first mount, want 1", len(copies))
	}
	// The next mount runs and reads it from the copy: the server is not
	// asked for a byte.
	if sum, reads := run(); sum != want || reads != 0 {
		t.Fatalf("second mount: sha256 %s (want %s), %d server reads, want 0", sum, want, reads)
	}
	// Without passthrough the server serves it again.
	if sum, reads := run("--passthrough=false"); sum != want || reads == 0 {
		t.Fatalf("--passthrough=false: sha256 %s (want %s), %d server reads", sum, want, reads)
	}
}
