package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/pgzip"
)

const testSpanSize = 64 << 10

// gzipTestTar returns a tar of files of many sizes, some across many spans,
// and the content of each regular file by name.
func gzipTestTar(t testing.TB) ([]byte, map[string][]byte) {
	rng := rand.New(rand.NewPCG(7, 8))
	words := strings.Fields("lazy root mounts container images over fuse reading gzip spans " +
		"from the registry with windows of thirty two kilobytes and digests")
	content := func(n int) []byte {
		b := make([]byte, 0, n)
		for len(b) < n {
			if rng.IntN(3) == 0 { // incompressible run
				for range min(n-len(b), rng.IntN(3000)) {
					b = append(b, byte(rng.Uint32()))
				}
				continue
			}
			for range rng.IntN(400) {
				b = append(b, words[rng.IntN(len(words))]...)
				b = append(b, " \n"[rng.IntN(2)])
			}
		}
		return b[:n]
	}
	files := map[string][]byte{}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	add := func(h *tar.Header, data []byte) {
		h.ModTime = mtime
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
			files[h.Name] = data
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	add(&tar.Header{Name: "dir/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	sizes := []int{0, 1, 2, 511, 512, 513, 1000, testSpanSize - 512, testSpanSize, testSpanSize + 1,
		2 * testSpanSize, 3*testSpanSize + 7, 300 << 10}
	for i, n := range sizes {
		add(&tar.Header{Name: fmt.Sprintf("dir/f%02d-%d", i, n), Typeflag: tar.TypeReg, Mode: 0o644}, content(n))
	}
	zeros := make([]byte, 200<<10) // long matches at distance 1
	add(&tar.Header{Name: "dir/zeros", Typeflag: tar.TypeReg, Mode: 0o600}, zeros)
	add(&tar.Header{Name: "dir/link", Typeflag: tar.TypeSymlink, Linkname: "f01-1"}, nil)
	add(&tar.Header{Name: "dir/hard", Typeflag: tar.TypeLink, Linkname: "dir/f02-2"}, nil)
	for i := range 20 {
		add(&tar.Header{Name: fmt.Sprintf("small/%d", i), Typeflag: tar.TypeReg, Mode: 0o644}, content(rng.IntN(5000)))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), files
}

// gzipper compresses a tar one way.
type gzipper struct {
	name string
	gz   func(t testing.TB, data []byte) []byte
}

func stdGzip(level int) func(testing.TB, []byte) []byte {
	return func(t testing.TB, data []byte) []byte {
		var b bytes.Buffer
		w, err := gzip.NewWriterLevel(&b, level)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
}

func command(name string, args ...string) func(testing.TB, []byte) []byte {
	return func(t testing.TB, data []byte) []byte {
		path, err := exec.LookPath(name)
		if err != nil {
			t.Skipf("no %s command: %v", name, err)
		}
		cmd := exec.Command(path, args...)
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return out
	}
}

var gzippers = []gzipper{
	{"go-1", stdGzip(gzip.BestSpeed)},
	{"go-9", stdGzip(gzip.BestCompression)},
	{"go-stored", stdGzip(gzip.NoCompression)},
	{"go-huffman", stdGzip(gzip.HuffmanOnly)},
	{"pgzip", func(t testing.TB, data []byte) []byte {
		var b bytes.Buffer
		w := pgzip.NewWriter(&b)
		if err := w.SetConcurrency(100<<10, 4); err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}},
	{"members", func(t testing.TB, data []byte) []byte { // a gzip member per piece
		var out []byte
		cuts := []int{0, 1000, 150 << 10, 151 << 10, len(data) - 10, len(data)}
		for i := 1; i < len(cuts); i++ {
			out = append(out, stdGzip(6)(t, data[cuts[i-1]:cuts[i]])...)
		}
		return out
	}},
	{"gzip-1", command("gzip", "-c", "-1")},
	{"gzip-9", command("gzip", "-c", "-9")},
	{"pigz-1", command("pigz", "-c", "-1")},
	{"pigz-9", command("pigz", "-c", "-9")},
}

// builtWindow returns span i's window from the windows blob x was built
// with.
func builtWindow(t testing.TB, x *Index, i int) []byte {
	t.Helper()
	r := x.WindowRange(i)
	w, err := x.DecodeWindow(i, x.BuiltWindows()[r.Start:r.End])
	if err != nil {
		t.Fatalf("window of span %d: %v", i, err)
	}
	return w
}

// readTar reads n bytes at tar offset off through the index's spans.
func readTar(t testing.TB, x *Index, blob []byte, off, n int64) []byte {
	t.Helper()
	var out []byte
	for n > 0 {
		i := x.FindSpan(off)
		if i < 0 {
			t.Fatalf("no span holds %d", off)
		}
		o, in := x.SpanRanges(i)
		dst := make([]byte, o.End-o.Start)
		if err := x.DecodeSpan(i, builtWindow(t, x, i), blob[in.Start:in.End], dst); err != nil {
			t.Fatalf("span %d: %v", i, err)
		}
		k := min(n, o.End-off)
		out = append(out, dst[off-o.Start:off-o.Start+k]...)
		off, n = off+k, n-k
	}
	return out
}

func TestBuildGzip(t *testing.T) {
	tarData, files := gzipTestTar(t)
	want, err := BuildTar(bytes.NewReader(tarData), "sha256:tar", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gzippers {
		t.Run(g.name, func(t *testing.T) {
			blob := g.gz(t, tarData)
			var tarOut bytes.Buffer
			x, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize, Tar: &tarOut})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tarOut.Bytes(), tarData) {
				t.Fatal("the tar written to SeekOptions.Tar differs")
			}
			if x.Format != FormatGzip || x.Layer != "sha256:layer" || x.BlobSize != int64(len(blob)) || x.TarSize != int64(len(tarData)) {
				t.Fatalf("format %s, layer %s, blob %d (want %d), tar %d (want %d)",
					x.Format, x.Layer, x.BlobSize, len(blob), x.TarSize, len(tarData))
			}
			if err := x.Validate(); err != nil {
				t.Fatal(err)
			}
			// Without a tar to write (and so without chunk digests to
			// compute), the index is the same.
			if y, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize}); err != nil {
				t.Fatal(err)
			} else if !reflect.DeepEqual(x, y) {
				t.Fatal("the index differs when built without SeekOptions.Tar")
			}
			// Windows written out rather than kept: the same blob.
			var wbuf bytes.Buffer
			if z, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize, Windows: &wbuf}); err != nil {
				t.Fatal(err)
			} else if z.BuiltWindows() != nil || z.Windows == nil || *z.Windows != *x.Windows || !bytes.Equal(wbuf.Bytes(), x.BuiltWindows()) {
				t.Fatalf("windows written to SeekOptions.Windows: %d bytes named %+v, want %d named %+v", wbuf.Len(), z.Windows, len(x.BuiltWindows()), x.Windows)
			}
			if min := len(tarData) / (2 * testSpanSize); len(x.Spans) < min {
				t.Fatalf("%d spans, want at least %d", len(x.Spans), min)
			}
			if w := x.Windows; w == nil || int64(len(x.BuiltWindows())) != w.Size || digestString(sha256Of(x.BuiltWindows())) != w.Digest {
				t.Fatalf("windows blob %+v does not name the %d bytes built", w, len(x.BuiltWindows()))
			}
			for i, sp := range x.Spans {
				w := builtWindow(t, x, i)
				if wl := min(sp.Out, WindowSize); int64(len(w)) != wl || !bytes.Equal(w, tarData[sp.Out-wl:sp.Out]) {
					t.Fatalf("span %d: window of %d bytes is not the %d bytes before %d", i, len(w), wl, sp.Out)
				}
			}
			// A damaged window fails its check, in the blob or decoded.
			if len(x.Spans) > 1 {
				r := x.WindowRange(1)
				bad := bytes.Clone(x.BuiltWindows()[r.Start:r.End])
				bad[len(bad)/2] ^= 0x10
				if _, err := x.DecodeWindow(1, bad); !errors.Is(err, ErrSpanDigest) {
					t.Fatalf("damaged compressed window: error %v, want ErrSpanDigest", err)
				}
				w := bytes.Clone(builtWindow(t, x, 1))
				w[0] ^= 1
				out, in := x.SpanRanges(1)
				if err := x.DecodeSpan(1, w, blob[in.Start:in.End], make([]byte, out.End-out.Start)); !errors.Is(err, ErrSpanDigest) {
					t.Fatalf("damaged window: error %v, want ErrSpanDigest", err)
				}
				if err := x.DecodeSpan(1, nil, blob[in.Start:in.End], make([]byte, out.End-out.Start)); !errors.Is(err, ErrSpanDigest) {
					t.Fatalf("missing window: error %v, want ErrSpanDigest", err)
				}
			}

			// Entries match the tar scan and their chunks hold the files.
			if len(x.Entries) != len(want.Entries) {
				t.Fatalf("%d entries, want %d", len(x.Entries), len(want.Entries))
			}
			for i, e := range x.Entries {
				we := want.Entries[i]
				if e.Name != we.Name || e.Type != we.Type || e.Size != we.Size || e.Linkname != we.Linkname || !e.ModTime.Equal(we.ModTime) {
					t.Fatalf("entry %d: %+v, want %+v", i, e, we)
				}
				if e.Type != TypeReg {
					continue
				}
				var got []byte
				for _, c := range e.Chunks {
					if c.Digest != "" {
						t.Fatalf("%s: chunk with a digest", e.Name)
					}
					got = append(got, tarData[c.BlobOffset:c.BlobEnd]...)
				}
				if !bytes.Equal(got, files[e.Name]) {
					t.Fatalf("%s: chunks do not hold the file", e.Name)
				}
			}

			// Every span decodes to its part of the tar.
			for i := range x.Spans {
				out, in := x.SpanRanges(i)
				dst := make([]byte, out.End-out.Start)
				if err := x.DecodeSpan(i, builtWindow(t, x, i), blob[in.Start:in.End], dst); err != nil {
					t.Fatalf("span %d: %v", i, err)
				}
				if !bytes.Equal(dst, tarData[out.Start:out.End]) {
					t.Fatalf("span %d [%d,%d) decodes wrong", i, out.Start, out.End)
				}
			}

			// Reads around span boundaries, at the end and at random.
			rng := rand.New(rand.NewPCG(1, uint64(len(blob))))
			type read struct{ off, n int64 }
			reads := []read{{0, 1}, {x.TarSize - 1, 1}, {x.TarSize - 5000, 5000}}
			for _, sp := range x.Spans[1:] {
				reads = append(reads, read{sp.Out - 1, 2}, read{sp.Out, 1}, read{sp.Out - 1, 1})
			}
			for range 5 {
				off := rng.Int64N(x.TarSize)
				reads = append(reads, read{off, min(x.TarSize-off, 1+rng.Int64N(150<<10))})
			}
			for _, r := range reads {
				if got := readTar(t, x, blob, r.off, r.n); !bytes.Equal(got, tarData[r.off:r.off+r.n]) {
					t.Fatalf("read [%d,+%d) differs", r.off, r.n)
				}
			}

			// A damaged span fails its digest check and writes nothing.
			i := len(x.Spans) / 2
			out, in := x.SpanRanges(i)
			src := bytes.Clone(blob[in.Start:in.End])
			src[len(src)/2] ^= 1
			dst := make([]byte, out.End-out.Start)
			if err := x.DecodeSpan(i, builtWindow(t, x, i), src, dst); !errors.Is(err, ErrSpanDigest) {
				t.Fatalf("damaged span: error %v, want ErrSpanDigest", err)
			}
			if bytes.Count(dst, []byte{0}) != len(dst) {
				t.Fatal("damaged span: bytes written to dst")
			}

			// The index survives its encoding.
			var enc bytes.Buffer
			if err := x.Encode(&enc); err != nil {
				t.Fatal(err)
			}
			encSize := enc.Len()
			y, err := Decode(&enc)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(y.Spans, x.Spans) || y.BlobSize != x.BlobSize || y.TarSize != x.TarSize || y.Format != x.Format {
				t.Fatal("spans differ after Encode and Decode")
			}
			t.Logf("%d bytes of tar, %d of gzip, %d spans, index %d bytes", len(tarData), len(blob), len(x.Spans), encSize)
		})
	}
}

