package inflate

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// sample returns named inputs that exercise every kind of block and match.
func samples() []struct {
	name string
	data []byte
} {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	words := strings.Fields("the quick brown fox jumps over a lazy dog while layers of tar " +
		"files stream through gzip and deflate blocks with huffman codes lengths distances")
	text := func(n int) []byte {
		var b bytes.Buffer
		for b.Len() < n {
			b.WriteString(words[rng.IntN(len(words))])
			if rng.IntN(10) == 0 {
				b.WriteByte('\n')
			} else {
				b.WriteByte(' ')
			}
		}
		return b.Bytes()[:n]
	}
	periodic := func(n, period int) []byte {
		p := random(period)
		b := make([]byte, n)
		for i := range b {
			b[i] = p[i%period]
		}
		return b
	}
	mixed := func(n int) []byte {
		var b []byte
		for len(b) < n {
			switch rng.IntN(4) {
			case 0:
				b = append(b, random(rng.IntN(5000))...)
			case 1:
				b = append(b, text(rng.IntN(20000))...)
			case 2:
				b = append(b, periodic(rng.IntN(3000), 1+rng.IntN(9))...)
			default:
				if len(b) > 0 { // copy from far back
					from := rng.IntN(len(b))
					b = append(b, b[from:min(len(b), from+rng.IntN(2000))]...)
				}
			}
		}
		return b[:n]
	}
	return []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one", []byte{'x'}},
		{"tiny", []byte("hello, hello, hello")},
		{"random", random(200 << 10)},
		{"zeros", make([]byte, 400<<10)},
		{"period2", periodic(100<<10, 2)},
		{"period7", periodic(100<<10, 7)},
		{"period300", periodic(100<<10, 300)},
		{"text", text(300 << 10)},
		{"mixed", mixed(600 << 10)},
	}
}

var levels = []int{flate.HuffmanOnly, flate.NoCompression, flate.BestSpeed, flate.DefaultCompression, flate.BestCompression}

func deflate(t testing.TB, data []byte, level int) []byte {
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func gzipOf(t testing.TB, data []byte, level int, hdr gzip.Header) []byte {
	var b bytes.Buffer
	w, err := gzip.NewWriterLevel(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Header = hdr
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func decodeAll(r io.Reader, o Options) ([]byte, error) {
	var b bytes.Buffer
	_, err := io.Copy(&b, NewReader(r, o))
	return b.Bytes(), err
}

func TestRoundTrip(t *testing.T) {
	for _, s := range samples() {
		for _, level := range levels {
			t.Run(fmt.Sprintf("%s/level%d", s.name, level), func(t *testing.T) {
				raw := deflate(t, s.data, level)
				got, err := decodeAll(bytes.NewReader(raw), Options{Raw: true})
				if err != nil || !bytes.Equal(got, s.data) {
					t.Fatalf("raw: %d bytes, %v; want %d bytes", len(got), err, len(s.data))
				}
				gz := gzipOf(t, s.data, level, gzip.Header{})
				got, err = decodeAll(bytes.NewReader(gz), Options{})
				if err != nil || !bytes.Equal(got, s.data) {
					t.Fatalf("gzip: %d bytes, %v; want %d bytes", len(got), err, len(s.data))
				}
				if len(s.data) < 200<<10 {
					got, err = decodeAll(iotest.OneByteReader(bytes.NewReader(gz)), Options{})
				} else {
					got, err = decodeAll(iotest.HalfReader(bytes.NewReader(gz)), Options{})
				}
				if err != nil || !bytes.Equal(got, s.data) {
					t.Fatalf("gzip, small reads: %d bytes, %v; want %d bytes", len(got), err, len(s.data))
				}
			})
		}
	}
}

// TestSmallReads reads the output a few bytes at a time.
func TestSmallReads(t *testing.T) {
	data := samples()[9].data
	gz := gzipOf(t, data, 6, gzip.Header{})
	got, err := io.ReadAll(iotest.OneByteReader(NewReader(bytes.NewReader(gz), Options{})))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
}

// withHCRC returns a gzip member with the given flags, extra fields and a
// header CRC, around the raw DEFLATE data of payload.
func member(t testing.TB, payload []byte, flags byte, hcrc bool, corruptHCRC bool) []byte {
	var h bytes.Buffer
	if hcrc {
		flags |= 2
	}
	h.Write([]byte{0x1f, 0x8b, 8, flags, 1, 2, 3, 4, 0, 255})
	if flags&4 != 0 {
		h.Write([]byte{5, 0, 'A', 'B', 3, 0, 'x'})
	}
	if flags&8 != 0 {
		h.WriteString("name.tar\x00")
	}
	if flags&16 != 0 {
		h.WriteString("a comment\x00")
	}
	if hcrc {
		c := uint16(crc32.ChecksumIEEE(h.Bytes()))
		if corruptHCRC {
			c++
		}
		h.Write([]byte{byte(c), byte(c >> 8)})
	}
	h.Write(deflate(t, payload, 6))
	h.Write(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(payload)))
	h.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(payload))))
	return h.Bytes()
}

