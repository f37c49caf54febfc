package inflate

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// WindowSize is the most history a DEFLATE back-reference reaches.
const WindowSize = 32 << 10

// Buffer sizes. The output buffer holds WindowSize bytes of history, then
// outArea bytes decoded between two calls that slide it, then outSlack bytes
// a match started before the area's end may write, including the 8-byte
// stores of the match copy that overshoot the match by up to 13 bytes.
const (
	inSize   = 128 << 10
	inKeep   = 8 // bytes kept before the read position when refilling in
	outArea  = 256 << 10
	outSlack = 512
	outSize  = WindowSize + outArea + outSlack
	stopAt   = WindowSize + outArea
)

// Errors. Corrupt data fails with an error that matches ErrCorrupt under
// errors.Is; bits missing at the end of the input with io.ErrUnexpectedEOF.
var (
	ErrCorrupt  = errors.New("inflate: corrupt input")
	ErrHeader   = fmt.Errorf("%w: bad gzip header", ErrCorrupt)
	ErrChecksum = fmt.Errorf("%w: gzip checksum mismatch", ErrCorrupt)
)

// CorruptError reports corrupt input and where it was found.
type CorruptError struct {
	InBits int64 // bit offset in the compressed stream
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("inflate: corrupt input at bit %d: %s", e.InBits, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Point is a place where decoding can restart: a DEFLATE block header.
type Point struct {
	// InBits is the offset in bits of the block header from the start of
	// the compressed stream.
	InBits int64
	// Out is the number of uncompressed bytes produced before it.
	Out int64
	// Window is a copy of the last min(WindowSize, Out) bytes of output.
	Window []byte
}

// Options configure a Reader.
type Options struct {
	// Raw reads one bare DEFLATE stream (RFC 1951) instead of a sequence
	// of gzip members (RFC 1952). Decoding stops after its final block.
	Raw bool
	// Every > 0 makes the Reader call OnPoint at the first block header at
	// or after every Every bytes of output since the previous point; the
	// first point is the first block of the stream. Each point is reported
	// once some output follows it (so never at the very end of the stream),
	// before Read returns that output.
	Every int64
	// OnPoint receives the points. An error it returns stops decoding and
	// is returned by Read.
	OnPoint func(Point) error
}

// Decoder states between steps.
const (
	stMember  = iota // gzip member header expected
	stBlock          // DEFLATE block header expected
	stStored         // inside a stored block
	stHuffman        // inside a compressed block
	stTrailer        // gzip member trailer expected
	stNext           // after a trailer: another member or the end
	stDone           // end of stream
	stResume         // drop the leading bits of a resumed stream
)

// Reader decompresses a gzip stream (or a bare DEFLATE stream) and can
// report and resume at restart points. It is not safe for concurrent use.
type Reader struct {
	r    io.Reader
	rerr error // sticky error of r, io.EOF at its end
	opt  Options
	err  error // sticky error returned by Read once the output is drained

	// Input: in[ipos:iend] is unread; in[0] is byte inBase of the stream.
	in     []byte
	ipos   int
	iend   int
	inBase int64
	empty  int // consecutive empty reads of r

	// Bit buffer: the low nbits of bits are the next input bits. Bits
	// above nbits are either zero or the input bits that follow.
	bits  uint64
	nbits uint

	// Output: out[0:w] is history and output; Read hands out out[rpos:w].
	// out[0] is byte outBase of the decompressed stream. Back-references
	// may not reach before histStart (the start of the current member).
	out       []byte
	w         int
	rpos      int
	outBase   int64
	histStart int

	state  int
	final  bool // the current block is the last of its DEFLATE stream
	stored int  // bytes left in the current stored block
	skip   uint // bits to drop in stResume
	lit    *[litTableSize]uint32
	dist   *[distTableSize]uint32

	// gzip member checks, when the member was decoded from its header.
	check  bool
	crc    uint32
	size   uint32
	crcPos int // out[crcPos:w] is not yet in crc and size

	// Restart points.
	pointed   bool  // a point was reported or is pending
	lastPoint int64 // Out of the last point
	pending   bool
	pend      Point

	dynLit  [litTableSize]uint32
	dynDist [distTableSize]uint32
	clTab   [clTableSize]uint32
	lens    [286 + 30]uint8
}

// NewReader returns a Reader that decodes r from its start.
func NewReader(r io.Reader, o Options) *Reader {
	z := new(Reader)
	z.Reset(r, o)
	return z
}

// Reset makes z decode r from its start, as NewReader does, keeping its
// buffers.
func (z *Reader) Reset(r io.Reader, o Options) {
	z.reset(r, o)
	if o.Raw {
		z.state = stBlock
		z.check = false
	} else {
		z.state = stMember
	}
}

// Resume makes z continue a stream at point p: r yields the compressed
// stream from byte p.InBits/8 on, and p.Window is the output that precedes
// p.Out (it may be shorter than WindowSize only near the start of the
// stream). The gzip trailer of the member p lies in is read but not checked;
// later members are checked. Points after p are reported as usual.
func (z *Reader) Resume(r io.Reader, p Point, o Options) error {
	if p.InBits < 0 || p.Out < int64(len(p.Window)) || len(p.Window) > WindowSize {
		return fmt.Errorf("inflate: resume at bit %d, output %d with a window of %d bytes", p.InBits, p.Out, len(p.Window))
	}
	z.reset(r, o)
	z.inBase = p.InBits / 8
	z.skip = uint(p.InBits % 8)
	z.state = stResume
	z.check = false
	z.w = copy(z.out, p.Window)
	z.rpos, z.crcPos = z.w, z.w
	z.outBase = p.Out - int64(z.w)
	z.pointed, z.lastPoint = true, p.Out
	return nil
}

func (z *Reader) reset(r io.Reader, o Options) {
	if z.in == nil {
		z.in = make([]byte, inSize)
		z.out = make([]byte, outSize)
	}
	z.r, z.rerr, z.opt, z.err = r, nil, o, nil
	z.ipos, z.iend, z.inBase, z.empty = 0, 0, 0, 0
	z.bits, z.nbits = 0, 0
	z.w, z.rpos, z.outBase, z.histStart = 0, 0, 0, 0
	z.final, z.stored, z.skip = false, 0, 0
	z.lit, z.dist = &fixedLit, &fixedDist
	z.check, z.crc, z.size, z.crcPos = true, 0, 0, 0
	z.pointed, z.lastPoint, z.pending, z.pend = false, 0, false, Point{}
}

// Read decompresses into p. Output decoded before an error is returned
// before the error.
func (z *Reader) Read(p []byte) (int, error) {
	for {
		if z.rpos < z.w {
			n := copy(p, z.out[z.rpos:z.w])
			z.rpos += n
			return n, nil
		}
		if z.err != nil {
			return 0, z.err
		}
		if len(p) == 0 {
			return 0, nil
		}
		if z.w >= stopAt {
			z.slide()
		}
		z.decode()
	}
}

// WriteTo writes the rest of the decompressed stream to w.
func (z *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if z.rpos < z.w {
			n, err := w.Write(z.out[z.rpos:z.w])
			z.rpos += n
			total += int64(n)
			if err != nil {
				return total, err
			}
			continue
		}
		if z.err != nil {
			if z.err == io.EOF {
				return total, nil
			}
			return total, z.err
		}
		if z.w >= stopAt {
			z.slide()
		}
		z.decode()
	}
}

// InputOffset returns the number of compressed bytes consumed (from the
// stream start, or p.InBits/8 after Resume at p), rounded up to whole bytes.
func (z *Reader) InputOffset() int64 {
	return (z.inBits() + 7) / 8
}

// OutputOffset returns the offset in the decompressed stream of the next
// byte Read returns.
func (z *Reader) OutputOffset() int64 { return z.outBase + int64(z.rpos) }

func (z *Reader) inBits() int64 {
	return (z.inBase+int64(z.ipos))*8 - int64(z.nbits)
}

// slide moves the last WindowSize bytes of output to the front of out once
// Read has handed out everything.
func (z *Reader) slide() {
	shift := z.w - WindowSize
	copy(z.out, z.out[shift:z.w])
	z.w -= shift
	z.rpos -= shift
	z.crcPos -= shift
	z.histStart = max(0, z.histStart-shift)
	z.outBase += int64(shift)
}

// decode runs the state machine until the output area is full, the stream
// ends or an error occurs.
func (z *Reader) decode() {
	for z.err == nil && z.w < stopAt {
		switch z.state {
		case stMember:
			z.member()
		case stResume:
			if z.need(z.skip) {
				z.drop(z.skip)
				z.state = stBlock
			}
		case stBlock:
			z.block()
		case stStored:
			z.copyStored()
		case stHuffman:
			z.huffman()
		case stTrailer:
			z.trailer()
		case stNext:
			z.next()
		case stDone:
			z.err = io.EOF
			z.pending = false // no output follows it
		}
		if z.pending && z.outBase+int64(z.w) > z.pend.Out {
			z.pending = false
			if err := z.opt.OnPoint(z.pend); err != nil && z.err == nil {
				z.err = err
			}
			z.pend = Point{}
		}
	}
	z.sum()
}

// sum adds the output not yet checksummed to the member's CRC and size.
func (z *Reader) sum() {
	if z.check && z.crcPos < z.w {
		z.crc = crc32.Update(z.crc, crc32.IEEETable, z.out[z.crcPos:z.w])
		z.size += uint32(z.w - z.crcPos)
	}
	z.crcPos = z.w
}

func (z *Reader) corrupt(reason string) {
	if z.err == nil {
		z.err = &CorruptError{InBits: z.inBits(), Reason: reason}
	}
}

// fill reads more input into in, keeping inKeep bytes before ipos so that
// whole bytes in the bit buffer can be given back. It reports whether any
// byte was added.
func (z *Reader) fill() bool {
	if z.rerr != nil {
		return false
	}
	if keep := z.ipos - inKeep; keep > 0 && z.iend > len(z.in)-256 {
		copy(z.in, z.in[keep:z.iend])
		z.ipos -= keep
		z.iend -= keep
		z.inBase += int64(keep)
	}
	n, err := z.r.Read(z.in[z.iend:])
	if n < 0 || n > len(z.in)-z.iend {
		n, err = 0, errors.New("inflate: reader returned an impossible count")
	}
	z.iend += n
	if err != nil {
		z.rerr = err
	} else if n == 0 {
		if z.empty++; z.empty >= 100 {
			z.rerr = io.ErrNoProgress
		}
	} else {
		z.empty = 0
	}
	return n > 0
}

// refill loads whole bytes into the bit buffer, up to at least 56 bits if
// the input has them, reading from r as needed.
func (z *Reader) refill() {
	for z.nbits <= 55 {
		if z.ipos < z.iend {
			z.bits |= uint64(z.in[z.ipos]) << z.nbits
			z.ipos++
			z.nbits += 8
			continue
		}
		if !z.fill() && z.rerr != nil {
			return
		}
	}
}

// need makes sure n bits are in the bit buffer, or sets the error.
func (z *Reader) need(n uint) bool {
	if z.nbits >= n {
		return true
	}
	z.refill()
	if z.nbits >= n {
		return true
	}
	z.missing()
	return false
}

// missing records that input bits that were needed are not there.
func (z *Reader) missing() {
	if z.err != nil {
		return
	}
	if z.rerr == nil || z.rerr == io.EOF {
		z.err = io.ErrUnexpectedEOF
	} else {
		z.err = z.rerr
	}
}

func (z *Reader) drop(n uint) {
	z.bits >>= n & 63
	z.nbits -= n
}

func (z *Reader) take(n uint) uint32 {
	v := uint32(z.bits & (1<<n - 1))
	z.drop(n)
	return v
}

// align drops the bits up to the next byte boundary and gives the whole
// bytes left in the bit buffer back to the input.
func (z *Reader) align() {
	z.drop(z.nbits % 8)
	z.ipos -= int(z.nbits / 8)
	z.bits, z.nbits = 0, 0
}

// readByte reads a byte after align; ok is false at the end of input.
func (z *Reader) readByte() (byte, bool) {
	if z.ipos == z.iend {
		for !z.fill() {
			if z.rerr != nil {
				return 0, false
			}
		}
	}
	b := z.in[z.ipos]
	z.ipos++
	return b, true
}

// symbol decodes one symbol with table tab of the given primary bits,
// carefully: it fails only if the bits the code needs are missing.
func (z *Reader) symbol(tab []uint32, primary uint) (uint32, bool) {
	if z.nbits < maxCodeLen {
		z.refill()
	}
	e := tab[z.bits&(1<<primary-1)]
	if e&flagLink != 0 {
		if z.nbits < primary {
			z.missing()
			return 0, false
		}
		e = tab[e>>16+uint32(z.bits>>primary)&(1<<(e>>4&15)-1)]
	}
	if uint(e&15) > z.nbits {
		z.missing()
		return 0, false
	}
	z.drop(uint(e & 15))
	return e, true
}

// block reads a block header and prepares the block's decoding.
func (z *Reader) block() {
	if z.opt.Every > 0 && z.opt.OnPoint != nil && !z.pending &&
		(!z.pointed || z.outBase+int64(z.w)-z.lastPoint >= z.opt.Every) {
		z.pointed, z.pending = true, true
		z.lastPoint = z.outBase + int64(z.w)
		z.pend = Point{InBits: z.inBits(), Out: z.lastPoint}
		if n := min(z.w, WindowSize); n > 0 {
			z.pend.Window = append([]byte(nil), z.out[z.w-n:z.w]...)
		}
	}
	if !z.need(3) {
		return
	}
	z.final = z.bits&1 != 0
	kind := z.bits >> 1 & 3
	z.drop(3)
	switch kind {
	case 0:
		z.align()
		var h [4]byte
		for i := range h {
			b, ok := z.readByte()
			if !ok {
				z.missing()
				return
			}
			h[i] = b
		}
		n := int(h[0]) | int(h[1])<<8
		if n != ^(int(h[2])|int(h[3])<<8)&0xffff {
			z.corrupt("stored block length does not match its complement")
			return
		}
		z.stored = n
		z.state = stStored
	case 1:
		z.lit, z.dist = &fixedLit, &fixedDist
		z.state = stHuffman
	case 2:
		if z.dynamic() {
			z.lit, z.dist = &z.dynLit, &z.dynDist
			z.state = stHuffman
		}
	default:
		z.corrupt("reserved block type")
	}
}

// dynamic reads the code definitions of a dynamic Huffman block.
func (z *Reader) dynamic() bool {
	if !z.need(14) {
		return false
	}
	nlit := int(z.take(5)) + 257
	ndist := int(z.take(5)) + 1
	nclen := int(z.take(4)) + 4
	if nlit > 286 || ndist > 30 {
		z.corrupt("too many length or distance codes")
		return false
	}
	var cl [19]uint8
	for i := range nclen {
		if !z.need(3) {
			return false
		}
		cl[clOrder[i]] = uint8(z.take(3))
	}
	if !buildTable(z.clTab[:], cl[:], clPayload[:], clPrimary) {
		z.corrupt("bad code-length code")
		return false
	}
	lens := z.lens[:nlit+ndist]
	for i := 0; i < len(lens); {
		e, ok := z.symbol(z.clTab[:], clPrimary)
		if !ok {
			return false
		}
		if e&flagBad != 0 {
			z.corrupt("bad code-length symbol")
			return false
		}
		sym := e >> 16
		if sym < 16 {
			lens[i] = uint8(sym)
			i++
			continue
		}
		var rep int
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				z.corrupt("repeat of no code length")
				return false
			}
			if !z.need(2) {
				return false
			}
			rep, val = 3+int(z.take(2)), lens[i-1]
		case 17:
			if !z.need(3) {
				return false
			}
			rep = 3 + int(z.take(3))
		default:
			if !z.need(7) {
				return false
			}
			rep = 11 + int(z.take(7))
		}
		if i+rep > len(lens) {
			z.corrupt("code lengths overrun")
			return false
		}
		for range rep {
			lens[i] = val
			i++
		}
	}
	if lens[256] == 0 {
		z.corrupt("no end-of-block code")
		return false
	}
	if !buildTable(z.dynLit[:], lens[:nlit], litPayload[:], litPrimary) {
		z.corrupt("bad literal/length code")
		return false
	}
	if !buildTable(z.dynDist[:], lens[nlit:], distPayload[:], distPrimary) {
		z.corrupt("bad distance code")
		return false
	}
	return true
}

