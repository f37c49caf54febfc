package layer_test

import (
	"archive/tar"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// shareFixture is an image of three layers pushed to a registry and
// resolved, with a real encoded index for each layer.
type shareFixture struct {
	host    string
	img     *layer.Image
	layers  []v1.Hash          // layer digests, base first
	encoded map[v1.Hash][]byte // index.Encode's bytes by layer digest
}

// newShareFixture builds the image, pushes it to host as repoTag with push
// (which returns the full reference) and resolves it.
func newShareFixture(t *testing.T, host, repoTag string, push func(string, v1.Image) string) *shareFixture {
	t.Helper()
	f := &shareFixture{host: host, encoded: map[v1.Hash][]byte{}}
	var ls []v1.Layer
	var tars [][]byte
	for i, format := range []testutil.Format{testutil.Gzip, testutil.Uncompressed, testutil.Gzip} {
		tb := testutil.Tar(t, []testutil.Entry{
			{Name: "etc", Type: tar.TypeDir},
			{Name: fmt.Sprintf("etc/layer%d", i), Content: bytes.Repeat([]byte{byte('a' + i)}, 1000*(i+1))},
		})
		l, _ := testutil.Layer(t, tb, format)
		ls = append(ls, l)
		tars = append(tars, tb)
	}
	ref := push(repoTag, testutil.Image(t, ls, nil))
	img, err := layer.Resolve(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	f.img = img
	for i, l := range img.Layers {
		d := l.Descriptor.Digest
		f.layers = append(f.layers, d)
		x, err := index.BuildTar(bytes.NewReader(tars[i]), d.String(), 0)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := x.Encode(&b); err != nil {
			t.Fatal(err)
		}
		f.encoded[d] = b.Bytes()
	}
	return f
}

// pick returns the encoded indexes of the layers at positions i.
func (f *shareFixture) pick(i ...int) map[v1.Hash][]byte {
	out := map[v1.Hash][]byte{}
	for _, j := range i {
		out[f.layers[j]] = f.encoded[f.layers[j]]
	}
	return out
}

// find calls FindIndexes for every layer and a digest no layer has.
func (f *shareFixture) find(t *testing.T) map[v1.Hash][]byte {
	t.Helper()
	unknown, _, _ := v1.SHA256(strings.NewReader("no such layer"))
	got, err := layer.FindIndexes(t.Context(), f.img, append(slices.Clone(f.layers), unknown))
	if err != nil {
		t.Fatalf("FindIndexes: %v", err)
	}
	if got == nil {
		t.Fatal("FindIndexes returned a nil map")
	}
	if _, ok := got[unknown]; ok {
		t.Error("FindIndexes found an index for an unknown layer")
	}
	return got
}

func (f *shareFixture) repo(t *testing.T) name.Repository {
	t.Helper()
	return f.img.Ref.Context()
}

// fallbackTag is the referrers tag schema's tag for the image.
func (f *shareFixture) fallbackTag() string {
	return "sha256-" + f.img.Digest.Hex
}

// checkSame reports any difference between the indexes found and want.
func checkSame(t *testing.T, got, want map[v1.Hash][]byte) {
	t.Helper()
	for d, w := range want {
		if g, ok := got[d]; !ok {
			t.Errorf("layer %s: no index found", d)
		} else if !bytes.Equal(g, w) {
			t.Errorf("layer %s: found %d bytes that differ from the %d pushed", d, len(g), len(w))
		}
	}
	for d := range got {
		if _, ok := want[d]; !ok {
			t.Errorf("layer %s: found an index that was not pushed", d)
		}
	}
}

// checkArtifact fetches the artifact manifest and checks its shape.
func checkArtifact(t *testing.T, f *shareFixture, digest v1.Hash, layers ...int) {
	t.Helper()
	desc, err := remote.Get(f.repo(t).Digest(digest.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("get artifact: %v", err)
	}
	if desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("artifact media type %q", desc.MediaType)
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	emptyDigest, _, _ := v1.SHA256(strings.NewReader("{}"))
	if m.ArtifactType != layer.IndexArtifactType {
		t.Errorf("artifactType %q", m.ArtifactType)
	}
	if m.Config.MediaType != types.OCIEmptyJSON || m.Config.Digest != emptyDigest || m.Config.Size != 2 {
		t.Errorf("config %+v, want the empty descriptor", m.Config)
	}
	if m.Subject == nil || m.Subject.Digest != f.img.Digest || m.Subject.MediaType != types.OCIManifestSchema1 || m.Subject.Size <= 0 {
		t.Errorf("subject %+v, want the image manifest %s", m.Subject, f.img.Digest)
	}
	if ts, err := time.Parse(time.RFC3339Nano, m.Annotations[layer.AnnotationCreated]); err != nil || time.Since(ts) > time.Hour {
		t.Errorf("created annotation %q: %v", m.Annotations[layer.AnnotationCreated], err)
	}
	if len(m.Layers) != len(layers) {
		t.Fatalf("%d layers, want %d", len(m.Layers), len(layers))
	}
	for i, j := range layers {
		l := m.Layers[i]
		if l.MediaType != layer.IndexMediaType || l.Annotations[layer.AnnotationLayer] != f.layers[j].String() || l.Size != int64(len(f.encoded[f.layers[j]])) {
			t.Errorf("artifact layer %d: %+v, want the index of image layer %d", i, l, j)
		}
	}
}

// headTag reports whether tag exists in the fixture's repository.
func headTag(t *testing.T, f *shareFixture, tag string) bool {
	t.Helper()
	_, err := remote.Head(f.repo(t).Tag(tag), remote.WithContext(t.Context()))
	var te *transport.Error
	switch {
	case err == nil:
		return true
	case errors.As(err, &te) && te.StatusCode == http.StatusNotFound:
		return false
	default:
		t.Fatalf("HEAD %s: %v", tag, err)
		return false
	}
}

func TestShareIndexes(t *testing.T) {
	for _, api := range []bool{true, false} {
		t.Run(fmt.Sprintf("referrersAPI=%v", api), func(t *testing.T) {
			t.Parallel()
			var opts []testutil.RegistryOption
			if api {
				opts = append(opts, testutil.WithReferrers())
			}
			reg := testutil.NewRegistry(t, opts...)
			f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })

			// Nothing shared yet: an empty map and no error.
			if got := f.find(t); len(got) != 0 {
				t.Fatalf("before any push: found %d indexes", len(got))
			}

			// An artifact of another type that looks like ours otherwise
			// refers to the image too; it must be ignored.
			pushForeignArtifact(t, f)

			reg.Reset()
			first, err := layer.PushIndexes(t.Context(), f.img, f.pick(0, 1), nil)
			if err != nil {
				t.Fatalf("PushIndexes: %v", err)
			}
			checkArtifact(t, f, first, 0, 1)
			for _, q := range reg.Requests() {
				if q.Method == http.MethodPut && strings.Contains(q.Path, "/manifests/") &&
					!strings.HasSuffix(q.Path, "/manifests/"+first.String()) && !strings.HasSuffix(q.Path, "/manifests/"+f.fallbackTag()) {
					t.Errorf("PushIndexes put a manifest at %s", q.Path)
				}
			}

			reg.Reset()
			checkSame(t, f.find(t), f.pick(0, 1))
			referrersPath := fmt.Sprintf("/v2/share/referrers/%s", f.img.Digest)
			var referrersStatus int
			for _, q := range reg.Requests() {
				if q.Method == http.MethodGet && q.Path == referrersPath {
					referrersStatus = q.Status
				}
			}
			hasTag := headTag(t, f, f.fallbackTag())
			if api {
				// The API answered; no fallback tag was written.
				if referrersStatus != http.StatusOK {
					t.Errorf("GET %s answered %d, want 200", referrersPath, referrersStatus)
				}
				if hasTag {
					t.Errorf("fallback tag %s exists on a registry with the referrers API", f.fallbackTag())
				}
			} else {
				if referrersStatus != http.StatusNotFound {
					t.Errorf("GET %s answered %d, want 404", referrersPath, referrersStatus)
				}
				if !hasTag {
					t.Fatalf("fallback tag %s missing", f.fallbackTag())
				}
				checkFallbackLists(t, f, first)
			}

			// A second artifact adds layer 2 and a newer index of layer 0:
			// both artifacts' layers are found, the newest wins for layer 0.
			newer := bytes.Clone(f.encoded[f.layers[0]])
			newer = append(newer, "newer"...)
			second, err := layer.PushIndexes(t.Context(), f.img, map[v1.Hash][]byte{f.layers[0]: newer, f.layers[2]: f.encoded[f.layers[2]]}, nil)
			if err != nil {
				t.Fatalf("second PushIndexes: %v", err)
			}
			if second == first {
				t.Fatal("second artifact has the first one's digest")
			}
			want := f.pick(1, 2)
			want[f.layers[0]] = newer
			checkSame(t, f.find(t), want)
			if !api {
				checkFallbackLists(t, f, first, second)
			}

			// Asking for some layers returns only those.
			got, err := layer.FindIndexes(t.Context(), f.img, f.layers[1:2])
			if err != nil {
				t.Fatal(err)
			}
			checkSame(t, got, f.pick(1))
			// Asking for none asks the registry nothing.
			reg.Reset()
			if got, err := layer.FindIndexes(t.Context(), f.img, nil); err != nil || got == nil || len(got) != 0 {
				t.Errorf("FindIndexes(nil) = %v, %v", got, err)
			}
			if n := len(reg.Requests()); n != 0 {
				t.Errorf("FindIndexes(nil) sent %d requests", n)
			}
		})
	}
}

// checkFallbackLists checks that the referrers fallback tag's index lists
// the artifacts (and maybe others) with our artifactType.
func checkFallbackLists(t *testing.T, f *shareFixture, artifacts ...v1.Hash) {
	t.Helper()
	idx, err := remote.Index(f.repo(t).Tag(f.fallbackTag()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("fallback tag: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.OCIImageIndex {
		t.Errorf("fallback tag media type %q", im.MediaType)
	}
	for _, a := range artifacts {
		i := slices.IndexFunc(im.Manifests, func(d v1.Descriptor) bool { return d.Digest == a })
		if i < 0 {
			t.Errorf("fallback tag does not list artifact %s: %+v", a, im.Manifests)
		} else if im.Manifests[i].ArtifactType != layer.IndexArtifactType {
			t.Errorf("fallback tag lists %s with artifactType %q", a, im.Manifests[i].ArtifactType)
		}
	}
}

// pushForeignArtifact pushes an artifact that refers to f's image with an
// index-like layer for f's layer 0, but another artifactType.
func pushForeignArtifact(t *testing.T, f *shareFixture) {
	t.Helper()
	blob := static.NewLayer([]byte("not ours"), layer.IndexMediaType)
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:       blob,
		Annotations: map[string]string{layer.AnnotationLayer: f.layers[0].String()},
	})
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIEmptyJSON)
	img = mutate.Annotations(img, map[string]string{layer.AnnotationCreated: time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}).(v1.Image)
	sub, err := remote.Head(f.repo(t).Digest(f.img.Digest.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.Subject(img, v1.Descriptor{MediaType: sub.MediaType, Size: sub.Size, Digest: sub.Digest}).(v1.Image)
	// mutate has no artifactType; pushed as is, the artifact's type is its
	// config media type, the empty type, which the in-process registry also
	// reports for ours.
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(f.repo(t).Digest(d.String()), img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push foreign artifact: %v", err)
	}
}

// TestShareIndexesDistribution shares indexes through a real Distribution
// 2.8 registry, which has no referrers API: the fallback tag carries them.
func TestShareIndexesDistribution(t *testing.T) {
	t.Parallel()
	host := testutil.StartDistribution(t)
	f := newShareFixture(t, host, "lazyroot/share:v1", func(repoTag string, img v1.Image) string {
		ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
			t.Fatalf("push to distribution: %v", err)
		}
		return ref.String()
	})
	if got := f.find(t); len(got) != 0 {
		t.Fatalf("before any push: found %d indexes", len(got))
	}
	first, err := layer.PushIndexes(t.Context(), f.img, f.pick(0), nil)
	if err != nil {
		t.Fatalf("PushIndexes: %v", err)
	}
	checkArtifact(t, f, first, 0)
	if !headTag(t, f, f.fallbackTag()) {
		t.Fatalf("fallback tag %s missing", f.fallbackTag())
	}
	checkSame(t, f.find(t), f.pick(0))
	second, err := layer.PushIndexes(t.Context(), f.img, f.pick(1, 2), nil)
	if err != nil {
		t.Fatalf("second PushIndexes: %v", err)
	}
	checkFallbackLists(t, f, first, second)
	checkSame(t, f.find(t), f.pick(0, 1, 2))
}

// TestSharePushesConcurrently pushes two artifacts for one image at once to
// a registry with the referrers API, which keeps the list itself; both are
// found. (Without the API the fallback tag update can lose one: see
// share.go.)
func TestSharePushesConcurrently(t *testing.T) {
	t.Parallel()
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, part := range []map[v1.Hash][]byte{f.pick(0), f.pick(1, 2)} {
		wg.Go(func() { _, errs[i] = layer.PushIndexes(t.Context(), f.img, part, nil) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	checkSame(t, f.find(t), f.encoded)
}

func TestPushIndexesRefuses(t *testing.T) {
	t.Parallel()
	reg := testutil.NewRegistry(t)
	f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
	other, _, _ := v1.SHA256(strings.NewReader("another layer"))
	for name, encoded := range map[string]map[v1.Hash][]byte{
		"nothing":       {},
		"foreign layer": {other: []byte("x")},
		"empty index":   {f.layers[0]: nil},
	} {
		reg.Reset()
		if d, err := layer.PushIndexes(t.Context(), f.img, encoded, nil); err == nil {
			t.Errorf("%s: pushed %s", name, d)
		} else if !strings.Contains(err.Error(), f.img.Ref.String()) {
			t.Errorf("%s: error %q does not name the image", name, err)
		}
		if n := len(reg.Requests()); n != 0 {
			t.Errorf("%s: %d requests sent", name, n)
		}
	}
	if _, err := layer.PushIndexes(t.Context(), &layer.Image{Ref: f.img.Ref, Digest: f.img.Digest}, f.pick(0), nil); err == nil {
		t.Error("pushed for an image that Resolve did not make")
	}
}

func TestFindIndexesRegistryErrors(t *testing.T) {
	for _, tc := range []struct {
		status int
		want   string
	}{
		{http.StatusInternalServerError, "500"},
		{http.StatusForbidden, "access denied"},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			t.Parallel()
			reg := testutil.NewRegistry(t, testutil.WithReferrers())
			f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
			if _, err := layer.PushIndexes(t.Context(), f.img, f.pick(0), nil); err != nil {
				t.Fatal(err)
			}
			reg.Wrap(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.Contains(r.URL.Path, "/referrers/") {
						http.Error(w, "no", tc.status)
						return
					}
					next.ServeHTTP(w, r)
				})
			})
			got, err := layer.FindIndexes(t.Context(), f.img, f.layers)
			if err == nil {
				t.Fatalf("FindIndexes = %d indexes, no error", len(got))
			}
			if got != nil {
				t.Errorf("FindIndexes returned %d indexes with its error", len(got))
			}
			if msg := err.Error(); !strings.Contains(msg, f.img.Ref.String()) || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not name the image and %q", msg, tc.want)
			}
		})
	}
}

