package index

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// Type is the kind of a tar entry.
type Type uint8

// Entry types. Hardlink appears only in an Index; a Tree resolves it to the
// Node it names.
const (
	TypeReg Type = iota + 1
	TypeDir
	TypeSymlink
	TypeHardlink
	TypeChar
	TypeBlock
	TypeFifo
)

var typeNames = map[Type]string{
	TypeReg: "file", TypeDir: "dir", TypeSymlink: "symlink", TypeHardlink: "hardlink",
	TypeChar: "char", TypeBlock: "block", TypeFifo: "fifo",
}

func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Format says how a chunk's bytes are stored in the blob named by an Index.
type Format string

// Formats of indexed blobs.
const (
	// FormatTar is an uncompressed tar: a chunk's bytes are the blob's bytes.
	FormatTar Format = "tar"
	// FormatEStargz stores each chunk in its own gzip member.
	FormatEStargz Format = "estargz"
	// FormatZstdChunked stores each chunk in its own zstd frame.
	FormatZstdChunked Format = "zstd:chunked"
	// FormatGzip is a plain gzip blob read through seek points: chunk
	// BlobOffsets are offsets in the uncompressed tar, and Spans say where
	// in the blob decoding can restart.
	FormatGzip Format = "gzip"
	// FormatZstd is a zstd blob of several frames: chunk BlobOffsets are
	// offsets in the uncompressed tar, and Spans start at frame boundaries.
	FormatZstd Format = "zstd"
)

// Seekable reports whether f reads chunks through Spans.
func (f Format) Seekable() bool { return f == FormatGzip || f == FormatZstd }

// Chunk is a contiguous piece of a regular file and where its bytes live.
type Chunk struct {
	// Offset and Size place the chunk in the file's content.
	Offset int64 `json:"off"`
	Size   int64 `json:"size"`
	// BlobOffset and BlobEnd bound the stored unit (gzip member, zstd frame
	// or raw bytes) in the blob; reading [BlobOffset, BlobEnd) is enough to
	// produce the chunk.
	BlobOffset int64 `json:"boff"`
	BlobEnd    int64 `json:"bend"`
	// InnerOffset is where the chunk starts in the unit once decompressed.
	InnerOffset int64 `json:"inner,omitempty"`
	// Digest is the sha256 ("sha256:hex") of the chunk's uncompressed bytes.
	// Seekable formats leave it empty: their Spans carry the digests.
	Digest string `json:"digest,omitempty"`
}

// Span is a place where decoding of a seekable blob can restart. Span i
// produces the uncompressed bytes [Out, next Out) (the last one: up to
// Index.TarSize) from the compressed bytes [InBits/8, (next InBits+7)/8)
// (the last one: up to Index.BlobSize).
type Span struct {
	// Out is the offset in the uncompressed tar where the span starts.
	Out int64 `json:"out"`
	// InBits is the offset in bits in the blob where the span starts: a
	// DEFLATE block header for gzip, a frame start (a multiple of 8) for zstd.
	InBits int64 `json:"in"`
	// Digest is the sha256 ("sha256:hex") of the span's compressed bytes.
	Digest string `json:"digest"`
	// The window is the output that precedes Out, up to WindowSize bytes,
	// which DEFLATE back-references may reach. It is kept apart from the
	// index, in the blob Index.Windows names, so that an index stays small
	// with small spans: WinOff and WinLen place it there, compressed with
	// raw DEFLATE; WinSize is its length and WinDigest the sha256 of it,
	// decompressed. All zero for a span that needs none (the first, and
	// every zstd span).
	WinOff    int64  `json:"woff,omitempty"`
	WinLen    int64  `json:"wlen,omitempty"`
	WinSize   int64  `json:"wsize,omitempty"`
	WinDigest string `json:"wdigest,omitempty"`
}

// BlobRef names a blob by its digest and size.
type BlobRef struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// WindowSize is the most history a gzip Span keeps.
const WindowSize = 32 << 10