func TestHeadersAndMembers(t *testing.T) {
	text := samples()[8].data[:100<<10]
	for _, tc := range []struct {
		name  string
		flags byte
		hcrc  bool
	}{
		{"plain", 0, false}, {"text", 1, false}, {"extra", 4, false}, {"name", 8, false},
		{"comment", 16, false}, {"hcrc", 0, true}, {"all", 1 | 4 | 8 | 16, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gz := member(t, text, tc.flags, tc.hcrc, false)
			got, err := decodeAll(bytes.NewReader(gz), Options{})
			if err != nil || !bytes.Equal(got, text) {
				t.Fatalf("%d bytes, %v", len(got), err)
			}
			if zr, err := gzip.NewReader(bytes.NewReader(gz)); err != nil {
				t.Fatalf("compress/gzip refuses the test input: %v", err)
			} else if b, err := io.ReadAll(zr); err != nil || !bytes.Equal(b, text) {
				t.Fatalf("compress/gzip: %v", err)
			}
		})
	}
	t.Run("multi", func(t *testing.T) {
		var gz, want []byte
		for i, part := range [][]byte{text[:1000], nil, text, samples()[3].data, {'z'}, nil} {
			gz = append(gz, gzipOf(t, part, levels[i%len(levels)], gzip.Header{Name: "n"})...)
			gz = append(gz, member(t, part, 8|16, true, false)...)
			want = append(want, part...)
			want = append(want, part...)
		}
		got, err := decodeAll(bytes.NewReader(gz), Options{})
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes, %v; want %d", len(got), err, len(want))
		}
		got, err = decodeAll(iotest.OneByteReader(bytes.NewReader(gz)), Options{})
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("one byte reads: %d bytes, %v; want %d", len(got), err, len(want))
		}
	})
}

// bitWriter writes DEFLATE bit fields, least significant bit first.
type bitWriter struct {
	b     []byte
	nbits uint
}

func (w *bitWriter) bits(v uint32, n uint) *bitWriter {
	for i := range n {
		if w.nbits%8 == 0 {
			w.b = append(w.b, 0)
		}
		w.b[len(w.b)-1] |= byte(v>>i&1) << (w.nbits % 8)
		w.nbits++
	}
	return w
}

// code writes a Huffman code of n bits, most significant bit first.
func (w *bitWriter) code(c uint32, n uint) *bitWriter {
	return w.bits(reverseBits(c, n), n)
}

// fixedLitCode returns the fixed code of a literal/length symbol.
func fixedLitCode(s uint32) (uint32, uint) {
	switch {
	case s < 144:
		return 0x30 + s, 8
	case s < 256:
		return 0x190 + s - 144, 9
	case s < 280:
		return s - 256, 7
	default:
		return 0xc0 + s - 280, 8
	}
}

