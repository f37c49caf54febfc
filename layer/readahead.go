package layer

import (
	"context"
	"path"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/lazyroot/lazyroot/index"
)

// Readahead window of on-demand misses (chunks or spans): none until a
// few misses in a row each follow the last one in the blob, then growing
// from the minimum to the maximum while they keep doing so (a job reading
// many files in layer order: a build, a scan, a copy of a tree; or one big
// file). From then on the reads themselves keep the fetches going: once a
// read reaches the latest widened fetch, the next window is fetched in the
// background, so that the network works while the job reads instead of
// only after it misses.
const (
	readaheadMin = 128 << 10
	readaheadMax = 4 << 20
	// readaheadGap is how far past the last miss's end a miss may start
	// and still count as following it (files of other layers, or ones
	// the job skipped, sit in between).
	readaheadGap = 64 << 10
	// readaheadStreak is how many misses in a row must follow each other
	// before fetches widen.
	readaheadStreak = 1
	// missNeighbours is how far past any other miss its fetch reaches for
	// whole chunks: the small files next to a file in a layer are often
	// read next (modules of one package, say), and on a network this many
	// bytes cost less than another round trip.
	missNeighbours = 32 << 10
	// smallDir is the most compressed bytes a directory's files may
	// take for a lone miss of one of them to fetch them all: the files of
	// a small directory are often read together (a locale's categories,
	// a package's modules, /etc), each a round trip apart.
	smallDir = 128 << 10
	// dirAhead is the most compressed bytes a directory's files may take
	// for a second miss in it to fetch them all: a job that missed twice
	// in one directory reads many of its files, one round trip after
	// another, as a compiler reads headers (16 misses in bits/ alone for
	// gcc's hello.c, whose headers take 220 KB there) or a program its
	// modules.
	dirAhead = 512 << 10
	// pieceGap is the largest hole between two ranges of one fetch that
	// is fetched rather than left out: a part of a multi-range answer
	// costs its own headers and, where ranges are read one by one, a
	// request.
	pieceGap = 16 << 10
)

// readahead tracks the on-demand misses of one layer, and the reads of a
// layer read in order. Its methods are safe for concurrent use.
type readahead struct {
	mu      sync.Mutex
	nextOff int64 // guarded by mu; blob offset where the latest widened fetch ends
	streak  int   // guarded by mu; misses in a row that followed the one before
	window  int64 // guarded by mu; bytes the latest widened fetch took past its miss

	// nextSpan is the span after the latest widened fetch, in a seekable
	// layer.
	nextSpan int // guarded by mu

	orderOnce sync.Once
	order     []*index.Chunk // the layer's chunks in blob order; set once by orderOnce
	dirOf     []int32        // the directory of order[i]'s file, an index in dirs; set with order
	fileOf    []int32        // order[i]'s file, an index in the layer's entries; set with order
	dirs      []dirChunks    // set with order

	// missedDirs notes the misses in each directory (an index in dirs):
	// the second, in another file than the first, may fetch the
	// directory's files (see plan); later ones are not counted.
	missedDirs map[int32]dirMisses // guarded by mu

	// armed is the latest fetch of a layer read in order, if a read in
	// it is to start the next; nil when none is. Set under mu (a miss
	// that breaks the run clears it there), read on every chunk or span
	// a read uses.
	armed atomic.Pointer[blobRange]
	// lastRead is the blob offset where the chunk or span read last
	// ends; a read that starts the next fetch must follow it.
	lastRead atomic.Int64

	// last is the latest widened fetch: a miss inside it is served from
	// its bytes, whether or not the background fill got there first.
	last atomic.Pointer[batchBlob]
}

// blobRange is the bytes [start, end) of a blob.
type blobRange struct{ start, end int64 }

// reached notes a read of the chunk or span at [off, end) of the blob and
// reports whether it starts the next fetch of a layer read in order: it
// lies in the armed fetch and follows the read before it (a job reading
// a few files far apart gets no more than it asks for). It reports true
// once per armed fetch.
func (r *readahead) reached(off, end int64) bool {
	prev := r.lastRead.Load()
	if prev != end {
		r.lastRead.Store(end)
	}
	a := r.armed.Load()
	return a != nil && off >= a.start && off < a.end && off <= prev+readaheadGap && r.armed.CompareAndSwap(a, nil)
}

// arm makes a read of [start, end), a fetch of a layer read in order, start
// the next one, so that one window is always on its way while the job
// reads the one before; unless a miss broke the run since the fetch was
// planned.
func (r *readahead) arm(start, end int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.window > readaheadMin {
		r.armed.Store(&blobRange{start, end})
	}
}

