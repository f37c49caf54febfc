package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// pushHostImage pushes an image of this machine's Debian programs (bash,
// coreutils, procps) whose config names a user, directory, env and command.
func pushHostImage(t *testing.T, reg *testutil.Registry, repoTag string) string {
	t.Helper()
	entries := testutil.HostBinaries(t, "bash", "cat", "ls", "id", "sleep", "sha256sum", "env", "readlink", "ps", "touch", "rm", "wc", "grep", "tr")
	l, ann := testutil.Layer(t, testutil.Tar(t, entries), testutil.Gzip)
	top, ann2 := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{{Name: "etc/motd", Content: []byte("from the top layer\n")}}), testutil.EStargz)
	img := testutil.Image(t, []v1.Layer{l, top}, []map[string]string{ann, ann2})
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Env = []string{"PATH=/usr/bin:/bin", "FOO=image"}
	cf.Config.User = "job"
	cf.Config.WorkingDir = "/home/job"
	cf.Config.Entrypoint = []string{"/bin/bash", "-c"}
	cf.Config.Cmd = []string{`echo "$FOO $(id -u):$(id -g) $(id -G) $(pwd) $HOME"`}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return reg.Push(t, repoTag, img)
}

// runCmd runs "lazyroot run" with a fresh state root unless root is set.
func runCmd(t *testing.T, root string, args ...string) (string, string, int) {
	t.Helper()
	return lazyroot(t, append([]string{"run", "--root", root}, args...)...)
}

func TestRun(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref := pushHostImage(t, reg, "host/run:v1")
	root := t.TempDir()
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	bindDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(bindDir, "in"), []byte("bound\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"image config", []string{ref}, "image 1000:1000 1000 50 /home/job /home/job\n", "", 0},
		{"flags override config", []string{"--user", "0:0", "-e", "FOO=flag", "-w", "/tmp", ref, "--", `echo "$FOO $(id -u):$(id -g) $(pwd) $HOME"`}, "flag 0:0 /tmp /root\n", "", 0},
		{"entrypoint replaced", []string{"--entrypoint", "/bin/cat", ref, "--", "/etc/motd"}, "from the top layer\n", "", 0},
		{"exit status", []string{ref, "--", "exit 3"}, "", "", 3},
		{"killed by a signal", []string{ref, "--", "kill -KILL $$"}, "", "", 137},
		{"reads /proc in its own PID namespace", []string{"-u", "0", ref, "--", `echo $$; tr '\0' ' ' < /proc/1/cmdline`}, "", "", 0},
		{"ps", []string{"-u", "0", ref, "--", "ps -e -o pid=,comm= | wc -l"}, "", "", 0},
		{"writes files", []string{"-u", "0", ref, "--", "echo data > /tmp/out && sha256sum /tmp/out && touch /home/job/x && rm /etc/motd 2>&1; ls /etc"}, "", "", 0},
		{"resolv.conf and hosts", []string{ref, "--", "cat /etc/resolv.conf; test -s /etc/hosts && echo hosts"}, string(resolv) + "hosts\n", "", 0},
		{"dev", []string{ref, "--", "echo x > /dev/null && ls /dev | tr '\\n' ' '"}, "", "", 0},
		{"bind", []string{"--bind", bindDir + ":/mnt/in:ro", ref, "--", "cat /mnt/in/in; echo no > /mnt/in/other || echo ro"}, "bound\nro\n", "Read-only file system", 0},
		{"command not found", []string{"--entrypoint", "", ref, "--", "nosuch"}, "", "nosuch: command not found", 127},
		{"no image", []string{"localhost:1/none:v1", "--", "true"}, "", "none", 125},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, root, c.args...)
			if code != c.wantCode || (c.wantOut != "" && out != c.wantOut) || !strings.Contains(errOut, c.wantErr) {
				t.Errorf("run %q: code %d, stdout %q, stderr %q; want code %d, stdout %q, stderr with %q", c.args, code, out, errOut, c.wantCode, c.wantOut, c.wantErr)
			}
			switch c.name {
			case "ps":
				if n, err := strconv.Atoi(strings.TrimSpace(out)); err == nil && n > 5 {
					t.Errorf("ps sees %d processes; want the job's alone", n)
				}
			case "reads /proc in its own PID namespace":
				// pid 1 is lazyroot, init of the job's namespace.
				if strings.HasPrefix(out, "1\n") || !strings.Contains(out, "run --inner") {
					t.Errorf("pid and init command line: %q", out)
				}
			case "writes files":
				if !regexp.MustCompile(`^[0-9a-f]{64}  /tmp/out\n`).MatchString(out) {
					t.Errorf("sha256sum output %q", out)
				}
				if strings.Contains(out, "motd") {
					t.Errorf("/etc/motd still listed after rm: %q", out)
				}
			case "dev":
				for _, d := range []string{"null", "zero", "urandom", "pts", "shm", "fd"} {
					if !strings.Contains(out, d) {
						t.Errorf("/dev has no %s: %q", d, out)
					}
				}
			}
		})
	}
	checkRunsClean(t, root)
	// Nothing the jobs wrote reached the image: a fresh run sees it whole.
	if out, errOut, code := runCmd(t, root, ref, "--", "cat /etc/motd; ls /tmp"); code != 0 || out != "from the top layer\n" {
		t.Errorf("fresh run: code %d, %q %q", code, out, errOut)
	}
}

