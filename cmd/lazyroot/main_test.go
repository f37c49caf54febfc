package main

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// lazyrootBin is the binary under test, built once by TestMain.
var lazyrootBin string

func TestMain(m *testing.M) {
	if os.Getenv(hugeHeapChild) != "" {
		os.Exit(m.Run()) // TestHugeHeap's fresh process runs no binary
	}
	dir, err := os.MkdirTemp("", "lazyroot-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lazyrootBin = filepath.Join(dir, "lazyroot")
	build := exec.Command("go", "build", "-o", lazyrootBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build lazyroot:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
}

// lazyroot runs the binary and returns stdout, stderr and the exit code.
func lazyroot(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(lazyrootBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run lazyroot %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// mountDir returns an empty mount point that is unmounted (if mounted) when
// the test ends.
func mountDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if isMounted(dir) {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// busybox returns the static busybox binary of Debian's busybox-static.
func busybox(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("/bin/busybox")
	if err != nil || !bytes.HasPrefix(b, []byte("\x7fELF")) {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs busybox-static installed: %v", err)
		}
		t.Skipf("no /bin/busybox (apt-get install busybox-static): %v", err)
	}
	return b
}

// pushBusyboxImage pushes a two-layer image of real Debian binaries: an
// eStargz base with busybox and a plain gzip layer on top.
func pushBusyboxImage(t *testing.T, reg *testutil.Registry, repoTag string) (string, []v1.Layer) {
	t.Helper()
	base := []testutil.Entry{
		{Name: "bin", Type: tar.TypeDir}, {Name: "etc", Type: tar.TypeDir}, {Name: "tmp", Type: tar.TypeDir, Mode: 01777},
		{Name: "bin/busybox", Content: busybox(t), Mode: 0755},
		{Name: "etc/os-release", Content: []byte("PRETTY_NAME=\"lazyroot test image\"\nID=debian\n")},
	}
	for _, app := range []string{"sh", "cat", "ls", "sha256sum", "echo", "id"} {
		base = append(base, testutil.Entry{Name: "bin/" + app, Type: tar.TypeSymlink, Linkname: "busybox"})
	}
	top := []testutil.Entry{{Name: "etc/motd", Content: []byte("hello from the gzip layer\n")}}
	l0, a0 := testutil.Layer(t, testutil.Tar(t, base), testutil.EStargz)
	l1, a1 := testutil.Layer(t, testutil.Tar(t, top), testutil.Gzip)
	return reg.Push(t, repoTag, testutil.Image(t, []v1.Layer{l0, l1}, []map[string]string{a0, a1})), []v1.Layer{l0, l1}
}

func TestMountChrootUmount(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "app:latest")
	root := t.TempDir()
	dir := mountDir(t)

	if out, errOut, code := lazyroot(t, "inspect", "--root", root, ref); code != 0 ||
		!regexp.MustCompile(`estargz +toc +[0-9.]+ (B|KiB|MiB) +\d+ +lazy`).MatchString(out) ||
		!regexp.MustCompile(`gzip +none +- +- +built on mount, then lazy`).MatchString(out) {
		t.Fatalf("inspect: code %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := lazyroot(t, "mount", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount: code %d: %s", code, errOut)
	}
	if !isLazyrootMount(dir) {
		t.Fatal("mount returned but nothing is mounted")
	}
	if opts := mountOptions(t, dir); !strings.Contains(opts, "nosuid") || !strings.HasPrefix(opts, "rw") {
		t.Errorf("mount options %q; want a writable overlay, nosuid by default", opts)
	}
	rec, err := readRecord(recordPath(root, dir))
	if err != nil {
		t.Fatalf("mount record: %v", err)
	}
	if rec.Lower == "" || !rec.TempUpper || !isLazyrootMount(rec.Lower) {
		t.Fatalf("mount record %+v: want a temporary upper over a mounted lower", rec)
	}
	if opts := mountOptions(t, rec.Lower); !strings.HasPrefix(opts, "ro") {
		t.Errorf("lower mount options %q; want ro", opts)
	}
	out, err := exec.Command("chroot", dir, "/bin/sh", "-c", "cat /etc/os-release /etc/motd; ls /bin; echo written > /tmp/new; rm /etc/motd").CombinedOutput()
	if err != nil {
		t.Fatalf("chroot: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `PRETTY_NAME="lazyroot test image"`) || !strings.Contains(string(out), "hello from the gzip layer") {
		t.Errorf("chroot output:\n%s", out)
	}
	status, errOut, code := lazyroot(t, "status", "--root", root, dir)
	if code != 0 || !strings.Contains(status, "fetched") || !strings.Contains(status, ref) || !strings.Contains(status, "deleted on umount") ||
		!strings.Contains(status, "from "+reg.Host+":") || !regexp.MustCompile(`layer 1 sha256:\S+ gzip \(index: built\): fetched`).MatchString(status) {
		t.Errorf("status: code %d\n%s%s", code, status, errOut)
	}
	if b, err := os.ReadFile(filepath.Join(rec.Upper, "diff/tmp/new")); err != nil || string(b) != "written\n" {
		t.Errorf("upper holds %q, %v", b, err)
	}
	if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
		t.Fatalf("umount: code %d: %s", code, errOut)
	}
	if isMounted(dir) {
		t.Error("still mounted after umount")
	}
	if err := syscall.Kill(rec.PID, 0); err == nil && !isZombie(rec.PID) {
		t.Errorf("mount server %d still running after umount", rec.PID)
	}
	if _, err := os.Stat(recordPath(root, dir)); !os.IsNotExist(err) {
		t.Errorf("mount record left behind: %v", err)
	}
	if isMounted(rec.Lower) {
		t.Error("lower still mounted after umount")
	}
	if _, err := os.Stat(rec.Upper); !os.IsNotExist(err) {
		t.Errorf("temporary upper left behind: %v", err)
	}
	if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code == 0 || !strings.Contains(errOut, "not a lazyroot mount") {
		t.Errorf("second umount: code %d: %s", code, errOut)
	}
}

func TestSIGTERMUnmounts(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "app:latest")
	root := t.TempDir()
	dir := mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount: code %d: %s", code, errOut)
	}
	rec, err := readRecord(recordPath(root, dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(rec.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := waitExit(t.Context(), rec.PID, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if isMounted(dir) {
		t.Error("still mounted after SIGTERM to the server")
	}
}

// basicAuth answers 401 unless the request carries user:pass.
func basicAuth(user, pass string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// corruptBlob flips a byte early in every successful response for blob d,
// inside the first compressed unit of a range.
func corruptBlob(d string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
				next.ServeHTTP(w, r)
				return
			}
			rec := &bufferedResponse{header: http.Header{}, status: http.StatusOK}
			next.ServeHTTP(rec, r)
			body := rec.body.Bytes()
			if rec.status/100 == 2 && len(body) > 0 {
				body[min(12, len(body)-1)] ^= 0x5a
			}
			for k, v := range rec.header {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.status)
			w.Write(body)
		})
	}
}

type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) WriteHeader(code int)        { b.status = code }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }

func digestOf(t *testing.T, l v1.Layer) string {
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestMountBadInput(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, layers := pushBusyboxImage(t, reg, "app:latest")

	authReg := testutil.NewRegistry(t)
	authRef, _ := pushBusyboxImage(t, authReg, "private:latest")
	authReg.Wrap(basicAuth("user", "secret"))

	badReg := testutil.NewRegistry(t)
	gzipRef, gzipLayers := pushBusyboxImage(t, badReg, "corrupt:latest")
	badReg.Wrap(corruptBlob(digestOf(t, gzipLayers[1])))

	garbage := static.NewLayer(bytes.Repeat([]byte("this is not a tar archive\n"), 100), types.OCIUncompressedLayer)
	notTarRef := reg.Push(t, "nottar:latest", testutil.Image(t, []v1.Layer{garbage}, nil))

	tocLayer, ann := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{{Name: "f", Content: []byte("x")}}), testutil.EStargz)
	ann["containerd.io/snapshot/stargz/toc.digest"] = "sha256:" + strings.Repeat("0", 64)
	badTOCRef := reg.Push(t, "badtoc:latest", testutil.Image(t, []v1.Layer{tocLayer}, []map[string]string{ann}))
	_ = layers

	nonEmpty := t.TempDir()
	os.WriteFile(filepath.Join(nonEmpty, "file"), []byte("x"), 0o644)

	for _, tc := range []struct {
		name string
		args []string
		dir  string
		want string
	}{
		{"missing mount point", []string{ref}, "/nonexistent/lazyroot/mnt", "does not exist"},
		{"non-empty mount point", []string{ref}, nonEmpty, "not empty"},
		{"malformed reference", []string{"Bad Ref::x"}, "", "image reference"},
		{"unknown tag", []string{reg.Host + "/app:nope"}, "", "not found"},
		{"unknown repository", []string{reg.Host + "/nothing:latest"}, "", "not found"},
		{"unreachable registry", []string{"127.0.0.1:1/app:latest", "--resolve-timeout=20s"}, "", "connection refused"},
		{"no credentials", []string{authRef}, "", "access denied"},
		{"bad credentials", []string{authRef, "--username", "user", "--password", "wrong"}, "", "access denied"},
		{"bad --auth", []string{authRef, "--auth", "%%%"}, "", "--auth"},
		{"digest mismatch", []string{gzipRef}, "", "digest mismatch"},
		{"layer not a tar", []string{notTarRef}, "", "not a valid tar"},
		{"toc digest mismatch", []string{badTOCRef}, "", "toc digest mismatch"},
		{"bad platform", []string{ref, "--platform", "nonsense"}, "", "--platform"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir
			if dir == "" {
				dir = mountDir(t)
			}
			args := append([]string{"mount", "--root", t.TempDir()}, tc.args...)
			args = append(args, dir)
			_, errOut, code := lazyroot(t, args...)
			if code == 0 {
				t.Fatalf("mount succeeded")
			}
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if len(lines) != 1 || !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q; want one line containing %q", errOut, tc.want)
			}
			if isMounted(dir) {
				t.Errorf("%s is mounted after a failed mount", dir)
			}
		})
	}

	// Good credentials, given any of the three ways, mount the private image.
	dockerConfig := t.TempDir()
	authField := base64.StdEncoding.EncodeToString([]byte("user:secret"))
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, authReg.Host, authField)
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, extra := range map[string][]string{
		"flags":         {"--username", "user", "--password", "secret"},
		"auth":          {"--auth", authField},
		"docker config": nil,
	} {
		t.Run("good credentials from "+name, func(t *testing.T) {
			root, dir := t.TempDir(), mountDir(t)
			cmd := exec.Command(lazyrootBin, append(append([]string{"mount", "--root", root}, extra...), authRef, dir)...)
			cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerConfig)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("mount: %v: %s", err, out)
			}
			rec, err := readRecord(recordPath(root, dir))
			if err != nil {
				t.Fatal(err)
			}
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.PID))
			if err != nil || bytes.Contains(cmdline, []byte("secret")) || bytes.Contains(cmdline, []byte(authField)) {
				t.Errorf("server command line %q (%v) shows the credentials", cmdline, err)
			}
			if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
				t.Errorf("umount: %s", errOut)
			}
		})
	}
}