func TestBuildGzipDefaultSpanSize(t *testing.T) {
	// Mostly zeros, which decode fast, with text between them.
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for i := range 6 {
		for j, data := range [][]byte{make([]byte, 1<<20+i), bytes.Repeat([]byte(fmt.Sprintf("line %d\n", i)), 20000)} {
			hdr := &tar.Header{Name: fmt.Sprintf("f%d-%d", i, j), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}
			if err := tw.WriteHeader(hdr); err != nil {
				t.Fatal(err)
			}
			tw.Write(data)
		}
	}
	tw.Close()
	tarData := b.Bytes()
	blob := stdGzip(1)(t, tarData)
	x, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if x.Format != FormatGzip || len(x.Spans) < 2 || int64(len(x.Spans)) > x.TarSize/DefaultSpanSize+1 || x.TarSize != int64(len(tarData)) {
		t.Fatalf("format %s, %d spans, tar %d of %d", x.Format, len(x.Spans), x.TarSize, len(tarData))
	}
	for i := range len(x.Spans) - 1 {
		if out, _ := x.SpanRanges(i); out.End-out.Start < DefaultSpanSize || out.End-out.Start > DefaultSpanSize+(1<<20) {
			t.Fatalf("span %d is %d bytes", i, out.End-out.Start)
		}
	}
	if got := readTar(t, x, blob, x.Spans[1].Out-10, 20); !bytes.Equal(got, tarData[x.Spans[1].Out-10:x.Spans[1].Out+10]) {
		t.Fatal("read across the span boundary differs")
	}
}

