package main

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// mountRec mounts ref at dir with the extra flags and returns its record.
func mountRec(t *testing.T, root, ref, dir string, extra ...string) *mountRecord {
	t.Helper()
	args := append(append([]string{"mount", "--root", root}, extra...), ref, dir)
	if _, errOut, code := lazyroot(t, args...); code != 0 {
		t.Fatalf("mount %s: code %d: %s", dir, code, errOut)
	}
	rec, err := readRecord(recordPath(root, dir))
	if err != nil {
		t.Fatalf("mount record of %s: %v", dir, err)
	}
	// A server kept by --keep-lower would outlive the test's directories.
	t.Cleanup(func() {
		if alive(rec.PID) {
			syscall.Kill(rec.PID, syscall.SIGTERM)
			// t.Context is already canceled in cleanups.
			waitExit(context.Background(), rec.PID, 10*time.Second)
		}
	})
	return rec
}

func chrootOut(t *testing.T, dir, script string) string {
	t.Helper()
	out, err := exec.Command("chroot", dir, "/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("chroot %s: %v\n%s", dir, err, out)
	}
	return string(out)
}

func umountOK(t *testing.T, root, dir string, extra ...string) {
	t.Helper()
	if _, errOut, code := lazyroot(t, append(append([]string{"umount", "--root", root}, extra...), dir)...); code != 0 {
		t.Fatalf("umount %s: code %d: %s", dir, code, errOut)
	}
}

func gone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

// TestMountsShareLower: two writable mounts of one image share one server
// and one tree, each with an upper of its own; the tree goes with the last
// of them.
func TestMountsShareLower(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "shared:v1")
	root := t.TempDir()
	a, b := mountDir(t), mountDir(t)

	ra := mountRec(t, root, ref, a)
	rb := mountRec(t, root, ref, b)
	if ra.PID != rb.PID || ra.Lower != rb.Lower || ra.Shared == "" || ra.Upper == rb.Upper {
		t.Fatalf("records %+v and %+v: want one server and tree, two uppers", ra, rb)
	}
	if !isLazyrootMount(ra.Lower) {
		t.Fatalf("shared tree %s not mounted", ra.Lower)
	}
	chrootOut(t, a, "echo only-in-a > /tmp/file; rm /etc/motd")
	if out := chrootOut(t, b, "cat /etc/motd; ls /tmp"); out != "hello from the gzip layer\n" {
		t.Errorf("b sees a's changes: %q", out)
	}
	status, errOut, code := lazyroot(t, "status", "--root", root, b)
	if code != 0 || !strings.Contains(status, "2 mounts of the image share it") || !strings.Contains(status, b) {
		t.Errorf("status: code %d\n%s%s", code, status, errOut)
	}

	umountOK(t, root, a)
	gone(t, ra.Upper, recordPath(root, a))
	if !alive(rb.PID) || !isLazyrootMount(rb.Lower) {
		t.Fatal("the shared server or tree went with the first of two mounts")
	}
	if out := chrootOut(t, b, "cat /etc/os-release"); !strings.Contains(out, "lazyroot test image") {
		t.Errorf("b after a's umount: %q", out)
	}
	// A mount at a's place again joins the same server.
	if ra2 := mountRec(t, root, ref, a); ra2.PID != rb.PID {
		t.Errorf("remount at %s: server %d, want %d", a, ra2.PID, rb.PID)
	}
	umountOK(t, root, a)

	umountOK(t, root, b)
	if alive(rb.PID) || isMounted(rb.Lower) {
		t.Errorf("server %d alive %v, tree mounted %v after the last umount", rb.PID, alive(rb.PID), isMounted(rb.Lower))
	}
	gone(t, rb.Upper, recordPath(root, b), rb.Socket, filepath.Dir(rb.Lower))
}

