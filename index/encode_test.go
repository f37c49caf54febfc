package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// encodeRaw frames payload JSON the way Encode does, with a valid checksum,
// so Decode's later checks are reached.
func encodeRaw(t *testing.T, json string) []byte {
	t.Helper()
	var payload bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&payload, gzip.BestCompression)
	zw.Write([]byte(json))
	zw.Close()
	var head [20]byte
	copy(head[:8], encodingMagic[:])
	binary.BigEndian.PutUint32(head[8:12], EncodingVersion)
	binary.BigEndian.PutUint64(head[12:20], uint64(payload.Len()))
	out := append(head[:], payload.Bytes()...)
	sum := sha256.Sum256(out)
	return append(out, sum[:]...)
}

func TestDecodeBounds(t *testing.T) {
	// A tiny encoding that expands to gigabytes of JSON whitespace must be
	// refused, not decoded into memory.
	bomb := encodeRaw(t, `{"layer":"sha256:`+strings.Repeat("0", 64)+`","format":"tar","entries":[`+strings.Repeat(" ", 64<<20)+`]}`)
	if len(bomb) > 1<<20 {
		t.Fatalf("the bomb is %d bytes; want a small one", len(bomb))
	}
	if _, err := Decode(bytes.NewReader(bomb)); !errors.Is(err, ErrMalformed) {
		t.Errorf("bomb: %v, want ErrMalformed", err)
	}
	// A header that claims a huge payload over a short stream is
	// truncated, and nothing that large is allocated up front.
	head := bytes.Clone(bomb[:20])
	binary.BigEndian.PutUint64(head[12:20], maxEncodedSize)
	if _, err := Decode(bytes.NewReader(append(head, 1, 2, 3))); !errors.Is(err, ErrChecksum) {
		t.Errorf("short payload: %v, want ErrChecksum", err)
	}
	binary.BigEndian.PutUint64(head[12:20], maxEncodedSize+1)
	if _, err := Decode(bytes.NewReader(head)); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized payload: %v, want ErrMalformed", err)
	}
	// The same framing around honest JSON decodes.
	ok := encodeRaw(t, `{"layer":"sha256:`+strings.Repeat("0", 64)+`","format":"tar","entries":[]}`)
	if _, err := Decode(bytes.NewReader(ok)); err != nil {
		t.Errorf("honest index: %v", err)
	}
}

// smallFilesIndex is the index of a layer of 6,000 small files, about the size
// of a Debian base layer's.
func smallFilesIndex(b *testing.B) *Index {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for i := range 6000 {
		body := []byte(fmt.Sprintf("file %d\n", i))
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("usr/share/doc/pkg%03d/file%d", i/20, i), Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write(body)
	}
	tw.Close()
	x, err := BuildTar(bytes.NewReader(tb.Bytes()), "sha256:"+strings.Repeat("ab", 32), 0)
	if err != nil {
		b.Fatal(err)
	}
	return x
}

// BenchmarkDecode decodes smallFilesIndex, as every mount does for each layer
// without a TOC.
func BenchmarkDecode(b *testing.B) {
	x := smallFilesIndex(b)
	var enc bytes.Buffer
	if err := x.Encode(&enc); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Decode(bytes.NewReader(enc.Bytes())); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncode encodes smallFilesIndex, as a mount does in the background
// for each layer it indexed from a TOC or stream.
func BenchmarkEncode(b *testing.B) {
	x := smallFilesIndex(b)
	var enc bytes.Buffer
	for b.Loop() {
		enc.Reset()
		if err := x.Encode(&enc); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(enc.Len()), "bytes")
}
