package layer_test

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// commitBase is a two-layer image: etc/which and etc/gone, then usr/tool.
func commitBase(t *testing.T) v1.Image {
	t.Helper()
	l1, a1 := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir},
		{Name: "etc/which", Content: []byte("base")},
		{Name: "etc/gone", Content: []byte("to be deleted")},
	}), testutil.Gzip)
	l2, a2 := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{
		{Name: "usr", Type: tar.TypeDir},
		{Name: "usr/tool", Content: []byte("tool"), Mode: 0o755},
	}), testutil.EStargz)
	return testutil.Image(t, []v1.Layer{l1, l2}, []map[string]string{a1, a2})
}

// commitTar writes the layer a commit adds to a file and returns its path
// and its sha256 (the diff ID it must get).
func commitTar(t *testing.T) (string, v1.Hash) {
	t.Helper()
	b := testutil.Tar(t, []testutil.Entry{
		{Name: "etc/", Type: tar.TypeDir},
		{Name: "etc/.wh.gone"},
		{Name: "etc/which", Content: []byte("committed")},
		{Name: "new/", Type: tar.TypeDir},
		{Name: "new/file", Content: []byte("new file"), Xattrs: map[string]string{"user.x": "y"}},
	})
	p := filepath.Join(t.TempDir(), "upper.tar")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(b))}
}

// checkCommitted resolves ref and checks that it is base plus one layer
// with diff ID diffID, and that the merged tree shows the commit's change.
func checkCommitted(t *testing.T, ref string, digest v1.Hash, base *layer.Image, diffID v1.Hash, opts ...layer.Option) {
	t.Helper()
	img, err := layer.Resolve(t.Context(), ref, opts...)
	if err != nil {
		t.Fatalf("resolve the commit: %v", err)
	}
	if img.Digest != digest {
		t.Errorf("%s resolves to %s, Commit returned %s", ref, img.Digest, digest)
	}
	if len(img.Layers) != len(base.Layers)+1 {
		t.Fatalf("%d layers, want %d", len(img.Layers), len(base.Layers)+1)
	}
	for i, l := range base.Layers {
		got := img.Layers[i].Descriptor
		if got.Digest != l.Descriptor.Digest || got.MediaType != l.Descriptor.MediaType || got.Size != l.Descriptor.Size {
			t.Errorf("layer %d: %s %s, want the base's %s %s", i, got.MediaType, got.Digest, l.Descriptor.MediaType, l.Descriptor.Digest)
		}
		if !maps.Equal(got.Annotations, l.Descriptor.Annotations) {
			t.Errorf("layer %d: annotations %v, want the base's %v", i, got.Annotations, l.Descriptor.Annotations)
		}
	}
	top := img.Layers[len(img.Layers)-1]
	wantType := types.OCILayer
	if base.Manifest.MediaType == types.DockerManifestSchema2 {
		wantType = types.DockerLayer
	}
	if top.Descriptor.MediaType != wantType || img.Manifest.MediaType != base.Manifest.MediaType {
		t.Errorf("new layer %s in a %s manifest; want %s in %s", top.Descriptor.MediaType, img.Manifest.MediaType, wantType, base.Manifest.MediaType)
	}
	if top.DiffID != diffID {
		t.Errorf("new layer diff ID %s, want the tar's sha256 %s", top.DiffID, diffID)
	}
	wantDiffIDs := append(append([]v1.Hash(nil), base.Config.RootFS.DiffIDs...), diffID)
	if fmt.Sprint(img.Config.RootFS.DiffIDs) != fmt.Sprint(wantDiffIDs) {
		t.Errorf("diff IDs %v, want %v", img.Config.RootFS.DiffIDs, wantDiffIDs)
	}
	h := img.Config.History
	if len(h) != len(base.Config.History)+1 {
		t.Fatalf("history has %d entries, want %d", len(h), len(base.Config.History)+1)
	}
	last := h[len(h)-1]
	if last.CreatedBy != layer.CommitCreatedBy || last.EmptyLayer || time.Since(last.Created.Time) > time.Hour {
		t.Errorf("history entry %+v", last)
	}
	if !img.Config.Created.Time.Equal(last.Created.Time) {
		t.Errorf("config created %s, history %s", img.Config.Created, last.Created)
	}
	if img.Config.Config.Cmd == nil || fmt.Sprint(img.Config.Config.Cmd) != fmt.Sprint(base.Config.Config.Cmd) {
		t.Errorf("config Cmd %v, want the base's %v", img.Config.Config.Cmd, base.Config.Config.Cmd)
	}

	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stack, err := layer.Open(t.Context(), img, st, newCache(t), layer.StackOptions{})
	if err != nil {
		t.Fatalf("open the commit: %v", err)
	}
	defer stack.Close()
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]string{"etc/which": "committed", "new/file": "new file", "usr/tool": "tool"} {
		n, ok := tree.Lookup(p)
		if !ok {
			t.Errorf("%s: not in the committed image", p)
			continue
		}
		buf := make([]byte, n.Size+1)
		got, err := stack.ReadAt(t.Context(), n, buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Errorf("read %s: %v", p, err)
		}
		if string(buf[:got]) != want {
			t.Errorf("%s: %q, want %q", p, buf[:got], want)
		}
	}
	if n, ok := tree.Lookup("new/file"); ok && string(n.Xattrs["user.x"]) != "y" {
		t.Errorf("new/file: xattrs %v", n.Xattrs)
	}
	if _, ok := tree.Lookup("etc/gone"); ok {
		t.Error("etc/gone: still there after its whiteout")
	}
}

