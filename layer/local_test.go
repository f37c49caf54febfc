package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// richImage is a two-layer image in format f whose tree has every kind of
// entry an overlay merge cares about, and files spanning several seek
// spans.
func richImage(t *testing.T, f testutil.Format) v1.Image {
	t.Helper()
	base := []testutil.Entry{
		{Name: "usr", Type: tar.TypeDir},
		{Name: "usr/bin", Type: tar.TypeDir},
		{Name: "usr/bin/tool", Mode: 0o755, Content: textBytes(11, 5*testSpan+17)},
		{Name: "usr/bin/tool2", Type: tar.TypeLink, Linkname: "usr/bin/tool"},
		{Name: "usr/bin/sh", Type: tar.TypeSymlink, Linkname: "tool"},
		{Name: "etc", Type: tar.TypeDir, Mode: 0o700},
		{Name: "etc/conf", Content: []byte("base\n"), UID: 7, GID: 8},
		{Name: "etc/gone", Content: []byte("whited out\n")},
		{Name: "var/cache", Type: tar.TypeDir},
		{Name: "var/cache/old", Content: []byte("hidden by an opaque dir\n")},
		{Name: "empty"},
	}
	top := []testutil.Entry{
		{Name: "etc", Type: tar.TypeDir, Mode: 0o700},
		{Name: "etc/conf", Content: []byte("top\n"), Mode: 0o600},
		{Name: "etc/.wh.gone"},
		{Name: "var/cache", Type: tar.TypeDir},
		{Name: "var/cache/.wh..wh..opq"},
		{Name: "var/cache/new", Content: textBytes(12, 3*testSpan)},
		{Name: "top.txt", Content: []byte("the top layer\n")},
	}
	var layers []v1.Layer
	var anns []map[string]string
	for _, ents := range [][]testutil.Entry{base, top} {
		l, ann := testutil.Layer(t, testutil.Tar(t, ents), f)
		layers, anns = append(layers, l), append(anns, ann)
	}
	return testutil.Image(t, layers, anns)
}

// treeOf reads the merged tree of stack, every file's content through
// Stack.ReadAt, in the shape testutil.CompareTrees takes.
func treeOf(t *testing.T, stack *layer.Stack) map[string]testutil.Node {
	t.Helper()
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	types := map[index.Type]byte{
		index.TypeReg: tar.TypeReg, index.TypeDir: tar.TypeDir, index.TypeSymlink: tar.TypeSymlink,
		index.TypeChar: tar.TypeChar, index.TypeBlock: tar.TypeBlock, index.TypeFifo: tar.TypeFifo,
	}
	out := map[string]testutil.Node{}
	var walk func(p string, n *index.Node)
	walk = func(p string, n *index.Node) {
		tn := testutil.Node{
			Path: p, Type: types[n.Type], Mode: n.Mode, UID: n.UID, GID: n.GID,
			ModTime: n.ModTime.UTC().Truncate(time.Second), Linkname: n.Linkname,
			Devmajor: n.Devmajor, Devminor: n.Devminor,
		}
		if n.Type == index.TypeReg {
			tn.Size = n.Size
			tn.SHA256 = readHash(t, stack, n)
			if n.Nlink > 1 {
				tn.LinkGroup = fmt.Sprint(n.Ino)
			}
		}
		for k, v := range n.Xattrs {
			if tn.Xattrs == nil {
				tn.Xattrs = map[string]string{}
			}
			tn.Xattrs[k] = string(v)
		}
		out[p] = tn
		for _, c := range n.Names() {
			walk(path.Join(p, c), n.Children[c])
		}
	}
	walk("/", tree.Root)
	return out
}

// readHash reads file n through the stack, in pieces, and hashes it.
func readHash(t *testing.T, stack *layer.Stack, n *index.Node) string {
	t.Helper()
	p, err := readAll(stack, n)
	if err != nil {
		t.Errorf("read %s: %v", n.Name, err)
		return ""
	}
	sum := sha256.Sum256(p)
	return hex.EncodeToString(sum[:])
}

func readAll(stack *layer.Stack, n *index.Node) ([]byte, error) {
	p := make([]byte, n.Size)
	for off := 0; off < len(p); off += 99_991 {
		end := min(off+99_991, len(p))
		k, err := stack.ReadAt(context.Background(), n, p[off:end], int64(off))
		if k != end-off {
			return nil, fmt.Errorf("at %d: read %d of %d: %w", off, k, end-off, err)
		}
	}
	return p, nil
}

func newStore(t *testing.T) (*layer.Store, string) {
	t.Helper()
	root := t.TempDir()
	st, err := layer.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	return st, root
}

