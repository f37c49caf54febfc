package layer

// docker save tarballs.
//
// An archive is scanned once: the headers of its members, read with
// archive/tar over the file (which seeks past member data), give each
// member's offset and size, and a layer blob is then a section of the
// tarball read in place. manifest.json lists, per image, its config and
// layer members. The archives known:
//
//   - docker before 25: "<id>/layer.tar", uncompressed (repeated layers as
//     symlinks to the first), config "<hex>.json". An uncompressed layer's
//     digest is its diff ID from the config.
//   - docker 25 and later: an OCI image layout inside the tar, members
//     "blobs/sha256/<hex>", plus manifest.json. The OCI manifest in it
//     whose config and layers are those manifest.json lists is the image's
//     manifest (with its media types and annotations).
//   - go-containerregistry (crane, ko): "<hex>.tar.gz", "<hex>.tar.zst" or
//     "<hex>.tar", hex the blob's digest, config "sha256:<hex>".
//
// A layer's digest is taken from its member name when that names a blob
// (blobs/ALG/HEX, or HEX.tar*), else the diff ID for an uncompressed
// layer, else it is computed by reading the member once (remembered under
// the Store when one is given). Either way the digest is only a claim
// until an index is built: the stream is checked against it. Without an
// OCI manifest in the archive the image's manifest is synthesized (OCI
// media types, layers sniffed) and Image.Digest is the digest of that
// synthesized manifest: stable for one archive, but no registry's.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxArchiveLinks bounds the links followed to find a member.
const maxArchiveLinks = 8

// tarMember is one member of an archive.
type tarMember struct {
	name      string
	typ       byte  // tar.TypeReg, TypeSymlink, TypeLink, or TypeGNUSparse for any sparse file
	off, size int64 // of the data in the archive, for regular files
	link      string
}

// dockerArchive is a docker save tarball, scanned.
type dockerArchive struct {
	path     string
	f        *os.File
	fi       fs.FileInfo
	members  map[string]*tarMember
	sections map[string]*fileSection // by member name
}

// archiveImage is one entry of a docker save manifest.json.
type archiveImage struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// resolveDockerArchive resolves docker-archive:PATH[:REF].
func resolveDockerArchive(ctx context.Context, spec string, o *options) (*Image, error) {
	p, ref := splitLocalRef(spec)
	if p == "" {
		return nil, fmt.Errorf("resolve docker-archive:%s: no path", spec)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, fmt.Errorf("resolve docker-archive:%s: %w", spec, err)
	}
	name := "docker-archive:" + abs
	if ref != "" {
		name += ":" + ref
	}
	li := &localImage{name: name}
	fail := func(err error) (*Image, error) {
		li.close()
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	f, fi, err := openRegular(abs)
	if err != nil {
		return fail(err)
	}
	li.keep(f)
	a := &dockerArchive{path: abs, f: f, fi: fi, sections: map[string]*fileSection{}}
	if a.members, err = scanArchive(ctx, f, fi.Size()); err != nil {
		return fail(fmt.Errorf("%s: %w", abs, err))
	}
	if _, ok := a.members["manifest.json"]; !ok {
		return fail(fmt.Errorf("%s has no manifest.json: not a docker save archive", abs))
	}
	raw, err := a.readMember("manifest.json", maxManifestSize)
	if err != nil {
		return fail(err)
	}
	var entries []archiveImage
	if err := json.Unmarshal(raw, &entries); err != nil {
		return fail(fmt.Errorf("%s: manifest.json: %w", abs, err))
	}
	e, err := pickArchiveImage(entries, ref, abs)
	if err != nil {
		return fail(err)
	}
	im, err := a.image(ctx, e, o)
	if err != nil {
		return fail(err)
	}
	im.local = li
	return im, nil
}

// scanArchive reads the headers of the tar f of size bytes.
func scanArchive(ctx context.Context, f *os.File, size int64) (map[string]*tarMember, error) {
	members := map[string]*tarMember{}
	tr := tar.NewReader(f)
	for i := 0; ; i++ {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("truncated archive: %w", err)
		} else if err != nil {
			return nil, fmt.Errorf("not a valid tar archive: %w", err)
		}
		m := &tarMember{name: cleanMember(hdr.Name), typ: hdr.Typeflag, link: hdr.Linkname}
		switch hdr.Typeflag {
		case tar.TypeReg:
			if isSparse(hdr) {
				m.typ = tar.TypeGNUSparse
				break
			}
			// archive/tar reads exactly the header blocks: the file is
			// now at the member's data.
			if m.off, err = f.Seek(0, io.SeekCurrent); err != nil {
				return nil, err
			}
			m.size = hdr.Size
			if m.off+m.size > size {
				return nil, fmt.Errorf("truncated archive: member %s ends at %d, the file at %d", m.name, m.off+m.size, size)
			}
		case tar.TypeSymlink, tar.TypeLink, tar.TypeGNUSparse:
		default:
			continue
		}
		members[m.name] = m
	}
	return members, nil
}

