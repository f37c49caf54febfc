package index

import (
	"errors"
	"fmt"
	"path"
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
)

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
	Digest string `json:"digest"`
}

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
}

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
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("entry %q: %w: it leaves the layer root", name, ErrUnsafePath)
		}
	}
	clean := path.Clean("/" + name)
	return strings.TrimPrefix(clean, "/"), nil
}

// validate checks the invariants every Entry must hold, whatever built it.
func (e *Entry) validate() error {
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
		if !strings.HasPrefix(c.Digest, "sha256:") || len(c.Digest) != len("sha256:")+64 {
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
	switch x.Format {
	case FormatTar, FormatEStargz, FormatZstdChunked:
	default:
		return fmt.Errorf("index of %s: %w: unknown format %q", x.Layer, ErrMalformed, x.Format)
	}
	for i := range x.Entries {
		e := &x.Entries[i]
		if err := e.validate(); err != nil {
			return fmt.Errorf("index of %s: %w", x.Layer, err)
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
