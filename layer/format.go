package layer

import (
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/lazyroot/lazyroot/index"
)

// Compression is how a layer blob is compressed.
type Compression string

// Layer compressions.
const (
	Gzip Compression = "gzip"
	Zstd Compression = "zstd"
	None Compression = "none"
)

// Compression returns the layer's compression as its media type says, or
// "" for a media type that is not a layer lazyroot knows.
func (l *Layer) Compression() Compression {
	mt := string(l.Descriptor.MediaType)
	switch {
	case strings.HasSuffix(mt, "tar+gzip"), strings.HasSuffix(mt, "tar.gzip"):
		return Gzip
	case strings.HasSuffix(mt, "tar+zstd"):
		return Zstd
	case strings.HasSuffix(mt, ".tar"), strings.HasSuffix(mt, ".tar.uncompressed"):
		return None
	}
	return ""
}

// TOC returns the index format of the layer's table of contents and the
// digests that vouch for it, and false when the layer has no TOC lazyroot
// can trust (no TOC, or no digest for it in the manifest).
func (l *Layer) TOC() (index.Format, index.TOCDigests, bool) {
	a := l.Descriptor.Annotations
	want := index.TOCDigests{JSON: a[estargz.TOCJSONDigestAnnotation]}
	switch l.Compression() {
	case Gzip:
		return index.FormatEStargz, want, want.JSON != ""
	case Zstd:
		want.Compressed = a[zstdchunked.ManifestChecksumAnnotation]
		return index.FormatZstdChunked, want, want.JSON != "" || want.Compressed != ""
	}
	return "", index.TOCDigests{}, false
}