// TestFindIndexesRefusesBadBlobs serves index blobs whose bytes do not match
// their descriptor.
func TestFindIndexesRefusesBadBlobs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func([]byte) []byte
	}{
		{"flipped byte", func(p []byte) []byte { p = bytes.Clone(p); p[len(p)/2] ^= 1; return p }},
		{"truncated", func(p []byte) []byte { return p[:len(p)-1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := testutil.NewRegistry(t)
			f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
			if _, err := layer.PushIndexes(t.Context(), f.img, f.pick(0, 1), nil); err != nil {
				t.Fatal(err)
			}
			good := f.encoded[f.layers[1]]
			blob, _, _ := v1.SHA256(bytes.NewReader(good))
			reg.Wrap(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+blob.String()) {
						w.Header().Set("Content-Type", "application/octet-stream")
						w.Write(tc.tamper(good))
						return
					}
					next.ServeHTTP(w, r)
				})
			})
			got, err := layer.FindIndexes(t.Context(), f.img, f.layers)
			if !errors.Is(err, layer.ErrDigest) {
				t.Fatalf("FindIndexes = %d indexes, %v; want ErrDigest", len(got), err)
			}
			if got != nil {
				t.Errorf("FindIndexes returned %d indexes with its error", len(got))
			}
			// Served honestly again, the same artifact is found whole.
			reg.Wrap(nil)
			checkSame(t, f.find(t), f.pick(0, 1))
		})
	}
}