// maxWindowLen bounds the compressed bytes of one window: raw DEFLATE
// never stores 32 KiB in more than this.
const maxWindowLen = WindowSize + 64

// DefaultSpanSize is the uncompressed distance between seek points that
// seekable builders aim for when given 0. A read of a cold file fetches
// the spans that hold it, so smaller spans fetch fewer bytes; each costs a
// span entry in the index and a window in the windows blob. (At 256 KiB
// rather than 512 KiB, the bench's cold python3 start fetched 13% fewer
// bytes, in as many requests and as much time; its index blobs grew 14%.)
const DefaultSpanSize = 256 << 10

// MaxSpanSize bounds the uncompressed bytes of one span: a reader holds a
// whole span in memory. A blob whose restart points lie further apart is
// not seekable.
const MaxSpanSize = 64 << 20

// Entry is one tar entry of a layer.
type Entry struct {
	// Name is the cleaned path relative to the layer root; "" is the root.
	Name     string            `json:"name"`
	Type     Type              `json:"type"`
	Mode     uint32            `json:"mode"` // permission, setuid, setgid and sticky bits
	UID      int               `json:"uid,omitempty"`
	GID      int               `json:"gid,omitempty"`
	Size     int64             `json:"size,omitempty"`
	ModTime  time.Time         `json:"mtime"`
	Linkname string            `json:"link,omitempty"` // symlink target, or hardlink target path
	Devmajor uint32            `json:"devmajor,omitempty"`
	Devminor uint32            `json:"devminor,omitempty"`
	Xattrs   map[string][]byte `json:"xattrs,omitempty"`
	Chunks   []Chunk           `json:"chunks,omitempty"`
}

// Index is the file table of one layer blob.
type Index struct {
	// Layer is the digest of the layer as its manifest names it. For
	// FormatTar built from a compressed layer, chunk offsets are in the
	// uncompressed tar.
	Layer string `json:"layer"`
	// Format says how chunks are stored in that blob.
	Format Format `json:"format"`
	// Entries are in archive order.
	Entries []Entry `json:"entries"`
	// Spans, BlobSize and TarSize describe seekable formats only.
	Spans    []Span `json:"spans,omitempty"`
	BlobSize int64  `json:"blobSize,omitempty"`
	TarSize  int64  `json:"tarSize,omitempty"`
	// Windows names the blob that holds the gzip spans' windows; nil when
	// no span needs one.
	Windows *BlobRef `json:"windows,omitempty"`
	// Prefetch is the number of leading Entries the layer's writer marked
	// to be fetched first: in an eStargz TOC, the entries before its
	// ".prefetch.landmark" (the landmark itself is not an Entry). 0 when
	// it marked none.
	Prefetch int `json:"prefetch,omitempty"`

	// windows is the windows blob, as the builder made it; nil in an
	// index that was decoded.
	windows []byte
}

// BuiltWindows returns the windows blob (see Index.Windows) of an index
// that BuildGzip made in memory; nil for one it wrote to
// SeekOptions.Windows, and for a decoded index, which names the blob
// without holding it.
func (x *Index) BuiltWindows() []byte { return x.windows }

// MaxChunkSize bounds a chunk's size and the stored unit read to produce it,
// so an index cannot make a reader allocate without limit.
const MaxChunkSize = 256 << 20

// ErrUnsafePath reports an entry name that would escape the layer root.
var ErrUnsafePath = errors.New("unsafe path")

// ErrMalformed reports a layer or index whose contents make no sense.
var ErrMalformed = errors.New("malformed")

// CleanName turns a tar entry name into the form Entry.Name uses: relative
// to the root, no "." components, no trailing slash; "" for the root. A name
// with a ".." component is refused with ErrUnsafePath.
func CleanName(name string) (string, error) {
	if isClean(name) {
		return name, nil
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("entry %q: %w: it leaves the layer root", name, ErrUnsafePath)
		}
	}
	clean := path.Clean("/" + name)
	return strings.TrimPrefix(clean, "/"), nil
}

