package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// prefetchTestImage pushes a one-layer eStargz image of twelve files, of
// which prioritized come first in the layer.
func prefetchTestImage(t *testing.T, reg *testutil.Registry, repoTag string, prioritized []string) (string, map[string][]byte) {
	t.Helper()
	files := map[string][]byte{}
	ents := []testutil.Entry{{Name: "data", Type: tar.TypeDir}}
	for i := range 12 {
		name := fmt.Sprintf("data/%02d", i)
		b := make([]byte, 20_000+i*9_000)
		for j := range b {
			b[j] = byte('a' + (i*7+j*13+j/97)%26)
		}
		files[name] = b
		ents = append(ents, testutil.Entry{Name: name, Content: b})
	}
	raw := testutil.Tar(t, ents)
	opts := []estargz.Option{estargz.WithParallelism(1), estargz.WithChunkSize(16 << 10)}
	if prioritized != nil {
		opts = append(opts, estargz.WithPrioritizedFiles(prioritized))
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	blob, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	l := static.NewLayer(blob, types.OCILayer)
	ann := map[string]string{estargz.TOCJSONDigestAnnotation: b.TOCDigest().String()}
	return reg.Push(t, repoTag, testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})), files
}

// prefetchStatus is the part of the status JSON these tests read.
type prefetchStatus struct {
	Prefetch *struct {
		State         string `json:"state"`
		ProfileSource string `json:"profileSource"`
		PriorityFiles int    `json:"priorityFiles"`
		FetchedBytes  int64  `json:"fetchedBytes"`
		Errors        int64  `json:"errors"`
	} `json:"prefetch"`
	ProfileFiles int `json:"profileFiles"`
}

// waitPrefetchDone polls the mount's status until prefetch has ended, for
// at most a generous bound.
func waitPrefetchDone(t *testing.T, root, dir string) prefetchStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, errOut, code := lazyroot(t, "status", "--json", "--root", root, dir)
		if code != 0 {
			t.Fatalf("status: code %d: %s", code, errOut)
		}
		var sts []prefetchStatus
		if err := json.Unmarshal([]byte(out), &sts); err != nil {
			var st prefetchStatus
			if err2 := json.Unmarshal([]byte(out), &st); err2 != nil {
				t.Fatalf("status JSON: %v\n%s", err, out)
			}
			sts = []prefetchStatus{st}
		}
		if len(sts) != 1 || sts[0].Prefetch == nil {
			t.Fatalf("status without prefetch: %s", out)
		}
		if st := sts[0]; st.Prefetch.State == "done" || st.Prefetch.State == "stopped" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch not done: %s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// blobGETs counts the blob GETs the registry answered since its last Reset.
func blobGETs(reg *testutil.Registry) int {
	n := 0
	for _, r := range reg.Requests() {
		if r.Blob != "" && r.Method == http.MethodGet {
			n++
		}
	}
	return n
}

// catFiles reads files under dir in a child process (never in the test
// process: see the go-fuse deadlock rule) and checks their content.
func catFiles(t *testing.T, dir string, files map[string][]byte, names ...string) {
	t.Helper()
	for _, name := range names {
		out, err := exec.Command("cat", filepath.Join(dir, name)).Output()
		if err != nil || !bytes.Equal(out, files[name]) {
			t.Fatalf("cat %s: %v (%d bytes, want %d)", name, err, len(out), len(files[name]))
		}
	}
}

func TestMountPrefetchesPrioritizedFiles(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t)
	ref, files := prefetchTestImage(t, reg, "prio:latest", []string{"data/04", "data/09"})
	root, dir := t.TempDir(), mountDir(t)
	reg.Reset()
	if _, errOut, code := lazyroot(t, "mount", "--read-only", "--cache-size", "0", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount: code %d: %s", code, errOut)
	}
	defer lazyroot(t, "umount", "--root", root, dir)
	st := waitPrefetchDone(t, root, dir)
	if st.Prefetch.PriorityFiles != 2 || st.Prefetch.FetchedBytes == 0 || st.Prefetch.Errors != 0 {
		t.Fatalf("prefetch status %+v; want the 2 prioritized files fetched", *st.Prefetch)
	}
	reg.Reset()
	catFiles(t, dir, files, "data/04", "data/09")
	if n := blobGETs(reg); n != 0 {
		t.Errorf("reading the prioritized files made %d blob requests; want none", n)
	}
}

