package index

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// zstd frame magics (RFC 8878 section 3.1).
const (
	zstdFrameMagic        = 0xFD2FB528
	zstdSkippableMask     = 0xFFFFFFF0
	zstdSkippableMagic    = 0x184D2A50
	zstdMaxBlockSize      = 128 << 10
	zstdBlockHeaderLength = 3
)

// BuildZstd streams the zstd blob r once and returns its index. A blob of
// several frames gets FormatZstd with a Span at the first frame boundary at
// or after every SpanSize bytes of output. A blob whose frames are too large
// to read one span at a time, or that has a single span (a single frame,
// typically), fails with
// ErrNotSeekable once r is read to its end, so a caller can keep the tar
// that o.Tar received and index that. r is always read to its end when the
// blob is well formed, so a caller can hash it.
func BuildZstd(r io.Reader, layer string, o SeekOptions) (*Index, error) {
	dec, err := newZstdDecoder(MaxSpanSize)
	if err != nil {
		return nil, fmt.Errorf("index zstd layer %s: %w", layer, err)
	}
	defer dec.Close()
	fr := &frameReader{br: bufio.NewReaderSize(r, 1<<20), h: sha256.New()}
	pr, pw := io.Pipe()
	x := &Index{Layer: layer, Format: FormatZstd}
	scanned := make(chan error, 1)
	go func() {
		n, err := scanTar(pr, x, 0, false)
		if err == nil {
			// Drain what follows the archive, so TarSize is all output.
			m, derr := io.Copy(io.Discard, pr)
			n, err = n+m, derr
		}
		x.TarSize = n
		pr.CloseWithError(err)
		scanned <- err
	}()
	var out io.Writer = pw
	if o.Tar != nil {
		out = io.MultiWriter(pw, o.Tar)
	}
	spans, produced, err := decodeFrames(fr, dec, out, o.spanSize())
	pw.CloseWithError(err)
	if serr := <-scanned; serr != nil && !errors.Is(serr, err) {
		// The tar scan failed first: decoding then failed to write to it.
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("index zstd layer %s: %w", layer, err)
	}
	if produced != x.TarSize {
		return nil, fmt.Errorf("index zstd layer %s: %w: decoded %d bytes, tar scan read %d", layer, ErrMalformed, produced, x.TarSize)
	}
	x.Spans, x.BlobSize = spans, fr.total
	if len(spans) < 2 || spansTooLarge(x) {
		// One span would mean fetching the whole blob for any read.
		return nil, fmt.Errorf("index zstd layer %s: %w: its frames are too few or too large to read apart", layer, ErrNotSeekable)
	}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	return x, nil
}

// spansTooLarge reports whether some span exceeds what a reader may hold.
func spansTooLarge(x *Index) bool {
	for i := range x.Spans {
		out, in := x.SpanRanges(i)
		if out.End-out.Start > MaxSpanSize || in.End-in.Start > MaxChunkSize {
			return true
		}
	}
	return false
}

// decodeFrames decodes every frame fr yields into out and groups frames
// into spans of about spanSize output bytes.
func decodeFrames(fr *frameReader, dec *zstd.Decoder, out io.Writer, spanSize int64) ([]Span, int64, error) {
	var (
		spans    []Span
		produced int64
		cur      *Span // the open span; its digest is fr.h's state
	)
	for {
		start := fr.total
		ok, err := fr.next()
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			break
		}
		// Data frames start a span once the open one has spanSize bytes;
		// skippable frames belong to the span they fall in.
		if cur == nil || !fr.skippable && produced-cur.Out >= spanSize {
			if cur != nil {
				cur.Digest = digestString(fr.h.Sum(nil))
				fr.h.Reset()
			}
			spans = append(spans, Span{Out: produced, InBits: start * 8})
			cur = &spans[len(spans)-1]
		}
		if fr.skippable {
			if _, err := io.Copy(io.Discard, fr); err != nil {
				return nil, 0, err
			}
			continue
		}
		if err := dec.Reset(fr); err != nil {
			return nil, 0, fmt.Errorf("frame at byte %d: %w: %w", start, ErrMalformed, err)
		}
		n, err := io.Copy(out, dec)
		produced += n
		if err != nil {
			return nil, 0, fmt.Errorf("frame at byte %d: %w: %w", start, ErrMalformed, err)
		}
		if err := fr.finish(); err != nil {
			return nil, 0, fmt.Errorf("frame at byte %d: %w", start, err)
		}
	}
	if cur == nil {
		return nil, 0, fmt.Errorf("%w: no zstd frame", ErrMalformed)
	}
	cur.Digest = digestString(fr.h.Sum(nil))
	if cur.Out == produced {
		// The last span produces nothing (empty frames at the end): it
		// cannot be addressed, so the blob is read whole.
		return nil, produced, nil
	}
	return spans, produced, nil
}

