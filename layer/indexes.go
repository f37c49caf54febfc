package layer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/index"
)

// IndexSource says which indexes of layers without a TOC a node trusts, and
// whether it may stream a layer to build one.
type IndexSource string

// Index sources.
const (
	// IndexAny uses a stored index, else one from the registry, else
	// builds one by streaming the layer.
	IndexAny IndexSource = "any"
	// IndexLocal uses only indexes this node built: stored ones, or built
	// now. Registry indexes are never read.
	IndexLocal IndexSource = "local"
	// IndexRegistry uses a stored index or one from the registry, and
	// never streams a layer: a layer without either fails the mount.
	IndexRegistry IndexSource = "registry"
	// IndexBuild ignores stored and registry indexes and builds every one
	// again by streaming its layer.
	IndexBuild IndexSource = "build"
)

// ParseIndexSource checks a --index-source value.
func ParseIndexSource(s string) (IndexSource, error) {
	switch src := IndexSource(s); src {
	case IndexAny, IndexLocal, IndexRegistry, IndexBuild:
		return src, nil
	}
	return "", fmt.Errorf("index source %q: want any, local, registry or build", s)
}

// Origins of layer indexes, besides FromTOC, FromStore and Streamed.
const (
	// FromRegistry: taken from an index artifact in the registry, now or
	// on an earlier mount.
	FromRegistry Origin = "registry"
	// Built: the layer was streamed and verified now, and a seek index
	// built from it; its bytes are still read from the registry.
	Built Origin = "built"
)

// ErrNoIndex reports a layer for which no index may be used or built.
var ErrNoIndex = errors.New("no usable index")

// registryIndexes looks up an image's index artifacts once, on first need,
// for every layer that may want one.
type registryIndexes struct {
	img *Image
	// need reports whether a layer may want a registry index; FindIndexes
	// fetches only those.
	need  func(*Layer) bool
	once  sync.Once
	found map[v1.Hash][]byte // written once under once
	err   error              // written once under once
}

func (r *registryIndexes) get(ctx context.Context, d v1.Hash) ([]byte, error) {
	if r.img.Local() {
		return nil, nil // a local image has no registry to ask
	}
	r.once.Do(func() {
		var want []v1.Hash
		for _, l := range r.img.Layers {
			if _, _, ok := l.TOC(); !ok && (r.need == nil || r.need(l)) {
				want = append(want, l.Descriptor.Digest)
			}
		}
		r.found, r.err = FindIndexes(ctx, r.img, want)
	})
	return r.found[d], r.err
}

// opener finds or builds the indexes of one image's layers.
type opener struct {
	img      *Image
	st       *Store
	src      IndexSource
	spanSize int64
	registry *registryIndexes
	logf     func(string, ...any)
	readOnly bool // store nothing (inspect)
	// later runs work that need not finish before the layer is open; nil
	// runs it at once.
	later func(func())
}

func (o *opener) runLater(f func()) {
	if o.later == nil {
		f()
		return
	}
	o.later(f)
}

