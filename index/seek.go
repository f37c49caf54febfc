package index

import (
	"bytes"
	"compress/flate"
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
	// Windows, if set, receives the windows blob of a gzip index (see
	// Index.Windows) as it is built, which is then not kept in memory
	// (BuiltWindows returns nil). What it received is the blob only if
	// the build succeeded and the index names one.
	Windows io.Writer
}

func (o SeekOptions) spanSize() int64 {
	if o.SpanSize <= 0 {
		return DefaultSpanSize
	}
	return min(o.SpanSize, MaxSpanSize/2)
}

// DecodeSpan verifies src, the compressed bytes of span i (the In range of
// SpanRanges), against the span's digest, and window, the output before the
// span (from DecodeWindow, or the tail of span i-1's output; nil when the
// span needs none), against the window's; then it decodes src into dst,
// which must be exactly as long as the span's Out range. Nothing is
// written to dst before both matched; on error dst must not be used.
func (x *Index) DecodeSpan(i int, window, src, dst []byte) error {
	if i < 0 || i >= len(x.Spans) {
		return fmt.Errorf("span %d of %s: %w: no such span", i, x.Layer, ErrMalformed)
	}
	out, in := x.SpanRanges(i)
	if int64(len(src)) != in.End-in.Start || int64(len(dst)) != out.End-out.Start {
		return fmt.Errorf("span %d of %s: %d compressed bytes into %d, want %d into %d",
			i, x.Layer, len(src), len(dst), in.End-in.Start, out.End-out.Start)
	}
	sp := &x.Spans[i]
	if err := x.checkWindow(i, window); err != nil {
		return err
	}
	sum := sha256.Sum256(src)
	if want := sp.Digest[len("sha256:"):]; hex.EncodeToString(sum[:]) != want {
		return fmt.Errorf("span %d of %s: %w", i, x.Layer, ErrSpanDigest)
	}
	var err error
	switch x.Format {
	case FormatGzip:
		err = decodeGzipSpan(sp, window, src, dst)
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

// checkWindow verifies window, the output before span i, against the
// span's window digest.
func (x *Index) checkWindow(i int, window []byte) error {
	sp := &x.Spans[i]
	if int64(len(window)) != sp.WinSize {
		return fmt.Errorf("span %d of %s: %w: a window of %d bytes, want %d", i, x.Layer, ErrSpanDigest, len(window), sp.WinSize)
	}
	if sp.WinSize == 0 {
		return nil
	}
	sum := sha256.Sum256(window)
	if hex.EncodeToString(sum[:]) != sp.WinDigest[len("sha256:"):] {
		return fmt.Errorf("span %d of %s: window: %w", i, x.Layer, ErrSpanDigest)
	}
	return nil
}

// DecodeWindow decompresses src, the bytes of the windows blob at
// WindowRange(i), and verifies them against span i's window digest.
func (x *Index) DecodeWindow(i int, src []byte) ([]byte, error) {
	if i < 0 || i >= len(x.Spans) {
		return nil, fmt.Errorf("window %d of %s: %w: no such span", i, x.Layer, ErrMalformed)
	}
	sp := &x.Spans[i]
	if int64(len(src)) != sp.WinLen {
		return nil, fmt.Errorf("window %d of %s: %w: %d bytes, want %d", i, x.Layer, ErrSpanDigest, len(src), sp.WinLen)
	}
	if sp.WinSize == 0 {
		return nil, nil
	}
	window := make([]byte, sp.WinSize)
	zr := flate.NewReader(bytes.NewReader(src))
	defer zr.Close()
	n, err := io.ReadFull(zr, window)
	if err == nil {
		// The stream must end exactly here.
		var one [1]byte
		if k, _ := zr.Read(one[:]); k > 0 {
			err = errors.New("longer than its size")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("window %d of %s: %w: %d of %d bytes: %w", i, x.Layer, ErrSpanDigest, n, sp.WinSize, err)
	}
	if err := x.checkWindow(i, window); err != nil {
		return nil, err
	}
	return window, nil
}

// ErrSpanDigest reports compressed span bytes that do not match the digest
// the index gives for them.
var ErrSpanDigest = errors.New("span digest mismatch")

// ErrNotSeekable reports a blob whose restart points lie too far apart to
// be read through spans; it has to be read whole.
var ErrNotSeekable = errors.New("not seekable")

// SpanKey names what span i decodes to: a sha256 over everything that
// determines those bytes (the compressed bytes' digest, where decoding
// starts, the digest of the window it starts with, and how much it
// produces). Two spans with one key decode to the same bytes, whichever
// index they came from, so a cache keyed by it cannot be poisoned by a
// forged index.
func (x *Index) SpanKey(i int) string {
	sp := &x.Spans[i]
	out, _ := x.SpanRanges(i)
	h := sha256.New()
	var nums [24]byte
	binary.BigEndian.PutUint64(nums[0:], uint64(sp.InBits))
	binary.BigEndian.PutUint64(nums[8:], uint64(out.End-out.Start))
	binary.BigEndian.PutUint64(nums[16:], uint64(sp.WinSize))
	h.Write([]byte(x.Format))
	h.Write([]byte{0})
	h.Write([]byte(sp.Digest))
	h.Write(nums[:])
	h.Write([]byte(sp.WinDigest))
	return digestString(h.Sum(nil))
}
