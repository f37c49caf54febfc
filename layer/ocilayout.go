package layer

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// AnnotationRefName is the OCI annotation that tags a manifest in an image
// layout's index.json; oci:PATH:TAG picks the manifest whose value is TAG.
const AnnotationRefName = "org.opencontainers.image.ref.name"

const (
	// maxManifestSize bounds an index or manifest read from a local source.
	maxManifestSize = 16 << 20
	// maxConfigSize bounds an image config read from a local source.
	maxConfigSize = 64 << 20
	// maxIndexDepth bounds the nesting of image indexes followed.
	maxIndexDepth = 8
)

// blobSource gives the blobs of an OCI image layout by digest: files of a
// directory, or members of a tarball that holds one.
type blobSource interface {
	// section returns blob d, to be read in place. Its errors name d and
	// where it was looked for.
	section(d v1.Hash) (*fileSection, error)
	// read returns the bytes of blob d (a manifest or config), unchecked;
	// a blob over limit bytes is an error.
	read(d v1.Hash, limit int64) ([]byte, error)
}

// layoutDir is the blobs/ directory of an OCI image layout. Each blob file
// is opened once and kept by the image.
type layoutDir struct {
	dir    string
	li     *localImage
	opened map[v1.Hash]*fileSection
}

func (l *layoutDir) section(d v1.Hash) (*fileSection, error) {
	if s, ok := l.opened[d]; ok {
		return s, nil
	}
	if err := checkHash(d); err != nil {
		return nil, err
	}
	f, fi, err := openRegular(filepath.Join(l.dir, "blobs", d.Algorithm, d.Hex))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	l.li.keep(f)
	s := &fileSection{f: f, name: f.Name(), size: fi.Size()}
	l.opened[d] = s
	return s, nil
}

func (l *layoutDir) read(d v1.Hash, limit int64) ([]byte, error) {
	if err := checkHash(d); err != nil {
		return nil, err
	}
	f, _, err := openRegular(filepath.Join(l.dir, "blobs", d.Algorithm, d.Hex))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	defer f.Close()
	return readAllLimit(f, limit, "blob "+d.String())
}

// checkHash refuses a digest that cannot name a blob file.
func checkHash(d v1.Hash) error {
	if _, err := v1.NewHash(d.String()); err != nil {
		return fmt.Errorf("digest %q: %w", d, err)
	}
	return nil
}