// TestFindIndexesSkipsDeletedArtifact: deleting an artifact leaves it in the
// fallback tag; FindIndexes skips it and finds the others.
func TestFindIndexesSkipsDeletedArtifact(t *testing.T) {
	t.Parallel()
	reg := testutil.NewRegistry(t)
	f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
	gone, err := layer.PushIndexes(t.Context(), f.img, f.pick(0), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := layer.PushIndexes(t.Context(), f.img, f.pick(1), nil); err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(f.repo(t).Digest(gone.String()), remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	checkFallbackLists(t, f, gone)
	checkSame(t, f.find(t), f.pick(1))
}

// TestFindIndexesIgnoresOtherSubjects: an artifact for another image, listed
// in this image's fallback tag by someone, is not taken.
func TestFindIndexesIgnoresOtherSubjects(t *testing.T) {
	t.Parallel()
	reg := testutil.NewRegistry(t)
	push := func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) }
	f := newShareFixture(t, reg.Host, "share:v1", push)
	// Another image in the same repository, with the same layers plus one.
	l, _ := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{{Name: "other", Content: []byte("other")}}), testutil.Gzip)
	var ls []v1.Layer
	for _, d := range f.layers {
		bl, err := remote.Layer(f.repo(t).Digest(d.String()), remote.WithContext(t.Context()))
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, bl)
	}
	otherRef := push("share:other", testutil.Image(t, append(ls, l), nil))
	other, err := layer.Resolve(t.Context(), otherRef)
	if err != nil {
		t.Fatal(err)
	}
	art, err := layer.PushIndexes(t.Context(), other, f.pick(0), nil)
	if err != nil {
		t.Fatal(err)
	}
	// List the other image's artifact under f's fallback tag.
	desc, err := remote.Head(f.repo(t).Digest(art.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	// With the annotations its pusher set, as a copied entry has them
	// (the listing then names its blobs), and without.
	raw, err := remote.Get(f.repo(t).Digest(art.String()), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	if m.Annotations[layer.AnnotationIndexBlobs] == "" {
		t.Fatal("the artifact names no index blobs")
	}
	for _, annotations := range []map[string]string{m.Annotations, nil} {
		forged := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
		forged = mutate.AppendManifests(forged, mutate.IndexAddendum{
			Add:        staticManifest{desc: *desc},
			Descriptor: v1.Descriptor{ArtifactType: layer.IndexArtifactType, MediaType: desc.MediaType, Annotations: annotations},
		})
		if err := remote.Put(f.repo(t).Tag(f.fallbackTag()), forged, remote.WithContext(t.Context())); err != nil {
			t.Fatal(err)
		}
		checkFallbackLists(t, f, art)
		if got := f.find(t); len(got) != 0 {
			t.Errorf("annotated %v: found %d indexes of another image's artifact: %v", annotations != nil, len(got), slices.Collect(maps.Keys(got)))
		}
	}
}

// staticManifest stands for a manifest already in the registry, for
// mutate.AppendManifests.
type staticManifest struct{ desc v1.Descriptor }

func (s staticManifest) MediaType() (types.MediaType, error) { return s.desc.MediaType, nil }
func (s staticManifest) Digest() (v1.Hash, error)            { return s.desc.Digest, nil }
func (s staticManifest) Size() (int64, error)                { return s.desc.Size, nil }

// TestFindIndexesPrefersNewest: when the listing carries no annotations and
// lists the older artifact last, the artifacts' own creation times decide.
func TestFindIndexesPrefersNewest(t *testing.T) {
	t.Parallel()
	reg := testutil.NewRegistry(t, testutil.WithReferrers())
	f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
	older, err := layer.PushIndexes(t.Context(), f.img, f.pick(0, 1), nil)
	if err != nil {
		t.Fatal(err)
	}
	newer := append(bytes.Clone(f.encoded[f.layers[0]]), "newer"...)
	if _, err := layer.PushIndexes(t.Context(), f.img, map[v1.Hash][]byte{f.layers[0]: newer}, nil); err != nil {
		t.Fatal(err)
	}
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.Contains(r.URL.Path, "/referrers/") {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			var im v1.IndexManifest
			if err := json.Unmarshal(rec.Body.Bytes(), &im); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			for i := range im.Manifests {
				im.Manifests[i].Annotations = nil
			}
			slices.SortFunc(im.Manifests, func(a, b v1.Descriptor) int {
				rank := func(d v1.Descriptor) int {
					if d.Digest == older {
						return 1 // last
					}
					return 0
				}
				return cmp.Compare(rank(a), rank(b))
			})
			w.Header().Set("Content-Type", string(types.OCIImageIndex))
			json.NewEncoder(w).Encode(im)
		})
	})
	want := f.pick(1)
	want[f.layers[0]] = newer
	checkSame(t, f.find(t), want)
}