func (o *opener) open(ctx context.Context, l *Layer) (*LayerState, error) {
	d := l.Descriptor.Digest
	defer l.tail.Store(nil) // a tail read early is of no use after this
	if l.Compression() == "" {
		return nil, fmt.Errorf("unsupported media type %q", l.Descriptor.MediaType)
	}
	_, _, hasTOC := l.TOC()
	if o.src != IndexBuild || hasTOC {
		if ls := o.stored(ctx, l, BuiltHere, FromStore); ls != nil {
			return ls, nil
		}
	}
	if format, want, ok := l.TOC(); ok {
		x, err := index.ReadTOC(tocReader{ctx: ctx, l: l}, l.blob.Size(), d.String(), format, want)
		switch {
		case err == nil:
			// The TOC is at hand again from the registry: storing its
			// index only spares later mounts that fetch, so it need not
			// hold this mount back.
			o.runLater(func() {
				if err := o.st.SaveIndex(x, BuiltHere); err != nil {
					o.logf("keeping index of %s in memory only: %v", d, err)
				}
			})
			return &LayerState{Layer: l, Index: x, Origin: FromTOC, blob: l.blob}, nil
		case errors.Is(err, index.ErrTOCDigest), ctx.Err() != nil:
			// The manifest and the blob disagree, or we were stopped.
			return nil, err
		default:
			// A TOC this reader cannot use: the verified stream still can.
			o.logf("building an index of %s instead: %v", d, err)
		}
	}
	if o.src == IndexAny || o.src == IndexRegistry {
		if ls := o.stored(ctx, l, FetchedFromRegistry, FromRegistry); ls != nil {
			return ls, nil
		}
		ls, err := o.fromRegistry(ctx, l)
		if ls != nil || ctx.Err() != nil {
			return ls, err
		}
		if o.src == IndexRegistry {
			if err == nil {
				err = errors.New("the registry holds none for it")
			}
			return nil, fmt.Errorf("%w (--index-source=registry): %w", ErrNoIndex, err)
		}
		if err != nil {
			o.logf("building an index of %s: %v", d, err)
		}
	}
	return o.build(ctx, l)
}

// mayNeedRegistry reports whether l may end up asking the registry for an
// index: it has no TOC and no stored index.
func (o *opener) mayNeedRegistry(l *Layer) bool {
	d := l.Descriptor.Digest
	return !o.st.hasIndex(d, BuiltHere) && !o.st.hasIndex(d, FetchedFromRegistry)
}

// stored returns the layer opened with its stored index of provenance p,
// or nil if there is none this node can use.
func (o *opener) stored(ctx context.Context, l *Layer, p Provenance, origin Origin) *LayerState {
	d := l.Descriptor.Digest
	x, err := o.st.LoadIndex(d, p)
	if err != nil {
		if !isNotExist(err) {
			o.logf("ignoring stored index of %s: %v", d, err)
		}
		return nil
	}
	if err := fitsLayer(x, l); err != nil {
		o.logf("ignoring stored index of %s: %v", d, err)
		return nil
	}
	if x.Format == index.FormatTar {
		// A tar index addresses an unpacked copy when there is one
		// (compressed layers, and mislabelled ones), else the blob itself.
		if f, err := openUnpacked(o.st.unpackedPath(d)); err == nil {
			return &LayerState{Layer: l, Index: x, Origin: origin, blob: f}
		}
		if l.Compression() != None {
			return nil // the unpacked copy is gone: stream the layer again
		}
	}
	// The windows of an index this node built are stored with it; those
	// of a registry index may still be read from the registry.
	w, err := o.windowsOf(ctx, x, p == FetchedFromRegistry)
	if err != nil {
		o.logf("ignoring stored index of %s: %v", d, err)
		return nil
	}
	return &LayerState{Layer: l, Index: x, Origin: origin, blob: l.blob, windows: w}
}

// fitsLayer checks that x can address l's blob: it names l, its format
// matches l's compression, and its sizes match the manifest. An index that
// does not fit is never used, whoever built it.
func fitsLayer(x *index.Index, l *Layer) error {
	d := l.Descriptor.Digest
	if x.Layer != d.String() {
		return fmt.Errorf("%w: it indexes %s", index.ErrMalformed, x.Layer)
	}
	c := l.Compression()
	switch x.Format {
	case index.FormatGzip, index.FormatZstd:
		if want := map[index.Format]Compression{index.FormatGzip: Gzip, index.FormatZstd: Zstd}[x.Format]; c != want {
			return fmt.Errorf("%w: a %s index for a %s layer", index.ErrMalformed, x.Format, c)
		}
		if x.BlobSize != l.Descriptor.Size {
			return fmt.Errorf("%w: it spans %d bytes, the layer has %d", index.ErrMalformed, x.BlobSize, l.Descriptor.Size)
		}
	case index.FormatEStargz, index.FormatZstdChunked:
		if _, _, ok := l.TOC(); !ok {
			return fmt.Errorf("%w: a %s index for a layer without a TOC", index.ErrMalformed, x.Format)
		}
	}
	return nil
}