func TestBuildGzipBroken(t *testing.T) {
	tarData, _ := gzipTestTar(t)
	blob := stdGzip(6)(t, tarData)
	flip := func(i int) []byte {
		b := bytes.Clone(blob)
		b[i] ^= 0x10
		return b
	}
	for _, tc := range []struct {
		name string
		blob []byte
	}{
		{"empty", nil},
		{"header only", blob[:10]},
		{"half", blob[:len(blob)/2]},
		{"no trailer", blob[:len(blob)-8]},
		{"short trailer", blob[:len(blob)-1]},
		{"damaged data", flip(len(blob) / 3)},
		{"damaged crc", flip(len(blob) - 6)},
		{"not gzip", tarData},
		{"trailing garbage", append(bytes.Clone(blob), "garbage!garbage!"...)},
		{"not a tar", stdGzip(6)(t, bytes.Repeat([]byte("not a tar header "), 100))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := BuildGzip(bytes.NewReader(tc.blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize})
			if err == nil {
				t.Fatalf("built an index of %s", x.Format)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v, want ErrMalformed", err)
			}
		})
	}
	t.Run("read error", func(t *testing.T) {
		boom := errors.New("boom")
		r := io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), iotestErrReader{boom})
		if _, err := BuildGzip(r, "sha256:layer", SeekOptions{}); !errors.Is(err, boom) {
			t.Fatalf("error %v, want the reader's", err)
		}
	})
	t.Run("tar write error", func(t *testing.T) {
		boom := errors.New("disk full")
		_, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{Tar: failWriter{boom}})
		if !errors.Is(err, boom) {
			t.Fatalf("error %v, want the writer's", err)
		}
	})
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

