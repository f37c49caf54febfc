package index

import (
	"crypto/sha256"
	"encoding/binary"
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

// ErrNotSeekable reports a blob whose restart points lie too far apart to
// be read through spans; it has to be read whole.
var ErrNotSeekable = errors.New("not seekable")

// SpanKey names what span i decodes to: a sha256 over everything that
// determines those bytes (the compressed bytes' digest, where decoding
// starts, the window it starts with, and how much it produces). Two spans
// with one key decode to the same bytes, whichever index they came from, so
// a cache keyed by it cannot be poisoned by a forged index.
func (x *Index) SpanKey(i int) string {
	sp := &x.Spans[i]
	out, _ := x.SpanRanges(i)
	h := sha256.New()
	var nums [24]byte
	binary.BigEndian.PutUint64(nums[0:], uint64(sp.InBits))
	binary.BigEndian.PutUint64(nums[8:], uint64(out.End-out.Start))
	binary.BigEndian.PutUint64(nums[16:], uint64(len(sp.Window)))
	h.Write([]byte(x.Format))
	h.Write([]byte{0})
	h.Write([]byte(sp.Digest))
	h.Write(nums[:])
	h.Write(sp.Window)
	return digestString(h.Sum(nil))
}