// TestFindProfileReadsNewestFirst: the newest profile is found without
// reading any artifact manifest when the listing names its blob, and after
// reading one window of them when it gives only creation times, however
// many older profiles the image has.
func TestFindProfileReadsNewestFirst(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		referrersAPI bool
		blobNamed    bool
		maxReads     int64
	}{
		{"referrers API", true, true, 0},
		{"fallback tag", false, true, 0},
		{"referrers API, blob not named", true, false, 4},
		{"fallback tag, blob not named", false, false, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var opts []testutil.RegistryOption
			if tc.referrersAPI {
				opts = append(opts, testutil.WithReferrers())
			}
			reg := testutil.NewRegistry(t, opts...)
			f := newShareFixture(t, reg.Host, "profiles:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
			const pushed = 9
			for i := range pushed {
				p := &layer.Profile{Version: layer.ProfileVersion, Image: f.img.Digest.String()}
				for j := range i + 1 {
					p.Files = append(p.Files, layer.ProfileFile{Layer: f.layers[0].String(), Path: fmt.Sprintf("etc/f%d", j)})
				}
				if _, err := layer.PushProfile(t.Context(), f.img, p); err != nil {
					t.Fatal(err)
				}
			}
			var reads atomic.Int64
			reg.Wrap(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					listing := strings.Contains(r.URL.Path, "/referrers/") || strings.Contains(r.URL.Path, "/manifests/sha256-")
					if strings.Contains(r.URL.Path, "/manifests/sha256:") {
						reads.Add(1)
					}
					if !listing || tc.blobNamed {
						next.ServeHTTP(w, r)
						return
					}
					rec := httptest.NewRecorder()
					next.ServeHTTP(rec, r)
					var im v1.IndexManifest
					if err := json.Unmarshal(rec.Body.Bytes(), &im); rec.Code != http.StatusOK || err != nil {
						maps.Copy(w.Header(), rec.Header())
						w.WriteHeader(rec.Code)
						w.Write(rec.Body.Bytes())
						return
					}
					for i := range im.Manifests {
						delete(im.Manifests[i].Annotations, layer.AnnotationProfileBlob)
					}
					w.Header().Set("Content-Type", string(types.OCIImageIndex))
					json.NewEncoder(w).Encode(im)
				})
			})
			p, err := layer.FindProfile(t.Context(), f.img)
			if err != nil || p == nil {
				t.Fatalf("FindProfile: %v, %v", p, err)
			}
			if len(p.Files) != pushed {
				t.Errorf("found the profile with %d files, want the newest (%d)", len(p.Files), pushed)
			}
			if n := reads.Load(); n > tc.maxReads {
				t.Errorf("read %d artifact manifests of %d to find the newest profile, want at most %d", n, pushed, tc.maxReads)
			}
		})
	}
}

