package index

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// DefaultTarChunkSize is the chunk size BuildTar uses when given 0.
const DefaultTarChunkSize = 1 << 20

// xattrPrefix marks a PAX record that carries an extended attribute.
const xattrPrefix = "SCHILY.xattr."

// BuildTar scans the uncompressed tar stream r and returns its Index, with
// FormatTar chunks of at most chunkSize bytes whose BlobOffsets are offsets
// in r. layer names the blob r is read from. BuildTar reads r to its end.
func BuildTar(r io.Reader, layer string, chunkSize int64) (*Index, error) {
	x := &Index{Layer: layer, Format: FormatTar}
	if _, err := scanTar(r, x, chunkSize, true); err != nil {
		return nil, err
	}
	return x, nil
}

// scanTar reads the uncompressed tar stream r to its end, appending its
// entries to x.Entries with chunks located by offsets in r, and returns the
// number of bytes read. With digests false, chunks carry no digest (a
// seekable format verifies whole spans instead) and chunkSize is raised to
// MaxChunkSize, so most files have one chunk.
func scanTar(r io.Reader, x *Index, chunkSize int64, digests bool) (int64, error) {
	if chunkSize <= 0 {
		chunkSize = DefaultTarChunkSize
	}
	if !digests {
		chunkSize = MaxChunkSize
	}
	chunkSize = min(chunkSize, MaxChunkSize)
	cr := &countingReader{r: r}
	tr := tar.NewReader(cr)
	buf := make([]byte, 64<<10)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return cr.n, fmt.Errorf("read tar at byte %d: %w: %w", cr.n, ErrMalformed, err)
		}
		e, ok, err := entryFromHeader(hdr)
		if err != nil {
			return cr.n, err
		}
		if !ok {
			continue
		}
		if e.Type == TypeReg && e.Size > 0 {
			if e.Chunks, err = locateChunks(tr, cr, e.Size, chunkSize, digests, buf); err != nil {
				return cr.n, fmt.Errorf("read tar entry %q: %w", hdr.Name, err)
			}
		}
		x.Entries = append(x.Entries, e)
	}
	// Drain trailing padding so callers that hash r see every byte.
	if _, err := io.CopyBuffer(io.Discard, cr, buf); err != nil {
		return cr.n, fmt.Errorf("read tar trailer: %w", err)
	}
	return cr.n, nil
}

// entryFromHeader converts a tar header; ok is false for headers that carry
// no file (global PAX headers and the like).
func entryFromHeader(hdr *tar.Header) (e Entry, ok bool, err error) {
	name, err := CleanName(hdr.Name)
	if err != nil {
		return Entry{}, false, err
	}
	e = Entry{
		Name:    name,
		Mode:    uint32(hdr.Mode) & 07777,
		UID:     hdr.Uid,
		GID:     hdr.Gid,
		ModTime: hdr.ModTime.UTC(),
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont:
		e.Type, e.Size = TypeReg, hdr.Size
	case tar.TypeDir:
		e.Type = TypeDir
	case tar.TypeSymlink:
		e.Type, e.Linkname = TypeSymlink, hdr.Linkname
	case tar.TypeLink:
		e.Type = TypeHardlink
		if e.Linkname, err = CleanName(hdr.Linkname); err != nil {
			return Entry{}, false, fmt.Errorf("hardlink %q: %w", hdr.Name, err)
		}
	case tar.TypeChar, tar.TypeBlock:
		e.Type = TypeChar
		if hdr.Typeflag == tar.TypeBlock {
			e.Type = TypeBlock
		}
		e.Devmajor, e.Devminor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	case tar.TypeFifo:
		e.Type = TypeFifo
	case tar.TypeGNUSparse:
		return Entry{}, false, fmt.Errorf("entry %q: %w: sparse files are not supported", hdr.Name, ErrMalformed)
	default:
		return Entry{}, false, nil
	}
	for k, v := range hdr.PAXRecords {
		if attr, found := strings.CutPrefix(k, xattrPrefix); found {
			if e.Xattrs == nil {
				e.Xattrs = make(map[string][]byte)
			}
			e.Xattrs[attr] = []byte(v)
		}
	}
	return e, true, nil
}

// locateChunks reads size bytes of file content from tr, cutting it into
// chunks located by the byte count of cr and, if digests is set, hashed.
func locateChunks(tr io.Reader, cr *countingReader, size, chunkSize int64, digests bool, buf []byte) ([]Chunk, error) {
	start := cr.n      // tar.Reader has consumed the header and nothing more
	var chunks []Chunk // not preallocated: size is untrusted until read
	h := sha256.New()
	for off := int64(0); off < size; off += chunkSize {
		n := min(chunkSize, size-off)
		var sink io.Writer = io.Discard
		if digests {
			h.Reset()
			sink = h
		}
		if _, err := io.CopyBuffer(sink, io.LimitReader(tr, n), buf); err != nil {
			return nil, err
		}
		if cr.n != start+off+n {
			// The offsets recorded here assume tar.Reader reads content
			// straight from cr; refuse to index if that ever stops holding.
			return nil, fmt.Errorf("content of %d bytes read as %d", n, cr.n-start-off)
		}
		c := Chunk{Offset: off, Size: n, BlobOffset: start + off, BlobEnd: start + off + n}
		if digests {
			c.Digest = digestString(h.Sum(nil))
		}
		chunks = append(chunks, c)
	}
	return chunks, nil
}

func digestString(sum []byte) string { return "sha256:" + hex.EncodeToString(sum) }

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