// checkRunsClean checks that no run left a directory or a mount behind.
func checkRunsClean(t *testing.T, root string) {
	t.Helper()
	entries, _ := os.ReadDir(filepath.Join(root, "runs"))
	if len(entries) != 0 {
		t.Errorf("runs left %d directories under %s", len(entries), filepath.Join(root, "runs"))
	}
	b, _ := os.ReadFile("/proc/self/mountinfo")
	if bytes.Contains(b, []byte(root)) {
		t.Errorf("mounts under the state root on the node:\n%s", b)
	}
}

func TestRunUpperPersists(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref := pushHostImage(t, reg, "host/upper:v1")
	root, upper := t.TempDir(), filepath.Join(t.TempDir(), "job-upper")
	if _, errOut, code := runCmd(t, root, "--upper", upper, "--bind", t.TempDir()+":/mnt/data", ref, "--", "echo kept > /home/job/state"); code != 0 {
		t.Fatalf("first run: %d %s", code, errOut)
	}
	if b, err := os.ReadFile(filepath.Join(upper, "diff/home/job/state")); err != nil || string(b) != "kept\n" {
		t.Errorf("upper after the first run: %q, %v", b, err)
	}
	// The upper holds the job's changes alone, not run's mount points.
	for _, p := range []string{"proc", "dev", "sys", "etc/resolv.conf", "etc/hosts", "mnt"} {
		if _, err := os.Lstat(filepath.Join(upper, "diff", p)); !os.IsNotExist(err) {
			t.Errorf("run left %s in the kept upper: %v", p, err)
		}
	}
	if out, errOut, code := runCmd(t, root, "--upper", upper, ref, "--", "cat /home/job/state"); code != 0 || out != "kept\n" {
		t.Errorf("second run: %d %q %s", code, out, errOut)
	}
	other, _ := pushBusyboxImage(t, reg, "busybox/other:v1")
	if _, errOut, code := runCmd(t, root, "--upper", upper, other, "--", "/bin/true"); code != exitRunFailed || !strings.Contains(errOut, "was made over") {
		t.Errorf("upper of another image: code %d, %s", code, errOut)
	}
	checkRunsClean(t, root)
}

