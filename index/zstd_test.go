package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// zstdFrames compresses raw as one frame per piece of at most frameSize
// bytes (a single frame when frameSize is 0), with a skippable frame after
// the first one when skippable is set.
func zstdFrames(t *testing.T, raw []byte, frameSize int, skippable bool) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	if frameSize == 0 {
		frameSize = len(raw) + 1
	}
	var out []byte
	for off := 0; off < len(raw); off += frameSize {
		out = enc.EncodeAll(raw[off:min(off+frameSize, len(raw))], out)
		if skippable && off == 0 {
			var hdr [8]byte
			binary.LittleEndian.PutUint32(hdr[:4], 0x184D2A5E)
			binary.LittleEndian.PutUint32(hdr[4:], 5)
			out = append(append(out, hdr[:]...), "hello"...)
		}
	}
	return out
}

// zstdStreamFrames compresses raw with a streaming encoder, one frame per
// frameSize bytes: frames that declare a window (not single-segment), as
// streaming encoders and the zstd command write them.
func zstdStreamFrames(t *testing.T, raw []byte, frameSize int) []byte {
	t.Helper()
	var out bytes.Buffer
	enc, err := zstd.NewWriter(&out, zstd.WithWindowSize(8<<20), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(raw); off += frameSize {
		enc.Reset(&out)
		if _, err := enc.Write(raw[off:min(off+frameSize, len(raw))]); err != nil {
			t.Fatal(err)
		}
		if err := enc.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

// seekableTar is a tar with files of awkward sizes for span tests.
func seekableTar(t *testing.T, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	var entries []tarEntry
	for i, size := range []int{0, 1, 511, 512, 4096, 64 << 10, 300 << 10, 1 << 20, 3<<20 + 7} {
		content := make([]byte, size)
		for j := range content {
			content[j] = byte(rng.IntN(16)) + 'a' // compressible, not trivial
		}
		entries = append(entries, tarEntry{name: fmt.Sprintf("d/f%02d", i), content: string(content)})
	}
	entries = append(entries, tarEntry{name: "d/link", typ: '2', link: "f01"})
	return makeTar(t, entries...)
}

// checkSpans decodes every span of x from blob and compares it with raw.
func checkSpans(t *testing.T, x *Index, blob, raw []byte) {
	t.Helper()
	if x.TarSize != int64(len(raw)) || x.BlobSize != int64(len(blob)) {
		t.Fatalf("sizes: tar %d blob %d, want %d and %d", x.TarSize, x.BlobSize, len(raw), len(blob))
	}
	for i := range x.Spans {
		out, in := x.SpanRanges(i)
		dst := make([]byte, out.End-out.Start)
		if err := x.DecodeSpan(i, nil, blob[in.Start:in.End], dst); err != nil {
			t.Fatalf("span %d: %v", i, err)
		}
		if !bytes.Equal(dst, raw[out.Start:out.End]) {
			t.Fatalf("span %d [%d,%d): wrong bytes", i, out.Start, out.End)
		}
	}
	for _, e := range x.Entries {
		for _, c := range e.Chunks {
			if c.BlobEnd > int64(len(raw)) {
				t.Fatalf("%s: chunk past the tar", e.Name)
			}
			if i := x.FindSpan(c.BlobOffset); i < 0 || x.Spans[i].Out > c.BlobOffset {
				t.Fatalf("%s: FindSpan(%d) = %d", e.Name, c.BlobOffset, i)
			}
		}
	}
}

func TestBuildZstd(t *testing.T) {
	raw := seekableTar(t, 1)
	for _, tc := range []struct {
		name      string
		frameSize int
		skippable bool
		spanSize  int64
		want      Format
		minSpans  int
		stream    bool
	}{
		{"streamed frames with an 8 MiB window", 512 << 10, false, 1 << 20, FormatZstd, 4, true},
		{"frames of 64 KiB", 64 << 10, false, 256 << 10, FormatZstd, 10, false},
		{"frames of 1 MiB, default spans", 1 << 20, false, 0, FormatZstd, 2, false},
		{"with a skippable frame", 100 << 10, true, 200 << 10, FormatZstd, 5, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob := zstdFrames(t, raw, tc.frameSize, tc.skippable)
			if tc.stream {
				blob = zstdStreamFrames(t, raw, tc.frameSize)
			}
			var tee bytes.Buffer
			x, err := BuildZstd(bytes.NewReader(blob), "sha256:"+fmt.Sprintf("%064x", 1), SeekOptions{SpanSize: tc.spanSize, Tar: &tee})
			if err != nil {
				t.Fatal(err)
			}
			if x.Format != tc.want || len(x.Spans) < tc.minSpans {
				t.Fatalf("format %s with %d spans, want %s with at least %d", x.Format, len(x.Spans), tc.want, tc.minSpans)
			}
			if !bytes.Equal(tee.Bytes(), raw) {
				t.Fatal("the Tar writer did not get the uncompressed tar")
			}
			checkSpans(t, x, blob, raw)
			if len(x.Entries) != 10 || x.Entries[8].Size != 3<<20+7 {
				t.Fatalf("entries: %d", len(x.Entries))
			}
			// A damaged span is refused before it is decoded.
			out, in := x.SpanRanges(len(x.Spans) - 1)
			bad := bytes.Clone(blob[in.Start:in.End])
			bad[len(bad)/2] ^= 1
			if err := x.DecodeSpan(len(x.Spans)-1, nil, bad, make([]byte, out.End-out.Start)); !errors.Is(err, ErrSpanDigest) {
				t.Fatalf("damaged span: %v, want ErrSpanDigest", err)
			}
		})
	}
}

func TestBuildZstdNotSeekable(t *testing.T) {
	raw := seekableTar(t, 4)
	var tee bytes.Buffer
	if _, err := BuildZstd(bytes.NewReader(zstdFrames(t, raw, 0, false)), "sha256:"+fmt.Sprintf("%064x", 4), SeekOptions{Tar: &tee}); !errors.Is(err, ErrNotSeekable) || !bytes.Equal(tee.Bytes(), raw) {
		t.Fatalf("single frame: %v, want ErrNotSeekable and the whole tar", err)
	}
}

func TestBuildZstdFrameTooLarge(t *testing.T) {
	// A frame larger than a span may be makes the blob unseekable, even
	// when the frames before it were fine.
	head := seekableTar(t, 2)
	raw := append(bytes.Clone(head), make([]byte, MaxSpanSize+(1<<20))...) // a valid tar, then zero padding
	blob := append(zstdFrames(t, head, 0, false), zstdFrames(t, raw[len(head):], 0, false)...)
	var tee bytes.Buffer
	_, err := BuildZstd(bytes.NewReader(blob), "sha256:"+fmt.Sprintf("%064x", 2), SeekOptions{Tar: &tee})
	if !errors.Is(err, ErrNotSeekable) || tee.Len() != len(raw) {
		t.Fatalf("got %v with %d tar bytes, want ErrNotSeekable and %d", err, tee.Len(), len(raw))
	}
}

func TestBuildZstdRejects(t *testing.T) {
	raw := seekableTar(t, 3)
	blob := zstdFrames(t, raw, 64<<10, false)
	for _, tc := range []struct {
		name string
		blob []byte
	}{
		{"truncated", blob[:len(blob)-10]},
		{"cut at a frame header", blob[:6]},
		{"not zstd", []byte("this is not a zstd stream at all")},
		{"empty", nil},
		{"garbage after frames", append(bytes.Clone(blob), 1, 2, 3, 4, 5)},
		{"bad block", func() []byte { b := bytes.Clone(blob); b[20] ^= 0xff; b[21] ^= 0xff; return b }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := BuildZstd(bytes.NewReader(tc.blob), "sha256:"+fmt.Sprintf("%064x", 3), SeekOptions{}); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}