// frameReader splits a zstd stream into frames. After next reports a
// frame, Read yields exactly that frame's bytes (header, blocks, checksum)
// and then io.EOF, so a decoder reset onto it decodes one frame. It hashes
// every byte it yields into h.
type frameReader struct {
	br        *bufio.Reader
	h         hash.Hash
	total     int64 // bytes yielded so far
	skippable bool  // the current frame is a skippable frame

	// Parse state of the current frame.
	pending   []byte // header bytes read ahead, not yet yielded
	remaining int64  // bytes left in the current block or skippable body
	last      bool   // the current block is the frame's last
	checksum  bool   // the frame ends with a 4-byte checksum
	finished  bool   // the whole frame has been yielded
	hdr       [18]byte
}

// next starts the next frame; ok is false at the end of the stream.
func (f *frameReader) next() (ok bool, err error) {
	if !f.finished && f.total > 0 || f.remaining > 0 || len(f.pending) > 0 {
		return false, fmt.Errorf("%w: next frame before the end of the current one", ErrMalformed)
	}
	var magic [4]byte
	n, err := io.ReadFull(f.br, magic[:])
	if n == 0 && errors.Is(err, io.EOF) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("frame header at byte %d: %w: %w", f.total, ErrMalformed, io.ErrUnexpectedEOF)
	}
	m := binary.LittleEndian.Uint32(magic[:])
	f.pending = append(f.pending[:0], magic[:]...)
	f.finished, f.last, f.checksum, f.skippable = false, false, false, false
	switch {
	case m&zstdSkippableMask == zstdSkippableMagic:
		var size [4]byte
		if _, err := io.ReadFull(f.br, size[:]); err != nil {
			return false, fmt.Errorf("skippable frame at byte %d: %w: %w", f.total, ErrMalformed, io.ErrUnexpectedEOF)
		}
		f.pending = append(f.pending, size[:]...)
		f.skippable = true
		f.remaining = int64(binary.LittleEndian.Uint32(size[:]))
		f.last = true
		return true, nil
	case m != zstdFrameMagic:
		return false, fmt.Errorf("byte %d: %w: not a zstd frame (magic %#x)", f.total, ErrMalformed, m)
	}
	fhd, err := f.br.ReadByte()
	if err != nil {
		return false, fmt.Errorf("frame header at byte %d: %w: %w", f.total, ErrMalformed, io.ErrUnexpectedEOF)
	}
	if fhd&0x08 != 0 {
		return false, fmt.Errorf("frame at byte %d: %w: reserved header bit set", f.total, ErrMalformed)
	}
	single := fhd&0x20 != 0
	f.checksum = fhd&0x04 != 0
	size := [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	if !single {
		size++ // window descriptor
	}
	size += [4]int{0, 2, 4, 8}[fhd>>6] // frame content size
	if fhd>>6 == 0 && single {
		size++
	}
	f.pending = append(f.pending, fhd)
	if _, err := io.ReadFull(f.br, f.hdr[:size]); err != nil {
		return false, fmt.Errorf("frame header at byte %d: %w: %w", f.total, ErrMalformed, io.ErrUnexpectedEOF)
	}
	f.pending = append(f.pending, f.hdr[:size]...)
	return true, f.blockHeader()
}