// endBlock moves on after the last byte of a block.
func (z *Reader) endBlock() {
	switch {
	case !z.final:
		z.state = stBlock
	case z.opt.Raw:
		z.state = stDone
	default:
		z.state = stTrailer
	}
}

// copyStored copies stored block bytes from the input to the output.
func (z *Reader) copyStored() {
	for z.stored > 0 && z.w < stopAt {
		if z.ipos == z.iend && !z.fill() {
			if z.rerr != nil {
				z.missing()
				return
			}
			continue
		}
		n := copy(z.out[z.w:min(stopAt, z.w+z.stored)], z.in[z.ipos:z.iend])
		z.w += n
		z.ipos += n
		z.stored -= n
	}
	if z.stored == 0 {
		z.endBlock()
	}
}

// member reads a gzip member header.
func (z *Reader) member() {
	var h [10]byte
	crc := uint32(0)
	for i := range h {
		b, ok := z.readByte()
		if !ok {
			z.missing()
			return
		}
		h[i] = b
	}
	if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
		z.err = ErrHeader
		return
	}
	flags := h[3]
	if flags&0xe0 != 0 {
		z.err = ErrHeader
		return
	}
	crc = crc32.Update(crc, crc32.IEEETable, h[:])
	readN := func(n int) bool {
		for range n {
			b, ok := z.readByte()
			if !ok {
				z.missing()
				return false
			}
			crc = crc32.Update(crc, crc32.IEEETable, []byte{b})
		}
		return true
	}
	readZ := func() bool {
		for {
			b, ok := z.readByte()
			if !ok {
				z.missing()
				return false
			}
			crc = crc32.Update(crc, crc32.IEEETable, []byte{b})
			if b == 0 {
				return true
			}
		}
	}
	if flags&4 != 0 { // FEXTRA
		lo, ok1 := z.readByte()
		hi, ok2 := z.readByte()
		if !ok1 || !ok2 {
			z.missing()
			return
		}
		crc = crc32.Update(crc, crc32.IEEETable, []byte{lo, hi})
		if !readN(int(lo) | int(hi)<<8) {
			return
		}
	}
	if flags&8 != 0 && !readZ() { // FNAME
		return
	}
	if flags&16 != 0 && !readZ() { // FCOMMENT
		return
	}
	if flags&2 != 0 { // FHCRC
		lo, ok1 := z.readByte()
		hi, ok2 := z.readByte()
		if !ok1 || !ok2 {
			z.missing()
			return
		}
		if uint16(lo)|uint16(hi)<<8 != uint16(crc) {
			z.err = ErrHeader
			return
		}
	}
	z.sum()
	z.check, z.crc, z.size = true, 0, 0
	z.histStart = z.w
	z.state = stBlock
}

// trailer reads and checks a gzip member trailer.
func (z *Reader) trailer() {
	z.sum()
	z.align()
	var t [8]byte
	for i := range t {
		b, ok := z.readByte()
		if !ok {
			z.missing()
			return
		}
		t[i] = b
	}
	if z.check {
		crc := uint32(t[0]) | uint32(t[1])<<8 | uint32(t[2])<<16 | uint32(t[3])<<24
		size := uint32(t[4]) | uint32(t[5])<<8 | uint32(t[6])<<16 | uint32(t[7])<<24
		if crc != z.crc || size != z.size {
			z.err = ErrChecksum
			return
		}
	}
	z.state = stNext
}

// next looks for another gzip member after a trailer.
func (z *Reader) next() {
	for z.ipos == z.iend {
		if !z.fill() && z.rerr != nil {
			if z.rerr != io.EOF {
				z.err = z.rerr
				return
			}
			z.state = stDone
			z.pending = false // no output follows it
			return
		}
	}
	z.state = stMember
}