// resume makes the next fetch of a layer read in order start at off: a
// fetch that stopped short where a batch under way begins continues
// after that batch, and the run goes on.
func (r *readahead) resume(off int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextOff = off
	r.nextSpan = 0 // found again from nextOff
}

// grow widens the window for the next fetch of a layer read in order.
// mu must be held.
func (r *readahead) grow() {
	r.window = max(readaheadMin, min(2*r.window, readaheadMax))
}

// dirChunks is where the chunks of one directory's files lie in a layer's
// blob order.
type dirChunks struct {
	first, last int   // indexes in order of its first and last chunk
	bytes       int64 // stored bytes of its chunks
}

// dirMisses is what readahead.missedDirs notes of a directory: how many
// misses (up to 2) and the file of the first.
type dirMisses struct {
	n    uint8
	file int32
}

// plan notes a miss of chunk c of l and returns the chunks before and after
// it in the blob to fetch with it, each in blob order: after it, those
// within missNeighbours, or within the growing window when the miss
// follows the last one; and for a lone miss in a small directory, or the
// second miss in a directory of at most dirAhead bytes (in another of its
// files), the chunks of that directory's other files: in before and after
// when they lie together, else, outside a run of misses in order, in dir
// (blob order), to be fetched apart, without what lies between them.
// inOrder reports a run of misses long enough to fetch ahead of the
// reads: the window grew once (two files next to each other are common
// in any start-up).
func (r *readahead) plan(l *LayerState, c *index.Chunk) (before, after, dir []*index.Chunk, inOrder bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	follows := r.nextOff > 0 && c.BlobOffset >= r.nextOff-readaheadGap && c.BlobOffset <= r.nextOff+readaheadGap
	if follows {
		r.streak++
	}
	switch {
	case !follows:
		r.streak, r.window = 0, 0
		r.armed.Store(nil)
	case r.streak < readaheadStreak:
		// Two files next to each other are common in any start-up; a
		// run of them is a job reading in order.
	case r.window == 0:
		r.window = readaheadMin
	default:
		r.window = min(2*r.window, readaheadMax)
	}
	r.nextOff = c.BlobEnd
	window := r.window
	if window == 0 {
		window = missNeighbours
	}
	order := r.chunks(l)
	ci := sort.Search(len(order), func(i int) bool { return order[i].BlobOffset >= c.BlobOffset })
	i := ci
	for i < len(order) && order[i].BlobOffset < c.BlobEnd {
		i++
	}
	end := c.BlobEnd + window
	if ci < len(order) && order[ci].BlobOffset == c.BlobOffset {
		di := r.dirOf[ci]
		d := r.dirs[di]
		together := order[d.last].BlobEnd - order[d.first].BlobOffset
		lone := r.window == 0 && d.bytes <= smallDir && together <= 2*smallDir
		// A directory's second miss counts in a run in order too.
		again := r.missedAgain(di, r.fileOf[ci]) && d.bytes <= dirAhead
		switch {
		case lone || again && together <= 2*max(d.bytes, smallDir):
			// Only what lies between the directory's first and last
			// chunks: its files, and what a tar puts between them.
			before = order[d.first:ci]
			end = max(end, order[d.last].BlobEnd)
		case again && r.window == 0:
			// Its files lie among more of others' (its subdirectories',
			// in a tar): its own chunks alone. (A run in order gets them
			// with its windows.)
			for j := d.first; j <= d.last; j++ {
				if r.dirOf[j] == di && j != ci {
					dir = append(dir, order[j])
				}
			}
		}
	}
	for ; i < len(order) && order[i].BlobEnd <= end; i++ {
		after = append(after, order[i])
	}
	if len(after) > 0 {
		r.nextOff = after[len(after)-1].BlobEnd
	}
	return before, after, dir, r.window > readaheadMin
}

// chunkPieces returns the blob ranges of chunks (in blob order), merged
// where fewer than pieceGap bytes lie between them, as long as the bytes
// so taken in are fewer than the chunks' own; nil when that leaves one
// range, which the caller fetches whole.
func chunkPieces(chunks []*index.Chunk) []piece {
	var own, between int64
	for _, c := range chunks {
		own += c.BlobEnd - c.BlobOffset
	}
	var ps []piece
	for _, c := range chunks {
		if n := len(ps); n > 0 {
			hole := c.BlobOffset - ps[n-1].end
			if hole <= 0 || hole < pieceGap && between+hole <= own {
				between += max(hole, 0)
				ps[n-1].end = max(ps[n-1].end, c.BlobEnd)
				continue
			}
		}
		ps = append(ps, piece{off: c.BlobOffset, end: c.BlobEnd})
	}
	if len(ps) <= 1 {
		return nil
	}
	return ps
}