// isSparse reports a sparse member, whose data is not its content.
func isSparse(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// cleanMember normalizes a member name: no leading "./" or "/".
func cleanMember(n string) string {
	return strings.TrimPrefix(path.Clean("/"+n), "/")
}

// member returns the regular member called n, following links.
func (a *dockerArchive) member(n string) (*tarMember, error) {
	n = cleanMember(n)
	for range maxArchiveLinks {
		m, ok := a.members[n]
		if !ok {
			return nil, fmt.Errorf("%s has no member %s", a.path, n)
		}
		switch m.typ {
		case tar.TypeReg:
			return m, nil
		case tar.TypeSymlink:
			n = cleanMember(path.Join(path.Dir(n), m.link))
		case tar.TypeLink:
			n = cleanMember(m.link)
		default:
			return nil, fmt.Errorf("%s: member %s is a sparse file", a.path, n)
		}
	}
	return nil, fmt.Errorf("%s: member %s: more than %d links", a.path, n, maxArchiveLinks)
}

// sectionOf returns member m as a section of the archive.
func (a *dockerArchive) sectionOf(m *tarMember) *fileSection {
	if s, ok := a.sections[m.name]; ok {
		return s
	}
	s := &fileSection{f: a.f, name: a.path + ":" + m.name, off: m.off, size: m.size}
	a.sections[m.name] = s
	return s
}

// readMember reads the member called n, at most limit bytes.
func (a *dockerArchive) readMember(n string, limit int64) ([]byte, error) {
	m, err := a.member(n)
	if err != nil {
		return nil, err
	}
	if m.size > limit {
		return nil, fmt.Errorf("%s: member %s is over %d bytes", a.path, m.name, limit)
	}
	p := make([]byte, m.size)
	if _, err := a.f.ReadAt(p, m.off); err != nil {
		return nil, fmt.Errorf("%s: member %s: %w", a.path, m.name, err)
	}
	return p, nil
}

// section and read make the archive the blobSource of the OCI layout
// that docker 25 and later put in it.
func (a *dockerArchive) section(d v1.Hash) (*fileSection, error) {
	if err := checkHash(d); err != nil {
		return nil, err
	}
	m, err := a.member(path.Join("blobs", d.Algorithm, d.Hex))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	return a.sectionOf(m), nil
}

func (a *dockerArchive) read(d v1.Hash, limit int64) ([]byte, error) {
	if err := checkHash(d); err != nil {
		return nil, err
	}
	p, err := a.readMember(path.Join("blobs", d.Algorithm, d.Hex), limit)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	return p, nil
}

var _ blobSource = (*dockerArchive)(nil)

// pickArchiveImage picks the image tagged ref, or the only one.
func pickArchiveImage(entries []archiveImage, ref, where string) (archiveImage, error) {
	var tags []string
	for _, e := range entries {
		tags = append(tags, e.RepoTags...)
	}
	tagged := "tags: " + strings.Join(tags, ", ")
	if len(tags) == 0 {
		tagged = "no tags"
	}
	if ref == "" {
		switch len(entries) {
		case 0:
			return archiveImage{}, fmt.Errorf("%s: manifest.json lists no image", where)
		case 1:
			return entries[0], nil
		}
		return archiveImage{}, fmt.Errorf("%s holds %d images (%s): name one as docker-archive:PATH:REF", where, len(entries), tagged)
	}
	want := normalTag(ref)
	for _, e := range entries {
		for _, t := range e.RepoTags {
			if t == ref || normalTag(t) == want {
				return e, nil
			}
		}
	}
	return archiveImage{}, fmt.Errorf("no image tagged %q in %s (%s)", ref, where, tagged)
}

// normalTag spells a tag as docker resolves it ("busybox" is
// "index.docker.io/library/busybox:latest").
func normalTag(s string) string {
	if r, err := name.ParseReference(s); err == nil {
		return r.Name()
	}
	return s
}

// blobName matches members named by their blob digest, as
// go-containerregistry writes them.
var blobName = regexp.MustCompile(`^([0-9a-f]{64})\.(tar|tar\.gz|tar\.zst)$`)

// digestOfName returns the digest a member's name gives, if it gives one.
func digestOfName(n string) (v1.Hash, bool) {
	if rest, ok := strings.CutPrefix(n, "blobs/"); ok {
		alg, hex, _ := strings.Cut(rest, "/")
		d, err := v1.NewHash(alg + ":" + hex)
		return d, err == nil
	}
	if m := blobName.FindStringSubmatch(n); m != nil {
		return v1.Hash{Algorithm: "sha256", Hex: m[1]}, true
	}
	return v1.Hash{}, false
}

// image reads e's config and describes its layers.
func (a *dockerArchive) image(ctx context.Context, e archiveImage, o *options) (*Image, error) {
	rawConfig, err := a.readMember(e.Config, maxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", e.Config, err)
	}
	im := &Image{Config: cf}
	diffIDs := cf.RootFS.DiffIDs
	for i, lp := range e.Layers {
		m, err := a.member(lp)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		s := a.sectionOf(m)
		c, err := sniff(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, s.name, err)
		}
		l := &Layer{Descriptor: v1.Descriptor{MediaType: layerMediaType(c), Size: m.size}, blob: s}
		if len(diffIDs) == len(e.Layers) {
			l.DiffID = diffIDs[i]
		}
		if d, ok := digestOfName(m.name); ok {
			l.Descriptor.Digest = d
		} else if c == None && l.DiffID.Hex != "" {
			l.Descriptor.Digest = l.DiffID
		} else if l.Descriptor.Digest, err = o.store.fileDigest(ctx, a.f, a.fi, m.off, m.size); err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, s.name, err)
		}
		im.Layers = append(im.Layers, l)
	}
	configDigest, _, err := v1.SHA256(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, err
	}
	if ok, err := a.useOCIManifest(ctx, im, configDigest); err != nil || ok {
		return im, err
	}
	m, raw, err := synthesizeManifestOf(rawConfig, im.Layers)
	if err != nil {
		return nil, err
	}
	im.Manifest = m
	if im.Digest, _, err = v1.SHA256(bytes.NewReader(raw)); err != nil {
		return nil, err
	}
	im.descriptor = v1.Descriptor{MediaType: m.MediaType, Size: int64(len(raw)), Digest: im.Digest}
	return im, nil
}