// resolveOCILayout resolves oci:PATH[:TAG].
func resolveOCILayout(ctx context.Context, spec string, o *options) (*Image, error) {
	dir, tag := splitLocalRef(spec)
	if dir == "" {
		return nil, fmt.Errorf("resolve oci:%s: no path", spec)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve oci:%s: %w", spec, err)
	}
	name := "oci:" + abs
	if tag != "" {
		name += ":" + tag
	}
	li := &localImage{name: name}
	fail := func(err error) (*Image, error) {
		li.close()
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	if fi, err := os.Stat(abs); err != nil {
		return fail(fmt.Errorf("%s: %w", abs, unwrapPath(err)))
	} else if !fi.IsDir() {
		return fail(fmt.Errorf("%s: not a directory (an OCI image layout is one)", abs))
	}
	raw, err := os.ReadFile(filepath.Join(abs, "index.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return fail(fmt.Errorf("%s is not an OCI image layout: it has no index.json", abs))
	} else if err != nil {
		return fail(fmt.Errorf("%s: %w", abs, err))
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return fail(fmt.Errorf("%s/index.json: %w", abs, err))
	}
	r := &layoutReader{src: &layoutDir{dir: abs, li: li, opened: map[v1.Hash]*fileSection{}}, where: abs, platform: o.platform}
	descs := idx.Manifests
	if tag != "" {
		descs = slices.DeleteFunc(slices.Clone(descs), func(d v1.Descriptor) bool { return d.Annotations[AnnotationRefName] != tag })
		if len(descs) == 0 {
			return fail(fmt.Errorf("no image tagged %q in %s (%s)", tag, abs, tagList(idx.Manifests)))
		}
	}
	desc, rawManifest, err := r.choose(ctx, descs)
	if err != nil {
		return fail(err)
	}
	im, err := r.image(ctx, desc, rawManifest)
	if err != nil {
		return fail(err)
	}
	im.local = li
	return im, nil
}

// tagList says which tags an index.json holds, for errors.
func tagList(descs []v1.Descriptor) string {
	var tags []string
	for _, d := range descs {
		if t := d.Annotations[AnnotationRefName]; t != "" && !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	if len(tags) == 0 {
		return "it has no tags"
	}
	return "tags: " + strings.Join(tags, ", ")
}

// layoutReader reads the manifests and configs of an OCI image layout.
type layoutReader struct {
	src      blobSource
	where    string // the layout, for errors
	platform v1.Platform
}

// readJSON reads blob d, at most limit bytes, and checks its size and
// digest.
func (r *layoutReader) readJSON(d v1.Descriptor, limit int64, what string) ([]byte, error) {
	if d.Size <= 0 || d.Size > limit {
		return nil, fmt.Errorf("%s %s: size %d out of bounds", what, d.Digest, d.Size)
	}
	p, err := r.src.read(d.Digest, limit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if int64(len(p)) != d.Size {
		return nil, fmt.Errorf("%s %s: %w: %d bytes, its descriptor says %d", what, d.Digest, ErrDigest, len(p), d.Size)
	}
	h, err := v1.Hasher(d.Digest.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, d.Digest, err)
	}
	h.Write(p)
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Digest.Hex {
		return nil, fmt.Errorf("%s %s: %w: its bytes are %s:%s", what, d.Digest, ErrDigest, d.Digest.Algorithm, got)
	}
	return p, nil
}

// kind tells an image index from an image manifest, by the descriptor's
// media type or else the document's own.
func kind(d v1.Descriptor, raw []byte) (index, image bool) {
	mt := d.MediaType
	if mt == "" && raw != nil {
		var doc struct {
			MediaType types.MediaType `json:"mediaType"`
			Manifests json.RawMessage `json:"manifests"`
		}
		if json.Unmarshal(raw, &doc) == nil {
			mt = doc.MediaType
			if mt == "" && doc.Manifests != nil {
				return true, false
			} else if mt == "" {
				return false, true
			}
		}
	}
	return mt.IsIndex(), mt.IsImage()
}

// choose picks the image among the top-level descriptors descs: the only
// one, following indexes to the platform's image; or, when all name a
// platform, the platform's.
func (r *layoutReader) choose(ctx context.Context, descs []v1.Descriptor) (v1.Descriptor, []byte, error) {
	switch {
	case len(descs) == 0:
		return v1.Descriptor{}, nil, fmt.Errorf("%s holds no image", r.where)
	case len(descs) == 1:
		return r.resolve(ctx, descs[0], 0)
	case !slices.ContainsFunc(descs, func(d v1.Descriptor) bool { return d.Platform == nil }):
		return r.byPlatform(ctx, descs, 0)
	}
	return v1.Descriptor{}, nil, fmt.Errorf("%s holds %d images (%s): name one as oci:PATH:TAG", r.where, len(descs), tagList(descs))
}

// resolve returns the image manifest d names, following indexes.
func (r *layoutReader) resolve(ctx context.Context, d v1.Descriptor, depth int) (v1.Descriptor, []byte, error) {
	if err := ctx.Err(); err != nil {
		return v1.Descriptor{}, nil, err
	}
	raw, err := r.readJSON(d, maxManifestSize, "manifest")
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	isIndex, isImage := kind(d, raw)
	switch {
	case isImage:
		return d, raw, nil
	case !isIndex:
		return v1.Descriptor{}, nil, fmt.Errorf("manifest %s: media type %q is neither an image nor an index", d.Digest, d.MediaType)
	case depth >= maxIndexDepth:
		return v1.Descriptor{}, nil, fmt.Errorf("index %s: indexes nested over %d deep", d.Digest, maxIndexDepth)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, nil, fmt.Errorf("index %s: %w", d.Digest, err)
	}
	return r.byPlatform(ctx, idx.Manifests, depth+1)
}

// byPlatform returns the first image of children for r.platform, looking
// into nested indexes.
func (r *layoutReader) byPlatform(ctx context.Context, children []v1.Descriptor, depth int) (v1.Descriptor, []byte, error) {
	var have []string
	d, raw, err := r.platformIn(ctx, children, depth, &have)
	if err != nil || raw != nil {
		return d, raw, err
	}
	has := "it names no platform"
	if len(have) > 0 {
		has = "it has " + strings.Join(have, ", ")
	}
	return v1.Descriptor{}, nil, fmt.Errorf("no image for %s in %s (%s)", r.platform, r.where, has)
}

// platformIn is byPlatform, returning no manifest and no error when
// children hold no image for the platform; it adds the platforms they do
// hold to have.
func (r *layoutReader) platformIn(ctx context.Context, children []v1.Descriptor, depth int, have *[]string) (v1.Descriptor, []byte, error) {
	for _, c := range children {
		isIndex, _ := kind(c, nil)
		switch {
		case c.Platform != nil && c.Platform.Satisfies(r.platform) && !isIndex:
			return r.resolve(ctx, c, depth)
		case isIndex && (c.Platform == nil || c.Platform.Satisfies(r.platform)):
			if depth >= maxIndexDepth {
				return v1.Descriptor{}, nil, fmt.Errorf("index %s: indexes nested over %d deep", c.Digest, maxIndexDepth)
			}
			raw, err := r.readJSON(c, maxManifestSize, "index")
			if err != nil {
				return v1.Descriptor{}, nil, err
			}
			idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
			if err != nil {
				return v1.Descriptor{}, nil, fmt.Errorf("index %s: %w", c.Digest, err)
			}
			if d, raw, err := r.platformIn(ctx, idx.Manifests, depth+1, have); err != nil || raw != nil {
				return d, raw, err
			}
		case c.Platform != nil:
			*have = append(*have, c.Platform.String())
		}
	}
	return v1.Descriptor{}, nil, nil
}

// image reads the config of the manifest raw (described by d) and opens
// its layers.
func (r *layoutReader) image(ctx context.Context, d v1.Descriptor, raw []byte) (*Image, error) {
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	rawConfig, err := r.readJSON(m.Config, maxConfigSize, "config")
	if err != nil {
		return nil, err
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	im := imageOf(d, m, cf)
	diffIDs := cf.RootFS.DiffIDs
	for i, ld := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s, err := r.src.section(ld.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if s.size != ld.Size {
			return nil, fmt.Errorf("layer %d (%s): %w: %s is %d bytes, the manifest says %d", i, ld.Digest, ErrDigest, s.name, s.size, ld.Size)
		}
		l := &Layer{Descriptor: ld, blob: s}
		if len(diffIDs) == len(m.Layers) {
			l.DiffID = diffIDs[i]
		}
		im.Layers = append(im.Layers, l)
	}
	return im, nil
}