// arrival is a request the registry waits to see before answering
// another, so that a test proves two requests were in flight at once
// (the one waited on never waits itself).
type arrival struct {
	seen     chan struct{}
	once     sync.Once
	timedOut atomic.Bool
}

func newArrival() *arrival { return &arrival{seen: make(chan struct{})} }

func (a *arrival) saw() { a.once.Do(func() { close(a.seen) }) }

// await waits for the arrival, up to a bound that only a sequential
// client reaches.
func (a *arrival) await() {
	select {
	case <-a.seen:
	case <-time.After(3 * time.Second):
		a.timedOut.Store(true)
	}
}

// listingKinds are the two ways a registry lists referrers: the
// fallback tag (no referrers API) and the referrers API.
var listingKinds = []struct {
	name string
	opts []testutil.RegistryOption
}{{"fallback tag", nil}, {"referrers API", []testutil.RegistryOption{testutil.WithReferrers()}}}

// TestReferrersListedInOneRoundTrip: the referrers API and the fallback
// tag are asked at once, so a registry without the API costs no second
// round trip, and one with it still has its answer used.
func TestReferrersListedInOneRoundTrip(t *testing.T) {
	for _, tc := range listingKinds {
		t.Run(tc.name, func(t *testing.T) {
			reg := testutil.NewRegistry(t, tc.opts...)
			f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
			if _, err := layer.PushIndexes(t.Context(), f.img, f.pick(0), nil); err != nil {
				t.Fatal(err)
			}
			tag := "/manifests/" + strings.Replace(f.img.Digest.String(), ":", "-", 1)
			tagAsked := newArrival()
			reg.Wrap(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					switch {
					case strings.HasSuffix(r.URL.Path, tag):
						tagAsked.saw()
					case strings.Contains(r.URL.Path, "/referrers/"):
						tagAsked.await()
					}
					next.ServeHTTP(w, r)
				})
			})
			got, err := layer.FindIndexes(t.Context(), f.img, f.layers)
			if err != nil {
				t.Fatal(err)
			}
			if tagAsked.timedOut.Load() {
				t.Error("the fallback tag was asked for only after the referrers API answered")
			}
			if len(got) != 1 || !bytes.Equal(got[f.layers[0]], f.encoded[f.layers[0]]) {
				t.Errorf("found indexes of %d layers, want layer 0's", len(got))
			}
		})
	}
}