// TestKeepLower: with --keep-lower the tree outlives its last mount, and
// the next mount of the image uses it, over the overlay of the mount
// before if that one wrote nothing (else over a new one, which does not
// show what was written); SIGTERM ends it.
func TestKeepLower(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "kept:v1")
	root := t.TempDir()
	dir := mountDir(t)

	first := mountRec(t, root, ref, dir, "--keep-lower", "1m")
	chrootOut(t, dir, "cat /etc/motd")
	umountOK(t, root, dir)
	if !alive(first.PID) || !isLazyrootMount(first.Lower) {
		t.Fatal("--keep-lower: the tree went with its last mount")
	}
	spare := filepath.Join(filepath.Dir(first.Lower), "spare")
	if !isMounted(spare) {
		t.Errorf("the overlay of a mount that wrote nothing is not kept at %s", spare)
	}
	gone(t, recordPath(root, dir))
	if out, errOut, code := lazyroot(t, "status", "--root", root); code != 0 || !strings.Contains(out, "idle tree of "+ref) ||
		!strings.Contains(out, fmt.Sprintf("server pid %d", first.PID)) {
		t.Errorf("status of the idle tree: code %d\n%s%s", code, out, errOut)
	}

	second := mountRec(t, root, ref, dir)
	if second.PID != first.PID || second.Lower != first.Lower {
		t.Fatalf("mount after keep: server %d tree %s, want %d %s", second.PID, second.Lower, first.PID, first.Lower)
	}
	if second.Upper != first.Upper || isMounted(spare) {
		t.Errorf("mount after keep: upper %s, spare mounted %v; want the spare's upper %s, moved here", second.Upper, isMounted(spare), first.Upper)
	}
	if out := chrootOut(t, dir, "cat /etc/motd"); out != "hello from the gzip layer\n" {
		t.Errorf("kept tree reads %q", out)
	}
	// A mount that writes leaves no spare: its upper goes with it, and
	// the next mount starts clean.
	chrootOut(t, dir, "echo x > /tmp/written")
	umountOK(t, root, dir)
	if isMounted(spare) {
		t.Error("the overlay of a mount that wrote was kept")
	}
	gone(t, second.Upper)
	third := mountRec(t, root, ref, dir)
	if third.PID != first.PID || third.Upper == second.Upper {
		t.Errorf("mount after a writing one: server %d upper %s", third.PID, third.Upper)
	}
	if out := chrootOut(t, dir, "ls /tmp"); out != "" {
		t.Errorf("a new mount shows what the one before wrote: %q", out)
	}
	// Other options make another tree.
	other := mountDir(t)
	if rec := mountRec(t, root, ref, other, "--uid-map", "0:1000:1"); rec.PID == first.PID {
		t.Error("a mount with --uid-map joined a tree without it")
	}
	umountOK(t, root, other)
	umountOK(t, root, dir)

	if !isMounted(spare) {
		t.Errorf("no spare overlay after the last mount, which wrote nothing")
	}

	syscall.Kill(first.PID, syscall.SIGTERM)
	if err := waitExit(t.Context(), first.PID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if isMounted(first.Lower) || isMounted(spare) {
		t.Error("tree or spare overlay still mounted after SIGTERM")
	}
	gone(t, first.Socket, filepath.Dir(first.Lower), third.Upper)
}

// TestSpareOverlayOnlyWhenNothingCanReachIt: an overlay still mounted
// elsewhere when its mount ends (a bind a job runner made), or made
// read-only, is not kept for the next mount, which gets a new, writable
// one.
func TestSpareOverlayOnlyWhenNothingCanReachIt(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "spare:v1")
	root := t.TempDir()
	dir, elsewhere := mountDir(t), mountDir(t)

	for _, tc := range []struct {
		name     string
		do, undo []string
	}{
		{"bound elsewhere", []string{"--bind", dir, elsewhere}, []string{elsewhere}},
		{"made read-only", []string{"-o", "remount,ro", dir}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := mountRec(t, root, ref, dir, "--keep-lower", "1m")
			spare := filepath.Join(filepath.Dir(rec.Lower), "spare")
			if out, err := exec.Command("mount", tc.do...).CombinedOutput(); err != nil {
				t.Fatalf("mount %v: %v: %s", tc.do, err, out)
			}
			umountOK(t, root, dir)
			if isMounted(spare) {
				t.Errorf("%s: the overlay was kept for the next mount", tc.name)
			}
			if tc.undo != nil {
				if out, err := exec.Command("umount", tc.undo...).CombinedOutput(); err != nil {
					t.Fatalf("umount %v: %v: %s", tc.undo, err, out)
				}
			}
			next := mountRec(t, root, ref, dir)
			if next.Upper == rec.Upper {
				t.Errorf("%s: the next mount took its upper %s", tc.name, rec.Upper)
			}
			chrootOut(t, dir, "echo x > /tmp/written")
			umountOK(t, root, dir)
		})
	}
}

