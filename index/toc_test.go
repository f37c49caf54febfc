package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
)

type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

// buildTOCBlob returns an eStargz or zstd:chunked blob of raw and its TOC
// digests.
func buildTOCBlob(t *testing.T, raw []byte, f Format) ([]byte, TOCDigests) {
	t.Helper()
	opts := []estargz.Option{estargz.WithChunkSize(3000)}
	meta := map[string]string{}
	if f == FormatZstdChunked {
		opts = append(opts, estargz.WithCompression(zstdCompression{&zstdchunked.Compressor{CompressionLevel: zstd.SpeedFastest, Metadata: meta}, new(zstdchunked.Decompressor)}))
	}
	blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	b, err := io.ReadAll(blob)
	if err != nil {
		t.Fatal(err)
	}
	return b, TOCDigests{JSON: blob.TOCDigest().String(), Compressed: meta[zstdchunked.ManifestChecksumAnnotation]}
}

// readChunkForTest decodes one chunk the way the layer reader does.
func readChunkForTest(t *testing.T, blob []byte, f Format, c Chunk) []byte {
	t.Helper()
	unit := bytes.NewReader(blob[c.BlobOffset:c.BlobEnd])
	var r io.Reader
	switch f {
	case FormatEStargz:
		zr, err := gzip.NewReader(unit)
		if err != nil {
			t.Fatal(err)
		}
		zr.Multistream(false)
		r = zr
	case FormatZstdChunked:
		zr, err := zstd.NewReader(unit)
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	}
	b := make([]byte, c.InnerOffset+c.Size)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("chunk at %d: %v", c.BlobOffset, err)
	}
	return b[c.InnerOffset:]
}

func TestReadTOC(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 10000)
	for i := range big {
		big[i] = byte(rng.IntN(256))
	}
	raw := makeTar(t,
		tarEntry{name: "d/", typ: tar.TypeDir, mode: 0750},
		tarEntry{name: "d/big", content: string(big), mode: 04711, xattrs: map[string]string{"user.a": "b"}},
		tarEntry{name: "d/small", content: "small"},
		tarEntry{name: "d/empty"},
		tarEntry{name: "d/sym", typ: tar.TypeSymlink, link: "big"},
		tarEntry{name: "d/hard", typ: tar.TypeLink, link: "d/small"},
		tarEntry{name: "d/.wh.gone"},
	)
	for _, f := range []Format{FormatEStargz, FormatZstdChunked} {
		t.Run(string(f), func(t *testing.T) {
			blob, want := buildTOCBlob(t, raw, f)
			x, err := ReadTOC(bytes.NewReader(blob), int64(len(blob)), "sha256:blob", f, want)
			if err != nil {
				t.Fatal(err)
			}
			if err := x.Validate(); err != nil {
				t.Fatal(err)
			}
			byName := map[string]Entry{}
			for _, e := range x.Entries {
				if IsTOCArtifact(e.Name) {
					t.Errorf("TOC artifact %q listed", e.Name)
				}
				byName[e.Name] = e
			}
			for name, content := range map[string][]byte{"d/big": big, "d/small": []byte("small"), "d/empty": nil} {
				e, ok := byName[name]
				if !ok {
					t.Fatalf("%s missing", name)
				}
				var got []byte
				for _, c := range e.Chunks {
					b := readChunkForTest(t, blob, f, c)
					if fmt.Sprintf("sha256:%x", sha256.Sum256(b)) != c.Digest {
						t.Errorf("%s chunk at %d: digest mismatch", name, c.Offset)
					}
					got = append(got, b...)
				}
				if !bytes.Equal(got, content) {
					t.Errorf("%s: content differs (%d bytes, want %d)", name, len(got), len(content))
				}
			}
			if e := byName["d/big"]; e.Mode != 04711 || len(e.Chunks) < 3 || string(e.Xattrs["user.a"]) != "b" {
				t.Errorf("d/big: mode %o, %d chunks, xattrs %q", e.Mode, len(e.Chunks), e.Xattrs)
			}
			if e := byName["d/hard"]; e.Type != TypeHardlink || e.Linkname != "d/small" {
				t.Errorf("d/hard: %s -> %q", e.Type, e.Linkname)
			}
			if _, ok := byName["d/.wh.gone"]; !ok {
				t.Errorf("whiteout entry dropped from the TOC index")
			}

			bad := want
			bad.JSON = "sha256:" + fmt.Sprintf("%064x", 0)
			if f == FormatZstdChunked {
				bad.Compressed = bad.JSON
			}
			if _, err := ReadTOC(bytes.NewReader(blob), int64(len(blob)), "sha256:blob", f, bad); !errors.Is(err, ErrTOCDigest) {
				t.Errorf("wrong digest: %v; want ErrTOCDigest", err)
			}
			if _, err := ReadTOC(bytes.NewReader(blob), int64(len(blob)), "sha256:blob", f, TOCDigests{}); err == nil {
				t.Errorf("no digest: accepted an unverifiable TOC")
			}
			broken := bytes.Clone(blob)
			for i := len(broken) - 40; i < len(broken); i++ {
				broken[i] ^= 0xff
			}
			if _, err := ReadTOC(bytes.NewReader(broken), int64(len(broken)), "sha256:blob", f, want); err == nil {
				t.Errorf("damaged footer accepted")
			}
		})
	}
}

