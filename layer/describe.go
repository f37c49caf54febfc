package layer

import (
	"context"

	"github.com/lazyroot/lazyroot/index"
)

// Report says how a layer is or would be read, without streaming it.
type Report struct {
	Layer *Layer
	// Format of the index: a TOC format, or "tar" for a streamed layer.
	Format index.Format
	// How: "lazy (toc)", "lazy (stored index)", "streamed (stored)" or
	// "streamed on mount".
	How string
	// Entries is the number of index entries, when an index is at hand.
	Entries int
	// Err is why a TOC could not be used, if it could not.
	Err error
}

// Describe reports, for each layer of img, how a mount would read it. It
// reads TOCs (two range requests a layer) but streams no layer.
func Describe(ctx context.Context, img *Image, st *Store) []Report {
	reports := make([]Report, len(img.Layers))
	for i, l := range img.Layers {
		r := Report{Layer: l}
		if x, err := st.LoadIndex(l.Descriptor.Digest); err == nil {
			r.Format, r.Entries, r.How = x.Format, len(x.Entries), "lazy (stored index)"
			if x.Format == index.FormatTar {
				r.How = "streamed (stored)"
			}
		} else if format, want, ok := l.TOC(); ok {
			x, err := index.ReadTOC(readerAt{ctx: ctx, b: l.blob}, l.blob.Size(), l.Descriptor.Digest.String(), format, want)
			if err != nil {
				r.How, r.Err = "unreadable toc", err
			} else {
				r.Format, r.Entries, r.How = format, len(x.Entries), "lazy (toc)"
			}
		} else {
			r.Format, r.How = index.FormatTar, "streamed on mount"
		}
		reports[i] = r
	}
	return reports
}