// fromRegistry returns the layer opened with an index from the registry,
// nil and the reason when there is none it can use.
func (o *opener) fromRegistry(ctx context.Context, l *Layer) (*LayerState, error) {
	d := l.Descriptor.Digest
	b, err := o.registry.get(ctx, d)
	if err != nil || b == nil {
		return nil, err
	}
	x, err := index.Decode(bytes.NewReader(b))
	if err == nil {
		err = fitsLayer(x, l)
	}
	if err == nil && x.Format == index.FormatTar && l.Compression() != None {
		err = fmt.Errorf("%w: an index of an unpacked copy", index.ErrMalformed)
	}
	if err != nil {
		return nil, fmt.Errorf("registry index of %s refused: %w", d, err)
	}
	w, err := o.windowsOf(ctx, x, true)
	if err != nil {
		return nil, fmt.Errorf("registry index of %s: %w", d, err)
	}
	if !o.readOnly {
		// b is what Decode just checked: stored as it came, off the
		// mount's way (the write syncs).
		o.runLater(func() {
			if err := o.st.saveEncodedIndex(d, FetchedFromRegistry, b); err != nil {
				o.logf("keeping registry index of %s in memory only: %v", d, err)
			}
		})
	}
	return &LayerState{Layer: l, Index: x, Origin: FromRegistry, blob: l.blob, windows: w}, nil
}

// build streams the layer once, verifies its digest, and builds its index:
// a seek index when the blob allows one (its bytes are then still read
// from the registry), else an unpacked copy under the state root.
func (o *opener) build(ctx context.Context, l *Layer) (*LayerState, error) {
	d := l.Descriptor.Digest
	c := l.Compression()
	if got, err := sniffCompression(ctx, l); err != nil {
		return nil, err
	} else if got != c {
		o.logf("layer %s is labelled %s but holds %s: keeping an unpacked copy", d, c, got)
		return o.unpack(ctx, l)
	}
	var (
		x   *index.Index
		err error
	)
	// A gzip index's windows go straight to the store (kept in memory
	// only when they cannot).
	var wf *windowsFile
	switch c {
	case Gzip:
		opts := index.SeekOptions{SpanSize: o.spanSize}
		if o.readOnly {
			// nothing to store
		} else if wf, err = o.st.createWindows(); err != nil {
			o.logf("keeping index of %s in memory only: %v", d, err)
			wf = nil
		} else {
			defer func() {
				if wf != nil {
					wf.abort()
				}
			}()
			opts.Windows = wf
		}
		x, err = o.streamIndex(ctx, l, func(r io.Reader) (*index.Index, error) {
			return index.BuildGzip(r, d.String(), opts)
		})
	case Zstd:
		x, err = o.buildZstd(ctx, l)
	case None:
		x, err = o.streamIndex(ctx, l, func(r io.Reader) (*index.Index, error) {
			return index.BuildTar(r, d.String(), 0)
		})
	}
	if errors.Is(err, index.ErrNotSeekable) {
		o.logf("layer %s cannot be read in pieces (%v): keeping an unpacked copy", d, err)
		return o.unpack(ctx, l)
	}
	if err != nil {
		return nil, err
	}
	dropTOCArtifacts(ctx, x, l)
	// The windows go first: a stored index always has its windows.
	var werr error
	switch {
	case wf != nil && x.Windows != nil:
		werr = wf.commit(x.Windows)
		wf = nil
	case x.Windows != nil:
		werr = o.st.SaveWindows(x)
	}
	var w *windowSource
	if x.Windows != nil {
		if w, err = o.windowsOf(ctx, x, false); err != nil && werr == nil {
			werr = err
		}
	}
	if werr != nil {
		if x.BuiltWindows() == nil {
			return nil, fmt.Errorf("store the windows of the index of %s: %w", d, werr)
		}
		o.logf("keeping index of %s in memory only: %v", d, werr)
		w = &windowSource{blob: memBlob(x.BuiltWindows())}
	} else if err := o.st.SaveIndex(x, BuiltHere); err != nil {
		o.logf("keeping index of %s in memory only: %v", d, err)
	}
	if x.Format == index.FormatTar && c != None {
		f, err := openUnpacked(o.st.unpackedPath(d))
		if err != nil {
			return nil, err
		}
		return &LayerState{Layer: l, Index: x, Origin: Streamed, blob: f}, nil
	}
	return &LayerState{Layer: l, Index: x, Origin: Built, blob: l.blob, windows: w}, nil
}

