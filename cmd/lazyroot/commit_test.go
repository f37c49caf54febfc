package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// TestCommitRoundTrip: change files in a writable mount, commit, and mount
// the new image from the registry: exactly those changes are there.
func TestCommitRoundTrip(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "app:v1")
	root := t.TempDir()
	dir := mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount: %d %s", code, errOut)
	}
	before := testutil.Walk(t, dir)
	script := "echo new > /etc/added && echo changed >> /etc/os-release && rm /etc/motd && mkdir -p /opt/tool && echo t > /opt/tool/x && chmod 0700 /opt/tool && mv /etc /etc2 && mv /etc2 /etc"
	if out, err := exec.Command("chroot", dir, "/bin/sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("changing files: %v\n%s", err, out)
	}
	want := testutil.Walk(t, dir)

	tag := reg.Host + "/app:v2"
	out, errOut, code := lazyroot(t, "commit", "--root", root, dir, "--tag", tag)
	if code != 0 || !strings.HasPrefix(out, tag+"@sha256:") {
		t.Fatalf("commit: %d %q %s", code, out, errOut)
	}
	if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
		t.Fatalf("umount: %d %s", code, errOut)
	}
	if _, errOut, code := lazyroot(t, "mount", "--read-only", "--root", t.TempDir(), tag, dir); code != 0 {
		t.Fatalf("mount the committed image: %d %s", code, errOut)
	}
	defer lazyroot(t, "umount", "--root", root, dir)
	got := testutil.Walk(t, dir)
	if _, ok := got["/etc/motd"]; ok {
		t.Error("/etc/motd deleted before commit is in the new image")
	}
	if got["/etc/added"].SHA256 == "" || got["/opt/tool/x"].SHA256 == "" || got["/etc/os-release"].SHA256 == before["/etc/os-release"].SHA256 {
		t.Errorf("changes missing from the new image: added %+v, tool %+v", got["/etc/added"], got["/opt/tool/x"])
	}
	// The whole tree is what the mount showed when it was committed
	// (directory times aside: the kernel set them while changing files).
	for _, n := range []map[string]testutil.Node{want, got} {
		for p, node := range n {
			if node.Type == tar.TypeDir {
				node.ModTime = time.Time{}
				n[p] = node
			}
		}
		// The root's own attributes are the upper's, not a layer entry.
		delete(n, "/")
	}
	testutil.CompareTrees(t, want, got)
	for _, bad := range [][]string{
		{"commit", "--root", root, dir},
		{"commit", "--root", root, t.TempDir(), "--tag", tag},
	} {
		if _, errOut, code := lazyroot(t, bad...); code == 0 {
			t.Errorf("lazyroot %q succeeded", bad)
		} else if errOut == "" {
			t.Errorf("lazyroot %q: no message", bad)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "mounts")); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(root, "mounts", "commit-*")); len(left) > 0 {
		t.Errorf("commit left %v", left)
	}
}

// TestLocalSourcesMatchRegistry: an OCI layout, a docker save tarball and
// the layer files of an image mount as the same tree as the image from
// the registry, and run runs in them.
func TestLocalSourcesMatchRegistry(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, layers := pushBusyboxImage(t, reg, "local/app:v1")
	img, err := remote.Image(mustParse(t, ref))
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	ociDir := filepath.Join(src, "oci")
	p, err := layout.Write(ociDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(src, "app.tar")
	if err := tarball.WriteToFile(archive, mustParse(t, ref), img); err != nil {
		t.Fatal(err)
	}
	var layerArgs []string
	for i := len(layers) - 1; i >= 0; i-- { // top first
		rc, err := layers[i].Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(src, fmt.Sprintf("layer%d.tar.gz", i))
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		layerArgs = append(layerArgs, "--layer", path)
	}

	root := t.TempDir()
	dir := mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--read-only", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount %s: %d %s", ref, code, errOut)
	}
	want := testutil.Walk(t, dir)
	if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
		t.Fatalf("umount: %d %s", code, errOut)
	}
	for name, args := range map[string][]string{
		"oci":             {"oci:" + ociDir + ":v1"},
		"oci, only image": {"oci:" + ociDir},
		"docker-archive":  {"docker-archive:" + archive},
		"layer files":     layerArgs,
	} {
		t.Run(name, func(t *testing.T) {
			mountArgs := append(append([]string{"mount", "--read-only", "--root", root}, args...), dir)
			if _, errOut, code := lazyroot(t, mountArgs...); code != 0 {
				t.Fatalf("mount %q: %d %s", args, code, errOut)
			}
			got := testutil.Walk(t, dir)
			if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
				t.Fatalf("umount: %d %s", code, errOut)
			}
			testutil.CompareTrees(t, want, got)
			runArgs := append(append([]string{"run", "--root", root}, args...), "--", "/bin/cat", "/etc/motd")
			if out, errOut, code := lazyroot(t, runArgs...); code != 0 || out != "hello from the gzip layer\n" {
				t.Errorf("run %q: %d %q %s", args, code, out, errOut)
			}
		})
	}
	// Read in place: the state root holds indexes (and the windows of
	// gzip ones, a few percent of a layer), not copies of layers.
	var stored, windows int64
	filepath.Walk(filepath.Join(root, "index"), func(p string, fi os.FileInfo, err error) error {
		switch {
		case err != nil || !fi.Mode().IsRegular():
		case strings.HasSuffix(p, ".windows"):
			windows += fi.Size()
		default:
			stored += fi.Size()
		}
		return nil
	})
	if stored > 64<<10 || windows > 256<<10 {
		t.Errorf("the state root's index directory holds %d bytes of indexes and %d of windows: layers copied?", stored, windows)
	}
	if m, _ := filepath.Glob(filepath.Join(root, "layers", "*")); len(m) > 0 {
		t.Errorf("layers copied: %v", m)
	}
}

func mustParse(t *testing.T, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestUpperOfLayerFiles: an upper made over one stack of layer files is
// refused over another, and a stack of local files cannot be committed.
func TestUpperOfLayerFiles(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, testutil.Tar(t, []testutil.Entry{{Name: "f", Content: []byte(content)}}), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	one, two := write("one.tar", "1"), write("two.tar", "2")
	root, upper, dir := t.TempDir(), filepath.Join(t.TempDir(), "u"), mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--root", root, "--upper", upper, "--layer", one, dir); code != 0 {
		t.Fatalf("mount: %d %s", code, errOut)
	}
	if _, errOut, code := lazyroot(t, "commit", "--root", root, dir, "--tag", "127.0.0.1:1/x:v1"); code == 0 || !strings.Contains(errOut, "not from a registry") {
		t.Errorf("commit of layer files: %d %s", code, errOut)
	}
	lazyroot(t, "umount", "--root", root, dir)
	// Same path, other content: another stack.
	os.Remove(one)
	os.Rename(two, one)
	if _, errOut, code := lazyroot(t, "mount", "--root", root, "--upper", upper, "--layer", one, dir); code == 0 || !strings.Contains(errOut, "was made over") {
		t.Errorf("upper over another stack: %d %s", code, errOut)
		lazyroot(t, "umount", "--root", root, dir)
	}
}
