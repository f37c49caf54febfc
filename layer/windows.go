package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/fetch"
	"github.com/lazyroot/lazyroot/index"
)

// windowSource is where a gzip seek index's span windows are read: the
// windows blob (stored beside the index, or the registry's copy), and the
// tail of the span decoded last, which is the window of the span after it.
type windowSource struct {
	blob blobReader
	// path is the stored file blob reads, "" for the registry's copy.
	path string
	last atomic.Pointer[spanTail]
	// given holds windows fetched ahead, verified, by span; read-only.
	given map[int][]byte
}

// spanTail is the end of span i's output, as much as span i+1's window
// needs.
type spanTail struct {
	span int
	tail []byte
}

// noteDecoded keeps the tail of span si's output for the span after it.
func (w *windowSource) noteDecoded(x *index.Index, si int, data []byte) {
	if w == nil || si+1 >= len(x.Spans) {
		return
	}
	n := x.Spans[si+1].WinSize
	if n == 0 || int64(len(data)) < n {
		return
	}
	w.last.Store(&spanTail{span: si, tail: data[int64(len(data))-n:]})
}

// localWindow returns span si's window when it needs no fetch: none is
// needed, it was fetched ahead (a prefetch batch's), or the span before it
// was decoded last or is in the memory cache. DecodeSpan verifies it
// either way.
func (s *Stack) localWindow(l *LayerState, si int) ([]byte, bool) {
	n := l.Index.Spans[si].WinSize
	if n == 0 {
		return nil, true
	}
	if si == 0 {
		return nil, false
	}
	if l.windows != nil {
		if w, ok := l.windows.given[si]; ok {
			return w, true
		}
		if t := l.windows.last.Load(); t != nil && t.span == si-1 && int64(len(t.tail)) == n {
			return t.tail, true
		}
	}
	out, _ := l.Index.SpanRanges(si - 1)
	if prev, ok := s.cache.Peek(cache.NewKey(l.Index.SpanKey(si-1), 0, out.End-out.Start)); ok && int64(len(prev)) >= n {
		return prev[int64(len(prev))-n:], true
	}
	return nil, false
}

// batchWindow returns span si's window from a batch under way that fetches
// the span and fetched its window beside it, or is fetching it: then it
// waits for that fetch (bounded by ctx, and by the read timeout there).
func (l *LayerState) batchWindow(ctx context.Context, si int) ([]byte, bool) {
	bw := l.batchWindows(si)
	if bw == nil {
		return nil, false
	}
	select {
	case <-bw.ready:
	case <-ctx.Done():
		return nil, false
	}
	w, ok := bw.ws.given[si]
	return w, ok
}

// batchWindows returns the windows of a batch under way that fetches span
// si and its window beside it, or nil.
func (l *LayerState) batchWindows(si int) *batchWindows {
	_, in := l.Index.SpanRanges(si)
	bb := l.inflight.covering(in.Start, in.End)
	if bb == nil {
		return nil
	}
	bw := bb.windows.Load()
	if bw == nil {
		return nil
	}
	if _, ok := slices.BinarySearch(bw.spans, si); !ok {
		return nil
	}
	return bw
}