// TestSharedLowerNoticesOutsideUmount: an overlay unmounted without
// lazyroot (umount(8), a detach) is forgotten by its server, which then
// exits as its last mount is gone, removing the temporary upper.
func TestSharedLowerNoticesOutsideUmount(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "outside:v1")
	root := t.TempDir()
	dir := mountDir(t)
	rec := mountRec(t, root, ref, dir)
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t.Context(), rec.PID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if isMounted(rec.Lower) {
		t.Error("tree still mounted")
	}
	gone(t, rec.Upper, recordPath(root, dir), rec.Socket)
}

// TestSharedBusyUmount: a busy mount is refused by umount and detached by
// umount --lazy; its temporary upper stays while the job runs and goes
// with the server once the job ends.
func TestSharedBusyUmount(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "busy:v1")
	root := t.TempDir()
	dir := mountDir(t)
	rec := mountRec(t, root, ref, dir)
	job := exec.Command("chroot", dir, "/bin/busybox", "sleep", "60")
	if err := job.Start(); err != nil {
		t.Fatal(err)
	}
	defer job.Process.Kill()
	time.Sleep(200 * time.Millisecond)
	if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code == 0 || !strings.Contains(errOut, "busy") {
		t.Fatalf("umount of a busy mount: code %d: %s", code, errOut)
	}
	umountOK(t, root, dir, "--lazy")
	if isMounted(dir) {
		t.Fatal("still mounted after umount --lazy")
	}
	if _, err := os.Stat(rec.Upper); err != nil {
		t.Errorf("the upper of a detached, running job was removed: %v", err)
	}
	job.Process.Kill()
	job.Wait()
	if err := waitExit(t.Context(), rec.PID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	gone(t, rec.Upper, recordPath(root, dir))
	if isMounted(rec.Lower) {
		t.Error("tree still mounted")
	}
}

// TestSharedLowerFoundByContent: mounts that name one image differently
// (by tag, by digest) or start at the same moment with no server running
// still end up on one server and tree: a server started for a mount hands
// it to the running server of the same lower.
func TestSharedLowerFoundByContent(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "names:v1")
	root := t.TempDir()
	byTag, byDigest := mountDir(t), mountDir(t)

	rt := mountRec(t, root, ref, byTag)
	pinned := strings.Split(ref, ":v1")[0] + "@" + rt.Digest
	rd := mountRec(t, root, pinned, byDigest)
	if rd.PID != rt.PID || rd.Lower != rt.Lower {
		t.Fatalf("mount by digest: server %d tree %s, want the tag's %d %s", rd.PID, rd.Lower, rt.PID, rt.Lower)
	}
	if rd.Image != pinned {
		t.Errorf("record of the mount by digest names %q, want %q", rd.Image, pinned)
	}
	if out := chrootOut(t, byDigest, "cat /etc/motd"); out != "hello from the gzip layer\n" {
		t.Errorf("mount by digest reads %q", out)
	}
	hints, _ := filepath.Glob(filepath.Join(root, "lowers", "refs", "*"))
	starts, _ := filepath.Glob(filepath.Join(root, "logs", "lower-start-*"))
	if len(hints) != 2 || len(starts) != 0 {
		t.Errorf("reference hints %v (want 2), start logs left %v (want none)", hints, starts)
	}
	if b, err := os.ReadFile(rt.Log); err != nil || !strings.Contains(string(b), "serving "+ref) {
		t.Errorf("server log %s: %v\n%s", rt.Log, err, b)
	}
	umountOK(t, root, byTag)
	umountOK(t, root, byDigest)
	if err := waitExit(t.Context(), rt.PID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	hints, _ = filepath.Glob(filepath.Join(root, "lowers", "refs", "*"))
	if len(hints) != 0 {
		t.Errorf("hints left by a server that exited: %v", hints)
	}

	// Three mounts at once, with no server running: one serves, the
	// others join it.
	dirs := []string{mountDir(t), mountDir(t), mountDir(t)}
	errs := make(chan error, len(dirs))
	for _, d := range dirs {
		go func() {
			out, err := exec.Command(lazyrootBin, "mount", "--root", root, ref, d).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("mount %s: %v: %s", d, err, out)
			}
			errs <- err
		}()
	}
	for range dirs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var pids []int
	for _, d := range dirs {
		rec, err := readRecord(recordPath(root, d))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, rec.PID)
		defer umountOK(t, root, d)
	}
	if pids[0] != pids[1] || pids[1] != pids[2] {
		t.Errorf("concurrent mounts went to servers %v, want one", pids)
	}
	if starts, _ := filepath.Glob(filepath.Join(root, "logs", "lower-start-*")); len(starts) != 0 {
		t.Errorf("servers that handed their mounts over left start logs %v", starts)
	}
}