// farAfterLiteral is a fixed block of a literal and a match of distance 2.
func farAfterLiteral() []byte {
	w := new(bitWriter).bits(1, 1).bits(1, 2)
	w.code(fixedLitCode('a'))
	w.code(fixedLitCode(258))
	w.code(1, 5) // distance 2
	return w.code(fixedLitCode(256)).b
}

func TestCorrupt(t *testing.T) {
	good := gzipOf(t, samples()[8].data[:50<<10], 6, gzip.Header{})
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x40
		return b
	}
	fixed := func(syms ...uint32) []byte { // final fixed block of symbols, then end
		w := new(bitWriter).bits(1, 1).bits(1, 2)
		for _, s := range syms {
			w.code(fixedLitCode(s))
		}
		return w.code(fixedLitCode(256)).b
	}
	// dynamic writes a dynamic block header with the given code-length code
	// lengths and literal/distance lengths sent as plain symbols.
	dynamic := func(nlit, ndist int, cl [19]uint8, lens []uint8) []byte {
		w := new(bitWriter).bits(1, 1).bits(2, 2).bits(uint32(nlit-257), 5).bits(uint32(ndist-1), 5).bits(15, 4)
		for _, i := range clOrder {
			w.bits(uint32(cl[i]), 3)
		}
		// code-length code with all 19 symbols... callers use a complete
		// code of 5-bit-ish lengths; send each length as its canonical code
		var codes [19]uint32
		var next [8]uint32
		var count [8]int
		for _, l := range cl {
			count[l]++
		}
		count[0] = 0
		c := uint32(0)
		for l := 1; l < 8; l++ {
			c = (c + uint32(count[l-1])) << 1
			next[l] = c
		}
		for s, l := range cl {
			if l > 0 {
				codes[s] = next[l]
				next[l]++
			}
		}
		for _, l := range lens {
			w.code(codes[l], uint(cl[l]))
		}
		return w.b
	}
	var cl16 [19]uint8 // lengths 0..15 get 4-bit codes: complete with 16 symbols
	for i := range 16 {
		cl16[i] = 4
	}
	allLens := func(nlit, ndist int, l uint8) []uint8 {
		b := make([]uint8, nlit+ndist)
		for i := range b {
			b[i] = l
		}
		return b
	}
	overLens := allLens(257, 1, 1) // 257 codes of one bit: over-subscribed
	noEOB := allLens(257, 1, 8)    // 256 codes of 8 bits, EOB unused
	noEOB[256] = 0
	incompleteLens := allLens(257, 1, 9) // 257 nine-bit codes: incomplete
	incompleteLens[257] = 1

	var overCL [19]uint8
	for i := range 19 {
		overCL[i] = 1
	}
	for _, tc := range []struct {
		name string
		in   []byte
		raw  bool
	}{
		{"reserved block type", new(bitWriter).bits(1, 1).bits(3, 2).bits(0, 13).b, true},
		{"stored length complement", []byte{1, 5, 0, 0, 0, 1, 2, 3, 4, 5}, true},
		{"distance too far back", fixed(257), true},
		{"distance too far after a literal", farAfterLiteral(), true},
		{"fixed code 286", fixed(286), true},
		{"too many length codes", new(bitWriter).bits(1, 1).bits(2, 2).bits(30, 5).bits(0, 5).bits(0, 4).bits(0, 16).b, true},
		{"too many distance codes", new(bitWriter).bits(1, 1).bits(2, 2).bits(0, 5).bits(30, 5).bits(0, 4).bits(0, 16).b, true},
		{"over-subscribed code-length code", dynamic(257, 1, overCL, nil), true},
		{"over-subscribed literal code", dynamic(257, 1, cl16, overLens), true},
		{"incomplete literal code", dynamic(257, 1, cl16, incompleteLens), true},
		{"no end-of-block code", dynamic(257, 1, cl16, noEOB), true},
		{"bad magic", flip(good, 0), false},
		{"bad method", flip(good, 2), false},
		{"reserved flag", flip(good, 3), false},
		{"bad crc", flip(good, len(good)-6), false},
		{"bad size", flip(good, len(good)-2), false},
		{"bad header crc", member(t, []byte("abc"), 8, true, true), false},
		{"garbage member", append(bytes.Clone(good), 'x', 'y', 'z', 0, 0, 0, 0, 0, 0, 0, 0, 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeAll(bytes.NewReader(tc.in), Options{Raw: tc.raw})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v, want ErrCorrupt", err)
			}
			if tc.raw {
				if _, ferr := io.ReadAll(flate.NewReader(bytes.NewReader(tc.in))); ferr == nil {
					t.Errorf("compress/flate accepts the input")
				}
			}
		})
	}
}

