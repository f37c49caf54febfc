package index

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"

	"github.com/lazyroot/lazyroot/index/internal/inflate"
)

// MaxTOCSize bounds the table of contents ReadTOC accepts.
const MaxTOCSize = 256 << 20

// footerSizeMax covers the largest footer of the formats ReadTOC knows.
const footerSizeMax = 64

// TailReadSize is how much of a blob of size bytes ReadTOC reads first,
// from its end: the footer and, for most layers, the whole TOC before it,
// in one round trip. A larger TOC costs a second read of only its missing
// head; a smaller one wastes the tail's other bytes. TOCs grow with the
// files a layer holds, and so roughly with its size: a layer reads a
// 128th of its size, at least 256 KiB and at most 512 KiB (a 52 MB Debian
// base layer has a 309 KiB TOC).
func TailReadSize(size int64) int64 {
	return min(size, max(256<<10, min(size/128, 512<<10)))
}

// Names eStargz writers add at the layer root for their own use.
const (
	prefetchLandmark   = ".prefetch.landmark"
	noPrefetchLandmark = ".no.prefetch.landmark"
	tocTarName         = estargz.TOCTarName
)

// IsTOCArtifact reports whether name (a cleaned Entry name) is one of the
// files an eStargz writer adds for its own use rather than the image's.
func IsTOCArtifact(name string) bool {
	return name == prefetchLandmark || name == noPrefetchLandmark || name == tocTarName
}

// TOCDigests are the digests a layer descriptor may carry for its TOC. At
// least one must be set: a TOC is never trusted without one.
type TOCDigests struct {
	// JSON is the digest of the uncompressed TOC JSON (eStargz annotation).
	JSON string
	// Compressed is the digest of the TOC bytes as stored in the blob
	// (zstd:chunked manifest checksum annotation).
	Compressed string
}

// ErrTOCDigest reports a TOC that does not match the digest the layer
// descriptor gave for it.
var ErrTOCDigest = errors.New("toc digest mismatch")

// ReadTOC reads the footer and table of contents of the eStargz or
// zstd:chunked blob r of the given size (one read, or two for a TOC
// longer than the first read's tail), verifies the TOC
// against want and returns the blob's Index.
func ReadTOC(r io.ReaderAt, size int64, layer string, f Format, want TOCDigests) (*Index, error) {
	if want.JSON == "" && want.Compressed == "" {
		return nil, fmt.Errorf("read toc of %s: no toc digest to verify it against", layer)
	}
	var d estargz.Decompressor
	var candidates []estargz.Decompressor
	switch f {
	case FormatEStargz:
		candidates = []estargz.Decompressor{new(estargz.GzipDecompressor), new(estargz.LegacyGzipDecompressor)}
	case FormatZstdChunked:
		candidates = []estargz.Decompressor{new(zstdchunked.Decompressor)}
	default:
		return nil, fmt.Errorf("read toc of %s: format %q has no toc", layer, f)
	}
	tail := make([]byte, TailReadSize(size))
	tailStart := size - int64(len(tail))
	if _, err := r.ReadAt(tail, tailStart); err != nil {
		return nil, fmt.Errorf("read footer of %s: %w", layer, err)
	}
	footer := tail[max(0, len(tail)-footerSizeMax):]
	var payloadEnd, tocOffset, tocSize int64
	var footerErrs []error
	for _, c := range candidates {
		fs := c.FooterSize()
		if fs > int64(len(footer)) {
			continue
		}
		p, off, n, err := c.ParseFooter(footer[int64(len(footer))-fs:])
		if err != nil {
			footerErrs = append(footerErrs, err)
			continue
		}
		if n <= 0 {
			n = size - off - fs
		}
		d, payloadEnd, tocOffset, tocSize = c, p, off, n
		break
	}
	if d == nil {
		return nil, fmt.Errorf("read footer of %s: %w: not %s: %w", layer, ErrMalformed, f, errors.Join(footerErrs...))
	}
	if tocOffset < 0 || tocSize <= 0 || tocSize > MaxTOCSize || tocOffset+tocSize > size || payloadEnd > tocOffset {
		return nil, fmt.Errorf("read footer of %s: %w: toc at [%d,+%d) in a %d byte blob", layer, ErrMalformed, tocOffset, tocSize, size)
	}
	raw := make([]byte, tocSize)
	// What the tail holds of the TOC is copied; only the rest is read.
	have := 0
	if tocEnd := tocOffset + tocSize; tocEnd > tailStart {
		from := max(tocOffset, tailStart)
		have = copy(raw[from-tocOffset:], tail[from-tailStart:tocEnd-tailStart])
	}
	if missing := raw[:len(raw)-have]; len(missing) > 0 {
		if _, err := r.ReadAt(missing, tocOffset); err != nil {
			return nil, fmt.Errorf("read toc of %s: %w", layer, err)
		}
	}
	if want.Compressed != "" {
		if got := digestString(sha256Sum(raw)); got != want.Compressed {
			return nil, fmt.Errorf("read toc of %s: %w: stored bytes are %s, descriptor says %s", layer, ErrTOCDigest, got, want.Compressed)
		}
	}
	js, err := tocJSON(raw, f)
	if err != nil {
		return nil, fmt.Errorf("parse toc of %s: %w: %w", layer, ErrMalformed, err)
	}
	if jsonDigest := digestString(sha256Sum(js)); want.JSON != "" && jsonDigest != want.JSON {
		return nil, fmt.Errorf("read toc of %s: %w: toc is %s, descriptor says %s", layer, ErrTOCDigest, jsonDigest, want.JSON)
	}
	entries, err := decodeTOCJSON(js)
	if err != nil {
		return nil, fmt.Errorf("parse toc of %s: %w: %w", layer, ErrMalformed, err)
	}
	x, err := fromTOC(entries, layer, f, payloadEnd)
	if err == nil {
		err = x.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("read toc of %s: %w", layer, err)
	}
	return x, nil
}

