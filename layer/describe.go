package layer

import (
	"context"
	"fmt"
	"io"

	"github.com/lazyroot/lazyroot/index"
)

// Report says how a layer is or would be read, without streaming it.
type Report struct {
	Layer *Layer
	// Format of the layer's index ("gzip", "zstd", "estargz", ...), or of
	// the index a mount would build.
	Format index.Format
	// Source says where the index comes from: "toc", "local store",
	// "registry", "registry (stored)", or "none" when a mount would have
	// to build it.
	Source string
	// Read says how file bytes are read: "lazy", from an unpacked copy, or for
	// a layer without an index what a mount would do.
	Read string
	// IndexSize is the encoded size of the index in bytes, 0 if none.
	IndexSize int64
	// WindowsSize is the size of the windows blob of a gzip seek index,
	// read a window at a time beside it; 0 if none.
	WindowsSize int64
	// Entries is the number of index entries, when an index is at hand.
	Entries int
	// Err is why an index at hand could not be used, if one could not.
	Err error
}

// Describe reports, for each layer of img, how a mount with index source
// src would read it. It reads TOCs (two range requests a layer) and looks
// up index artifacts in the registry, but streams no layer. For a local
// image it reads TOCs from the files and asks no registry (see
// StackOptions.IndexSource).
func Describe(ctx context.Context, img *Image, st *Store, src IndexSource) []Report {
	src = localSource(img, src)
	reg := &registryIndexes{img: img}
	reports := make([]Report, len(img.Layers))
	for i, l := range img.Layers {
		reports[i] = describeLayer(ctx, img, l, st, src, reg)
	}
	return reports
}

func describeLayer(ctx context.Context, img *Image, l *Layer, st *Store, src IndexSource, reg *registryIndexes) Report {
	r := Report{Layer: l}
	d := l.Descriptor.Digest
	c := l.Compression()
	if c == "" {
		r.Read, r.Err = "unsupported", fmt.Errorf("media type %q", l.Descriptor.MediaType)
		return r
	}
	use := func(x *index.Index, source string) Report {
		r.Format, r.Source, r.Entries, r.IndexSize = x.Format, source, len(x.Entries), encodedSize(x)
		if x.Windows != nil {
			r.WindowsSize = x.Windows.Size
		}
		r.Read = "lazy"
		if x.Format == index.FormatTar && c != None {
			r.Read = "streamed once (cannot be read in pieces), unpacked copy"
		}
		return r
	}
	o := &opener{img: img, st: st, src: src, registry: reg, logf: func(string, ...any) {}, readOnly: true}
	_, _, hasTOC := l.TOC()
	if src != IndexBuild || hasTOC {
		if ls := o.stored(ctx, l, BuiltHere, FromStore); ls != nil {
			closeBlob(ls)
			return use(ls.Index, "local store")
		}
	}
	if format, want, ok := l.TOC(); ok {
		x, err := index.ReadTOC(readerAt{ctx: ctx, b: l.blob}, l.blob.Size(), d.String(), format, want)
		if err == nil {
			return use(x, "toc")
		}
		r.Err = fmt.Errorf("unreadable toc: %w", err)
	}
	if src == IndexAny || src == IndexRegistry {
		if ls := o.stored(ctx, l, FetchedFromRegistry, FromRegistry); ls != nil {
			closeBlob(ls)
			return use(ls.Index, "registry (stored)")
		}
		ls, err := o.fromRegistry(ctx, l)
		if ls != nil {
			closeBlob(ls)
			return use(ls.Index, "registry")
		}
		if err != nil {
			r.Err = err
		}
	}
	r.Source = "none"
	switch {
	case src == IndexRegistry:
		r.Read = "mount fails (--index-source=registry)"
	case c == Gzip:
		r.Format, r.Read = index.FormatGzip, "built on mount, then lazy"
	case c == Zstd:
		r.Format, r.Read = index.FormatZstd, "built on mount: lazy if it has many frames, else unpacked"
	default:
		r.Format, r.Read = index.FormatTar, "built on mount, then lazy"
	}
	return r
}

func closeBlob(ls *LayerState) {
	// Only an unpacked copy and stored windows are local files to close.
	if c, ok := ls.blob.(io.Closer); ok {
		c.Close()
	}
	ls.windows.close()
}

// encodedSize is the size of x as Encode writes it.
func encodedSize(x *index.Index) int64 {
	var cw countWriter
	cw.w = io.Discard
	if err := x.Encode(&cw); err != nil {
		return 0
	}
	return cw.n
}
