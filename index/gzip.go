package index

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/lazyroot/lazyroot/index/internal/inflate"
)

// BuildGzip streams the gzip blob r once and returns its index: FormatGzip
// entries located by offsets in the uncompressed tar, and a Span at the
// first DEFLATE block header at or after every o.SpanSize bytes of output,
// with the digest of the compressed bytes that produce the span and of the
// 32 KiB window a decoder needs to restart there. The windows themselves
// go to the windows blob (BuiltWindows). If o.Tar is set it receives
// the uncompressed stream.
//
// A blob whose restart points lie more than MaxSpanSize of output apart (or
// that decompresses to nothing) is not seekable. It is read to its end all
// the same; then, if o.Tar is set, BuildGzip returns a FormatTar index with
// chunk digests, valid for the uncompressed tar o.Tar received, and else it
// fails with ErrNotSeekable. (Chunk digests cost a hash of the whole tar, so
// they are computed only when a FormatTar index can be used.)
//
// r is read to its end whenever the blob is well formed, so a caller can
// hash it; corrupt or truncated blobs fail with ErrMalformed. Decoding runs
// on its own goroutine, so the tar scan overlaps it.
func BuildGzip(r io.Reader, layer string, o SeekOptions) (*Index, error) {
	sp := &gzipSpans{r: r, seekable: true, windows: newWindowPacker(o.Windows)}
	defer sp.windows.stop()
	z := inflate.NewReader(sp, inflate.Options{Every: o.spanSize(), OnPoint: sp.point})
	p := newOutPipe(o.Tar)
	go p.produce(z, sp)
	x := &Index{Layer: layer, Format: FormatGzip}
	// Chunk digests are only needed if the blob turns out not to be
	// seekable, and by then the bytes are gone: hash them if the caller
	// keeps the tar.
	digests := o.Tar != nil
	n, err := scanTar(p, x, 0, digests)
	perr := p.stop()
	switch {
	case perr != nil && (errors.Is(perr, inflate.ErrCorrupt) || perr == io.ErrUnexpectedEOF):
		return nil, fmt.Errorf("index gzip layer %s: %w: %w", layer, ErrMalformed, perr)
	case perr != nil:
		return nil, fmt.Errorf("index gzip layer %s: %w", layer, perr)
	case p.werr != nil:
		return nil, fmt.Errorf("index gzip layer %s: %w", layer, p.werr)
	case err != nil:
		return nil, fmt.Errorf("index gzip layer %s: %w", layer, err)
	case n != z.OutputOffset():
		return nil, fmt.Errorf("index gzip layer %s: %w: decoded %d bytes, tar scan read %d", layer, ErrMalformed, z.OutputOffset(), n)
	}
	if err := sp.finish(n); err != nil {
		return nil, fmt.Errorf("index gzip layer %s: %w", layer, err)
	}
	switch {
	case sp.seekable:
		x.Spans, x.BlobSize, x.TarSize = sp.spans, sp.total, n
		if err := sp.windows.finish(x); err != nil {
			return nil, fmt.Errorf("index gzip layer %s: %w", layer, err)
		}
		if digests {
			for i := range x.Entries {
				x.Entries[i].Chunks = spanChunks(x.Entries[i].Chunks)
			}
		}
	case digests:
		x.Format = FormatTar
	default:
		return nil, fmt.Errorf("index gzip layer %s: %w: it decodes to nothing, or its restart points lie more than %d bytes apart", layer, ErrNotSeekable, MaxSpanSize)
	}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	return x, nil
}

// spanChunks turns contiguous tar chunks with digests into the chunks a
// seekable index keeps: no digests, up to MaxChunkSize each.
func spanChunks(cs []Chunk) []Chunk {
	if len(cs) == 0 {
		return cs
	}
	start, size := cs[0].BlobOffset, cs[len(cs)-1].Offset+cs[len(cs)-1].Size
	out := cs[:0]
	for off := int64(0); off < size; off += MaxChunkSize {
		n := min(MaxChunkSize, size-off)
		out = append(out, Chunk{Offset: off, Size: n, BlobOffset: start + off, BlobEnd: start + off + n})
	}
	return out
}

// gzipSpans reads the compressed blob for the decoder, keeps the bytes of
// the current span and cuts a Span at each point the decoder reports. All
// its methods run on the decoding goroutine, finish after it stopped.
type gzipSpans struct {
	r     io.Reader
	total int64 // bytes read from r

	// While seekable, buf holds the blob bytes from off up to total: the
	// current span and what the decoder has read ahead.
	seekable bool
	off      int64
	buf      []byte
	spans    []Span
	windows  *windowPacker
}

func (g *gzipSpans) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	g.total += int64(n)
	if g.seekable && n > 0 {
		g.buf = append(g.buf, p[:n]...)
		if len(g.buf) > MaxChunkSize+(1<<20) {
			g.notSeekable()
		}
	}
	return n, err
}