// missedAgain notes a miss in file of directory di and reports whether it
// is the directory's second, in another file than the first (a large
// file's chunks miss one after another); later misses are not counted.
// mu must be held.
func (r *readahead) missedAgain(di, file int32) bool {
	if r.missedDirs == nil {
		r.missedDirs = map[int32]dirMisses{}
	}
	m := r.missedDirs[di]
	switch {
	case m.n == 0:
		r.missedDirs[di] = dirMisses{n: 1, file: file}
	case m.n == 1 && m.file != file:
		r.missedDirs[di] = dirMisses{n: 2}
		return true
	}
	return false
}

// nextChunks plans the fetch after the last one of a layer read in order:
// the chunks from where it ended, within the grown window (at least one).
// It returns none at the layer's end.
func (r *readahead) nextChunks(l *LayerState) []*index.Chunk {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.grow()
	order := r.chunks(l)
	i := sort.Search(len(order), func(i int) bool { return order[i].BlobOffset >= r.nextOff })
	end := r.nextOff + r.window
	j := i
	for j < len(order) && (j == i || order[j].BlobEnd <= end) {
		j++
	}
	if j > i {
		r.nextOff = order[j-1].BlobEnd
	}
	return slices.Clip(order[i:j])
}

// planSpans notes a miss of span si of l, a seekable layer, and returns how
// many spans after it to fetch with it: the need spans the read needs too
// (as far as readaheadMax reaches), and when the miss follows the last one
// as many as the growing window holds (spans are large already; a lone
// miss fetches only what it needs). inOrder is as plan's.
func (r *readahead) planSpans(l *LayerState, si, need int) (n int, inOrder bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, in := l.Index.SpanRanges(si)
	// (Counting misses up to the kernel's 4 MiB readahead window apart as
	// following halved the requests of a 1 GiB sequential read but
	// fetched 11% more bytes, overlapping, and was slower.)
	follows := r.nextOff > 0 && in.Start >= r.nextOff-readaheadGap && in.Start <= r.nextOff+readaheadGap
	switch {
	case !follows:
		r.streak, r.window = 0, 0
		r.armed.Store(nil)
	case r.streak+1 < readaheadStreak:
		r.streak++
	case r.window == 0:
		r.streak++
		r.window = readaheadMin
	default:
		r.streak++
		r.window = min(2*r.window, readaheadMax)
	}
	r.nextOff = in.End
	for j := si + 1; j < len(l.Index.Spans); j++ {
		_, next := l.Index.SpanRanges(j)
		if next.End-in.End > r.window {
			break
		}
		n++
		r.nextOff = next.End
	}
	// At least the spans the read needs, within a bound (an index may
	// have tiny spans).
	for ; n < need && si+n+1 < len(l.Index.Spans); n++ {
		_, next := l.Index.SpanRanges(si + n + 1)
		if next.End-in.Start > readaheadMax {
			break
		}
		r.nextOff = next.End
	}
	r.nextSpan = si + n + 1
	return n, r.window > readaheadMin
}

// nextSpans plans the fetch after the last one of a seekable layer read in
// order: the spans from where it ended, within the grown window (at least
// one), as the first and how many. It returns none at the layer's end.
func (r *readahead) nextSpans(l *LayerState) (first, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.grow()
	first = r.nextSpan
	if first == 0 && r.nextOff > 0 { // after resume
		first = sort.Search(len(l.Index.Spans), func(j int) bool {
			_, in := l.Index.SpanRanges(j)
			return in.Start >= r.nextOff
		})
	}
	if first <= 0 || first >= len(l.Index.Spans) {
		return 0, 0
	}
	_, in := l.Index.SpanRanges(first)
	for j := first; j < len(l.Index.Spans); j++ {
		_, next := l.Index.SpanRanges(j)
		if n > 0 && next.End-in.Start > r.window {
			break
		}
		n++
		r.nextOff = next.End
	}
	r.nextSpan = first + n
	return first, n
}