// TestResolveWithReferrersListsWhileTheConfigIsFetched: WithReferrers
// lists the image's referrers at the same time as its config is fetched,
// and the lookups on the resolved image use that listing.
func TestResolveWithReferrersListsWhileTheConfigIsFetched(t *testing.T) {
	reg := testutil.NewRegistry(t)
	f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
	if _, err := layer.PushIndexes(t.Context(), f.img, f.pick(1), nil); err != nil {
		t.Fatal(err)
	}
	config := "/blobs/" + f.img.Manifest.Config.Digest.String()
	listed := newArrival()
	reg.Reset()
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.Contains(r.URL.Path, "/referrers/"):
				listed.saw()
			case strings.HasSuffix(r.URL.Path, config):
				listed.await()
			}
			next.ServeHTTP(w, r)
		})
	})
	img, err := layer.Resolve(t.Context(), f.img.Ref.String(), layer.WithReferrers())
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if listed.timedOut.Load() {
		t.Error("the config was fetched before the referrers were listed")
	}
	got, err := layer.FindIndexes(t.Context(), img, f.layers)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !bytes.Equal(got[f.layers[1]], f.encoded[f.layers[1]]) {
		t.Errorf("found indexes of %d layers, want layer 1's", len(got))
	}
	var listings, tags int
	for _, r := range reg.Requests() {
		switch {
		case strings.Contains(r.Path, "/referrers/"):
			listings++
		case strings.Contains(r.Path, "/manifests/sha256-"):
			tags++
		}
	}
	if listings != 1 || tags != 1 {
		t.Errorf("%d referrers requests and %d fallback tag requests, want one of each", listings, tags)
	}
}