// point records a restart point, closing the span before it.
func (g *gzipSpans) point(p inflate.Point) error {
	if !g.seekable {
		return nil
	}
	if len(g.spans) > 0 {
		prev := &g.spans[len(g.spans)-1]
		if p.Out-prev.Out > MaxSpanSize {
			g.notSeekable()
			return nil
		}
		start, end := prev.InBits/8, (p.InBits+7)/8
		if end-start > MaxChunkSize || start < g.off || end > g.total {
			g.notSeekable()
			return nil
		}
		sum := sha256.Sum256(g.buf[start-g.off : end-g.off])
		prev.Digest = digestString(sum[:])
		// The next span starts in the byte that holds its first bit.
		keep := p.InBits / 8
		g.buf = append(g.buf[:0], g.buf[keep-g.off:]...)
		g.off = keep
	}
	g.spans = append(g.spans, Span{Out: p.Out, InBits: p.InBits})
	if len(p.Window) > 0 {
		g.windows.add(len(g.spans)-1, p.Window)
	}
	return nil
}

// progress notes that out bytes were decoded: a point further than
// MaxSpanSize from the last one makes the blob not seekable.
func (g *gzipSpans) progress(out int64) {
	if g.seekable && len(g.spans) > 0 && out-g.spans[len(g.spans)-1].Out > MaxSpanSize {
		g.notSeekable()
	}
}

func (g *gzipSpans) notSeekable() {
	g.seekable = false
	g.buf, g.spans = nil, nil
	g.windows.stop()
}

// windowPacker compresses the windows of spans on a goroutine of its own,
// in order, into the windows blob.
type windowPacker struct {
	in   chan packedWindow
	done chan struct{} // closed when the goroutine returned
	once sync.Once
	// out receives the blob: the caller's writer, or mem.
	out io.Writer
	// Written by the goroutine, read after done.
	mem   *bytes.Buffer
	size  int64
	sum   hash.Hash
	spans []packedWindow
	err   error
}

// packedWindow is the window of span i: its bytes on the way in, where it
// went on the way out.
type packedWindow struct {
	i            int
	window       []byte
	off, n, size int64
	digest       string
}

// newWindowPacker starts a packer writing the blob to out, or to memory
// if out is nil.
func newWindowPacker(out io.Writer) *windowPacker {
	w := &windowPacker{in: make(chan packedWindow, 16), done: make(chan struct{}), sum: sha256.New()}
	if out == nil {
		w.mem = new(bytes.Buffer)
		out = w.mem
	}
	w.out = out
	go w.run()
	return w
}

// Write counts, hashes and passes on the blob's bytes.
func (w *windowPacker) Write(p []byte) (int, error) {
	n, err := w.out.Write(p)
	w.sum.Write(p[:n])
	w.size += int64(n)
	return n, err
}

func (w *windowPacker) run() {
	defer close(w.done)
	fw, err := flate.NewWriter(w, flate.BestSpeed)
	if err != nil {
		w.err = err
	}
	for p := range w.in {
		if w.err != nil {
			continue
		}
		start := w.size
		fw.Reset(w)
		if _, err := fw.Write(p.window); err != nil {
			w.err = err
			continue
		}
		if err := fw.Close(); err != nil {
			w.err = err
			continue
		}
		sum := sha256.Sum256(p.window)
		w.spans = append(w.spans, packedWindow{i: p.i, off: start, n: w.size - start, size: int64(len(p.window)), digest: digestString(sum[:])})
	}
}

// add queues the window of span i; window is not used by anyone else.
func (w *windowPacker) add(i int, window []byte) { w.in <- packedWindow{i: i, window: window} }

// stop ends the goroutine and waits for it; it may be called again.
func (w *windowPacker) stop() {
	w.once.Do(func() { close(w.in) })
	<-w.done
}

// finish waits for every window and places them in x.
func (w *windowPacker) finish(x *Index) error {
	w.stop()
	if w.err != nil {
		return fmt.Errorf("pack windows: %w", w.err)
	}
	for _, p := range w.spans {
		sp := &x.Spans[p.i]
		sp.WinOff, sp.WinLen, sp.WinSize, sp.WinDigest = p.off, p.n, p.size, p.digest
	}
	if w.size > 0 {
		x.Windows = &BlobRef{Digest: digestString(w.sum.Sum(nil)), Size: w.size}
		if w.mem != nil {
			x.windows = w.mem.Bytes()
		}
	}
	return nil
}

// finish closes the last span once the blob and its tarSize bytes of
// output were read whole.
func (g *gzipSpans) finish(tarSize int64) error {
	if len(g.spans) == 0 || tarSize == 0 {
		g.notSeekable()
	}
	if !g.seekable {
		return nil
	}
	last := &g.spans[len(g.spans)-1]
	if tarSize-last.Out > MaxSpanSize || g.total-last.InBits/8 > MaxChunkSize {
		g.notSeekable()
		return nil
	}
	if start := last.InBits / 8; start < g.off || g.off+int64(len(g.buf)) != g.total {
		return fmt.Errorf("%w: span bytes [%d,%d) not at hand", ErrMalformed, start, g.total)
	}
	sum := sha256.Sum256(g.buf[last.InBits/8-g.off:])
	last.Digest = digestString(sum[:])
	g.buf = nil
	return nil
}