// TestSharedLowerFollowsMovedTag: a tag that moved to another image since
// its last mount gets a tree of its own, though the reference's hint names
// the old image's tree.
func TestSharedLowerFollowsMovedTag(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "moving:v1")
	root := t.TempDir()
	a, b := mountDir(t), mountDir(t)
	ra := mountRec(t, root, ref, a)

	moved, _ := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir}, {Name: "etc/moved", Content: []byte("the tag moved\n")},
	}), testutil.Gzip)
	reg.Push(t, "moving:v1", testutil.Image(t, []v1.Layer{moved}, nil))
	rb := mountRec(t, root, ref, b)
	if rb.PID == ra.PID || rb.Digest == ra.Digest || rb.Lower == ra.Lower {
		t.Fatalf("mount after the tag moved: server %d digest %s, want a server of its own (first: %d %s)", rb.PID, rb.Digest, ra.PID, ra.Digest)
	}
	if got, err := os.ReadFile(filepath.Join(b, "etc/moved")); err != nil || string(got) != "the tag moved\n" {
		t.Errorf("the moved tag's mount reads %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(a, "etc/moved")); !os.IsNotExist(err) {
		t.Errorf("the first mount shows the new image's file: %v", err)
	}
	// The reference's hint now names the new tree and its server.
	hints, _ := filepath.Glob(filepath.Join(root, "lowers", "refs", "*"))
	if len(hints) != 1 {
		t.Fatalf("hints %v, want the reference's one", hints)
	}
	if b, err := os.ReadFile(hints[0]); err != nil || string(b) != fmt.Sprintf("%s %d\n", rb.Shared, rb.PID) {
		t.Errorf("hint %s reads %q, %v; want lower %s of server %d", hints[0], b, err, rb.Shared, rb.PID)
	}
	umountOK(t, root, a)
	umountOK(t, root, b)
}

// TestSharedLowerFailureLeavesNoLog: a mount whose server fails says why
// and leaves no start log behind.
func TestSharedLowerFailureLeavesNoLog(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	pushBusyboxImage(t, reg, "present:v1")
	root := t.TempDir()
	dir := mountDir(t)
	missing := reg.Host + "/present:nosuchtag"
	_, errOut, code := lazyroot(t, "mount", "--root", root, missing, dir)
	if code == 0 || !strings.Contains(errOut, "nosuchtag") {
		t.Fatalf("mount of a missing tag: code %d: %s", code, errOut)
	}
	if starts, _ := filepath.Glob(filepath.Join(root, "logs", "lower-start-*")); len(starts) != 0 {
		t.Errorf("a failed mount left start logs %v", starts)
	}
	if isMounted(dir) {
		t.Error("a failed mount left a mount")
	}
}