// openImage resolves ref with opts and opens it over st (see openMerged).
func openImage(t *testing.T, ref string, st *layer.Store, opts ...layer.Option) (*layer.Stack, *index.Tree) {
	t.Helper()
	img, err := layer.Resolve(t.Context(), ref, opts...)
	if err != nil {
		t.Fatal(err)
	}
	s, _, tree := openMerged(t, img, st)
	return s, tree
}

// TestResolveWithEarlyTOCReadsTheTailWhileTheConfigIsFetched: with
// WithEarlyTOC, the end of an eStargz layer, where its TOC lies, is asked
// for as soon as the manifest is in, while the config request waits, and
// Open reads the TOC from it without asking again; a layer whose index
// the store holds is not read at all.
func TestResolveWithEarlyTOCReadsTheTailWhileTheConfigIsFetched(t *testing.T) {
	reg := testutil.NewRegistry(t)
	files := prefetchFiles()
	l0, a0 := prioritizedLayer(t, files, nil)
	l1, a1 := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{{Name: "top", Content: textBytes(5, 300_000)}}), testutil.EStargz)
	ref := reg.Push(t, "early:v1", testutil.Image(t, []v1.Layer{l0, l1}, []map[string]string{a0, a1}))
	d1, err := l1.Digest()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	st, err := layer.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	// A first open stores both indexes; then layer 1's alone is kept.
	first, _ := openImage(t, ref, st)
	first.Close() // once its index saves are done
	d0 := first.Layers()[0].Layer.Descriptor.Digest
	removed := 0
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && strings.Contains(p, d0.Hex) {
			os.Remove(p)
			removed++
		}
		return nil
	})
	if removed == 0 {
		t.Fatalf("no stored index of %s to remove", d0)
	}

	img, err := layer.Resolve(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	config := "/blobs/" + img.Manifest.Config.Digest.String()
	tail := newArrival()
	reg.Reset()
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasSuffix(r.URL.Path, "/blobs/"+d0.String()) && r.Header.Get("Range") != "":
				tail.saw()
			case strings.HasSuffix(r.URL.Path, config):
				tail.await()
			}
			next.ServeHTTP(w, r)
		})
	})
	s, tree := openImage(t, ref, st, layer.WithEarlyTOC(st))
	if tail.timedOut.Load() {
		t.Error("the config was fetched before the tail of layer 0 was asked for")
	}
	readCheck(t, s, tree, "f/03", files["f/03"])
	var tails, others int
	for _, r := range reg.Requests() {
		switch {
		case r.Blob == d0.String() && r.Method == http.MethodGet && r.Range != "":
			tails++
		case r.Blob == d1.String():
			others++
		}
	}
	// The tail, then f/03's chunks.
	if tails != 2 || others != 0 {
		t.Errorf("%d range requests of layer 0 (want the tail and one read) and %d requests of layer 1 (want none: its index is stored)", tails, others)
	}
}

