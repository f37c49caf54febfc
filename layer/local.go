package layer

// Local images: layers read in place from files on this node.
//
// Three sources make them: an OCI image layout directory (oci:PATH[:TAG],
// ocilayout.go), a docker save tarball (docker-archive:PATH[:REF],
// dockerarchive.go) and plain layer files (ResolveFiles). Each layer blob is
// a fileSection: a byte range of a file the Image holds open, a whole file
// or a member of a tarball. Nothing is copied into the state root; indexes
// are built and stored as for registry layers, by streaming the section
// once and checking it against the digest the manifest gives, so a file
// that lies about its digest cannot serve wrong bytes (the per-span and
// per-chunk digests of the index guard later reads).
//
// Local images never take part in index sharing through a registry: no
// index is looked up there, and Publish and PushIndexes refuse them
// (ErrLocalImage).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/lazyroot/lazyroot/fetch"
)

// ErrLocalImage reports an attempt to share the indexes of a local image.
var ErrLocalImage = errors.New("indexes are shared through a registry only")

// localImage is what a local Image holds: its display name and the files
// its layers read.
type localImage struct {
	name string

	mu    sync.Mutex // a leaf: held only to change files
	files []*os.File // guarded by mu; closed and emptied by close
}

// keep records f to be closed with the image.
func (li *localImage) keep(f *os.File) {
	li.mu.Lock()
	defer li.mu.Unlock()
	li.files = append(li.files, f)
}

func (li *localImage) close() error {
	li.mu.Lock()
	defer li.mu.Unlock()
	var errs []error
	for _, f := range li.files {
		errs = append(errs, f.Close())
	}
	li.files = nil
	return errors.Join(errs...)
}

// Name names the image for people and logs: the reference for a registry
// image, and for a local one its source and absolute path, such as
// "oci:/abs/dir:tag", "docker-archive:/abs/img.tar" or
// "layers:/abs/top.tar.gz,/abs/base.tar" (top first, as given).
func (im *Image) Name() string {
	switch {
	case im.local != nil:
		return im.local.name
	case im.Ref != nil:
		return im.Ref.String()
	}
	return ""
}

// Local reports whether the image's layers are local files rather than
// registry blobs.
func (im *Image) Local() bool { return im.local != nil }

// Close releases the files a local image reads, and ends the reads of a
// registry image's TOCs started while it was resolved (WithEarlyTOC) if
// they still run. Close every Stack opened on the image first: their
// reads fail once it is closed. Close may be called more than once.
func (im *Image) Close() error {
	if im.endTails != nil {
		im.endTails() // an image closed unopened has no use for them
	}
	if im.local == nil {
		return nil
	}
	return im.local.close()
}

// localError is the error of sharing img's indexes through a registry.
func localError(im *Image) error {
	return fmt.Errorf("%s is a local image; %w", im.Name(), ErrLocalImage)
}

// fileSection is a byte range of a local file read in place: a layer file,
// a blob of an OCI layout, a member of a docker save tarball. It does not
// own the file (the Image closes it), so it is no io.Closer and a Stack's
// Close leaves it open. It is safe for concurrent use.
type fileSection struct {
	f     *os.File
	name  string // the file, and the member of an archive, for errors
	off   int64  // of the section in f
	size  int64
	reads atomic.Int64 // ReadAt and Open calls
	bytes atomic.Int64 // bytes read by them
}

// ReadAt reads len(p) bytes at off, with the io.ReaderAt contract: a short
// read comes with an error, io.EOF at the end of the section. A file that
// has become shorter than the section is an error, not an end.
func (s *fileSection) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: negative offset", s.name, off)
	}
	if off >= s.size {
		return 0, io.EOF
	}
	want := p[:min(int64(len(p)), s.size-off)]
	s.reads.Add(1)
	n, err := s.f.ReadAt(want, s.off+off)
	s.bytes.Add(int64(n))
	if n < len(want) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return n, fmt.Errorf("read %s [%d,+%d): %w (it has shrunk below %d bytes?)", s.name, off, len(want), err, s.size)
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Open streams the section from its start.
func (s *fileSection) Open(ctx context.Context) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.reads.Add(1)
	return io.NopCloser(&sectionStream{ctx: ctx, r: io.NewSectionReader(s.f, s.off, s.size), s: s}), nil
}

func (s *fileSection) Size() int64 { return s.size }

// Stats counts the reads of the section (ReadAt and Open calls) and the
// bytes they read.
func (s *fileSection) Stats() fetch.BlobStats {
	return fetch.BlobStats{Requests: s.reads.Load(), Bytes: s.bytes.Load()}
}

// sectionStream reads a section in order, stopping when ctx ends.
type sectionStream struct {
	ctx context.Context
	r   io.Reader
	s   *fileSection
}

func (r *sectionStream) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(p)
	r.s.bytes.Add(int64(n))
	return n, err
}

