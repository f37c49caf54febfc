package testutil

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// Format is how a test layer's tar stream is compressed.
type Format string

// The layer formats Layer can build.
const (
	Gzip         Format = "gzip"
	EStargz      Format = "estargz"
	ZstdChunked  Format = "zstd:chunked"
	Uncompressed Format = "uncompressed"
	Zstd         Format = "zstd"
	// ZstdFrames is zstd with a frame every 256 KiB of input, as some
	// encoders write it: seekable at frame boundaries.
	ZstdFrames Format = "zstd-frames"
)

// Plain gzip layers made by different compressors, all tar+gzip: their
// DEFLATE streams differ in block sizes, levels and member counts.
const (
	GzipBest  Format = "gzip-go-9"  // Go's compress/gzip at level 9
	GzipFast  Format = "gzip-go-1"  // Go's compress/gzip at level 1
	PGzip     Format = "pgzip"      // klauspost/pgzip, 64 KiB blocks compressed in parallel
	GzipCmd1  Format = "gzip-cmd-1" // the gzip command, -1
	GzipCmd9  Format = "gzip-cmd-9" // the gzip command, -9
	Pigz1     Format = "pigz-1"     // the pigz command, -1
	Pigz9     Format = "pigz-9"     // the pigz command, -9
	GzipMulti Format = "gzip-multi" // several gzip members, concatenated
)

// Formats lists every Format with its own media type or layout, for table
// tests.
var Formats = []Format{Gzip, EStargz, ZstdChunked, Uncompressed, Zstd, ZstdFrames}

// GzipFormats lists the gzip compressors; the command ones need the gzip
// and pigz programs on PATH.
var GzipFormats = []Format{Gzip, GzipBest, GzipFast, PGzip, GzipCmd1, GzipCmd9, Pigz1, Pigz9, GzipMulti}

// LayerOption configures Layer.
type LayerOption func(*layerOptions)

type layerOptions struct {
	chunkSize int // eStargz / zstd:chunked chunk size; 0 means estargz's default
	level     *int
}

// WithGzipLevel sets the gzip level of EStargz layers (gzip.NoCompression
// makes large test layers quickly). Other formats ignore it.
func WithGzipLevel(level int) LayerOption {
	return func(o *layerOptions) { o.level = &level }
}

// WithChunkSize sets the chunk size of EStargz and ZstdChunked layers
// (estargz.WithChunkSize). Other formats ignore it.
func WithChunkSize(n int) LayerOption {
	return func(o *layerOptions) { o.chunkSize = n }
}

// Layer compresses tarball in format f and returns the layer together with
// the annotations its manifest descriptor must carry:
//
//   - EStargz: estargz.TOCJSONDigestAnnotation and
//     estargz.StoreUncompressedSizeAnnotation, as eStargz converters set them.
//   - ZstdChunked: the same two, plus the zstdchunked manifest checksum and
//     position annotations.
//   - others: none (an empty, non-nil map).
//
// Media types are OCI: tar+gzip for Gzip and EStargz, tar+zstd for Zstd and
// ZstdChunked, tar for Uncompressed. EStargz and ZstdChunked are built with
// estargz.Build with one worker, so the blob does not depend on GOMAXPROCS.
// Note that estargz.Build adds entries of its own (the ".no.prefetch.landmark"
// file and, for EStargz, "stargz.index.json"); see DropEStargzMetadata.
func Layer(t testing.TB, tarball []byte, f Format, opts ...LayerOption) (v1.Layer, map[string]string) {
	t.Helper()
	var o layerOptions
	for _, opt := range opts {
		opt(&o)
	}
	annotations := map[string]string{}
	var (
		blob []byte
		mt   types.MediaType
		err  error
	)
	switch f {
	case Uncompressed:
		blob, mt = bytes.Clone(tarball), types.OCIUncompressedLayer
	case Gzip:
		blob, err = gzipBytes(tarball)
		mt = types.OCILayer
	case GzipBest, GzipFast, PGzip, GzipCmd1, GzipCmd9, Pigz1, Pigz9, GzipMulti:
		blob, err = gzipWith(tarball, f)
		mt = types.OCILayer
	case Zstd:
		blob, err = zstdBytes(tarball)
		mt = types.OCILayerZStd
	case ZstdFrames:
		blob, err = zstdFrameBytes(tarball, 256<<10)
		mt = types.OCILayerZStd
	case EStargz:
		blob, err = estargzBytes(tarball, o, nil, annotations)
		mt = types.OCILayer
	case ZstdChunked:
		c := zstdChunkedCompression{
			Compressor:   &zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: annotations},
			Decompressor: new(zstdchunked.Decompressor),
		}
		blob, err = estargzBytes(tarball, o, c, annotations)
		mt = types.OCILayerZStd
	default:
		t.Fatalf("layer: unknown format %q", f)
	}
	if err != nil {
		t.Fatalf("layer %s: %v", f, err)
	}
	l := &memLayer{compressed: blob, format: f, mediaType: mt}
	l.digest = sha256Hash(blob)
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatalf("layer %s: decompress: %v", f, err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatalf("layer %s: decompress: %v", f, err)
	}
	l.diffID = v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
	return l, annotations
}