// TestEarlyTOCReadFailingIsReadAgain: a tail read started early that fails
// leaves Open to read the TOC itself, and the layer opens.
func TestEarlyTOCReadFailingIsReadAgain(t *testing.T) {
	reg := testutil.NewRegistry(t)
	files := prefetchFiles()
	l0, a0 := prioritizedLayer(t, files, nil)
	ref := reg.Push(t, "early:v1", testutil.Image(t, []v1.Layer{l0}, []map[string]string{a0}))
	d0, err := l0.Digest()
	if err != nil {
		t.Fatal(err)
	}
	var failed atomic.Int32
	reg.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/blobs/"+d0.String()) && r.Header.Get("Range") != "" && failed.Add(1) == 1 {
				http.Error(w, "injected", http.StatusNotFound)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, tree := openImage(t, ref, st, layer.WithEarlyTOC(st))
	if got := s.Layers()[0].Origin; got != layer.FromTOC {
		t.Errorf("index from %s, want the TOC, read again", got)
	}
	if failed.Load() < 2 {
		t.Errorf("%d range requests of the layer, want the failed tail and another", failed.Load())
	}
	readCheck(t, s, tree, "f/05", files["f/05"])
}

// TestFindIndexesFromTheListing: the referrers listing names each index
// artifact's blobs (AnnotationIndexBlobs), with and without the referrers
// API, so FindIndexes fetches them, the newest artifact's for a layer two
// hold, while it reads the artifacts' manifests rather than after.
func TestFindIndexesFromTheListing(t *testing.T) {
	for _, tc := range listingKinds {
		t.Run(tc.name, func(t *testing.T) {
			reg := testutil.NewRegistry(t, tc.opts...)
			f := newShareFixture(t, reg.Host, "share:v1", func(repoTag string, img v1.Image) string { return reg.Push(t, repoTag, img) })
			older, err := layer.PushIndexes(t.Context(), f.img, f.pick(0, 1), nil)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond) // creation times apart
			newer := append(bytes.Clone(f.encoded[f.layers[0]]), "newer"...)
			newest, err := layer.PushIndexes(t.Context(), f.img, map[v1.Hash][]byte{f.layers[0]: newer}, nil)
			if err != nil {
				t.Fatal(err)
			}
			blob, _, _ := v1.SHA256(bytes.NewReader(newer))
			fetched := newArrival()
			reg.Wrap(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					switch {
					case strings.HasSuffix(r.URL.Path, "/blobs/"+blob.String()):
						fetched.saw()
					case strings.HasSuffix(r.URL.Path, "/manifests/"+older.String()), strings.HasSuffix(r.URL.Path, "/manifests/"+newest.String()):
						fetched.await()
					}
					next.ServeHTTP(w, r)
				})
			})
			want := f.pick(1)
			want[f.layers[0]] = newer
			checkSame(t, f.find(t), want)
			if fetched.timedOut.Load() {
				t.Error("the index blobs were fetched after the artifacts' manifests were read")
			}
		})
	}
}