// bigBlockGzip returns a gzip member holding one fixed-Huffman block that
// decompresses to a tar of one file of size zero bytes, so no restart point
// lies inside it.
func bigBlockGzip(t testing.TB, size int) (blob, tarData []byte) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size), ModTime: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	head := bytes.Clone(tb.Bytes())
	tarLen := 512 + (size+511)/512*512 + 1024
	tarData = make([]byte, tarLen)
	copy(tarData, head)

	var bits uint64
	var nbits uint
	var out []byte
	put := func(v uint64, n uint) {
		bits |= v << nbits
		nbits += n
		for nbits >= 8 {
			out = append(out, byte(bits))
			bits >>= 8
			nbits -= 8
		}
	}
	rev := func(c uint64, n uint) uint64 {
		var r uint64
		for range n {
			r = r<<1 | c&1
			c >>= 1
		}
		return r
	}
	lit := func(b byte) {
		if b < 144 {
			put(rev(0x30+uint64(b), 8), 8)
		} else {
			put(rev(0x190+uint64(b)-144, 9), 9)
		}
	}
	put(1, 1) // final
	put(1, 2) // fixed
	for _, b := range head {
		lit(b)
	}
	lit(0)
	left := tarLen - len(head) - 1
	for left >= 258+3 {
		put(rev(0xc5, 8), 8) // length 258
		put(0, 5)            // distance 1
		left -= 258
	}
	for ; left > 0; left-- {
		lit(0)
	}
	put(0, 7) // end of block
	put(0, 7) // flush
	var b bytes.Buffer
	b.Write([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255})
	b.Write(out)
	b.Write(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(tarData)))
	b.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(tarData))))
	return b.Bytes(), tarData
}