// maxTOCJSONSize bounds a TOC's JSON once decompressed.
const maxTOCJSONSize = 1 << 30

// maxTOCExpansion bounds how many times its stored size a zstd TOC may
// expand to, and sizes the first buffer of a gzip one: TOC JSON compresses
// about ten times.
const maxTOCExpansion = 256

// tocJSON decompresses raw, the TOC as a blob of format f stores it: for
// eStargz, a gzip stream of a tar holding one file, the JSON; for
// zstd:chunked, a zstd frame of the JSON.
func tocJSON(raw []byte, f Format) ([]byte, error) {
	switch f {
	case FormatEStargz:
		d := spanDecoders.Get().(*spanDecoder)
		defer spanDecoders.Put(d)
		d.br.Reset(raw)
		d.z.Reset(&d.br, inflate.Options{})
		defer func() {
			d.br.Reset(nil)
			d.z.Reset(nil, inflate.Options{})
		}()
		tr := tar.NewReader(&d.z)
		h, err := tr.Next()
		if err != nil {
			return nil, fmt.Errorf("toc tar header: %w", err)
		}
		if h.Name != tocTarName {
			return nil, fmt.Errorf("toc tar holds %q, not %q", h.Name, tocTarName)
		}
		if h.Size > maxTOCJSONSize {
			return nil, fmt.Errorf("toc of %d bytes uncompressed: over %d", h.Size, maxTOCJSONSize)
		}
		// The header is not verified yet: room for what the bytes at
		// hand can honestly expand to, and more only as it comes.
		buf := bytes.NewBuffer(make([]byte, 0, min(h.Size, maxTOCExpansion*int64(len(raw))+4096)))
		if _, err := buf.ReadFrom(tr); err != nil {
			return nil, fmt.Errorf("toc json: %w", err)
		}
		return buf.Bytes(), nil
	case FormatZstdChunked:
		limit := uint64(min(maxTOCJSONSize, maxTOCExpansion*int64(len(raw))+4096))
		zr, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(limit))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		js, err := zr.DecodeAll(raw, nil)
		if err != nil {
			return nil, fmt.Errorf("toc zstd frame: %w", err)
		}
		return js, nil
	}
	return nil, fmt.Errorf("format %q has no toc", f)
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// fromTOC converts TOC entries, in order, into an Index. payloadEnd is where
// the last chunk's stored unit ends at the latest.
func fromTOC(entries []tocEntry, layer string, f Format, payloadEnd int64) (*Index, error) {
	// The stored unit of a chunk ends where the next unit starts; units
	// that share a start (InnerOffset > 0) share an end.
	ends := make([]int64, len(entries))
	next := payloadEnd
	for i := len(entries) - 1; i >= 0; i-- {
		te := &entries[i]
		ends[i] = next
		if (te.Type == "reg" || te.Type == "chunk") && te.Offset > 0 && te.InnerOffset == 0 {
			next = te.Offset
		}
	}
	x := &Index{Layer: layer, Format: f, Entries: make([]Entry, 0, len(entries))}
	cur := -1 // index in x.Entries of the regular file chunks attach to
	var lastModTime string
	var lastTime time.Time
	for i := range entries {
		te := &entries[i]
		if te.Type == "chunk" {
			if cur < 0 {
				return nil, fmt.Errorf("%w: chunk entry %d follows no regular file", ErrMalformed, i)
			}
			if err := addTOCChunk(&x.Entries[cur], te, ends[i]); err != nil {
				return nil, err
			}
			continue
		}
		cur = -1
		name, err := CleanName(te.Name)
		if err != nil {
			return nil, err
		}
		if name == prefetchLandmark || name == noPrefetchLandmark {
			if name == prefetchLandmark {
				x.Prefetch = len(x.Entries) // the entries before it come first
			}
			continue
		}
		e := Entry{
			Name:     name,
			Mode:     uint32(te.Mode) & 07777,
			UID:      int(te.UID),
			GID:      int(te.GID),
			Devmajor: uint32(te.DevMajor),
			Devminor: uint32(te.DevMinor),
			Xattrs:   te.Xattrs,
		}
		if te.ModTime != "" {
			// Files of one layer mostly share a few times.
			if te.ModTime != lastModTime {
				t, err := time.Parse(time.RFC3339, te.ModTime)
				if err != nil {
					return nil, fmt.Errorf("entry %q: %w: modtime: %w", te.Name, ErrMalformed, err)
				}
				lastModTime, lastTime = te.ModTime, t.UTC()
			}
			e.ModTime = lastTime
		}
		switch te.Type {
		case "reg":
			e.Type, e.Size = TypeReg, te.Size
		case "dir":
			e.Type = TypeDir
		case "symlink":
			e.Type, e.Linkname = TypeSymlink, te.LinkName
		case "hardlink":
			e.Type = TypeHardlink
			if e.Linkname, err = CleanName(te.LinkName); err != nil {
				return nil, fmt.Errorf("hardlink %q: %w", te.Name, err)
			}
		case "char":
			e.Type = TypeChar
		case "block":
			e.Type = TypeBlock
		case "fifo":
			e.Type = TypeFifo
		default:
			return nil, fmt.Errorf("entry %q: %w: unknown toc type %q", te.Name, ErrMalformed, te.Type)
		}
		x.Entries = append(x.Entries, e)
		if e.Type == TypeReg && e.Size > 0 {
			cur = len(x.Entries) - 1
			if err := addTOCChunk(&x.Entries[cur], te, ends[i]); err != nil {
				return nil, err
			}
		}
	}
	return x, nil
}

// addTOCChunk appends the chunk te describes to the regular file e.
func addTOCChunk(e *Entry, te *tocEntry, end int64) error {
	size := te.ChunkSize
	if size == 0 {
		size = e.Size - te.ChunkOffset
	}
	dgst := te.ChunkDigest
	if dgst == "" && te.ChunkOffset == 0 && size == e.Size {
		dgst = te.Digest // a one-chunk file: the file digest is the chunk digest
	}
	if dgst == "" {
		return fmt.Errorf("entry %q: %w: chunk at %d has no digest", e.Name, ErrMalformed, te.ChunkOffset)
	}
	if te.Offset <= 0 || end <= te.Offset {
		return fmt.Errorf("entry %q: %w: chunk at %d stored at [%d,%d)", e.Name, ErrMalformed, te.ChunkOffset, te.Offset, end)
	}
	e.Chunks = append(e.Chunks, Chunk{
		Offset:      te.ChunkOffset,
		Size:        size,
		BlobOffset:  te.Offset,
		BlobEnd:     end,
		InnerOffset: te.InnerOffset,
		Digest:      dgst,
	})
	return nil
}