// isClean reports whether name is non-empty and already in CleanName's
// form, with no ".." component: most names are, and need no copy.
func isClean(name string) bool {
	if name == "" || name[0] == '/' || name[len(name)-1] == '/' {
		return false
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '/' {
			continue
		}
		switch name[start:i] {
		case "", ".", "..":
			return false
		}
		start = i + 1
	}
	return true
}

// validate checks the invariants every Entry must hold, whatever built it.
func (e *Entry) validate(f Format) error {
	if _, ok := typeNames[e.Type]; !ok {
		return fmt.Errorf("entry %q: %w: unknown type %d", e.Name, ErrMalformed, e.Type)
	}
	if clean, err := CleanName(e.Name); err != nil {
		return err
	} else if clean != e.Name {
		return fmt.Errorf("entry %q: %w: name is not clean", e.Name, ErrMalformed)
	}
	if e.Type != TypeReg {
		if len(e.Chunks) > 0 {
			return fmt.Errorf("entry %q: %w: a %s has content", e.Name, ErrMalformed, e.Type)
		}
		return nil
	}
	var next int64
	for i, c := range e.Chunks {
		if c.Offset != next || c.Size <= 0 || c.BlobOffset < 0 || c.BlobEnd < c.BlobOffset || c.InnerOffset < 0 ||
			c.Size > MaxChunkSize || c.BlobEnd-c.BlobOffset > MaxChunkSize || c.InnerOffset > MaxChunkSize {
			return fmt.Errorf("entry %q: %w: chunk %d [%d,+%d) at blob [%d,%d)", e.Name, ErrMalformed, i, c.Offset, c.Size, c.BlobOffset, c.BlobEnd)
		}
		if f.Seekable() && c.Digest == "" && c.InnerOffset == 0 && c.BlobEnd-c.BlobOffset == c.Size {
			// verified through its span
		} else if !validDigest(c.Digest) {
			return fmt.Errorf("entry %q: %w: chunk %d digest %q", e.Name, ErrMalformed, i, c.Digest)
		}
		next += c.Size
	}
	if next != e.Size {
		return fmt.Errorf("entry %q: %w: chunks cover %d of %d bytes", e.Name, ErrMalformed, next, e.Size)
	}
	return nil
}

// Validate checks every entry of x.
func (x *Index) Validate() error {
	if x.Prefetch < 0 || x.Prefetch > len(x.Entries) {
		return fmt.Errorf("index of %s: %w: %d prefetch entries of %d", x.Layer, ErrMalformed, x.Prefetch, len(x.Entries))
	}
	switch x.Format {
	case FormatTar, FormatEStargz, FormatZstdChunked:
		if len(x.Spans) > 0 || x.Windows != nil {
			return fmt.Errorf("index of %s: %w: spans in a %s index", x.Layer, ErrMalformed, x.Format)
		}
	case FormatGzip, FormatZstd:
		if err := x.validateSpans(); err != nil {
			return fmt.Errorf("index of %s: %w", x.Layer, err)
		}
	default:
		return fmt.Errorf("index of %s: %w: unknown format %q", x.Layer, ErrMalformed, x.Format)
	}
	for i := range x.Entries {
		e := &x.Entries[i]
		if err := e.validate(x.Format); err != nil {
			return fmt.Errorf("index of %s: %w", x.Layer, err)
		}
		if x.Format.Seekable() {
			for _, c := range e.Chunks {
				if c.BlobEnd > x.TarSize {
					return fmt.Errorf("index of %s: entry %q: %w: chunk at %d lies past the tar's %d bytes", x.Layer, e.Name, ErrMalformed, c.Offset, x.TarSize)
				}
			}
			continue
		}
		if x.Format != FormatTar {
			continue
		}
		for _, c := range e.Chunks {
			if c.InnerOffset+c.Size > c.BlobEnd-c.BlobOffset {
				return fmt.Errorf("index of %s: entry %q: %w: chunk at %d overruns its stored bytes", x.Layer, e.Name, ErrMalformed, c.Offset)
			}
		}
	}
	return nil
}