func TestCommit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		docker bool
		repo   string // of the new tag: the base's or another
	}{
		{"oci same repo", false, "base"},
		{"oci other repo", false, "app"},
		{"docker", true, "app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := testutil.NewRegistry(t)
			img := commitBase(t)
			if tc.docker {
				img = mutate.ConfigMediaType(mutate.MediaType(img, types.DockerManifestSchema2), types.DockerConfigJSON)
			}
			ref := reg.Push(t, "base:v1", img)
			base, err := layer.Resolve(t.Context(), ref)
			if err != nil {
				t.Fatal(err)
			}
			tarPath, diffID := commitTar(t)
			tag := reg.Host + "/" + tc.repo + ":committed"

			reg.Reset()
			digest, err := layer.Commit(t.Context(), base, tarPath, tag)
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
			// Only the new layer and the config are uploaded; base layers
			// are neither uploaded nor downloaded.
			baseBlobs := map[string]bool{}
			for _, l := range base.Layers {
				baseBlobs[l.Descriptor.Digest.String()] = true
			}
			uploads := 0
			for _, r := range reg.Requests() {
				if r.Method == http.MethodPut && strings.Contains(r.Path, "/blobs/uploads/") {
					uploads++
				}
				if r.Method == http.MethodGet && baseBlobs[r.Blob] {
					t.Errorf("commit downloaded base layer %s", r.Blob)
				}
			}
			if uploads != 2 {
				t.Errorf("%d blob uploads, want 2 (the new layer and the config)", uploads)
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(tarPath), "*")); len(left) != 1 {
				t.Errorf("files left next to the tar: %v", left)
			}
			checkCommitted(t, tag, digest, base, diffID)
		})
	}
}

