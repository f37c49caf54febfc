package index

import (
	"bytes"
	"compress/gzip"
	"errors"
	"math/rand/v2"
	"testing"
)

// TestGunzipPrefix decodes the start of a gzip member, a whole member, and
// reads on into the next one, against compress/gzip; corrupt or short
// input fails with ErrMalformed.
func TestGunzipPrefix(t *testing.T) {
	member := func(b []byte) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	text := func(seed, n int) []byte {
		rng := rand.New(rand.NewPCG(uint64(seed), 1))
		b := make([]byte, n)
		for i := range b {
			b[i] = "abcdefgh \n"[rng.IntN(10)]
		}
		return b
	}
	a, b := text(1, 300_000), text(2, 50_000)
	two := append(member(a), member(b)...)
	corrupt := bytes.Clone(two)
	corrupt[len(corrupt)/4] ^= 0xff
	for _, tc := range []struct {
		name string
		src  []byte
		n    int
		want []byte // nil: an error
	}{
		{"prefix", two, 1000, a[:1000]},
		{"member", two, len(a), a},
		{"into the next member", two, len(a) + 100, append(bytes.Clone(a), b[:100]...)},
		{"past the end", two, len(a) + len(b) + 1, nil},
		{"short input", two[:len(two)/2], len(a), nil},
		{"corrupt", corrupt, len(a) + len(b), nil},
		{"not gzip", a, 10, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, tc.n)
			err := GunzipPrefix(tc.src, dst)
			switch {
			case tc.want == nil && !errors.Is(err, ErrMalformed):
				t.Errorf("err = %v, want ErrMalformed", err)
			case tc.want != nil && err != nil:
				t.Errorf("err = %v", err)
			case tc.want != nil && !bytes.Equal(dst, tc.want):
				t.Error("wrong bytes")
			}
		})
	}
}
