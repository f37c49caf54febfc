package testutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

// randomBytes returns n reproducible, incompressible bytes.
func randomBytes(seed uint64, n int) []byte {
	p := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	_, _ = r.Read(p)
	return p
}

func sampleEntries() []Entry {
	return []Entry{
		{Name: "./", Type: tar.TypeDir},
		{Name: "etc/", Type: tar.TypeDir},
		{Name: "etc/hostname", Content: []byte("lazyroot\n")},
		{Name: "big", Content: randomBytes(1, 300<<10), Mode: 0o600, UID: 1000, GID: 1000},
		{Name: "etc/link", Type: tar.TypeSymlink, Linkname: "hostname"},
		{Name: "hard", Type: tar.TypeLink, Linkname: "etc/hostname"},
		{Name: "suid", Content: []byte("#!/bin/sh\n"), Mode: 0o4755},
		{Name: "attr", Content: []byte("x"), Xattrs: map[string]string{"user.test": "v"}},
	}
}

func TestTarHeaders(t *testing.T) {
	tr := tar.NewReader(bytes.NewReader(Tar(t, sampleEntries())))
	var got []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %c %o %s", hdr.Name, hdr.Typeflag, hdr.Mode, hdr.ModTime.UTC().Format("2006-01-02T15:04:05Z")))
		if hdr.Name == "attr" && hdr.PAXRecords["SCHILY.xattr.user.test"] != "v" {
			t.Errorf("attr: PAX records %v", hdr.PAXRecords)
		}
	}
	want := []string{
		"./ 5 755 2024-01-02T03:04:05Z",
		"etc/ 5 755 2024-01-02T03:04:05Z",
		"etc/hostname 0 644 2024-01-02T03:04:05Z",
		"big 0 600 2024-01-02T03:04:05Z",
		"etc/link 2 777 2024-01-02T03:04:05Z",
		"hard 1 644 2024-01-02T03:04:05Z",
		"suid 0 4755 2024-01-02T03:04:05Z",
		"attr 0 644 2024-01-02T03:04:05Z",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("headers:\n got %q\nwant %q", got, want)
	}
}

func TestLayerRoundTrip(t *testing.T) {
	entries := sampleEntries()
	tarball := Tar(t, entries)
	big := entries[3].Content
	wantMediaType := map[Format]types.MediaType{
		Gzip:         types.OCILayer,
		EStargz:      types.OCILayer,
		ZstdChunked:  types.OCILayerZStd,
		Uncompressed: types.OCIUncompressedLayer,
		Zstd:         types.OCILayerZStd,
		ZstdFrames:   types.OCILayerZStd,
	}
	for _, f := range GzipFormats[1:] {
		wantMediaType[f] = types.OCILayer
	}
	for _, f := range append(Formats, GzipFormats[1:]...) {
		t.Run(string(f), func(t *testing.T) {
			l, ann := Layer(t, tarball, f, WithChunkSize(64<<10))
			blob := readAll(t, l.Compressed)
			checkLayerIdentity(t, l, blob)
			if mt, _ := l.MediaType(); mt != wantMediaType[f] {
				t.Errorf("media type %s, want %s", mt, wantMediaType[f])
			}
			switch f {
			case EStargz, ZstdChunked:
				checkEStargz(t, f, blob, ann, big)
			default:
				if len(ann) != 0 {
					t.Errorf("annotations %v, want none", ann)
				}
				if got := decompress(t, f, blob); !bytes.Equal(got, tarball) {
					t.Errorf("decompressed blob differs from the tar (%d vs %d bytes)", len(got), len(tarball))
				}
				if got := readAll(t, l.Uncompressed); !bytes.Equal(got, tarball) {
					t.Errorf("Uncompressed differs from the tar")
				}
			}
		})
	}
}