// recordingTransport records the method and URL of every request.
type recordingTransport struct {
	mu   sync.Mutex
	reqs []string // guarded by mu
}

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.URL.Path+"?"+req.URL.RawQuery)
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// TestCommitMountsBaseLayers commits to another repository of a real
// Distribution registry, whose blobs belong to repositories: the base
// layers must be mounted from the base's repository, not uploaded.
func TestCommitMountsBaseLayers(t *testing.T) {
	host := testutil.StartDistribution(t)
	baseRef, err := name.ParseReference(host+"/lazyroot/base:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(baseRef, commitBase(t), remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push base: %v", err)
	}
	base, err := layer.Resolve(t.Context(), baseRef.String())
	if err != nil {
		t.Fatal(err)
	}
	tarPath, diffID := commitTar(t)
	rec := &recordingTransport{}
	tag := host + "/lazyroot/app:committed"
	digest, err := layer.Commit(t.Context(), base, tarPath, tag, layer.WithTransport(rec))
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	mounted := map[string]bool{}
	puts := 0
	for _, r := range rec.reqs {
		t.Log(r)
		if strings.HasPrefix(r, "POST ") && strings.Contains(r, "mount=") && strings.Contains(r, "from=lazyroot%2Fbase") {
			for _, l := range base.Layers {
				if strings.Contains(r, strings.ReplaceAll(l.Descriptor.Digest.String(), ":", "%3A")) {
					mounted[l.Descriptor.Digest.String()] = true
				}
			}
		}
		if strings.HasPrefix(r, "PUT ") && strings.Contains(r, "/blobs/uploads/") {
			puts++
		}
	}
	if len(mounted) != len(base.Layers) {
		t.Errorf("mounted %d of %d base layers", len(mounted), len(base.Layers))
	}
	if puts != 2 {
		t.Errorf("%d blob uploads, want 2 (the new layer and the config)", puts)
	}
	checkCommitted(t, tag, digest, base, diffID)
}

func TestCommitErrors(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref := reg.Push(t, "base:v1", commitBase(t))
	base, err := layer.Resolve(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	tarPath, _ := commitTar(t)
	garbage := filepath.Join(t.TempDir(), "garbage.tar")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a tar ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.tar")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	good := reg.Host + "/app:v2"
	canceled, cancel := context.WithCancel(t.Context())
	cancel()

	for _, tc := range []struct {
		name string
		ctx  context.Context
		base *layer.Image
		tar  string
		tag  string
		want string // in the error
		is   error
	}{
		{name: "bad tag", base: base, tar: tarPath, tag: "UPPER/Case:tag", want: "commit UPPER/Case:tag: image reference"},
		{name: "digest", base: base, tar: tarPath, tag: reg.Host + "/app@" + base.Digest.String(), want: "needs a tag, not a digest"},
		{name: "target down", base: base, tar: tarPath, tag: "127.0.0.1:1/app:v2", want: "commit 127.0.0.1:1/app:v2: push: "},
		{name: "local base", base: &layer.Image{}, tar: tarPath, tag: good, want: "commit needs an image resolved from a registry"},
		{name: "no tar", base: base, tar: filepath.Join(t.TempDir(), "nope.tar"), tag: good, want: "no such file", is: os.ErrNotExist},
		{name: "not a tar", base: base, tar: garbage, tag: good, want: "not a tar archive"},
		{name: "empty tar", base: base, tar: empty, tag: good, want: "not a tar archive"},
		{name: "canceled", ctx: canceled, base: base, tar: tarPath, tag: good, is: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
				defer cancel()
				ctx = c
			}
			_, err := layer.Commit(ctx, tc.base, tc.tar, tc.tag)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Errorf("error %v, want one containing %q (is %v)", err, tc.want, tc.is)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "commit "+tc.tag+": ") {
				t.Errorf("error %q does not start with \"commit %s: \"", err, tc.tag)
			}
			t.Log(err)
		})
	}

	// The base's registry fails: the base manifest cannot be read.
	reg.Wrap(func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		})
	})
	ctx, cancelT := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancelT()
	other := testutil.NewRegistry(t)
	_, err = layer.Commit(ctx, base, tarPath, other.Host+"/app:v2")
	if err == nil || !strings.Contains(err.Error(), "base "+base.Ref.Context().String()) {
		t.Errorf("base registry down: %v", err)
	}
	t.Log(err)
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(tarPath), "*")); len(left) != 1 {
		t.Errorf("files left next to the tar: %v", left)
	}
}