func openIn(t *testing.T, img *layer.Image, st *layer.Store) (*layer.Stack, *notes) {
	t.Helper()
	n := &notes{}
	stack, err := layer.Open(t.Context(), img, st, newCache(t), layer.StackOptions{SpanSize: testSpan, Logf: n.logf})
	if err != nil {
		t.Fatalf("open %s: %v", img.Name(), err)
	}
	t.Cleanup(func() { stack.Close() })
	return stack, n
}

// writeLayout writes img to a new OCI image layout tagged tag, with
// another image tagged "other" beside it, and returns its directory.
func writeLayout(t *testing.T, img v1.Image, tag string, others ...v1.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{layer.AnnotationRefName: tag})); err != nil {
		t.Fatal(err)
	}
	for i, o := range others {
		if err := p.AppendImage(o, layout.WithAnnotations(map[string]string{layer.AnnotationRefName: fmt.Sprintf("other%d", i)})); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// member is one file of a tarball the tests write.
type member struct {
	name string
	data []byte
	link string // a symlink when set
}

func writeTar(t *testing.T, p string, members []member) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		hdr := &tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data)), Typeflag: tar.TypeReg, ModTime: testutil.DefaultModTime}
		if m.link != "" {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, m.link, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeCraneArchive writes img as go-containerregistry's tarball package
// does ("<hex>.tar.gz" members).
func writeCraneArchive(t *testing.T, img v1.Image, tag string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "crane.tar")
	ref, err := name.ParseReference(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(p, ref, img); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeOCIArchive writes img as docker 25 and later save it: an OCI
// layout with a manifest.json naming blobs/sha256/<hex> members.
func writeOCIArchive(t *testing.T, img v1.Image, tag string) string {
	t.Helper()
	dir := writeLayout(t, img, tag)
	var members []member
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		members = append(members, member{name: filepath.ToSlash(rel), data: data})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	entry := map[string]any{"Config": "blobs/sha256/" + m.Config.Digest.Hex, "RepoTags": []string{tag}}
	var ls []string
	for _, l := range m.Layers {
		ls = append(ls, "blobs/sha256/"+l.Digest.Hex)
	}
	entry["Layers"] = ls
	mj, _ := json.Marshal([]any{entry})
	members = append(members, member{name: "manifest.json", data: mj})
	p := filepath.Join(t.TempDir(), "docker25.tar")
	writeTar(t, p, members)
	return p
}

// writeLegacyArchive writes img as docker before 25 saved it:
// "<id>/layer.tar" members (holding the layer blob as it is), a repeated
// layer as a symlink to the first, config "<hex>.json".
func writeLegacyArchive(t *testing.T, img v1.Image, tag string) string {
	t.Helper()
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfgHex := fmt.Sprintf("%x", sha256.Sum256(rawConfig))
	members := []member{{name: cfgHex + ".json", data: rawConfig}}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[v1.Hash]string{}
	var paths []string
	for i, l := range layers {
		d, _ := l.Digest()
		id := fmt.Sprintf("%x", sha256.Sum256([]byte(fmt.Sprint("layer", i))))
		members = append(members, member{name: id + "/VERSION", data: []byte("1.0")})
		if first, ok := seen[d]; ok {
			members = append(members, member{name: id + "/layer.tar", link: "../" + first + "/layer.tar"})
		} else {
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			blob, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			members = append(members, member{name: id + "/layer.tar", data: blob})
			seen[d] = id
		}
		paths = append(paths, id+"/layer.tar")
	}
	mj, _ := json.Marshal([]any{map[string]any{"Config": cfgHex + ".json", "RepoTags": []string{tag}, "Layers": paths}})
	members = append(members, member{name: "manifest.json", data: mj})
	p := filepath.Join(t.TempDir(), "legacy.tar")
	writeTar(t, p, members)
	return p
}

// writeLayerFiles writes img's layer blobs to files and returns their
// paths, top first.
func writeLayerFiles(t *testing.T, img v1.Image) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var paths []string
	for i, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		blob, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("layer%d.blob", i))
		if err := os.WriteFile(p, blob, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	slices.Reverse(paths)
	return paths
}

// localSources are the ways one image can be on disk, each resolved.
var localSources = []struct {
	name    string
	resolve func(t *testing.T, img v1.Image, opts ...layer.Option) (*layer.Image, error)
}{
	{"oci", func(t *testing.T, img v1.Image, opts ...layer.Option) (*layer.Image, error) {
		other := richImage(t, testutil.Uncompressed)
		return layer.Resolve(t.Context(), "oci:"+writeLayout(t, img, "v1", other)+":v1", opts...)
	}},
	{"docker-archive-crane", func(t *testing.T, img v1.Image, opts ...layer.Option) (*layer.Image, error) {
		return layer.Resolve(t.Context(), "docker-archive:"+writeCraneArchive(t, img, "example.com/app:v1"), opts...)
	}},
	{"docker-archive-oci", func(t *testing.T, img v1.Image, opts ...layer.Option) (*layer.Image, error) {
		return layer.Resolve(t.Context(), "docker-archive:"+writeOCIArchive(t, img, "app:v1"), opts...)
	}},
	{"docker-archive-legacy", func(t *testing.T, img v1.Image, opts ...layer.Option) (*layer.Image, error) {
		return layer.Resolve(t.Context(), "docker-archive:"+writeLegacyArchive(t, img, "app:v1"), opts...)
	}},
	{"files", func(t *testing.T, img v1.Image, opts ...layer.Option) (*layer.Image, error) {
		return layer.ResolveFiles(t.Context(), writeLayerFiles(t, img), opts...)
	}},
}

// storeFiles lists the files under a store root, relative to it.
func storeFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestLocalSourcesMatchTheRegistry(t *testing.T) {
	reg := testutil.NewRegistry(t)
	for _, f := range testutil.Formats {
		img := richImage(t, f)
		ref := reg.Push(t, "rich:"+strings.NewReplacer(":", "-").Replace(string(f)), img)
		regImg, err := layer.Resolve(t.Context(), ref)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := newStore(t)
		regStack, _ := openIn(t, regImg, st)
		want := treeOf(t, regStack)
		if len(want) < 10 {
			t.Fatalf("%s: the registry tree has %d names", f, len(want))
		}
		for _, src := range localSources {
			t.Run(string(f)+"/"+src.name, func(t *testing.T) {
				st, root := newStore(t)
				im, err := src.resolve(t, img, layer.WithStore(st))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { im.Close() })
				if !im.Local() || im.Ref != nil || im.Manifest == nil || im.Config == nil || len(im.Layers) != 2 || len(im.Manifest.Layers) != 2 {
					t.Fatalf("image %s: local %v, ref %v, %d layers", im.Name(), im.Local(), im.Ref, len(im.Layers))
				}
				stack, _ := openIn(t, im, st)
				testutil.CompareTrees(t, want, treeOf(t, stack))

				var read int64
				for i, ls := range stack.Layers() {
					if ls.Layer != im.Layers[i] {
						t.Errorf("layer %d: the stack holds another layer", i)
					}
					read += ls.Layer.FetchStats().Bytes
				}
				if read == 0 {
					t.Error("no bytes counted as read from the local files")
				}
				if s := im.FetchStats(); s.Requests != 0 || s.Bytes != 0 {
					t.Errorf("fetch stats of a local image: %+v", s)
				}
				// Read in place: the store holds indexes, their windows
				// (and remembered digests), never a copy of a layer,
				// unless the layer cannot be read in pieces (zstd in one
				// frame). A TOC's index is stored in the background:
				// Close waits for it.
				stack.Close()
				for _, p := range storeFiles(t, root) {
					dir, _, _ := strings.Cut(p, "/")
					switch {
					case dir == "index" && strings.HasSuffix(p, ".idx"), dir == "digests":
					case dir == "index" && strings.HasSuffix(p, ".windows"): // gzip seek indexes
					case dir == "layers" && f == testutil.Zstd:
					default:
						t.Errorf("store holds %s", p)
					}
				}
				if f != testutil.Zstd {
					for _, ls := range stack.Layers() {
						if ls.Origin == layer.Streamed {
							t.Errorf("layer %s was unpacked", ls.Layer.Descriptor.Digest)
						}
					}
				}
			})
		}
	}
}