// TestRunSignals: SIGTERM reaches the job and its status comes back; a run
// killed with SIGKILL takes its job and its mounts with it.
func TestRunSignals(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref := pushHostImage(t, reg, "host/signals:v1")
	root := t.TempDir()

	start := func(script string) (*exec.Cmd, *bufio.Reader) {
		t.Helper()
		cmd := exec.Command(lazyrootBin, "run", "--root", root, ref, "--", script)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(stdout)
		line, err := readLineTimeout(r, 60*time.Second)
		if err != nil || line != "ready" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("job did not start: %q, %v", line, err)
		}
		return cmd, r
	}

	cmd, r := start(`trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done`)
	cmd.Process.Signal(syscall.SIGTERM)
	line, _ := readLineTimeout(r, 10*time.Second)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 || line != "got TERM" {
		t.Errorf("after SIGTERM: %v, output %q; want status 7 and \"got TERM\"", err, line)
	}

	cmd, _ = start(`echo ready; exec sleep 1000`)
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); len(processesNamed(t, "sleep", "1000")) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the job's sleep is not running")
		}
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for len(processesNamed(t, "sleep", "1000")) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the job outlived its killed run: %v", processesNamed(t, "sleep", "1000"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The next run clears what the killed one could not.
	if _, errOut, code := runCmd(t, root, ref, "--", "true"); code != 0 {
		t.Fatalf("run after a killed run: %d %s", code, errOut)
	}
	checkRunsClean(t, root)
}

func readLineTimeout(r *bufio.Reader, d time.Duration) (string, error) {
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := r.ReadString('\n')
		ch <- res{strings.TrimSuffix(s, "\n"), err}
	}()
	select {
	case x := <-ch:
		return x.s, x.err
	case <-time.After(d):
		return "", os.ErrDeadlineExceeded
	}
}

