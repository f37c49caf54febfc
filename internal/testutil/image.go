package testutil

import (
	"maps"
	"runtime"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image builds an OCI image from layers, base first. annotations[i], when
// present, is put on the descriptor of layers[i] (annotations may be nil or
// shorter than layers). The config says linux/runtime.GOARCH and Cmd
// ["/bin/sh"].
func Image(t testing.TB, layers []v1.Layer, annotations []map[string]string) v1.Image {
	t.Helper()
	if len(annotations) > len(layers) {
		t.Fatalf("image: %d annotation maps for %d layers", len(annotations), len(layers))
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{Layer: l}
		if i < len(annotations) && len(annotations[i]) > 0 {
			adds[i].Annotations = annotations[i]
		}
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		t.Fatalf("image: append layers: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("image: config: %v", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = runtime.GOARCH
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatalf("image: set config: %v", err)
	}
	// Compute the manifest now so that errors surface here, not in a push.
	if _, err := img.Digest(); err != nil {
		t.Fatalf("image: digest: %v", err)
	}
	return img
}

// Push writes img to r under repoTag (e.g. "app:latest") and returns the
// full reference "HOST/app:latest". The push's own requests are recorded:
// call r.Reset before measuring.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref := r.parse(t, repoTag)
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref.String()
}

// PushIndex pushes an OCI image index holding imgs, keyed by platform
// ("linux/amd64", "linux/arm64/v8", …), under repoTag and returns the full
// reference. The images are pushed too; manifests are ordered by platform.
func (r *Registry) PushIndex(t testing.TB, repoTag string, imgs map[string]v1.Image) string {
	t.Helper()
	ref := r.parse(t, repoTag)
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range slices.Sorted(maps.Keys(imgs)) {
		plat, err := v1.ParsePlatform(p)
		if err != nil {
			t.Fatalf("push index %s: platform %q: %v", ref, p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        imgs[p],
			Descriptor: v1.Descriptor{Platform: plat},
		})
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
	return ref.String()
}

func (r *Registry) parse(t testing.TB, repoTag string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(r.Host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatalf("reference %q: %v", repoTag, err)
	}
	return ref
}