func gzipBytes(p []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(p); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func zstdBytes(p []byte) ([]byte, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(p, nil), nil
}

// zstdFrameBytes compresses p as one zstd frame per frameSize bytes.
func zstdFrameBytes(p []byte, frameSize int) ([]byte, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	var out []byte
	for off := 0; off < len(p); off += frameSize {
		out = enc.EncodeAll(p[off:min(off+frameSize, len(p))], out)
	}
	if len(p) == 0 {
		out = enc.EncodeAll(nil, out)
	}
	return out, nil
}

// gzipWith compresses p with the compressor f names.
func gzipWith(p []byte, f Format) ([]byte, error) {
	run := func(name string, args ...string) ([]byte, error) {
		cmd := exec.Command(name, args...)
		cmd.Stdin = bytes.NewReader(p)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%s %v: %w: %s", name, args, err, stderr.String())
		}
		return out, nil
	}
	level := func(l int) ([]byte, error) {
		var buf bytes.Buffer
		zw, err := gzip.NewWriterLevel(&buf, l)
		if err != nil {
			return nil, err
		}
		if _, err := zw.Write(p); err != nil {
			return nil, err
		}
		err = zw.Close()
		return buf.Bytes(), err
	}
	switch f {
	case GzipBest:
		return level(gzip.BestCompression)
	case GzipFast:
		return level(gzip.BestSpeed)
	case PGzip:
		return pgzipBytes(p)
	case GzipCmd1:
		return run("gzip", "-1", "-c", "-n")
	case GzipCmd9:
		return run("gzip", "-9", "-c", "-n")
	case Pigz1:
		return run("pigz", "-1", "-c", "-n")
	case Pigz9:
		return run("pigz", "-9", "-c", "-n")
	case GzipMulti:
		var out []byte
		for off := 0; off < len(p) || off == 0; off += 300 << 10 {
			b, err := gzipBytes(p[off:min(off+300<<10, len(p))])
			if err != nil {
				return nil, err
			}
			out = append(out, b...)
		}
		return out, nil
	}
	return nil, fmt.Errorf("no gzip compressor %q", f)
}

func pgzipBytes(p []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw := pgzip.NewWriter(&buf)
	if err := zw.SetConcurrency(64<<10, 4); err != nil {
		return nil, err
	}
	if _, err := zw.Write(p); err != nil {
		return nil, err
	}
	err := zw.Close()
	return buf.Bytes(), err
}

// estargzBytes builds an eStargz blob (gzip when c is nil, else with c) and
// records its annotations.
func estargzBytes(tarball []byte, o layerOptions, c estargz.Compression, annotations map[string]string) ([]byte, error) {
	bopts := []estargz.Option{estargz.WithParallelism(1)}
	if o.chunkSize > 0 {
		bopts = append(bopts, estargz.WithChunkSize(o.chunkSize))
	}
	if c != nil {
		bopts = append(bopts, estargz.WithCompression(c))
	} else if o.level != nil {
		bopts = append(bopts, estargz.WithCompressionLevel(*o.level))
	}
	b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tarball), 0, int64(len(tarball))), bopts...)
	if err != nil {
		return nil, fmt.Errorf("estargz build: %w", err)
	}
	blob, err := io.ReadAll(b)
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("estargz read: %w", err)
	}
	size, err := b.UncompressedSize()
	if err != nil {
		return nil, fmt.Errorf("estargz size: %w", err)
	}
	annotations[estargz.TOCJSONDigestAnnotation] = b.TOCDigest().String()
	annotations[estargz.StoreUncompressedSizeAnnotation] = strconv.FormatInt(size, 10)
	return blob, nil
}

// zstdChunkedCompression pairs zstdchunked's compressor, which fills the
// annotations map as it writes the TOC, with its decompressor, because
// estargz.WithCompression wants both.
type zstdChunkedCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

var _ estargz.Compression = zstdChunkedCompression{}

func sha256Hash(p []byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(p))}
}

// memLayer is a layer held in memory as its compressed blob.
type memLayer struct {
	compressed []byte
	format     Format
	mediaType  types.MediaType
	digest     v1.Hash
	diffID     v1.Hash
}

var _ v1.Layer = (*memLayer)(nil)

func (l *memLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *memLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *memLayer) Size() (int64, error)                { return int64(len(l.compressed)), nil }
func (l *memLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *memLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.compressed)), nil
}
func (l *memLayer) String() string { return fmt.Sprintf("%s layer %s", l.format, l.digest) }

// Uncompressed returns the decompressed blob. For EStargz this includes the
// TOC entry "stargz.index.json"; zstd:chunked keeps its TOC in a skippable
// frame, which decompression drops.
func (l *memLayer) Uncompressed() (io.ReadCloser, error) {
	r := bytes.NewReader(l.compressed)
	switch l.format {
	case Uncompressed:
		return io.NopCloser(r), nil
	case Gzip, EStargz, GzipBest, GzipFast, PGzip, GzipCmd1, GzipCmd9, Pigz1, Pigz9, GzipMulti:
		return gzip.NewReader(r) // multistream: reads every member
	case Zstd, ZstdChunked, ZstdFrames:
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return zstdReadCloser{d}, nil
	}
	return nil, fmt.Errorf("unknown format %q", l.format)
}

type zstdReadCloser struct{ d *zstd.Decoder }

func (z zstdReadCloser) Read(p []byte) (int, error) { return z.d.Read(p) }
func (z zstdReadCloser) Close() error               { z.d.Close(); return nil }
