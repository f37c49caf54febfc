package main

import (
	"archive/tar"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// bigGzipImage pushes an image with one plain gzip layer of about size
// bytes (incompressible files, so the blob is as large) and a small text
// file in the middle of it.
func bigGzipImage(t *testing.T, reg *testutil.Registry, repoTag string, size int) (string, v1.Layer) {
	t.Helper()
	block := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(42, 42))
	for i := 0; i < len(block); i += 8 {
		binary.LittleEndian.PutUint64(block[i:], rng.Uint64())
	}
	file := func(mib int, seed byte) []byte {
		b := make([]byte, mib<<20)
		for i := 0; i < mib; i++ {
			copy(b[i<<20:], block)
			b[i<<20], b[i<<20+1] = byte(i), seed // every MiB differs
		}
		return b
	}
	ents := []testutil.Entry{{Name: "data", Type: tar.TypeDir}, {Name: "etc", Type: tar.TypeDir}}
	half := size >> 21
	ents = append(ents, testutil.Entry{Name: "data/first.bin", Content: file(half, 1)})
	ents = append(ents, testutil.Entry{Name: "etc/small.conf", Content: []byte("key = value\n")})
	ents = append(ents, testutil.Entry{Name: "data/second.bin", Content: file(half, 2)})
	l, ann := testutil.Layer(t, testutil.Tar(t, ents), testutil.Pigz1)
	return reg.Push(t, repoTag, testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})), l
}

func TestIndexPushThenASecondMachineMountsLazily(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, l := bigGzipImage(t, reg, "big:v1", 200<<20)
	d := digestOf(t, l)
	size, err := l.Size()
	if err != nil {
		t.Fatal(err)
	}

	// Machine A builds the index once and pushes it.
	out, errOut, code := lazyroot(t, "index", "push", "--root", t.TempDir(), ref)
	if code != 0 || !strings.Contains(out, "pushed 1 layer indexes") {
		t.Fatalf("index push: code %d\n%s%s", code, out, errOut)
	}

	// Machine B, with a fresh state root, sees it in inspect and mounts
	// without streaming the layer.
	rootB := t.TempDir()
	out, errOut, code = lazyroot(t, "inspect", "--root", rootB, ref)
	if code != 0 || !regexp.MustCompile(`gzip +registry +[0-9.]+ [KM]iB \+ [0-9.]+ [KM]iB windows +\d+ +lazy`).MatchString(out) {
		t.Fatalf("inspect on machine B: code %d\n%s%s", code, out, errOut)
	}
	reg.Reset()
	dir := mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--root", rootB, "--index-source", "registry", ref, dir); code != 0 {
		t.Fatalf("mount on machine B: code %d: %s", code, errOut)
	}
	mounted := true
	defer func() {
		if mounted {
			lazyroot(t, "umount", "--root", rootB, dir)
		}
	}()
	got, err := os.ReadFile(filepath.Join(dir, "etc/small.conf"))
	if err != nil || string(got) != "key = value\n" {
		t.Fatalf("read small file: %q, %v", got, err)
	}
	var fetched int64
	for _, r := range reg.Requests() {
		if r.Blob != d {
			continue
		}
		if r.Range == "" {
			t.Errorf("machine B fetched the whole layer: %s %s", r.Method, r.Path)
		}
		fetched += r.Bytes
	}
	if fetched == 0 || fetched*20 > size {
		t.Errorf("reading one small file fetched %d of the layer's %d bytes (want under 5%%)", fetched, size)
	}
	t.Logf("machine B fetched %d of %d bytes (%.2f%%) to read one small file", fetched, size, 100*float64(fetched)/float64(size))
	// The registry's index is stored off the mount's way: by the time
	// the mount ends at the latest.
	if _, errOut, code := lazyroot(t, "umount", "--root", rootB, dir); code != 0 {
		t.Fatalf("umount on machine B: code %d: %s", code, errOut)
	}
	mounted = false
	out, _, _ = lazyroot(t, "inspect", "--root", rootB, ref)
	if !strings.Contains(out, "registry (stored)") {
		t.Errorf("inspect after mounting does not show the stored registry index:\n%s", out)
	}
}

func TestMountPublishesIndexAndIndexSourceRegistry(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushBusyboxImage(t, reg, "pub:v1")

	// No index in the registry: a node that must not stream refuses, and
	// says why.
	dir := mountDir(t)
	_, errOut, code := lazyroot(t, "mount", "--root", t.TempDir(), "--index-source", "registry", ref, dir)
	if code != 1 || !strings.Contains(errOut, "no usable index") || !strings.Contains(errOut, "--index-source=registry") {
		t.Fatalf("mount with no registry index: code %d: %s", code, errOut)
	}
	if isMounted(dir) {
		t.Fatal("a failed mount left something mounted")
	}
	// A node that builds the index publishes it...
	rootA := t.TempDir()
	if _, errOut, code := lazyroot(t, "mount", "--root", rootA, "--publish-index", ref, dir); code != 0 {
		t.Fatalf("mount --publish-index: code %d: %s", code, errOut)
	}
	lazyroot(t, "umount", "--root", rootA, dir)
	// ...so the cautious node mounts now.
	rootB := t.TempDir()
	if _, errOut, code := lazyroot(t, "mount", "--root", rootB, "--index-source", "registry", ref, dir); code != 0 {
		t.Fatalf("mount after publish: code %d: %s", code, errOut)
	}
	defer lazyroot(t, "umount", "--root", rootB, dir)
	if b, err := os.ReadFile(filepath.Join(dir, "etc/motd")); err != nil || string(b) != "hello from the gzip layer\n" {
		t.Errorf("read: %q, %v", b, err)
	}
	if _, errOut, code := lazyroot(t, "mount", "--index-source", "sometimes", ref, mountDir(t)); code != 2 || !strings.Contains(errOut, "--index-source") {
		t.Errorf("bad --index-source: code %d: %s", code, errOut)
	}
}
