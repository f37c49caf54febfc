package index

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"errors"
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