func TestTruncated(t *testing.T) {
	data := samples()[9].data[:150<<10]
	var z Reader
	for _, level := range levels {
		gz := gzipOf(t, data, level, gzip.Header{Name: "x", Comment: "y", Extra: []byte("zz")})
		step := max(1, len(gz)/40)
		for n := 0; n < len(gz); n += step {
			for _, cut := range []int{n, min(n+1, len(gz)-1), len(gz) - 1 - n%9, n % 40} {
				z.Reset(bytes.NewReader(gz[:cut]), Options{})
				got, err := io.ReadAll(&z)
				if err != io.ErrUnexpectedEOF {
					t.Fatalf("level %d, %d of %d bytes: error %v, want io.ErrUnexpectedEOF", level, cut, len(gz), err)
				}
				if !bytes.HasPrefix(data, got) {
					t.Fatalf("level %d, %d of %d bytes: output is not a prefix", level, cut, len(gz))
				}
			}
		}
	}
}

// collectPoints decodes in, recording the points every bytes apart.
func collectPoints(t testing.TB, in []byte, o Options) ([]byte, []Point) {
	var pts []Point
	o.OnPoint = func(p Point) error {
		pts = append(pts, p)
		return nil
	}
	got, err := decodeAll(bytes.NewReader(in), o)
	if err != nil {
		t.Fatalf("decode with points: %v", err)
	}
	return got, pts
}

func checkPoints(t testing.TB, in, want []byte, pts []Point, o Options) {
	t.Helper()
	if len(want) > 0 && (len(pts) == 0 || pts[0].Out != 0) {
		t.Fatalf("first point: %+v", pts[:min(1, len(pts))])
	}
	var z Reader
	for i, p := range pts {
		if i > 0 && (p.InBits <= pts[i-1].InBits || p.Out-pts[i-1].Out < o.Every) {
			t.Fatalf("point %d (%d, %d) after (%d, %d)", i, p.InBits, p.Out, pts[i-1].InBits, pts[i-1].Out)
		}
		if p.Out >= int64(len(want)) {
			t.Fatalf("point %d at out %d, the end", i, p.Out)
		}
		if !bytes.Equal(p.Window, want[max(0, p.Out-WindowSize):p.Out]) {
			t.Fatalf("point %d: window of %d bytes is wrong", i, len(p.Window))
		}
		// Resume with the rest of the stream.
		ro := o
		ro.OnPoint = nil
		if err := z.Resume(bytes.NewReader(in[p.InBits/8:]), p, ro); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(&z)
		if err != nil || !bytes.Equal(got, want[p.Out:]) {
			t.Fatalf("resume at point %d (bit %d, out %d): %d bytes, %v; want %d", i, p.InBits, p.Out, len(got), err, len(want)-int(p.Out))
		}
		// Resume with exactly the span's bytes and read exactly its output.
		end, endIn := int64(len(want)), int64(len(in))
		if i+1 < len(pts) {
			end, endIn = pts[i+1].Out, (pts[i+1].InBits+7)/8
		}
		if err := z.Resume(bytes.NewReader(in[p.InBits/8:endIn]), p, ro); err != nil {
			t.Fatal(err)
		}
		span := make([]byte, end-p.Out)
		if _, err := io.ReadFull(&z, span); err != nil || !bytes.Equal(span, want[p.Out:end]) {
			t.Fatalf("span %d: %v", i, err)
		}
		if i+1 < len(pts) {
			if n, err := io.ReadFull(&z, make([]byte, 1)); err == nil || errors.Is(err, ErrCorrupt) {
				t.Fatalf("span %d: read %d bytes past its end, error %v", i, n, err)
			}
		}
	}
}