// blockHeader reads the next block header into pending.
func (f *frameReader) blockHeader() error {
	var b [zstdBlockHeaderLength]byte
	if _, err := io.ReadFull(f.br, b[:]); err != nil {
		return fmt.Errorf("block header near byte %d: %w: %w", f.total, ErrMalformed, io.ErrUnexpectedEOF)
	}
	v := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
	f.last = v&1 != 0
	size := int64(v >> 3)
	switch (v >> 1) & 3 {
	case 0, 2: // raw, compressed
	case 1: // RLE: one byte stands for size bytes
		size = 1
	default:
		return fmt.Errorf("block near byte %d: %w: reserved block type", f.total, ErrMalformed)
	}
	if size > zstdMaxBlockSize {
		return fmt.Errorf("block near byte %d: %w: %d bytes", f.total, ErrMalformed, size)
	}
	f.pending = append(f.pending, b[:]...)
	f.remaining = size
	return nil
}

// finish checks that a decoder consumed the current frame to its end.
func (f *frameReader) finish() error {
	var b [1]byte
	if n, err := f.Read(b[:]); n > 0 || !errors.Is(err, io.EOF) {
		if err == nil {
			err = errors.New("the decoder stopped inside the frame")
		}
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}

func (f *frameReader) Read(p []byte) (int, error) {
	for {
		if len(f.pending) > 0 {
			n := copy(p, f.pending)
			f.pending = f.pending[n:]
			f.yield(p[:n])
			return n, nil
		}
		if f.remaining > 0 {
			n, err := f.br.Read(p[:min(int64(len(p)), f.remaining)])
			f.remaining -= int64(n)
			f.yield(p[:n])
			if err != nil && f.remaining > 0 {
				if errors.Is(err, io.EOF) {
					return n, fmt.Errorf("zstd frame near byte %d: %w: %w", f.total, ErrMalformed, io.ErrUnexpectedEOF)
				}
				return n, err // the blob's reader failed: not the blob's fault
			}
			return n, nil
		}
		if f.finished {
			return 0, io.EOF
		}
		switch {
		case !f.last:
			if err := f.blockHeader(); err != nil {
				return 0, err
			}
		case f.checksum:
			f.checksum = false
			f.remaining = 4
		default:
			f.finished = true
		}
	}
}

func (f *frameReader) yield(p []byte) {
	f.h.Write(p)
	f.total += int64(len(p))
}

// zstdMaxWindow is the largest frame window lazyroot decodes: what
// "zstd --long=28" writes. Builder and span reader use the same limit, so
// a blob that indexes also reads.
const zstdMaxWindow = 256 << 20

// newZstdDecoder returns a synchronous decoder that accepts windows up to
// zstdMaxWindow and, for DecodeAll, never writes past the capacity of the
// buffer it is given.
func newZstdDecoder(maxOut uint64) (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
		zstd.WithDecoderMaxMemory(max(maxOut, zstdMaxWindow)),
		zstd.WithDecodeAllCapLimit(true))
}

// zstdSpanDecoders holds idle span decoders: a decoder's tables are costly
// to build for every span read. Only scratch space is pooled; no decoder
// carries state from one span to the next (DecodeAll starts afresh).
var zstdSpanDecoders = sync.Pool{New: func() any {
	dec, err := newZstdDecoder(MaxSpanSize)
	if err != nil {
		return err
	}
	return dec
}}

// decodeZstdSpan decodes the whole frames in src into dst, which they must
// fill exactly.
func decodeZstdSpan(src, dst []byte) error {
	v := zstdSpanDecoders.Get()
	dec, ok := v.(*zstd.Decoder)
	if !ok {
		return fmt.Errorf("zstd decoder: %v", v)
	}
	defer zstdSpanDecoders.Put(dec)
	out, err := dec.DecodeAll(src, dst[:0:len(dst)])
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if len(out) != len(dst) || len(out) > 0 && &out[0] != &dst[0] {
		return fmt.Errorf("%w: span decodes to %d bytes, want %d", ErrMalformed, len(out), len(dst))
	}
	return nil
}