// countingReaderAt records the reads made through it.
type countingReaderAt struct {
	r     io.ReaderAt
	reads [][2]int64 // offset, length
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.reads = append(c.reads, [2]int64{off, int64(len(p))})
	return c.r.ReadAt(p, off)
}

// TestReadTOCReads: the footer and a TOC that fits in the blob's tail come
// in one read; a larger TOC takes a second read of its missing head only.
func TestReadTOCReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	entries := func(n int) []tarEntry {
		var es []tarEntry
		for i := range n {
			b := make([]byte, 100)
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
			es = append(es, tarEntry{name: fmt.Sprintf("f%05d-%x", i, b[:8]), content: string(b)})
		}
		return es
	}
	for _, tc := range []struct {
		name  string
		files int
		reads int
	}{{"small toc", 10, 1}, {"toc larger than the tail", 6000, 2}} {
		for _, f := range []Format{FormatEStargz, FormatZstdChunked} {
			t.Run(tc.name+"/"+string(f), func(t *testing.T) {
				blob, want := buildTOCBlob(t, makeTar(t, entries(tc.files)...), f)
				cr := &countingReaderAt{r: bytes.NewReader(blob)}
				x, err := ReadTOC(cr, int64(len(blob)), "sha256:blob", f, want)
				if err != nil {
					t.Fatal(err)
				}
				if len(x.Entries) < tc.files {
					t.Fatalf("%d entries, want at least %d", len(x.Entries), tc.files)
				}
				if len(cr.reads) != tc.reads {
					t.Fatalf("reads %v, want %d", cr.reads, tc.reads)
				}
				tail := cr.reads[0]
				if want := TailReadSize(int64(len(blob))); tail[0]+tail[1] != int64(len(blob)) || tail[1] != want {
					t.Errorf("first read [%d,+%d) of a %d byte blob, want its last %d bytes", tail[0], tail[1], len(blob), want)
				}
				if tc.reads == 2 {
					// The head of the TOC, up to where the tail began.
					if head := cr.reads[1]; head[0]+head[1] != tail[0] {
						t.Errorf("second read [%d,+%d) does not end where the tail [%d,...) begins", head[0], head[1], tail[0])
					}
				}
			})
		}
	}
}

func TestTailReadSize(t *testing.T) {
	for _, tc := range []struct{ size, want int64 }{
		{100, 100},
		{1 << 20, 256 << 10},
		{32 << 20, 256 << 10},
		{52 << 20, 416 << 10},
		{64 << 20, 512 << 10},
		{1 << 30, 512 << 10},
	} {
		if got := TailReadSize(tc.size); got != tc.want {
			t.Errorf("TailReadSize(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}