func TestMountRecordsAndReplaysAProfile(t *testing.T) {
	requireRoot(t)
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	ref, files := prefetchTestImage(t, reg, "prof:latest", nil)
	root := t.TempDir()
	logsOnFailure(t, root)
	read := []string{"data/07", "data/02", "data/10"}

	// Mount 1 records what is read, and publishes it on unmount.
	dir := mountDir(t)
	if _, errOut, code := lazyroot(t, "mount", "--read-only", "--cache-size", "0", "--record-profile", "--publish-profile", "--prefetch", "none", "--root", root, ref, dir); code != 0 {
		t.Fatalf("mount: code %d: %s", code, errOut)
	}
	catFiles(t, dir, files, read...)
	if _, errOut, code := lazyroot(t, "umount", "--root", root, dir); code != 0 {
		t.Fatalf("umount: code %d: %s", code, errOut)
	}
	if matches, _ := filepath.Glob(filepath.Join(root, "profiles", "*.json")); len(matches) != 1 {
		t.Fatalf("profiles stored: %v", matches)
	}

	replay := func(t *testing.T, root, source string) {
		t.Helper()
		dir := mountDir(t)
		if _, errOut, code := lazyroot(t, "mount", "--read-only", "--cache-size", "0", "--root", root, ref, dir); code != 0 {
			t.Fatalf("mount: code %d: %s", code, errOut)
		}
		defer lazyroot(t, "umount", "--root", root, dir)
		st := waitPrefetchDone(t, root, dir)
		if st.Prefetch.PriorityFiles != len(read) || st.Prefetch.ProfileSource != source || st.Prefetch.Errors != 0 {
			t.Fatalf("prefetch status %+v; want the %d files of the %s profile", *st.Prefetch, len(read), source)
		}
		reg.Reset()
		catFiles(t, dir, files, read...)
		if n := blobGETs(reg); n != 0 {
			t.Errorf("reading the profile's files made %d blob requests; want none", n)
		}
		reg.Reset()
		catFiles(t, dir, files, "data/05")
		if blobGETs(reg) == 0 {
			t.Error("a file outside the profile was prefetched too")
		}
	}
	// Mount 2: the same root (no disk cache: the memory cache is fresh).
	t.Run("store", func(t *testing.T) { replay(t, root, "store") })
	// Mount 3: a fresh root finds the profile in the registry.
	t.Run("registry", func(t *testing.T) {
		root := t.TempDir()
		logsOnFailure(t, root)
		replay(t, root, "registry")
	})
}

// logsOnFailure has the mount servers' logs under root shown if t fails,
// before root goes with the test.
func logsOnFailure(t *testing.T, root string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(root, "logs", "*.log"))
		for _, p := range logs {
			b, err := os.ReadFile(p)
			t.Logf("log %s (%v):\n%s", filepath.Base(p), err, b)
		}
	})
}

func TestMountPrefetchFlagsAreChecked(t *testing.T) {
	for _, args := range [][]string{
		{"--prefetch", "some"},
		{"--prefetch-rate", "fast"},
		{"--publish-profile"},
	} {
		_, errOut, code := lazyroot(t, append(append([]string{"mount"}, args...), "--root", t.TempDir(), "example.com/x", os.TempDir())...)
		if code == 0 || errOut == "" {
			t.Errorf("mount %v: code %d; want a usage error", args, code)
		}
	}
	out, _, _ := lazyroot(t, "mount", "--help")
	for _, flag := range []string{"--prefetch ", "--prefetch-rate", "--prefetch-wait", "--record-profile", "--publish-profile"} {
		if !bytes.Contains([]byte(out), []byte(flag)) {
			t.Errorf("mount --help does not mention %s", flag)
		}
	}
}