// ResolveFiles makes an image of layer files, listed top first (as Porto's
// layer_paths are); the Image's Layers are base first as always. Each file
// is a tar, compressed with gzip or zstd or not at all, as its first bytes
// say; its descriptor gets the matching OCI layer media type, its size and
// its sha256, computed by reading the file once. With WithStore the digest
// is remembered under the store's root by the file's device, inode, size
// and modification time, so a second resolve of an unchanged file does not
// read it; a record that does not match the file is ignored.
//
// The image has a minimal config (the options' platform, linux and the
// host's architecture by default; no diff IDs), a manifest synthesized from
// the layers, and a zero Digest. Its files stay open until Close.
func ResolveFiles(ctx context.Context, paths []string, opts ...Option) (*Image, error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("resolve layer files: %w", err)
	}
	if len(paths) == 0 {
		return nil, errors.New("resolve layer files: no file given")
	}
	abs := make([]string, len(paths))
	for i, p := range paths {
		if p == "" {
			return nil, errors.New("resolve layer files: empty path")
		}
		if abs[i], err = filepath.Abs(p); err != nil {
			return nil, fmt.Errorf("resolve layer file %s: %w", p, err)
		}
	}
	li := &localImage{name: "layers:" + strings.Join(abs, ",")}
	im := &Image{local: li}
	fail := func(err error) (*Image, error) {
		li.close()
		return nil, fmt.Errorf("resolve %s: %w", li.name, err)
	}
	for _, p := range slices.Backward(abs) {
		l, err := openLayerFile(ctx, li, p, o.store)
		if err != nil {
			return fail(err)
		}
		im.Layers = append(im.Layers, l)
	}
	im.Config = &v1.ConfigFile{
		OS:           o.platform.OS,
		Architecture: o.platform.Architecture,
		Variant:      o.platform.Variant,
		RootFS:       v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{}},
	}
	if im.Manifest, _, err = synthesizeManifest(im.Config, im.Layers); err != nil {
		return fail(err)
	}
	return im, nil
}

// openLayerFile opens the layer file p for li and describes it.
func openLayerFile(ctx context.Context, li *localImage, p string, st *Store) (*Layer, error) {
	f, fi, err := openRegular(p)
	if err != nil {
		return nil, fmt.Errorf("layer file %w", err)
	}
	li.keep(f)
	s := &fileSection{f: f, name: p, size: fi.Size()}
	if s.size == 0 {
		return nil, fmt.Errorf("layer file %s: empty", p)
	}
	c, err := sniff(ctx, s)
	if err != nil {
		return nil, fmt.Errorf("layer file %s: %w", p, err)
	}
	d, err := st.fileDigest(ctx, f, fi, 0, s.size)
	if err != nil {
		return nil, fmt.Errorf("layer file %s: %w", p, err)
	}
	return &Layer{Descriptor: v1.Descriptor{MediaType: layerMediaType(c), Size: s.size, Digest: d}, blob: s}, nil
}

// openRegular opens the regular file p. Its errors start with p.
func openRegular(p string) (*os.File, fs.FileInfo, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", p, unwrapPath(err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", p, unwrapPath(err))
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file (%s)", p, fi.Mode().Type())
	}
	return f, fi, nil
}

// unwrapPath drops the operation and path of an *fs.PathError, for errors
// that name the path themselves; errors.Is still sees the cause.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// sniff says how the blob is compressed, by its first bytes.
func sniff(ctx context.Context, b blob) (Compression, error) {
	var magic [4]byte
	n, err := b.ReadAt(ctx, magic[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the start of the layer: %w", err)
	}
	return compressionOf(magic[:n]), nil
}

// compressionOf says how a blob starting with magic is compressed.
func compressionOf(magic []byte) Compression {
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return Gzip
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	}
	return None
}

// layerMediaType is the OCI layer media type of compression c.
func layerMediaType(c Compression) types.MediaType {
	switch c {
	case Gzip:
		return types.OCILayer
	case Zstd:
		return types.OCILayerZStd
	}
	return types.OCIUncompressedLayer
}

// synthesizeManifest makes an OCI manifest of cf and layers for a local
// source that has none, and returns it with its encoding.
func synthesizeManifest(cf *v1.ConfigFile, layers []*Layer) (*v1.Manifest, []byte, error) {
	rawConfig, err := json.Marshal(cf)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	return synthesizeManifestOf(rawConfig, layers)
}

func synthesizeManifestOf(rawConfig []byte, layers []*Layer) (*v1.Manifest, []byte, error) {
	cd, _, err := v1.SHA256(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, nil, err
	}
	m := &v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(rawConfig)), Digest: cd},
		Layers:        make([]v1.Descriptor, len(layers)),
	}
	for i, l := range layers {
		m.Layers[i] = l.Descriptor
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: %w", err)
	}
	return m, raw, nil
}

// splitLocalRef splits the PATH[:SUFFIX] of a local reference: the whole
// of s when a file of that name exists, else at the first colon whose left
// part exists, else at the first colon (so errors name the path part).
func splitLocalRef(s string) (p, suffix string) {
	if _, err := os.Stat(s); err == nil {
		return s, ""
	}
	for i := range len(s) {
		if s[i] != ':' {
			continue
		}
		if _, err := os.Stat(s[:i]); err == nil {
			return s[:i], s[i+1:]
		}
	}
	if p, suffix, ok := strings.Cut(s, ":"); ok {
		return p, suffix
	}
	return s, ""
}

// readAllLimit reads all of r, at most limit bytes; what is longer fails.
func readAllLimit(r io.Reader, limit int64, what string) ([]byte, error) {
	p, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(p)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", what, limit)
	}
	return p, nil
}
