package index

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// SeekOptions configure the builders of seekable indexes (BuildGzip,
// BuildZstd).
type SeekOptions struct {
	// SpanSize is the uncompressed distance the builder aims for between
	// seek points; 0 means DefaultSpanSize.
	SpanSize int64
	// Tar, if set, receives the uncompressed tar stream as it is decoded,
	// for a caller that keeps it when the blob turns out not to be seekable.
	Tar io.Writer
}

func (o SeekOptions) spanSize() int64 {
	if o.SpanSize <= 0 {
		return DefaultSpanSize
	}
	return min(o.SpanSize, MaxSpanSize/2)
}

// DecodeSpan verifies src, the compressed bytes of span i (the In range of
// SpanRanges), against the span's digest, then decodes it into dst, which
// must be exactly as long as the span's Out range. Nothing is written to dst
// before the digest matched; on error dst must not be used.
func (x *Index) DecodeSpan(i int, src, dst []byte) error {
	if i < 0 || i >= len(x.Spans) {
		return fmt.Errorf("span %d of %s: %w: no such span", i, x.Layer, ErrMalformed)
	}
	out, in := x.SpanRanges(i)
	if int64(len(src)) != in.End-in.Start || int64(len(dst)) != out.End-out.Start {
		return fmt.Errorf("span %d of %s: %d compressed bytes into %d, want %d into %d",
			i, x.Layer, len(src), len(dst), in.End-in.Start, out.End-out.Start)
	}
	sp := &x.Spans[i]
	sum := sha256.Sum256(src)
	if want := sp.Digest[len("sha256:"):]; hex.EncodeToString(sum[:]) != want {
		return fmt.Errorf("span %d of %s: %w", i, x.Layer, ErrSpanDigest)
	}
	var err error
	switch x.Format {
	case FormatGzip:
		err = decodeGzipSpan(sp, src, dst)
	case FormatZstd:
		err = decodeZstdSpan(src, dst)
	default:
		err = fmt.Errorf("%w: %s has no spans", ErrMalformed, x.Format)
	}
	if err != nil {
		return fmt.Errorf("span %d of %s: %w", i, x.Layer, err)
	}
	return nil
}

// ErrSpanDigest reports compressed span bytes that do not match the digest
// the index gives for them.
var ErrSpanDigest = errors.New("span digest mismatch")

// spanHasher hashes the compressed bytes of each span while a builder reads
// the blob. It keeps the bytes of the current span until the next seek
// point is known, because spans share the byte that holds a boundary bit.
type spanHasher struct {
	r     io.Reader
	off   int64  // blob offset of buf[0]
	buf   []byte // blob bytes from off up to what has been read
	total int64  // bytes read from r
}

func (h *spanHasher) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.buf = append(h.buf, p[:n]...)
	h.total += int64(n)
	if int64(len(h.buf)) > MaxChunkSize+(64<<10) {
		return n, fmt.Errorf("%w: more than %d compressed bytes without a seek point", ErrNotSeekable, MaxChunkSize)
	}
	return n, err
}

// cut returns the digest of blob bytes [start, end) and forgets the bytes
// before keep. Every byte of [start, end) must have been read and kept.
func (h *spanHasher) cut(start, end, keep int64) (string, error) {
	if start < h.off || end > h.off+int64(len(h.buf)) || start > end {
		return "", fmt.Errorf("%w: span bytes [%d,%d) not at hand", ErrMalformed, start, end)
	}
	sum := sha256.Sum256(h.buf[start-h.off : end-h.off])
	if drop := keep - h.off; drop > 0 {
		h.buf = append(h.buf[:0], h.buf[drop:]...)
		h.off = keep
	}
	return digestString(sum[:]), nil
}

// ErrNotSeekable reports a blob whose restart points lie too far apart to
// be read through spans; it has to be read whole.
var ErrNotSeekable = errors.New("not seekable")