// readSpanAhead reads span si of l, with the need spans after it that the
// read needs too, and when its miss follows the last one the spans after
// it the window holds, in the same request; those are decoded in order
// (each span's output is the next one's window), verified and cached in
// the background, as on-demand reads would. A widened fetch that fails
// leaves si to be fetched alone.
func (s *Stack) readSpanAhead(ctx context.Context, l *LayerState, si, need int) ([]byte, error) {
	if !isRemote(l) {
		return s.readSpan(ctx, l, si)
	}
	_, in := l.Index.SpanRanges(si)
	if bb := l.ahead.last.Load(); bb != nil && bb.holds(in.Start, in.End) {
		// Inside a widened fetch, made or in flight: share it.
		if data, err := s.readSpan(ctx, l.view(bb), si); err == nil {
			return data, nil
		}
		return s.readSpan(ctx, l, si)
	}
	if l.inflight.covering(in.Start, in.End) != nil {
		// A prefetch batch fetches it, or will: join it if it has
		// started, else fetch it alone, widening no further.
		return s.readSpan(ctx, l, si)
	}
	n, inOrder := l.ahead.planSpans(l, si, need)
	for n > 0 {
		if !s.cache.Holds(l.spanKey(si + n)) {
			break
		}
		n--
	}
	// Nor past where a batch under way (a program's rest, say) fetches.
	for j := 1; j <= n; j++ {
		_, next := l.Index.SpanRanges(si + j)
		if b := l.inflight.covering(next.Start, next.End); b != nil {
			n = j - 1
			if inOrder {
				l.ahead.resume(b.heldEnd(next.Start))
			}
			break
		}
	}
	if n == 0 {
		if inOrder {
			// The window holds no span after this one yet: the next
			// starts the background fetches.
			l.ahead.arm(in.Start, in.End)
		}
		return s.readSpan(ctx, l, si)
	}
	_, last := l.Index.SpanRanges(si + n)
	bb := &batchBlob{blobReader: l.blob, start: in.Start, end: last.End}
	l.ahead.last.Store(bb)
	remove := l.inflight.add(bb)
	view := l.view(bb)
	data, err := s.readSpan(ctx, view, si)
	if err != nil {
		remove()
		l.ahead.last.CompareAndSwap(bb, nil)
		if ctx.Err() != nil {
			return nil, err
		}
		return s.readSpan(ctx, l, si)
	}
	if inOrder {
		l.ahead.arm(bb.start, bb.end)
	}
	s.fillSpans(l, bb, si+1, si+n, remove)
	return data, nil
}

// fetchSpansAhead starts the fetch of the next window of a seekable layer
// read in order: the spans after the last fetch, in one request, decoded
// and cached in the background. Spans the cache holds at the window's ends
// are left out; the window stops where a batch under way fetches, and the
// next one starts after that batch.
func (s *Stack) fetchSpansAhead(l *LayerState) {
	first, n := l.ahead.nextSpans(l)
	if n == 0 {
		return
	}
	_, in := l.Index.SpanRanges(first)
	_, last := l.Index.SpanRanges(first + n - 1)
	// A read of the window keeps the fetches going, even when it needs
	// none.
	defer l.ahead.arm(in.Start, last.End)
	for n > 0 && s.cache.Holds(l.spanKey(first)) {
		first, n = first+1, n-1
	}
	for n > 0 && s.cache.Holds(l.spanKey(first+n-1)) {
		n--
	}
	for j := 0; j < n; j++ {
		_, r := l.Index.SpanRanges(first + j)
		if b := l.inflight.covering(r.Start, r.End); b != nil {
			n = j
			l.ahead.resume(b.heldEnd(r.Start))
			break
		}
	}
	if n == 0 {
		return
	}
	_, from := l.Index.SpanRanges(first)
	_, to := l.Index.SpanRanges(first + n - 1)
	bb := &batchBlob{blobReader: l.blob, start: from.Start, end: to.End}
	l.ahead.last.Store(bb)
	s.fillSpans(l, bb, first, first+n-1, l.inflight.add(bb))
}

// fillSpans decodes spans from..to of l through bb, in order (each span's
// output is the next one's window), and caches them in the background as
// on-demand reads would; then it lets bb go with remove. After a failure
// it stops: reads fetch the rest.
func (s *Stack) fillSpans(l *LayerState, bb *batchBlob, from, to int, remove func()) {
	view := l.view(bb)
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		defer remove()
		defer l.ahead.last.CompareAndSwap(bb, nil)
		for j := from; j <= to; j++ {
			key := l.spanKey(j)
			if _, ok := s.cache.Peek(key); ok {
				continue
			}
			if _, err := s.cache.Get(s.life, key, func(ctx context.Context) ([]byte, error) {
				ctx, cancel := context.WithTimeout(ctx, s.readTimeout)
				defer cancel()
				return s.readSpan(ctx, view, j)
			}); err != nil {
				return
			}
		}
	}()
}