// TestLayerReproducible checks that one tar gives one blob, whatever
// GOMAXPROCS is: tests may rely on layer digests being stable.
func TestLayerReproducible(t *testing.T) {
	tarball := Tar(t, sampleEntries())
	for _, f := range Formats {
		l1, _ := Layer(t, tarball, f)
		prev := runtime.GOMAXPROCS(4)
		l2, _ := Layer(t, tarball, f)
		runtime.GOMAXPROCS(prev)
		d1, _ := l1.Digest()
		d2, _ := l2.Digest()
		if d1 != d2 {
			t.Errorf("%s: digests %s and %s for one tar", f, d1, d2)
		}
	}
}

func checkLayerIdentity(t *testing.T, l v1.Layer, blob []byte) {
	t.Helper()
	d, _ := l.Digest()
	if want := sha256Hash(blob); d != want {
		t.Errorf("digest %s, want %s", d, want)
	}
	if size, _ := l.Size(); size != int64(len(blob)) {
		t.Errorf("size %d, want %d", size, len(blob))
	}
	diffID, _ := l.DiffID()
	if want := sha256Hash(readAll(t, l.Uncompressed)); diffID != want {
		t.Errorf("diffID %s, want %s", diffID, want)
	}
}

func checkEStargz(t *testing.T, f Format, blob []byte, ann map[string]string, big []byte) {
	t.Helper()
	tocDigest, err := digest.Parse(ann[estargz.TOCJSONDigestAnnotation])
	if err != nil {
		t.Fatalf("TOC digest annotation: %v (annotations %v)", err, ann)
	}
	if ann[estargz.StoreUncompressedSizeAnnotation] == "" {
		t.Errorf("no %s annotation", estargz.StoreUncompressedSizeAnnotation)
	}
	var opts []estargz.OpenOption
	if f == ZstdChunked {
		for _, k := range []string{zstdchunked.ManifestChecksumAnnotation, zstdchunked.ManifestPositionAnnotation} {
			if ann[k] == "" {
				t.Errorf("no %s annotation", k)
			}
		}
		opts = append(opts, estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	}
	r, err := estargz.Open(io.NewSectionReader(bytes.NewReader(blob), 0, int64(len(blob))), opts...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if _, err := r.VerifyTOC(tocDigest); err != nil {
		t.Fatalf("verify TOC: %v", err)
	}
	if _, err := r.VerifyTOC(digest.FromString("other")); err == nil {
		t.Errorf("VerifyTOC accepted a wrong digest")
	}
	sr, err := r.OpenFile("big")
	if err != nil {
		t.Fatalf("open big: %v", err)
	}
	got, err := io.ReadAll(sr)
	if err != nil {
		t.Fatalf("read big: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Errorf("big: read %d bytes, differs from the %d written", len(got), len(big))
	}
	// WithChunkSize(64 KiB) splits the 300 KiB file.
	if ce, ok := r.ChunkEntryForOffset("big", 100<<10); !ok || ce.ChunkOffset != 64<<10 {
		t.Errorf("chunk at 100 KiB: %+v %v, want one starting at 64 KiB", ce, ok)
	}
	if e, ok := r.Lookup("etc/link"); !ok || e.LinkName != "hostname" {
		t.Errorf("etc/link: %+v %v", e, ok)
	}
}

func decompress(t *testing.T, f Format, blob []byte) []byte {
	t.Helper()
	switch f {
	case Gzip, GzipBest, GzipFast, PGzip, GzipCmd1, GzipCmd9, Pigz1, Pigz9, GzipMulti:
		zr, err := gzip.NewReader(bytes.NewReader(blob))
		if err != nil {
			t.Fatal(err)
		}
		p, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return p
	case Zstd, ZstdFrames:
		d, err := zstd.NewReader(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		p, err := d.DecodeAll(blob, nil)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	return blob
}

func readAll(t *testing.T, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	p, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func sha256Hex(p []byte) string { return fmt.Sprintf("%x", sha256.Sum256(p)) }