func TestLocalImageNamesAndDigests(t *testing.T) {
	img := richImage(t, testutil.EStargz)
	wantDigest, _ := img.Digest()

	dir := writeLayout(t, img, "v1")
	im, err := layer.Resolve(t.Context(), "oci:"+dir+":v1")
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if im.Name() != "oci:"+dir+":v1" || im.Digest != wantDigest {
		t.Errorf("oci: name %q digest %s, want %s", im.Name(), im.Digest, wantDigest)
	}
	if _, ok := im.Layers[0].Descriptor.Annotations["containerd.io/snapshot/stargz/toc.digest"]; !ok {
		t.Errorf("oci: layer annotations lost: %v", im.Layers[0].Descriptor.Annotations)
	}
	// Relative paths are made absolute; without a tag the only image.
	rel, _ := filepath.Rel(must(os.Getwd()), dir)
	if im2, err := layer.Resolve(t.Context(), "oci:"+rel); err != nil {
		t.Error(err)
	} else if im2.Name() != "oci:"+dir || im2.Digest != wantDigest {
		t.Errorf("oci relative: name %q digest %s", im2.Name(), im2.Digest)
	} else {
		im2.Close()
	}

	// docker 25: the OCI manifest in the archive is the image's.
	p := writeOCIArchive(t, img, "app:v1")
	im3, err := layer.Resolve(t.Context(), "docker-archive:"+p)
	if err != nil {
		t.Fatal(err)
	}
	defer im3.Close()
	if im3.Name() != "docker-archive:"+p || im3.Digest != wantDigest || im3.Manifest.Layers[0].Annotations == nil {
		t.Errorf("docker 25 archive: name %q digest %s, want %s", im3.Name(), im3.Digest, wantDigest)
	}
	// crane: a synthesized manifest, whose digest is stable.
	p = writeCraneArchive(t, img, "example.com/app:v1")
	var digests []v1.Hash
	for range 2 {
		im4, err := layer.Resolve(t.Context(), "docker-archive:"+p+":example.com/app:v1")
		if err != nil {
			t.Fatal(err)
		}
		im4.Close()
		digests = append(digests, im4.Digest)
		if im4.Name() != "docker-archive:"+p+":example.com/app:v1" || im4.Manifest.MediaType != types.OCIManifestSchema1 {
			t.Errorf("crane archive: name %q, manifest %s", im4.Name(), im4.Manifest.MediaType)
		}
		for i, l := range im4.Layers {
			if want, _ := layerDigest(img, i); l.Descriptor.Digest != want || l.Descriptor.MediaType != types.OCILayer {
				t.Errorf("crane archive layer %d: %s %s, want %s", i, l.Descriptor.Digest, l.Descriptor.MediaType, want)
			}
		}
	}
	if digests[0] != digests[1] || digests[0] == (v1.Hash{}) {
		t.Errorf("synthesized manifest digests %v", digests)
	}

	files := writeLayerFiles(t, img)
	im5, err := layer.ResolveFiles(t.Context(), files)
	if err != nil {
		t.Fatal(err)
	}
	defer im5.Close()
	if want := "layers:" + strings.Join(files, ","); im5.Name() != want {
		t.Errorf("files: name %q, want %q", im5.Name(), want)
	}
	if im5.Digest != (v1.Hash{}) || im5.Config.OS != "linux" || im5.Config.RootFS.Type != "layers" || len(im5.Config.RootFS.DiffIDs) != 0 {
		t.Errorf("files: digest %s, config %+v", im5.Digest, im5.Config)
	}
	for i, l := range im5.Layers { // base first
		if want, _ := layerDigest(img, i); l.Descriptor.Digest != want || im5.Manifest.Layers[i].Digest != want {
			t.Errorf("files layer %d: %s, want %s", i, l.Descriptor.Digest, want)
		}
	}
	if err := im5.Close(); err != nil {
		t.Error(err)
	}
	if err := im5.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func layerDigest(img v1.Image, i int) (v1.Hash, error) {
	m, err := img.Manifest()
	if err != nil {
		return v1.Hash{}, err
	}
	return m.Layers[i].Digest, nil
}

func TestOCILayoutPicksTagAndPlatform(t *testing.T) {
	_, amd := pushOne(t, testutil.NewRegistry(t), "tmp:amd", "amd64", testutil.EStargz)
	_, arm := pushOne(t, testutil.NewRegistry(t), "tmp:arm", "arm64", testutil.Gzip)
	_, single := pushOne(t, testutil.NewRegistry(t), "tmp:single", "single", testutil.Uncompressed)
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for plat, img := range map[string]v1.Image{"linux/amd64": amd, "linux/arm64": arm} {
		pl, _ := v1.ParsePlatform(plat)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: pl}})
	}
	// An index inside an index, as some tools write.
	outer := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), mutate.IndexAddendum{Add: idx})
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendIndex(outer, layout.WithAnnotations(map[string]string{layer.AnnotationRefName: "multi"})); err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(single, layout.WithAnnotations(map[string]string{layer.AnnotationRefName: "single"})); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ref, platform, want string }{
		{"oci:" + dir + ":multi", "linux/amd64", "amd64"},
		{"oci:" + dir + ":multi", "linux/arm64", "arm64"},
		{"oci:" + dir + ":single", "linux/s390x", "single"},
	} {
		pl, _ := v1.ParsePlatform(tc.platform)
		im, err := layer.Resolve(t.Context(), tc.ref, layer.WithPlatform(*pl))
		if err != nil {
			t.Fatalf("%s for %s: %v", tc.ref, tc.platform, err)
		}
		st, _ := newStore(t)
		got, stack := readFile(t, im, st, "etc/which")
		if got != tc.want {
			t.Errorf("%s for %s: read %q, want %q", tc.ref, tc.platform, got, tc.want)
		}
		stack.Close() // the index of a TOC is stored in the background
		if rep := layer.Describe(t.Context(), im, st, layer.IndexAny); len(rep) != 1 || rep[0].Err != nil || rep[0].Source != "local store" {
			t.Errorf("%s: describe after a mount: %+v", tc.ref, rep)
		}
		im.Close()
	}
	pl, _ := v1.ParsePlatform("linux/s390x")
	_, err = layer.Resolve(t.Context(), "oci:"+dir+":multi", layer.WithPlatform(*pl))
	if err == nil || !strings.Contains(err.Error(), "no image for linux/s390x") || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("a platform the index lacks: %v", err)
	}
	_, err = layer.Resolve(t.Context(), "oci:"+dir)
	if err == nil || !strings.Contains(err.Error(), "holds 2 images") || !strings.Contains(err.Error(), "multi, single") {
		t.Errorf("two images and no tag: %v", err)
	}
}