// processesNamed lists the pids whose command line is exactly args.
func processesNamed(t *testing.T, args ...string) []int {
	t.Helper()
	want := strings.Join(args, "\x00") + "\x00"
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if string(b) == want || strings.HasSuffix(string(b), "/"+want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestMountUppers: two mounts of one image keep separate changes; a named
// upper survives umount and mount; --read-only and --uid-map do what they
// say.
func TestMountUppers(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "uppers:v1")
	root := t.TempDir()
	a, b := mountDir(t), mountDir(t)
	upper := filepath.Join(t.TempDir(), "kept")
	mount := func(args ...string) {
		t.Helper()
		if _, errOut, code := lazyroot(t, append([]string{"mount", "--root", root}, args...)...); code != 0 {
			t.Fatalf("mount %q: %d %s", args, code, errOut)
		}
	}
	umount := func(dir string) {
		t.Helper()
		if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
			t.Fatalf("umount %s: %d %s", dir, code, errOut)
		}
	}
	mount("--upper", upper, ref, a)
	mount(ref, b)
	if err := os.WriteFile(filepath.Join(a, "etc/only-a"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(b, "etc/motd")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b, "etc/only-a")); !os.IsNotExist(err) {
		t.Errorf("a's file shows in b: %v", err)
	}
	if _, err := os.Stat(filepath.Join(a, "etc/motd")); err != nil {
		t.Errorf("b's delete shows in a: %v", err)
	}
	if _, errOut, code := lazyroot(t, "mount", "--root", root, "--upper", upper, ref, mountDir(t)); code == 0 || !strings.Contains(errOut, "in use") {
		t.Errorf("a second mount of a held upper: %d %s", code, errOut)
	}
	umount(a)
	umount(b)
	mount("--upper", upper, ref, a)
	if got, err := os.ReadFile(filepath.Join(a, "etc/only-a")); err != nil || string(got) != "a" {
		t.Errorf("named upper after remount: %q %v", got, err)
	}
	umount(a)
	if _, err := os.Stat(filepath.Join(upper, "diff/etc/only-a")); err != nil {
		t.Errorf("umount removed a named upper: %v", err)
	}

	mount("--read-only", "--uid-map", "0:100000:65536", "--gid-map", "0:200000:65536", ref, a)
	defer umount(a)
	if err := os.WriteFile(filepath.Join(a, "etc/x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("write to a --read-only mount: %v, want EROFS", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(a, "etc/motd"), &st); err != nil || st.Uid != 100000 || st.Gid != 200000 {
		t.Errorf("etc/motd owner %d:%d (%v), want 100000:200000", st.Uid, st.Gid, err)
	}
	// A writable id-mapped mount cannot be committed: its upper holds
	// host ids.
	mount("--uid-map", "0:100000:65536", ref, b)
	defer umount(b)
	if _, errOut, code := lazyroot(t, "commit", "--root", root, b, "--tag", reg.Host+"/uppers:v2"); code == 0 || !strings.Contains(errOut, "uid-map") {
		t.Errorf("commit of an id-mapped mount: %d %s", code, errOut)
	}
}

// TestRunContainsTheJob: a root job keeps only the capabilities container
// runtimes grant, cannot reach lazyroot (its PID 1) or the node through
// /proc/1, and an image's symlinks cannot point run's setup at the node.
func TestRunContainsTheJob(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	hostDir := t.TempDir()
	base := testutil.HostBinaries(t, "bash", "cat", "ls", "grep", "true")
	push := func(repo string, top []testutil.Entry) string {
		var layers []v1.Layer
		var anns []map[string]string
		for _, entries := range [][]testutil.Entry{base, top} {
			l, a := testutil.Layer(t, testutil.Tar(t, entries), testutil.Gzip)
			layers, anns = append(layers, l), append(anns, a)
		}
		return reg.Push(t, repo, testutil.Image(t, layers, anns))
	}
	ref := push("hostile/dev:v1", []testutil.Entry{{Name: "dev", Type: tar.TypeSymlink, Linkname: hostDir}})
	fifo := push("hostile/fifo:v1", []testutil.Entry{{Name: "etc/passwd", Type: tar.TypeFifo, Mode: 0o644}})
	root := t.TempDir()

	script := `grep -E '^Cap(Inh|Prm|Bnd|Amb)' /proc/self/status; cat /proc/1/environ >/dev/null 2>&1 || echo no-environ; ls /proc/1/root/ >/dev/null 2>&1 || echo no-root; ls /dev/null /dev/fd >/dev/null && echo dev-ok`
	out, errOut, code := runCmd(t, root, "-u", "0", "--auth", "dXNlcjpzM2NyZXQ=", ref, "--", "/bin/bash", "-c", script)
	if code != 0 || out != "CapInh:\t0000000000000000\nCapPrm:\t00000000a80005fb\nCapBnd:\t00000000a80005fb\nCapAmb:\t0000000000000000\nno-environ\nno-root\ndev-ok\n" {
		t.Errorf("root job: code %d, stdout %q, stderr %s", code, out, errOut)
	}
	if entries, _ := os.ReadDir(hostDir); len(entries) != 0 {
		t.Errorf("run's /dev setup wrote to the node's %s through the image's /dev symlink: %d entries", hostDir, len(entries))
	}
	// A fifo for /etc/passwd is an unknown user, not a hang.
	if _, errOut, code := runCmd(t, root, "-u", "job", fifo, "--", "/bin/true"); code != exitRunFailed || !strings.Contains(errOut, "job") {
		t.Errorf("user from a fifo passwd: code %d, %s", code, errOut)
	}
	if _, errOut, code := runCmd(t, root, "-u", "0", fifo, "--", "/bin/true"); code != 0 {
		t.Errorf("root with a fifo passwd: code %d, %s", code, errOut)
	}
	checkRunsClean(t, root)
}

// TestUmountAfterServerKilled: umount cleans up what a mount server killed
// with SIGKILL left: the tree beneath, the temporary upper, the record.
func TestUmountAfterServerKilled(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "killed:v1")
	root := t.TempDir()
	dir := mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount: %d %s", code, errOut)
	}
	rec, err := readRecord(recordPath(root, dir))
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(rec.PID, syscall.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); alive(rec.PID); {
		if time.Now().After(deadline) {
			t.Fatal("server did not die")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
		t.Fatalf("umount: %d %s", code, errOut)
	}
	if isMounted(dir) || isMounted(rec.Lower) {
		t.Errorf("still mounted: %s %v, %s %v", dir, isMounted(dir), rec.Lower, isMounted(rec.Lower))
	}
	for _, p := range []string{rec.Upper, recordPath(root, dir), rec.Socket} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	// The mount point can be used again.
	if _, errOut, code := lazyroot(t, "mount", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount again: %d %s", code, errOut)
	}
	lazyroot(t, "umount", "--root", root, dir)
}
