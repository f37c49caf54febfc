package inflate

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"errors"
	"io"
	"testing"
)

// FuzzInflate decodes raw DEFLATE input with this package and with
// compress/flate: both must accept the same inputs and produce the same
// output, and on valid input decoding resumed at every point must produce
// the rest of the output. Corrupt input must fail without a panic.
func FuzzInflate(f *testing.F) {
	for _, s := range samples() {
		data := s.data[:min(len(s.data), 6<<10)]
		for _, level := range levels {
			f.Add(deflate(f, data, level))
		}
	}
	f.Add(farAfterLiteral())
	f.Add([]byte{1, 5, 0, 0, 0, 1, 2, 3, 4, 5})
	f.Add([]byte{0x07, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		want, werr := io.ReadAll(flate.NewReader(bytes.NewReader(in)))
		var pts []Point
		o := Options{Raw: true, Every: 4 << 10, OnPoint: func(p Point) error {
			pts = append(pts, p)
			return nil
		}}
		got, err := decodeAll(bytes.NewReader(in), o)
		if (err == nil) != (werr == nil) {
			t.Fatalf("error %v, compress/flate %v", err, werr)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && err != io.ErrUnexpectedEOF {
				t.Fatalf("error %v is neither corrupt input nor a short one", err)
			}
			if !bytes.HasPrefix(want, got) && !bytes.HasPrefix(got, want) {
				t.Fatalf("output before the error differs from compress/flate's")
			}
			return
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%d bytes, compress/flate %d", len(got), len(want))
		}
		// Resume at some points (each decodes the rest of the output, which
		// a small input can make large).
		if len(want) > 8<<20 {
			return
		}
		var some []Point
		for _, p := range pts {
			if len(some) == 0 || p.Out-some[len(some)-1].Out >= int64(len(want)/8) {
				some = append(some, p)
			}
		}
		checkPoints(t, in, want, some, o)
	})
}

// FuzzGzip compares gzip decoding with compress/gzip on inputs made of a
// gzip member and arbitrary bytes.
func FuzzGzip(f *testing.F) {
	for _, s := range samples() {
		data := s.data[:min(len(s.data), 6<<10)]
		f.Add(gzipOf(f, data, 6, gzip.Header{Name: "x"}))
	}
	f.Add(member(f, []byte("abc"), 4|8|16, true, false))
	f.Fuzz(func(t *testing.T, in []byte) {
		var want []byte
		zr, werr := gzip.NewReader(bytes.NewReader(in))
		if werr == nil {
			want, werr = io.ReadAll(zr)
		}
		got, err := decodeAll(bytes.NewReader(in), Options{})
		if werr == nil && (err != nil || !bytes.Equal(got, want)) {
			t.Fatalf("error %v with %d bytes; compress/gzip accepts %d bytes", err, len(got), len(want))
		}
		// compress/gzip accepts fewer header forms (no reserved flags) and
		// the same data otherwise; it may fail where we do not only for
		// reasons we check differently, so only one direction is compared.
	})
}