// outPipe carries decoded output from the decoding goroutine to the tar
// scan in chunks, so that both run at once.
type outPipe struct {
	full   chan outChunk // decoded chunks, in order; closed when produce returns
	free   chan []byte   // buffers to decode into
	done   chan struct{} // closed by stop
	exited chan struct{} // closed when produce returned
	tar    io.Writer

	cur  outChunk // chunk being read
	off  int
	err  error // sticky error of Read
	werr error // error writing to tar
}

type outChunk struct {
	b   []byte
	err error // after b: io.EOF at the end, or the decoder's error
}

const (
	outPipeBuffers = 4
	outPipeChunk   = 1 << 20
)

func newOutPipe(tar io.Writer) *outPipe {
	p := &outPipe{
		full:   make(chan outChunk, outPipeBuffers),
		free:   make(chan []byte, outPipeBuffers),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		tar:    tar,
	}
	for range outPipeBuffers {
		p.free <- make([]byte, outPipeChunk)
	}
	return p
}

// produce decodes z into chunks until the stream ends, fails or stop is
// called.
func (p *outPipe) produce(z *inflate.Reader, sp *gzipSpans) {
	defer close(p.exited)
	defer close(p.full)
	for {
		var buf []byte
		select {
		case buf = <-p.free:
		case <-p.done:
			return
		}
		n := 0
		var err error
		for n < len(buf) && err == nil {
			var m int
			m, err = z.Read(buf[n:])
			n += m
		}
		sp.progress(z.OutputOffset())
		select {
		case p.full <- outChunk{buf[:n], err}:
		case <-p.done:
			return
		}
		if err != nil {
			return
		}
	}
}

// Read hands the decoded stream to the tar scan, teeing it to tar.
func (p *outPipe) Read(b []byte) (int, error) {
	for p.off == len(p.cur.b) {
		if p.err != nil {
			return 0, p.err
		}
		if p.cur.err != nil {
			p.err = p.cur.err
			if p.err != io.EOF {
				p.err = errDecode
			}
			continue
		}
		if p.cur.b != nil {
			p.free <- p.cur.b[:cap(p.cur.b)]
		}
		c, ok := <-p.full
		if !ok {
			p.err = errDecode
			continue
		}
		if p.tar != nil && len(c.b) > 0 {
			if _, err := p.tar.Write(c.b); err != nil {
				p.werr = fmt.Errorf("write tar: %w", err)
				p.err = p.werr
				continue
			}
		}
		p.cur, p.off = c, 0
	}
	n := copy(b, p.cur.b[p.off:])
	p.off += n
	return n, nil
}

// errDecode stands in for the decoder's error on the tar scan's side; stop
// returns the real one.
var errDecode = errors.New("gzip stream failed")

// stop ends the decoding goroutine and returns the decoder's error, nil if
// the stream ended well (or decoding was cut short by the tar scan).
func (p *outPipe) stop() error {
	close(p.done)
	var err error
	for c := range p.full {
		if c.err != nil && c.err != io.EOF {
			err = c.err
		}
	}
	<-p.exited
	if c := p.cur.err; err == nil && c != nil && c != io.EOF {
		err = c
	}
	return err
}

// spanDecoder is the state decodeGzipSpan reuses across calls.
type spanDecoder struct {
	z  inflate.Reader
	br bytes.Reader
}

var spanDecoders = sync.Pool{New: func() any { return new(spanDecoder) }}

// GunzipPrefix fills dst with the start of what the gzip data src
// decompresses to (its first member, then those after it if dst asks
// for more): the bytes of an eStargz chunk. It fails with ErrMalformed if
// src is corrupt before dst is full or ends first; a member's trailer
// (CRC and size) is checked only if dst reaches past its end, so what
// vouches for the bytes is the caller's digest of them.
func GunzipPrefix(src, dst []byte) error {
	d := spanDecoders.Get().(*spanDecoder)
	defer spanDecoders.Put(d)
	d.br.Reset(src)
	d.z.Reset(&d.br, inflate.Options{})
	_, err := io.ReadFull(&d.z, dst)
	d.br.Reset(nil)
	d.z.Reset(nil, inflate.Options{})
	if err != nil {
		return fmt.Errorf("%w: gzip: %w", ErrMalformed, err)
	}
	return nil
}

// decodeGzipSpan decodes the gzip span sp from src, the blob bytes from
// sp.InBits/8 on, and window, the output before it, into dst, which must
// be exactly the span's output.
func decodeGzipSpan(sp *Span, window, src, dst []byte) error {
	d := spanDecoders.Get().(*spanDecoder)
	defer spanDecoders.Put(d)
	d.br.Reset(src)
	err := d.z.Resume(&d.br, inflate.Point{InBits: sp.InBits, Out: sp.Out, Window: window}, inflate.Options{})
	if err == nil {
		_, err = io.ReadFull(&d.z, dst)
	}
	d.br.Reset(nil)
	d.z.Reset(nil, inflate.Options{})
	if err != nil {
		return fmt.Errorf("%w: gzip span at bit %d: %w", ErrMalformed, sp.InBits, err)
	}
	return nil
}