func TestPointsAndResume(t *testing.T) {
	var multi, multiWant []byte
	for i, s := range samples() {
		if i == 3 || i == 9 || i == 0 || i == 1 {
			multi = append(multi, gzipOf(t, s.data, 6, gzip.Header{})...)
			multiWant = append(multiWant, s.data...)
		}
	}
	for _, s := range samples() {
		for _, level := range []int{flate.NoCompression, flate.HuffmanOnly, 1, 9} {
			for _, every := range []int64{1, 50 << 10} {
				if every == 1 && len(s.data) > 100<<10 {
					continue
				}
				t.Run(fmt.Sprintf("%s/level%d/every%d", s.name, level, every), func(t *testing.T) {
					gz := gzipOf(t, s.data, level, gzip.Header{Name: "n"})
					o := Options{Every: every}
					got, pts := collectPoints(t, gz, o)
					if !bytes.Equal(got, s.data) {
						t.Fatal("output differs")
					}
					checkPoints(t, gz, s.data, pts, o)
					raw := deflate(t, s.data, level)
					o.Raw = true
					_, pts = collectPoints(t, raw, o)
					checkPoints(t, raw, s.data, pts, o)
				})
			}
		}
	}
	t.Run("multi", func(t *testing.T) {
		o := Options{Every: 100 << 10}
		got, pts := collectPoints(t, multi, o)
		if !bytes.Equal(got, multiWant) {
			t.Fatal("output differs")
		}
		checkPoints(t, multi, multiWant, pts, o)
	})
}

func TestPointError(t *testing.T) {
	gz := gzipOf(t, samples()[8].data, flate.NoCompression, gzip.Header{})
	stop := errors.New("stop")
	n := 0
	_, err := decodeAll(bytes.NewReader(gz), Options{Every: 30 << 10, OnPoint: func(Point) error {
		if n++; n == 3 {
			return stop
		}
		return nil
	}})
	if err != stop {
		t.Fatalf("error %v, want the callback's", err)
	}
}

func TestResumeArguments(t *testing.T) {
	var z Reader
	for _, p := range []Point{
		{InBits: -1},
		{Out: 2, Window: []byte("abc")},
		{Out: 1 << 20, Window: make([]byte, WindowSize+1)},
	} {
		if err := z.Resume(bytes.NewReader(nil), p, Options{}); err == nil {
			t.Errorf("Resume(%d, %d, %d bytes) succeeded", p.InBits, p.Out, len(p.Window))
		}
	}
}

// errReader fails after its data.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		err = e.err
	}
	return n, err
}

func TestReadError(t *testing.T) {
	gz := gzipOf(t, samples()[8].data, 6, gzip.Header{})
	boom := errors.New("boom")
	_, err := decodeAll(&errReader{bytes.NewReader(gz[:len(gz)/2]), boom}, Options{})
	if err != boom {
		t.Fatalf("error %v, want the reader's", err)
	}
	_, err = decodeAll(&errReader{bytes.NewReader(gz), boom}, Options{})
	if err != boom { // the end of the stream is not known before r says so
		t.Fatalf("error %v, want the reader's", err)
	}
	_, err = decodeAll(iotest.TimeoutReader(bytes.NewReader(gz)), Options{})
	if err != iotest.ErrTimeout {
		t.Fatalf("error %v, want the reader's", err)
	}
}

func TestEmptyInput(t *testing.T) {
	for _, raw := range []bool{false, true} {
		if _, err := decodeAll(bytes.NewReader(nil), Options{Raw: raw}); err != io.ErrUnexpectedEOF {
			t.Errorf("raw %v: error %v, want io.ErrUnexpectedEOF", raw, err)
		}
	}
}