// fetchWindow reads span si's window from the windows blob and verifies it.
func fetchWindow(ctx context.Context, l *LayerState, si int) ([]byte, error) {
	if l.windows == nil || l.windows.blob == nil {
		return nil, fmt.Errorf("window of span %d of %s: %w: its windows blob is not at hand", si, l.Layer.Descriptor.Digest, index.ErrMalformed)
	}
	r := l.Index.WindowRange(si)
	src := make([]byte, r.End-r.Start)
	if _, err := l.windows.blob.ReadAt(ctx, src, r.Start); err != nil && !(errors.Is(err, io.EOF) && r.End == l.windows.blob.Size()) {
		return nil, fmt.Errorf("window of span %d of %s: %w", si, l.Layer.Descriptor.Digest, err)
	}
	w, err := l.Index.DecodeWindow(si, src)
	if errors.Is(err, index.ErrSpanDigest) {
		if p := l.windows.path; p != "" {
			// Damaged on this node's disk: without the file, the next
			// mount builds the index again (or reads the registry's).
			os.Remove(p)
			return nil, fmt.Errorf("%w: stored windows %s are damaged (removed): %w", ErrDigest, p, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrDigest, err)
	}
	return w, err
}

// windowSpans returns, in order, the spans whose windows units (a prefetch
// batch, decoded in order) will need fetched: those whose span before is
// neither among units nor at hand.
func (s *Stack) windowSpans(l *LayerState, units []unit) []int {
	inBatch := map[int]bool{}
	for _, u := range units {
		inBatch[u.span] = true
	}
	var spans []int
	for _, u := range units {
		si := u.span
		if si <= 0 || inBatch[si-1] || l.Index.Spans[si].WinSize == 0 {
			continue
		}
		if s.cache.Holds(u.key) {
			continue // not decoded again
		}
		if _, ok := s.localWindow(l, si); !ok {
			spans = append(spans, si)
		}
	}
	slices.Sort(spans) // windows lie in span order
	return spans
}

// fetchWindows returns l's window source with the windows of spans (from
// windowSpans) fetched. It reads them in one request where the blob allows
// several ranges in one. A window it could not fetch is left to be fetched
// with its span.
func (s *Stack) fetchWindows(ctx context.Context, l *LayerState, spans []int, fetched *atomic.Int64) *windowSource {
	if len(spans) == 0 {
		return l.windows
	}
	ranges := make([]fetch.Range, len(spans))
	for i, si := range spans {
		r := l.Index.WindowRange(si)
		ranges[i] = fetch.Range{Off: r.Start, Buf: make([]byte, r.End-r.Start)}
	}
	var err error
	if rr, ok := l.windows.blob.(rangesReader); ok && len(ranges) > 1 {
		err = rr.ReadRanges(ctx, ranges)
	} else {
		for _, r := range ranges {
			if _, err = l.windows.blob.ReadAt(ctx, r.Buf, r.Off); err != nil {
				break
			}
		}
	}
	if err != nil {
		return l.windows
	}
	for _, r := range ranges {
		fetched.Add(int64(len(r.Buf)))
	}
	ws := &windowSource{blob: l.windows.blob, path: l.windows.path, given: make(map[int][]byte, len(spans))}
	for i, si := range spans {
		if w, err := l.Index.DecodeWindow(si, ranges[i].Buf); err == nil {
			ws.given[si] = w
		}
	}
	return ws
}

// windowsOf returns where the windows of x, an index of a layer of o's
// image, are read: the file stored beside the indexes, else (if remoteOK)
// the registry's copy of the windows blob, in the image's repository. nil,
// nil when x needs none; an error when the blob is neither stored nor
// allowed from the registry.
func (o *opener) windowsOf(ctx context.Context, x *index.Index, remoteOK bool) (*windowSource, error) {
	if x.Windows == nil {
		return nil, nil
	}
	path := o.st.windowsPath(x.Windows)
	if f, err := openUnpacked(path); err == nil {
		if f.Size() == x.Windows.Size {
			return &windowSource{blob: f, path: path}, nil
		}
		f.Close()
	}
	if !remoteOK || o.img == nil || o.img.Local() || o.img.fetcher == nil {
		return nil, fmt.Errorf("windows blob %s of the index of %s is not stored", x.Windows.Digest, x.Layer)
	}
	d, err := v1.NewHash(x.Windows.Digest)
	if err != nil {
		return nil, fmt.Errorf("windows blob of the index of %s: %w", x.Layer, err)
	}
	b, err := o.img.fetcher.Blob(ctx, o.img.Ref.Context(), v1.Descriptor{MediaType: WindowsMediaType, Digest: d, Size: x.Windows.Size})
	if err != nil {
		return nil, fmt.Errorf("windows blob of the index of %s: %w", x.Layer, err)
	}
	return &windowSource{blob: b}, nil
}

// close closes the stored windows file, if that is where they are read.
func (w *windowSource) close() error {
	if w == nil {
		return nil
	}
	if c, ok := w.blob.(io.Closer); ok {
		return c.Close()
	}
	return nil
}