func TestCorruptChunkIsNeverServed(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, layers := pushBusyboxImage(t, reg, "app:latest")
	root := t.TempDir()
	dir := mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--root", root, "--read-timeout=10s", ref, dir); code != 0 {
		t.Fatalf("mount: %s", errOut)
	}
	defer lazyroot(t, "umount", "--root", root, dir)
	reg.Wrap(corruptBlob(digestOf(t, layers[0])))
	if b, err := os.ReadFile(filepath.Join(dir, "etc/os-release")); err == nil {
		t.Fatalf("read served bytes from a corrupted chunk: %q", b)
	} else if !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("read error %v; want EIO", err)
	}
	reg.Wrap(nil)
	b, err := os.ReadFile(filepath.Join(dir, "etc/os-release"))
	if err != nil || !strings.Contains(string(b), "lazyroot test image") {
		t.Errorf("read after the registry recovered: %q, %v", b, err)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "no command"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"mount", "only-one-arg"}, 2, "mount takes IMAGE DIR"},
		{[]string{"mount", "--read-only", "--upper", "/tmp/u", "img", "/mnt"}, 2, "cannot go with --read-only"},
		{[]string{"mount", "--uid-map", "0:1", "img", "/mnt"}, 2, "CONTAINER:HOST:SIZE"},
		{[]string{"mount", "--layer", "/nonexistent.tar", "/mnt"}, 1, "/nonexistent.tar"},
		{[]string{"mount", "--layer", "/etc/hostname", "img", "/mnt"}, 2, "not both"},
		{[]string{"run"}, 2, "needs an IMAGE"},
		{[]string{"run", "--bind", "nocolon", "img"}, 2, "SRC:DST"},
		{[]string{"run", "--env", "=v", "img"}, 2, "K=V"},
		{[]string{"commit", "/mnt"}, 2, "--tag"},
		{[]string{"commit", "--tag", "Bad Tag", "/mnt"}, 2, "--tag"},
		{[]string{"mount", "--no-such-flag", "a", "b"}, 2, "unknown flag"},
		{[]string{"umount"}, 2, "1 argument"},
	} {
		_, errOut, code := lazyroot(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("lazyroot %v: code %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	for _, cmd := range []string{"mount", "umount", "inspect", "status"} {
		out, _, code := lazyroot(t, cmd, "--help")
		if code != 0 || !strings.Contains(out, "Usage: lazyroot "+cmd) {
			t.Errorf("%s --help: code %d\n%s", cmd, code, out)
		}
	}
	out, _, code := lazyroot(t, "--help")
	if code != 0 || !strings.Contains(out, "mount") || !strings.Contains(out, "umount") {
		t.Errorf("--help: code %d\n%s", code, out)
	}
}

// mountOptions returns the per-mount options of the mount at dir.
func mountOptions(t *testing.T, dir string) string {
	t.Helper()
	return strings.Fields(mountinfoLine(t, dir))[5]
}

// mountinfoLine returns the line of /proc/self/mountinfo of the mount at
// dir.
func mountinfoLine(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == dir {
			return line
		}
	}
	t.Fatalf("%s not in mountinfo", dir)
	return ""
}