// chunks returns the layer's chunks in blob order, one per blob offset,
// noting the directory of each.
func (r *readahead) chunks(l *LayerState) []*index.Chunk {
	r.orderOnce.Do(func() {
		type placed struct {
			c          *index.Chunk
			dir, entry int32
		}
		var all []placed
		seen := map[int64]bool{}
		dirIDs := map[string]int32{}
		for i := range l.Index.Entries {
			e := &l.Index.Entries[i]
			if len(e.Chunks) == 0 {
				continue
			}
			dir := path.Dir(e.Name)
			id, ok := dirIDs[dir]
			if !ok {
				id = int32(len(dirIDs))
				dirIDs[dir] = id
			}
			for j := range e.Chunks {
				c := &e.Chunks[j]
				if c.Digest == "" || seen[c.BlobOffset] {
					continue
				}
				seen[c.BlobOffset] = true
				all = append(all, placed{c, id, int32(i)})
			}
		}
		sort.Slice(all, func(i, j int) bool { return all[i].c.BlobOffset < all[j].c.BlobOffset })
		r.order = make([]*index.Chunk, len(all))
		r.dirOf = make([]int32, len(all))
		r.fileOf = make([]int32, len(all))
		r.dirs = make([]dirChunks, len(dirIDs))
		for i := range r.dirs {
			r.dirs[i].first = -1
		}
		for i, p := range all {
			r.order[i], r.dirOf[i], r.fileOf[i] = p.c, p.dir, p.entry
			d := &r.dirs[p.dir]
			if d.first < 0 {
				d.first = i
			}
			d.last = i
			d.bytes += p.c.BlobEnd - p.c.BlobOffset
		}
	})
	return r.order
}

// readChunkAhead reads chunk c of l with the chunks plan picks around it,
// in the same request; those are verified and cached in the background,
// each as an on-demand read would. A widened fetch that fails leaves c to
// be fetched alone.
func (s *Stack) readChunkAhead(ctx context.Context, l *LayerState, c *index.Chunk) ([]byte, error) {
	if !isRemote(l) {
		return s.readChunk(ctx, l, c)
	}
	if bb := l.ahead.last.Load(); bb != nil && bb.holds(c.BlobOffset, c.BlobEnd) {
		// Inside a widened fetch, made or in flight: share it.
		if data, err := s.readChunk(ctx, l.view(bb), c); err == nil {
			return data, nil
		}
		return s.readChunk(ctx, l, c)
	}
	if l.inflight.covering(c.BlobOffset, c.BlobEnd) != nil {
		// A prefetch batch fetches it, or will: join it if it has
		// started, else fetch it alone, widening no further.
		return s.readChunk(ctx, l, c)
	}
	before, after, dir, inOrder := l.ahead.plan(l, c)
	// Cached ends need not be fetched again (cached chunks in the
	// middle are, to keep one request: the fill skips them).
	for len(after) > 0 && s.cache.Holds(l.chunkKey(after[len(after)-1])) {
		after = after[:len(after)-1]
	}
	for len(before) > 0 && s.cache.Holds(l.chunkKey(before[0])) {
		before = before[1:]
	}
	// Nor past where a batch under way (a program's rest, say) fetches.
	for i, ec := range after {
		if b := l.inflight.covering(ec.BlobOffset, ec.BlobEnd); b != nil {
			after = after[:i]
			if inOrder {
				l.ahead.resume(b.heldEnd(ec.BlobOffset))
			}
			break
		}
	}
	for i := len(before) - 1; i >= 0; i-- {
		if l.inflight.covering(before[i].BlobOffset, before[i].BlobEnd) != nil {
			before = before[i+1:]
			break
		}
	}
	// A directory's own chunks, without those cached or being fetched
	// (or fetched by this read), come in a fetch of their own, in the
	// background: this read waits only for its own bytes.
	dir = slices.DeleteFunc(dir, func(dc *index.Chunk) bool {
		return s.cache.Holds(l.chunkKey(dc)) || l.inflight.covering(dc.BlobOffset, dc.BlobEnd) != nil ||
			slices.Contains(before, dc) || slices.Contains(after, dc)
	})
	s.fetchChunksApart(l, dir)
	if len(before)+len(after) == 0 {
		if inOrder {
			// The window holds no chunk after this one yet: the next
			// starts the background fetches.
			l.ahead.arm(c.BlobOffset, c.BlobEnd)
		}
		return s.readChunk(ctx, l, c)
	}
	extra := append(slices.Clip(before), after...)
	bb := &batchBlob{blobReader: l.blob, start: extra[0].BlobOffset, end: extra[len(extra)-1].BlobEnd}
	bb.start, bb.end = min(bb.start, c.BlobOffset), max(bb.end, c.BlobEnd)
	// Published before the fetch, so misses inside it wait for it rather
	// than fetching their chunks again (inflight keeps it findable when a
	// later fetch replaces it as the last).
	l.ahead.last.Store(bb)
	remove := l.inflight.add(bb)
	view := l.view(bb)
	data, err := s.readChunk(ctx, view, c)
	if err != nil {
		remove()
		l.ahead.last.CompareAndSwap(bb, nil)
		if ctx.Err() != nil {
			return nil, err
		}
		return s.readChunk(ctx, l, c)
	}
	if inOrder {
		l.ahead.arm(bb.start, bb.end)
	}
	s.fillChunks(l, bb, extra, remove)
	return data, nil
}