// memBlob is a blob held in memory.
type memBlob []byte

func (m memBlob) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return bytes.NewReader(m).ReadAt(p, off)
}
func (m memBlob) Size() int64 { return int64(len(m)) }

// sniffCompression reads the first bytes of l's blob and says how it is
// really compressed.
func sniffCompression(ctx context.Context, l *Layer) (Compression, error) {
	return sniff(ctx, l.blob)
}

// streamIndex streams l's blob through build and returns the index only
// once the blob's size and digest matched the manifest.
func (o *opener) streamIndex(ctx context.Context, l *Layer, build func(io.Reader) (*index.Index, error)) (*index.Index, error) {
	rc, err := l.blob.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	v := newVerifier(rc, l.Descriptor.Size)
	x, err := build(v)
	// Read the blob to its end whatever happened: a digest mismatch
	// explains a broken stream better than the error it caused.
	if _, derr := io.Copy(io.Discard, v); derr != nil && err == nil {
		err = derr
	}
	if verr := v.check(l.Descriptor.Digest); verr != nil {
		return nil, verr
	}
	if err != nil {
		if errors.Is(err, index.ErrNotSeekable) {
			return nil, err
		}
		return nil, fmt.Errorf("not a valid tar layer (%s): %w", l.Compression(), err)
	}
	return x, nil
}

