package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

func TestDiskCacheSharedAcrossMountsAndPruned(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, layers := pushBusyboxImage(t, reg, "cached:v1")
	root := t.TempDir()
	read := func() (fetched int) {
		t.Helper()
		dir := mountDir(t)
		if _, errOut, code := lazyroot(t, "mount", "--root", root, ref, dir); code != 0 {
			t.Fatalf("mount: code %d: %s", code, errOut)
		}
		reg.Reset()
		for _, name := range []string{"bin/busybox", "etc/motd"} {
			if _, err := os.ReadFile(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range reg.Requests() {
			for _, l := range layers {
				if r.Blob == digestOf(t, l) {
					fetched++
				}
			}
		}
		// Unmounting stops the server, which first finishes its cache writes.
		if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
			t.Fatalf("umount: code %d: %s", code, errOut)
		}
		return fetched
	}
	if n := read(); n == 0 {
		t.Fatal("the first mount fetched nothing: the test proves nothing")
	}
	out, errOut, code := lazyroot(t, "cache", "stats", "--root", root)
	if m := regexp.MustCompile(`in (\d+) chunks`).FindStringSubmatch(out); code != 0 || m == nil || m[1] == "0" {
		t.Fatalf("cache stats: code %d\n%s%s", code, out, errOut)
	}
	// Another mount (another server process) reads from the disk tier.
	if n := read(); n != 0 {
		t.Errorf("the second mount made %d blob requests; want all from the disk cache", n)
	}
	out, errOut, code = lazyroot(t, "cache", "prune", "--all", "--root", root)
	if code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("cache prune: code %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := lazyroot(t, "cache", "stats", "--root", root); !strings.Contains(out, "0 B in 0 chunks") {
		t.Errorf("after prune --all:\n%s", out)
	}
	if n := read(); n == 0 {
		t.Error("after prune the mount fetched nothing")
	}
	for _, args := range [][]string{
		{"cache", "prune", "--root", root},
		{"cache", "prune", "--all", "--older-than", "1h", "--root", root},
		{"cache", "clean"},
		{"mount", "--cache-size", "lots", ref, mountDir(t)},
	} {
		if _, errOut, code := lazyroot(t, args...); code != 2 {
			t.Errorf("%v: code %d, want 2: %s", args, code, errOut)
		}
	}
}