func validDigest(d string) bool {
	if !strings.HasPrefix(d, "sha256:") || len(d) != len("sha256:")+64 {
		return false
	}
	for _, c := range d[len("sha256:"):] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// validateSpans checks that Spans tile the tar and the blob in order, and
// that no span exceeds the bounds a reader relies on.
func (x *Index) validateSpans() error {
	if len(x.Spans) == 0 || x.TarSize <= 0 || x.BlobSize <= 0 {
		return fmt.Errorf("%w: a %s index needs spans and sizes", ErrMalformed, x.Format)
	}
	if w := x.Windows; w != nil && (!validDigest(w.Digest) || w.Size <= 0 || w.Size > int64(len(x.Spans))*maxWindowLen || x.Format != FormatGzip) {
		return fmt.Errorf("%w: windows blob %q of %d bytes", ErrMalformed, w.Digest, w.Size)
	}
	for i, sp := range x.Spans {
		out, in := x.SpanRanges(i)
		if i == 0 && sp.Out != 0 || out.Start >= out.End || out.End-out.Start > MaxSpanSize ||
			sp.InBits < 0 || in.Start >= in.End || in.End-in.Start > MaxChunkSize || in.End > x.BlobSize ||
			!validDigest(sp.Digest) || x.Format == FormatZstd && (sp.InBits%8 != 0 || sp.WinSize > 0) {
			return fmt.Errorf("%w: span %d (out %d, in bit %d)", ErrMalformed, i, sp.Out, sp.InBits)
		}
		if err := x.validateWindow(i); err != nil {
			return err
		}
		if i > 0 && sp.InBits <= x.Spans[i-1].InBits {
			return fmt.Errorf("%w: span %d starts before span %d", ErrMalformed, i, i-1)
		}
	}
	return nil
}

// validateWindow checks where span i's window lies and what it claims.
func (x *Index) validateWindow(i int) error {
	sp := &x.Spans[i]
	if sp.WinSize == 0 {
		if sp.WinOff != 0 || sp.WinLen != 0 || sp.WinDigest != "" {
			return fmt.Errorf("%w: span %d places an empty window", ErrMalformed, i)
		}
		return nil
	}
	if x.Windows == nil || sp.WinSize < 0 || sp.WinSize > WindowSize || sp.WinSize > sp.Out ||
		sp.WinOff < 0 || sp.WinLen <= 0 || sp.WinLen > maxWindowLen || sp.WinOff > x.Windows.Size-sp.WinLen ||
		!validDigest(sp.WinDigest) {
		return fmt.Errorf("%w: span %d: window of %d bytes at [%d,+%d)", ErrMalformed, i, sp.WinSize, sp.WinOff, sp.WinLen)
	}
	return nil
}

// WindowRange returns where span i's compressed window lies in the windows
// blob; empty when the span needs no window.
func (x *Index) WindowRange(i int) Range {
	sp := &x.Spans[i]
	return Range{sp.WinOff, sp.WinOff + sp.WinLen}
}

// Range is a half-open interval of byte offsets.
type Range struct{ Start, End int64 }

// SpanRanges returns the uncompressed bytes span i produces and the compressed
// bytes it is decoded from. i must be in [0, len(x.Spans)).
func (x *Index) SpanRanges(i int) (out, in Range) {
	sp := x.Spans[i]
	out = Range{sp.Out, x.TarSize}
	in = Range{sp.InBits / 8, x.BlobSize}
	if i+1 < len(x.Spans) {
		out.End = x.Spans[i+1].Out
		in.End = (x.Spans[i+1].InBits + 7) / 8
	}
	return out, in
}

// FindSpan returns the span that holds uncompressed offset off, or -1.
func (x *Index) FindSpan(off int64) int {
	if off < 0 || off >= x.TarSize {
		return -1
	}
	i := sort.Search(len(x.Spans), func(i int) bool { return x.Spans[i].Out > off })
	return i - 1
}

// HasTOC reports whether f is read through a table of contents the layer
// carries itself.
func (f Format) HasTOC() bool { return f == FormatEStargz || f == FormatZstdChunked }