func TestBuildGzipNotSeekable(t *testing.T) {
	blob, tarData := bigBlockGzip(t, MaxSpanSize+(1<<20))
	var tarOut bytes.Buffer
	x, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize, Tar: &tarOut})
	if err != nil {
		t.Fatal(err)
	}
	if x.Format != FormatTar || len(x.Spans) != 0 || x.BlobSize != 0 || x.TarSize != 0 {
		t.Fatalf("format %s, %d spans, sizes %d and %d", x.Format, len(x.Spans), x.BlobSize, x.TarSize)
	}
	if !bytes.Equal(tarOut.Bytes(), tarData) {
		t.Fatal("the tar written to SeekOptions.Tar differs")
	}
	want, err := BuildTar(bytes.NewReader(tarData), "sha256:layer", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(x, want) {
		t.Fatal("index differs from BuildTar's of the tar")
	}

	// Without a tar to keep, the index would be of no use.
	_, err = BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize})
	if !errors.Is(err, ErrNotSeekable) {
		t.Fatalf("without SeekOptions.Tar: error %v, want ErrNotSeekable", err)
	}

	// The same kind of stream, small enough, is seekable with a single span.
	blob, tarData = bigBlockGzip(t, 3<<20)
	x, err = BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize})
	if err != nil {
		t.Fatal(err)
	}
	if x.Format != FormatGzip || len(x.Spans) != 1 || x.TarSize != int64(len(tarData)) {
		t.Fatalf("format %s, %d spans", x.Format, len(x.Spans))
	}
	dst := make([]byte, x.TarSize)
	if err := x.DecodeSpan(0, nil, blob[x.Spans[0].InBits/8:], dst); err != nil || !bytes.Equal(dst, tarData) {
		t.Fatalf("decode: %v", err)
	}
}

func TestBuildGzipEmptyTar(t *testing.T) {
	blob := stdGzip(6)(t, nil)
	x, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{Tar: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if x.Format != FormatTar || len(x.Entries) != 0 {
		t.Fatalf("format %s, %d entries", x.Format, len(x.Entries))
	}
	if _, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{}); !errors.Is(err, ErrNotSeekable) {
		t.Fatalf("without SeekOptions.Tar: error %v, want ErrNotSeekable", err)
	}
}

func TestDecodeGzipSpanShort(t *testing.T) {
	tarData, _ := gzipTestTar(t)
	blob := stdGzip(6)(t, tarData)
	x, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1, len(x.Spans) - 1} {
		out, in := x.SpanRanges(i)
		src := blob[in.Start:in.End]
		dst := make([]byte, out.End-out.Start)
		for _, cut := range []int{0, 1, len(src) / 2, len(src) - 20} {
			if err := decodeGzipSpan(&x.Spans[i], builtWindow(t, x, i), src[:cut], dst); !errors.Is(err, ErrMalformed) {
				t.Fatalf("span %d cut to %d bytes: error %v", i, cut, err)
			}
		}
		if err := decodeGzipSpan(&x.Spans[i], builtWindow(t, x, i), src, dst); err != nil || !bytes.Equal(dst, tarData[out.Start:out.End]) {
			t.Fatalf("span %d: %v", i, err)
		}
		// A span asked for more than it holds fails.
		if i < len(x.Spans)-1 {
			if err := decodeGzipSpan(&x.Spans[i], builtWindow(t, x, i), src, make([]byte, len(dst)+1000)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("span %d read past its end: error %v", i, err)
			}
		}
	}
}

func TestDecodeGzipSpanAllocs(t *testing.T) {
	tarData, _ := gzipTestTar(t)
	blob := stdGzip(6)(t, tarData)
	x, err := BuildGzip(bytes.NewReader(blob), "sha256:layer", SeekOptions{SpanSize: testSpanSize})
	if err != nil {
		t.Fatal(err)
	}
	out, in := x.SpanRanges(3)
	dst := make([]byte, out.End-out.Start)
	w := builtWindow(t, x, 3)
	decodeGzipSpan(&x.Spans[3], w, blob[in.Start:in.End], dst) // warm the pool
	allocs := testing.AllocsPerRun(20, func() {
		if err := decodeGzipSpan(&x.Spans[3], w, blob[in.Start:in.End], dst); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 2 {
		t.Fatalf("%v allocations per span", allocs)
	}
}

func sha256Of(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}