// fetchChunksApart fetches chunks of l (in blob order) in the background,
// their ranges in one request where the registry serves several at once,
// without the bytes between them (see chunkPieces); verified and cached
// as on-demand reads would, which join the fetch meanwhile.
func (s *Stack) fetchChunksApart(l *LayerState, chunks []*index.Chunk) {
	if len(chunks) == 0 {
		return
	}
	bb := &batchBlob{blobReader: l.blob, start: chunks[0].BlobOffset, end: chunks[len(chunks)-1].BlobEnd, pieces: chunkPieces(chunks)}
	s.fillChunks(l, bb, chunks, l.inflight.add(bb))
}

// fetchChunksAhead starts the fetch of the next window of a layer read in
// order: the chunks after the last fetch, in one request, verified and
// cached in the background. Chunks the cache holds at the window's ends
// are left out; the window stops where a batch under way fetches, and the
// next one starts after that batch.
func (s *Stack) fetchChunksAhead(l *LayerState) {
	next := l.ahead.nextChunks(l)
	if len(next) == 0 {
		return
	}
	// A read of the window keeps the fetches going, even when it needs
	// none.
	defer l.ahead.arm(next[0].BlobOffset, next[len(next)-1].BlobEnd)
	for len(next) > 0 && s.cache.Holds(l.chunkKey(next[0])) {
		next = next[1:]
	}
	for len(next) > 0 && s.cache.Holds(l.chunkKey(next[len(next)-1])) {
		next = next[:len(next)-1]
	}
	for i, c := range next {
		if b := l.inflight.covering(c.BlobOffset, c.BlobEnd); b != nil {
			next = next[:i]
			l.ahead.resume(b.heldEnd(c.BlobOffset))
			break
		}
	}
	if len(next) == 0 {
		return
	}
	bb := &batchBlob{blobReader: l.blob, start: next[0].BlobOffset, end: next[len(next)-1].BlobEnd}
	l.ahead.last.Store(bb)
	s.fillChunks(l, bb, next, l.inflight.add(bb))
}

// fillChunks reads chunks of l through bb, verifies them and caches them in
// the background as on-demand reads would; then it lets bb go with
// remove. After a failure it stops: reads fetch the rest.
func (s *Stack) fillChunks(l *LayerState, bb *batchBlob, chunks []*index.Chunk, remove func()) {
	view := l.view(bb)
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		// Its bytes are in the cache once this is done: let them go.
		defer remove()
		defer l.ahead.last.CompareAndSwap(bb, nil)
		for _, ec := range chunks {
			key := l.chunkKey(ec)
			if _, ok := s.cache.Peek(key); ok {
				continue
			}
			if _, err := s.cache.Get(s.life, key, func(ctx context.Context) ([]byte, error) {
				ctx, cancel := context.WithTimeout(ctx, s.readTimeout)
				defer cancel()
				return s.readChunk(ctx, view, ec)
			}); err != nil {
				return
			}
		}
	}()
}

// view is l reading its blob through b.
func (l *LayerState) view(b blobReader) *LayerState {
	return &LayerState{Layer: l.Layer, Index: l.Index, Origin: l.Origin, blob: b, windows: l.windows}
}