func TestDockerArchivePicksByRepoTag(t *testing.T) {
	_, a := pushOne(t, testutil.NewRegistry(t), "tmp:a", "a", testutil.Gzip)
	_, b := pushOne(t, testutil.NewRegistry(t), "tmp:b", "b", testutil.Uncompressed)
	p := filepath.Join(t.TempDir(), "two.tar")
	err := tarball.MultiRefWriteToFile(p, map[name.Reference]v1.Image{
		name.MustParseReference("busybox:1"):            a,
		name.MustParseReference("example.com/app/b:v2"): b,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ref, want string }{
		{"busybox:1", "a"},
		{"docker.io/library/busybox:1", "a"},
		{"example.com/app/b:v2", "b"},
	} {
		im, err := layer.Resolve(t.Context(), "docker-archive:"+p+":"+tc.ref)
		if err != nil {
			t.Fatalf("%s: %v", tc.ref, err)
		}
		st, _ := newStore(t)
		if got, _ := readFile(t, im, st, "etc/which"); got != tc.want {
			t.Errorf("%s: read %q, want %q", tc.ref, got, tc.want)
		}
		im.Close()
	}
	_, err = layer.Resolve(t.Context(), "docker-archive:"+p)
	if err == nil || !strings.Contains(err.Error(), "holds 2 images") || !strings.Contains(err.Error(), p) {
		t.Errorf("two images and no ref: %v", err)
	}
}

func TestDockerArchiveLegacyRepeatedLayer(t *testing.T) {
	la, anna := testutil.Layer(t, testutil.Tar(t, entries("first")), testutil.Uncompressed)
	lb, annb := testutil.Layer(t, testutil.Tar(t, entries("second")), testutil.Uncompressed)
	img := testutil.Image(t, []v1.Layer{la, lb, la}, []map[string]string{anna, annb, anna})
	im, err := layer.Resolve(t.Context(), "docker-archive:"+writeLegacyArchive(t, img, "app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if len(im.Layers) != 3 || im.Layers[0].Descriptor.Digest != im.Layers[2].Descriptor.Digest {
		t.Fatalf("layers %v", im.Manifest.Layers)
	}
	st, _ := newStore(t)
	if got, _ := readFile(t, im, st, "etc/which"); got != "first" {
		t.Errorf("read %q", got)
	}
}

func TestLocalSourceErrors(t *testing.T) {
	ctx := t.Context()
	tmp := t.TempDir()
	img := richImage(t, testutil.Gzip)
	layoutDir := writeLayout(t, img, "v1")
	notLayout := filepath.Join(tmp, "plain-dir")
	os.Mkdir(notLayout, 0o755)
	os.WriteFile(filepath.Join(notLayout, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	emptyLayout := filepath.Join(t.TempDir(), "empty-layout")
	if _, err := layout.Write(emptyLayout, empty.Index); err != nil {
		t.Fatal(err)
	}

	archive := writeCraneArchive(t, img, "example.com/app:v1")
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(tmp, "truncated.tar")
	os.WriteFile(truncated, data[:len(data)/2+100], 0o644)
	noManifest := filepath.Join(tmp, "no-manifest.tar")
	writeTar(t, noManifest, []member{{name: "layer.tar", data: []byte("x")}})
	notTar := filepath.Join(tmp, "not-a-tar.tar")
	os.WriteFile(notTar, bytes.Repeat([]byte("not a tar "), 200), 0o644)
	missingLayer := filepath.Join(tmp, "missing-layer.tar")
	writeTar(t, missingLayer, []member{{name: "manifest.json", data: []byte(`[{"Config":"c.json","Layers":["gone/layer.tar"]}]`)}, {name: "c.json", data: []byte(`{"rootfs":{"type":"layers"}}`)}})
	file := filepath.Join(tmp, "a-file")
	os.WriteFile(file, []byte("x"), 0o644)

	for _, tc := range []struct {
		ref  string
		want []string
	}{
		{"oci:" + filepath.Join(tmp, "missing"), []string{filepath.Join(tmp, "missing"), "no such file"}},
		{"oci:" + notLayout, []string{notLayout, "not an OCI image layout", "index.json"}},
		{"oci:" + file, []string{file, "not a directory"}},
		{"oci:" + emptyLayout, []string{emptyLayout, "holds no image"}},
		{"oci:" + layoutDir + ":nope", []string{layoutDir, `no image tagged "nope"`, "tags: v1"}},
		{"docker-archive:" + filepath.Join(tmp, "missing.tar"), []string{filepath.Join(tmp, "missing.tar"), "no such file"}},
		{"docker-archive:" + notLayout, []string{notLayout, "not a regular file"}},
		{"docker-archive:" + noManifest, []string{noManifest, "no manifest.json"}},
		{"docker-archive:" + truncated, []string{truncated, "truncated"}},
		{"docker-archive:" + notTar, []string{notTar, "not a valid tar archive"}},
		{"docker-archive:" + missingLayer, []string{missingLayer, "layer 0", "no member gone/layer.tar"}},
		{"docker-archive:" + archive + ":example.com/app:v2", []string{archive, `no image tagged "example.com/app:v2"`, "example.com/app:v1"}},
	} {
		im, err := layer.Resolve(ctx, tc.ref)
		if err == nil {
			im.Close()
			t.Errorf("%s: resolved", tc.ref)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.ref, err, w)
			}
		}
	}

	for _, tc := range []struct {
		paths []string
		want  []string
	}{
		{nil, []string{"no file"}},
		{[]string{file, filepath.Join(tmp, "gone.tar.gz")}, []string{filepath.Join(tmp, "gone.tar.gz"), "no such file"}},
		{[]string{tmp}, []string{tmp, "not a regular file"}},
	} {
		im, err := layer.ResolveFiles(ctx, tc.paths)
		if err == nil {
			im.Close()
			t.Errorf("%v: resolved", tc.paths)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not say %q", tc.paths, err, w)
			}
		}
	}
	if _, err := layer.ResolveFiles(ctx, []string{filepath.Join(tmp, "gone")}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file: %v is not fs.ErrNotExist", err)
	}
}

// setMtime sets p's modification time.
func setMtime(t *testing.T, p string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestResolveFilesRemembersDigests(t *testing.T) {
	ctx := t.Context()
	st, root := newStore(t)
	// Two layers of exactly the same size, different content.
	blobA := testutil.Tar(t, entries("AAAA"))
	blobB := testutil.Tar(t, entries("BBBB"))
	dA, dB := sha256.Sum256(blobA), sha256.Sum256(blobB)
	p := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(p, blobA, 0o644); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	mtime := fi.ModTime()
	resolve := func(opts ...layer.Option) v1.Hash {
		t.Helper()
		im, err := layer.ResolveFiles(ctx, []string{p}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		defer im.Close()
		if mt := im.Layers[0].Descriptor.MediaType; mt != types.OCIUncompressedLayer {
			t.Errorf("media type %s", mt)
		}
		return im.Layers[0].Descriptor.Digest
	}
	records := func() []string {
		t.Helper()
		m, err := filepath.Glob(filepath.Join(root, "digests", "*"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	if d := resolve(layer.WithStore(st)); d.Hex != hex.EncodeToString(dA[:]) {
		t.Fatalf("digest %s, want sha256:%x", d, dA)
	}
	if n := len(records()); n != 1 {
		t.Fatalf("%d digest records", n)
	}

	// Same inode, size and mtime, other bytes: the record is believed
	// (the file is not read again)...
	if err := os.WriteFile(p, blobB, 0o644); err != nil {
		t.Fatal(err)
	}
	setMtime(t, p, mtime)
	if d := resolve(layer.WithStore(st)); d.Hex != hex.EncodeToString(dA[:]) {
		t.Fatalf("the record was not used: digest %s", d)
	}
	// ...but a mount still refuses the bytes that do not match it.
	im, err := layer.ResolveFiles(ctx, []string{p}, layer.WithStore(st))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newStore(t)
	_, err = layer.Open(ctx, im, other, newCache(t), layer.StackOptions{})
	im.Close()
	if !errors.Is(err, layer.ErrDigest) || !strings.Contains(err.Error(), hex.EncodeToString(dA[:])) {
		t.Errorf("open of a file that no longer matches its record: %v", err)
	}
	// Without the store nothing is remembered.
	if d := resolve(); d.Hex != hex.EncodeToString(dB[:]) {
		t.Errorf("without a store: digest %s, want sha256:%x", d, dB)
	}

	// A new mtime makes it hash again, and replace the record.
	setMtime(t, p, mtime.Add(1500*time.Millisecond))
	if d := resolve(layer.WithStore(st)); d.Hex != hex.EncodeToString(dB[:]) {
		t.Fatalf("after a new mtime: digest %s, want sha256:%x", d, dB)
	}
	recs := records()
	if len(recs) != 1 {
		t.Fatalf("%d digest records", len(recs))
	}
	rec, _ := os.ReadFile(recs[0])
	if !strings.Contains(string(rec), hex.EncodeToString(dB[:])) {
		t.Errorf("record %s", rec)
	}

	// A damaged record is ignored and rewritten.
	if err := os.WriteFile(recs[0], []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d := resolve(layer.WithStore(st)); d.Hex != hex.EncodeToString(dB[:]) {
		t.Fatalf("after a damaged record: digest %s", d)
	}
	if rec, _ := os.ReadFile(recs[0]); !strings.Contains(string(rec), hex.EncodeToString(dB[:])) {
		t.Errorf("record not rewritten: %s", rec)
	}
	// The record's content is the file's: a recorded digest that does not
	// fit the file's identity is not used.
	var r map[string]any
	json.Unmarshal(rec, &r)
	r["digest"] = "sha256:" + hex.EncodeToString(dA[:])
	r["size"] = float64(len(blobB) + 1)
	forged, _ := json.Marshal(r)
	os.WriteFile(recs[0], forged, 0o600)
	if d := resolve(layer.WithStore(st)); d.Hex != hex.EncodeToString(dB[:]) {
		t.Fatalf("a record of another size was used: digest %s", d)
	}
}

// flipByteAt changes one byte of file p at off, in place.
func flipByteAt(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x55
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// checkNoWrongBytes reads every file of stack and compares it with want
// (from the registry): each read either fails or returns the right bytes.
// It returns how many files failed.
func checkNoWrongBytes(t *testing.T, stack *layer.Stack, want map[string]testutil.Node) int {
	t.Helper()
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for p, w := range want {
		if w.Type != tar.TypeReg {
			continue
		}
		n, ok := tree.Lookup(p)
		if !ok {
			t.Errorf("%s missing", p)
			continue
		}
		got, err := readAll(stack, n)
		if err != nil {
			failed++
			if !errors.Is(err, layer.ErrDigest) && !errors.Is(err, index.ErrSpanDigest) {
				t.Logf("%s: %v", p, err)
			}
			continue
		}
		if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != w.SHA256 {
			t.Errorf("%s: wrong bytes served", p)
		}
	}
	return failed
}

func TestLocalBlobsThatLieAboutTheirDigestNeverServeWrongBytes(t *testing.T) {
	reg := testutil.NewRegistry(t)
	for _, f := range []testutil.Format{testutil.Gzip, testutil.Uncompressed, testutil.EStargz, testutil.ZstdFrames} {
		t.Run(string(f), func(t *testing.T) {
			img := richImage(t, f)
			regImg, err := layer.Resolve(t.Context(), reg.Push(t, "lie:"+string(f), img))
			if err != nil {
				t.Fatal(err)
			}
			st, _ := newStore(t)
			regStack, _ := openIn(t, regImg, st)
			want := treeOf(t, regStack)
			base, _ := layerDigest(img, 0)
			size := regImg.Layers[0].Descriptor.Size

			// OCI layout, tampered before the first mount: streaming the
			// layer to index it finds out, unless a TOC vouches for the
			// index (then the chunks' digests do, on read).
			dir := writeLayout(t, img, "v1")
			blobPath := filepath.Join(dir, "blobs", "sha256", base.Hex)
			flipByteAt(t, blobPath, size/2)
			im, err := layer.Resolve(t.Context(), "oci:"+dir)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			st, _ = newStore(t)
			stack, err := layer.Open(t.Context(), im, st, newCache(t), layer.StackOptions{SpanSize: testSpan})
			if f == testutil.EStargz {
				if err != nil {
					t.Fatalf("open with a valid TOC: %v", err)
				}
				defer stack.Close()
				if n := checkNoWrongBytes(t, stack, want); n == 0 {
					t.Error("every file read, though a byte of the layer changed")
				}
			} else if err == nil || !strings.Contains(err.Error(), base.String()) {
				t.Errorf("open of a tampered layer: %v", err)
			}

			// Tampered after a mount stored the index: reads fail.
			dir = writeLayout(t, img, "v1")
			blobPath = filepath.Join(dir, "blobs", "sha256", base.Hex)
			im2, err := layer.Resolve(t.Context(), "oci:"+dir)
			if err != nil {
				t.Fatal(err)
			}
			defer im2.Close()
			st, _ = newStore(t)
			first, _ := openIn(t, im2, st)
			if n := checkNoWrongBytes(t, first, want); n != 0 {
				t.Fatalf("%d files failed before the layer was tampered with", n)
			}
			first.Close()
			flipByteAt(t, blobPath, size/2)
			second, _ := openIn(t, im2, st)
			if got := second.Layers()[0].Origin; got != layer.FromStore {
				t.Errorf("second mount: index from %s", got)
			}
			if n := checkNoWrongBytes(t, second, want); n == 0 {
				t.Error("every file read, though a byte of the layer changed")
			}

			// A docker save tarball whose layer member was tampered with.
			p := writeCraneArchive(t, img, "example.com/app:v1")
			data, _ := os.ReadFile(p)
			blob, _ := readBlob(img, 0)
			at := bytes.Index(data, blob)
			if at < 0 {
				t.Fatal("layer not found in the archive")
			}
			flipByteAt(t, p, int64(at)+size/2)
			im3, err := layer.Resolve(t.Context(), "docker-archive:"+p)
			if err != nil {
				t.Fatal(err)
			}
			defer im3.Close()
			st, _ = newStore(t)
			stack3, err := layer.Open(t.Context(), im3, st, newCache(t), layer.StackOptions{SpanSize: testSpan})
			if err == nil {
				stack3.Close()
				t.Error("opened a docker archive whose layer does not match its name")
			} else if !strings.Contains(err.Error(), base.String()) || !errors.Is(err, layer.ErrDigest) {
				t.Errorf("open of a tampered archive: %v", err)
			}
		})
	}
}

func readBlob(img v1.Image, i int) ([]byte, error) {
	ls, err := img.Layers()
	if err != nil {
		return nil, err
	}
	rc, err := ls[i].Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestLocalImagesAreNotShared(t *testing.T) {
	img := richImage(t, testutil.Gzip)
	im, err := layer.Resolve(t.Context(), "oci:"+writeLayout(t, img, "v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	st, _ := newStore(t)
	// Publish and the registry index source do not reach for a registry.
	n := &notes{}
	stack, err := layer.Open(t.Context(), im, st, newCache(t), layer.StackOptions{
		SpanSize: testSpan, Logf: n.logf, Publish: true, IndexSource: layer.IndexRegistry,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	if !strings.Contains(n.String(), "not publishing") {
		t.Errorf("notes: %s", n)
	}
	for _, ls := range stack.Layers() {
		if ls.Origin != layer.Built {
			t.Errorf("layer %s: origin %s", ls.Layer.Descriptor.Digest, ls.Origin)
		}
	}
	if _, _, err := layer.Publish(t.Context(), im, stack.Layers()); !errors.Is(err, layer.ErrLocalImage) || !strings.Contains(err.Error(), im.Name()) {
		t.Errorf("publish: %v", err)
	}
	if _, err := layer.PushIndexes(t.Context(), im, map[v1.Hash][]byte{im.Layers[0].Descriptor.Digest: []byte("x")}, nil); !errors.Is(err, layer.ErrLocalImage) {
		t.Errorf("push indexes: %v", err)
	}
	if _, err := layer.FindIndexes(t.Context(), im, nil); !errors.Is(err, layer.ErrLocalImage) {
		t.Errorf("find indexes: %v", err)
	}
	for _, r := range layer.Describe(t.Context(), im, st, layer.IndexRegistry) {
		if r.Err != nil || r.Source != "local store" || r.Read != "lazy" {
			t.Errorf("describe %s: %+v", r.Layer.Descriptor.Digest, r)
		}
	}

	// Reads after the image is closed fail; they never return bytes.
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	node, _ := tree.Lookup("top.txt")
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}
	if k, err := stack.ReadAt(t.Context(), node, make([]byte, 10), 0); err == nil || k != 0 {
		t.Errorf("read after Close: %d bytes, %v", k, err)
	}
	// Registry images have nothing to close.
	if err := (&layer.Image{}).Close(); err != nil {
		t.Error(err)
	}
}