// useOCIManifest looks in the archive's index.json, if it has one, for
// the image manifest of configDigest and im's layers, and when it finds it
// makes it im's manifest.
func (a *dockerArchive) useOCIManifest(ctx context.Context, im *Image, configDigest v1.Hash) (bool, error) {
	if _, ok := a.members["index.json"]; !ok {
		return false, nil
	}
	raw, err := a.readMember("index.json", maxManifestSize)
	if err != nil {
		return false, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return false, nil // manifest.json is what docker load reads
	}
	r := &layoutReader{src: a, where: a.path}
	matches := func(m *v1.Manifest) bool {
		return m.Config.Digest == configDigest && slices.EqualFunc(m.Layers, im.Layers, func(d v1.Descriptor, l *Layer) bool {
			return d.Digest == l.Descriptor.Digest && d.Size == l.Descriptor.Size
		})
	}
	d, m, err := r.find(ctx, idx.Manifests, 0, matches)
	if err != nil || m == nil {
		return false, err
	}
	for i, l := range im.Layers {
		l.Descriptor = m.Layers[i]
	}
	im.Manifest, im.Digest = m, d.Digest
	im.descriptor = v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest}
	if im.descriptor.MediaType == "" {
		im.descriptor.MediaType = m.MediaType
	}
	return true, nil
}

// find returns the first image manifest under descs for which match says
// yes, looking into nested indexes; none is no error. Blobs the archive
// lacks (other platforms' images are often left out) are skipped.
func (r *layoutReader) find(ctx context.Context, descs []v1.Descriptor, depth int, match func(*v1.Manifest) bool) (v1.Descriptor, *v1.Manifest, error) {
	for _, d := range descs {
		if err := ctx.Err(); err != nil {
			return v1.Descriptor{}, nil, err
		}
		if d.MediaType != "" && !d.MediaType.IsImage() && !d.MediaType.IsIndex() {
			continue
		}
		raw, err := r.readJSON(d, maxManifestSize, "manifest")
		if err != nil {
			continue
		}
		isIndex, isImage := kind(d, raw)
		switch {
		case isImage:
			if m, err := v1.ParseManifest(bytes.NewReader(raw)); err == nil && match(m) {
				if m.MediaType == "" {
					m.MediaType = types.OCIManifestSchema1
				}
				return d, m, nil
			}
		case isIndex && depth < maxIndexDepth:
			idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
			if err != nil {
				continue
			}
			if d, m, err := r.find(ctx, idx.Manifests, depth+1, match); err != nil || m != nil {
				return d, m, err
			}
		}
	}
	return v1.Descriptor{}, nil, nil
}