// buildZstd builds a zstd layer's seek index, keeping the uncompressed tar
// it produced when the blob turns out not to be seekable.
func (o *opener) buildZstd(ctx context.Context, l *Layer) (*index.Index, error) {
	d := l.Descriptor.Digest
	tmp, err := os.CreateTemp(filepath.Dir(o.st.unpackedPath(d)), ".tmp-zstd-*")
	if err != nil {
		return nil, err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	w := bufio.NewWriterSize(tmp, 1<<20)
	x, err := o.streamIndex(ctx, l, func(r io.Reader) (*index.Index, error) {
		return index.BuildZstd(r, d.String(), index.SeekOptions{SpanSize: o.spanSize, Tar: w})
	})
	if !errors.Is(err, index.ErrNotSeekable) {
		return x, err
	}
	// The verified tar is on disk: index it there and keep it.
	if err := w.Flush(); err != nil {
		return nil, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if x, err = index.BuildTar(bufio.NewReaderSize(tmp, 1<<20), d.String(), 0); err != nil {
		return nil, fmt.Errorf("not a valid zstd tar layer: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), o.st.unpackedPath(d)); err != nil {
		return nil, err
	}
	return x, nil
}

// unpack streams the layer again and keeps it uncompressed.
func (o *opener) unpack(ctx context.Context, l *Layer) (*LayerState, error) {
	x, err := unpack(ctx, l, o.st)
	if err != nil {
		return nil, err
	}
	f, err := openUnpacked(o.st.unpackedPath(l.Descriptor.Digest))
	if err != nil {
		return nil, err
	}
	return &LayerState{Layer: l, Index: x, Origin: Streamed, blob: f}, nil
}

// dropTOCArtifacts hides the TOC files of an eStargz or zstd:chunked layer
// read as a plain tar. A layer whose annotations were lost (a docker save
// tarball, a plain layer file) is known by its TOC entry (eStargz) or its
// footer (zstd:chunked), read only when the tar has such files at all.
func dropTOCArtifacts(ctx context.Context, x *index.Index, l *Layer) {
	if !slices.ContainsFunc(x.Entries, func(e index.Entry) bool { return index.IsTOCArtifact(e.Name) }) {
		return
	}
	if _, _, hasTOC := l.TOC(); hasTOC || isEStargzTar(x) || hasZstdChunkedFooter(ctx, l.blob) {
		x.Entries = slices.DeleteFunc(x.Entries, func(e index.Entry) bool { return index.IsTOCArtifact(e.Name) })
	}
}

// zstdChunkedMagic ends the footer of a zstd:chunked blob.
var zstdChunkedMagic = []byte{0x47, 0x6e, 0x55, 0x6c, 0x49, 0x6e, 0x55, 0x78}

// hasZstdChunkedFooter reports whether b ends with a zstd:chunked footer.
func hasZstdChunkedFooter(ctx context.Context, b blob) bool {
	n := int64(len(zstdChunkedMagic))
	if b.Size() < n {
		return false
	}
	tail := make([]byte, n)
	if _, err := b.ReadAt(ctx, tail, b.Size()-n); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	return bytes.Equal(tail, zstdChunkedMagic)
}

// verifier counts and hashes a blob as it is read, refusing to read more
// than the manifest's size plus one byte (enough to notice a longer blob).
type verifier struct {
	r    io.Reader
	h    hash.Hash
	n    int64
	size int64
}

func newVerifier(r io.Reader, size int64) *verifier {
	return &verifier{r: io.LimitReader(r, size+1), h: sha256.New(), size: size}
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	return n, err
}

func (v *verifier) check(want v1.Hash) error {
	return checkDigest(want, v.h.Sum(nil), v.n, v.size)
}

// Publish pushes the indexes this node built of layers that other nodes
// can use (see Publishable) as one artifact referring to img, and returns
// its digest and the number of indexes in it (0, and no push, when there
// are none).
func Publish(ctx context.Context, img *Image, layers []*LayerState) (v1.Hash, int, error) {
	if img.Local() {
		return v1.Hash{}, 0, fmt.Errorf("publish indexes: %w", localError(img))
	}
	encoded, windows := map[v1.Hash][]byte{}, map[v1.Hash][]byte{}
	for _, ls := range layers {
		if !Publishable(ls) {
			continue
		}
		var buf bytes.Buffer
		if err := ls.Index.Encode(&buf); err != nil {
			return v1.Hash{}, 0, err
		}
		d := ls.Layer.Descriptor.Digest
		encoded[d] = buf.Bytes()
		if w := ls.Index.Windows; w != nil {
			if ls.windows == nil || ls.windows.blob.Size() != w.Size {
				return v1.Hash{}, 0, fmt.Errorf("publish indexes: the windows of the index of %s are not at hand", d)
			}
			b := make([]byte, w.Size)
			if _, err := ls.windows.blob.ReadAt(ctx, b, 0); err != nil && !errors.Is(err, io.EOF) {
				return v1.Hash{}, 0, fmt.Errorf("publish indexes: windows of %s: %w", d, err)
			}
			windows[d] = b
		}
	}
	if len(encoded) == 0 {
		return v1.Hash{}, 0, nil
	}
	d, err := PushIndexes(ctx, img, encoded, windows)
	return d, len(encoded), err
}

// Publishable reports whether this node may share ls's index through the
// registry: the node built it (an index taken from the registry is never
// pushed again under this node's name), and it is a seek index or direct
// offsets into an uncompressed blob. TOC indexes come with their layers,
// and an unpacked copy's index is of no use to another node.
func Publishable(ls *LayerState) bool {
	if ls.Origin != Built && ls.Origin != FromStore {
		return false
	}
	switch ls.Index.Format {
	case index.FormatGzip, index.FormatZstd:
		return true
	case index.FormatTar:
		return ls.Layer.Compression() == None
	}
	return false
}
