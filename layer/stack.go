package layer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
)

// Origin says where a layer's index came from.
type Origin string

// Index origins.
const (
	// FromTOC: read from the layer's own table of contents (lazy).
	FromTOC Origin = "toc"
	// FromStore: found in the local index store.
	FromStore Origin = "store"
	// Streamed: the whole layer was fetched, verified and unpacked now.
	Streamed Origin = "streamed"
)

// ErrDigest reports bytes that do not match the digest that names them.
var ErrDigest = errors.New("digest mismatch")

// blobReader is random access to a layer's bytes as its index addresses them.
type blobReader interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Size() int64
}

// LayerState describes one opened layer of a Stack.
type LayerState struct {
	// Layer is the image layer.
	Layer *Layer
	// Index lists its files and where their bytes are.
	Index *index.Index
	// Origin says where the index came from.
	Origin Origin
	blob   blobReader
	// windows is where span windows come from, for a gzip seek index
	// whose spans need them; nil otherwise.
	windows *windowSource

	spanKeysOnce sync.Once
	spanKeys     []cache.Key // cache key of every span; set once by spanKeysOnce

	// chunkKeys maps *index.Chunk to its cache.Key, for the chunks read
	// so far: built once per chunk, so a warm read builds no key.
	chunkKeys sync.Map
	// ahead widens the fetches of misses that follow each other.
	ahead readahead
	// inflight holds the batch fetches of this layer under way or
	// claimed (prefetch batches, widened misses): a read inside one that
	// is loading waits for its bytes rather than asking for them again,
	// and a miss's widened fetch stops where one begins.
	inflight batchSet
}

// readBlob reads p at off of l's blob, from a batch fetch under way that
// covers it if there is one, else (or if that fetch fails) with a request
// of its own.
func (l *LayerState) readBlob(ctx context.Context, p []byte, off int64) (int, error) {
	if bb := l.inflight.covering(off, off+int64(len(p))); bb != nil {
		if n, ok := bb.join(ctx, p, off); ok {
			return n, nil
		}
	}
	return l.blob.ReadAt(ctx, p, off)
}

// batchSet is a set of batch fetches of one blob. Its methods are safe for
// concurrent use.
type batchSet struct {
	mu   sync.Mutex
	list []*batchBlob // guarded by mu
}

// add puts b in the set until the returned function is called.
func (bs *batchSet) add(b *batchBlob) (remove func()) {
	bs.mu.Lock()
	bs.list = append(bs.list, b)
	bs.mu.Unlock()
	return func() {
		bs.mu.Lock()
		defer bs.mu.Unlock()
		if i := slices.Index(bs.list, b); i >= 0 {
			bs.list = slices.Delete(bs.list, i, i+1)
		}
	}
}

// covering returns a batch whose range holds [off, end), or nil: one
// whose load has started if there is one, since a claimed batch that has
// not started serves no read yet.
func (bs *batchSet) covering(off, end int64) *batchBlob {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	var idle *batchBlob
	for _, b := range bs.list {
		if !b.holds(off, end) {
			continue
		}
		if b.started() {
			return b
		}
		if idle == nil {
			idle = b
		}
	}
	return idle
}

// spanKey returns the cache key of span i.
func (l *LayerState) spanKey(i int) cache.Key {
	l.spanKeysOnce.Do(func() {
		l.spanKeys = make([]cache.Key, len(l.Index.Spans))
		for j := range l.spanKeys {
			out, _ := l.Index.SpanRanges(j)
			// Keyed by what determines the decoded bytes, not by the
			// layer digest alone: indexes of one layer from different
			// sources share entries only when they decode alike.
			l.spanKeys[j] = cache.NewKey(l.Index.SpanKey(j), 0, out.End-out.Start)
		}
	})
	return l.spanKeys[i]
}

// chunkKey returns the cache key of c, a chunk of a file of this layer.
// Chunks are keyed by content, so equal chunks of different layers and
// images share one cache entry.
func (l *LayerState) chunkKey(c *index.Chunk) cache.Key {
	if k, ok := l.chunkKeys.Load(c); ok {
		return k.(cache.Key)
	}
	k := cache.NewKey(c.Digest, 0, c.Size)
	l.chunkKeys.Store(c, k)
	return k
}

// Stack is an image's layers opened for reading, base first.
type Stack struct {
	layers      []*LayerState
	cache       *cache.Cache
	readTimeout time.Duration
	// background counts the fills of widened fetches, the index saves
	// (see afterStartup) and the passthrough copies still running; Close
	// waits for them.
	background sync.WaitGroup
	// life ends when Close gives up waiting for the copies.
	life    context.Context
	endLife context.CancelFunc
	// closing is closed when Close begins; closeOnce guards it.
	closing   chan struct{}
	closeOnce sync.Once
	logf      func(format string, args ...any)
	// backingMin is the smallest file copied for passthrough; copying
	// holds the keys of the copies under way, fileKeys the keys of whole
	// files (by *index.Node) computed so far.
	backingMin int64
	copying    sync.Map
	fileKeys   sync.Map
	copySlots  chan struct{} // a token per copy running
}

// inBackground runs f in a goroutine that Close waits for.
func (s *Stack) inBackground(f func()) {
	s.background.Add(1)
	go func() {
		defer s.background.Done()
		f()
	}()
}

// saveDelay is how long work that only spares later mounts (storing an
// index taken from a TOC or the registry) waits, so that it does not take
// CPU from the mount and the job's start-up; Close runs it at once.
const saveDelay = 3 * time.Second

// afterStartup runs f in the background once saveDelay has passed or
// Close has begun, whichever comes first. Close waits for it.
func (s *Stack) afterStartup(f func()) {
	s.inBackground(func() {
		t := time.NewTimer(saveDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.closing:
		}
		f()
	})
}

// StackOptions tune a Stack.
type StackOptions struct {
	// ReadTimeout bounds one ReadAt, fetches and retries included
	// (default 60s); a read that cannot finish in time fails.
	ReadTimeout time.Duration
	// Logf, if set, receives notices (an untrusted stored index, say).
	Logf func(format string, args ...any)
	// IndexSource says which indexes of layers without a TOC to trust;
	// the default is IndexAny. A local image never asks a registry: for
	// it IndexAny and IndexRegistry mean IndexLocal (reading a local file
	// to index it costs no network).
	IndexSource IndexSource
	// SpanSize is the uncompressed distance between the seek points of
	// indexes built now; 0 means index.DefaultSpanSize.
	SpanSize int64
	// BackingMinSize is the smallest file that is copied whole into the
	// disk tier for passthrough (see Stack.ReadWhole); 0 means
	// DefaultBackingMinSize.
	BackingMinSize int64
	// Publish pushes the indexes this node built to the registry, as an
	// artifact referring to the image, for other nodes to use. A failed
	// push is reported through Logf and does not fail Open.
	Publish bool
}

// Open finds or builds the index of every layer of img, in parallel. Layers
// with a trusted TOC are indexed from it. Others use a stored index, an
// index artifact from the registry, or one built by streaming the layer
// once and verifying it, as opts.IndexSource allows; a layer that cannot be
// read in pieces is kept unpacked in st.
func Open(ctx context.Context, img *Image, st *Store, c *cache.Cache, opts StackOptions) (*Stack, error) {
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 60 * time.Second
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	opts.IndexSource = localSource(img, opts.IndexSource)
	if opts.BackingMinSize <= 0 {
		opts.BackingMinSize = DefaultBackingMinSize
	}
	s := &Stack{layers: make([]*LayerState, len(img.Layers)), cache: c, readTimeout: opts.ReadTimeout, logf: logf, backingMin: opts.BackingMinSize, copySlots: make(chan struct{}, copiesAtOnce)}
	s.life, s.endLife = context.WithCancel(context.Background())
	s.closing = make(chan struct{})
	o := &opener{img: img, st: st, src: opts.IndexSource, spanSize: opts.SpanSize, logf: logf, later: s.afterStartup}
	o.registry = &registryIndexes{img: img, need: o.mayNeedRegistry}
	g, gctx := errgroup.WithContext(ctx)
	for i, l := range img.Layers {
		g.Go(func() error {
			ls, err := o.open(gctx, l)
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", i, l.Descriptor.Digest, err)
			}
			s.layers[i] = ls
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		s.Close()
		return nil, err
	}
	if opts.Publish && slices.ContainsFunc(s.layers, func(ls *LayerState) bool { return ls.Origin == Built }) {
		if img.Local() {
			logf("not publishing indexes of %s: %v", img.Name(), localError(img))
		} else if d, n, err := Publish(ctx, img, s.layers); err != nil {
			logf("publishing indexes of %s: %v", img.Name(), err)
		} else if n > 0 {
			logf("published the indexes of %d layers of %s as %s", n, img.Name(), d)
		}
	}
	return s, nil
}

// localSource is the index source src means for img: "" is IndexAny, and
// a local image, which has no registry to take indexes from, builds them
// instead.
func localSource(img *Image, src IndexSource) IndexSource {
	if src == "" {
		src = IndexAny
	}
	if img.Local() && (src == IndexAny || src == IndexRegistry) {
		src = IndexLocal
	}
	return src
}

// unpack streams the layer once, verifies its digest (and diff ID, when the
// config gives one), stores the uncompressed tar and returns its index.
func unpack(ctx context.Context, l *Layer, st *Store) (*index.Index, error) {
	d := l.Descriptor.Digest
	rc, err := l.blob.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	v := newVerifier(rc, l.Descriptor.Size)
	br := bufio.NewReaderSize(v, 1<<20)
	var x *index.Index
	werr := writeFileAtomic(st.unpackedPath(d), func(w *bufio.Writer) error {
		tarStream, closeFn, err := decompressor(br)
		if err != nil {
			return err
		}
		defer closeFn()
		diffHash := sha256.New()
		x, err = index.BuildTar(io.TeeReader(tarStream, io.MultiWriter(w, diffHash)), d.String(), 0)
		// Read the blob to its end whatever happened: a digest mismatch
		// explains a broken stream better than the error it caused.
		if _, derr := io.Copy(io.Discard, br); derr != nil && err == nil {
			err = derr
		}
		if verr := v.check(d); verr != nil {
			return verr
		}
		if err != nil {
			return fmt.Errorf("not a valid tar layer: %w", err)
		}
		if l.DiffID.Hex != "" {
			if got := hex.EncodeToString(diffHash.Sum(nil)); got != l.DiffID.Hex {
				return fmt.Errorf("uncompressed layer is sha256:%s, config says %s: %w", got, l.DiffID, ErrDigest)
			}
		}
		return nil
	})
	if werr != nil {
		return nil, werr
	}
	dropTOCArtifacts(ctx, x, l)
	if err := st.SaveIndex(x, BuiltHere); err != nil {
		return nil, err
	}
	return x, nil
}

// isEStargzTar reports whether a tar ends with an eStargz TOC entry, the
// mark of an eStargz layer whose annotations were lost.
func isEStargzTar(x *index.Index) bool {
	n := len(x.Entries)
	return n > 0 && x.Entries[n-1].Name == "stargz.index.json"
}

func checkDigest(want v1.Hash, sum []byte, n, size int64) error {
	if n != size {
		return fmt.Errorf("blob is %d bytes, manifest says %d: %w", n, size, ErrDigest)
	}
	if got := hex.EncodeToString(sum); got != want.Hex {
		return fmt.Errorf("blob is sha256:%s, manifest says %s: %w", got, want, ErrDigest)
	}
	return nil
}

// decompressor picks the decompression by the stream's magic bytes, so a
// mislabelled media type still reads.
func decompressor(br *bufio.Reader) (io.Reader, func(), error) {
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("not a valid gzip layer: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("not a valid zstd layer: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Layers describes the opened layers, base first.
func (s *Stack) Layers() []*LayerState { return s.layers }

// Indexes returns the layer indexes, base first, for index.Merge.
func (s *Stack) Indexes() []*index.Index {
	xs := make([]*index.Index, len(s.layers))
	for i, l := range s.layers {
		xs[i] = l.Index
	}
	return xs
}

// Close releases the unpacked copies the stack reads. The files of a local
// image stay open: they are the Image's to close.
//
// It waits for the work it runs in the background: index saves, and the
// passthrough copies under way, which it cancels if they have not ended
// within ten seconds.
func (s *Stack) Close() error {
	if s.closing != nil {
		s.closeOnce.Do(func() { close(s.closing) })
	}
	if s.endLife != nil {
		giveUp := time.AfterFunc(closeGrace, s.endLife)
		defer s.endLife()
		defer giveUp.Stop()
	}
	s.background.Wait()
	var errs []error
	for _, l := range s.layers {
		if l == nil {
			continue
		}
		if c, ok := l.blob.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
		errs = append(errs, l.windows.close())
	}
	return errors.Join(errs...)
}

// ReadAt reads the content of the regular file n at off into p, verifying
// every chunk it touches. It returns io.EOF at the end of the file.
//
// A read whose bytes are all in the cache's memory tier allocates nothing:
// it looks each chunk up with Cache.Peek, and only a miss sets up what a
// fill needs (the read's deadline, a fill function, an error).
func (s *Stack) ReadAt(ctx context.Context, n *index.Node, p []byte, off int64) (int, error) {
	if off >= n.Size {
		return 0, io.EOF
	}
	if n.Layer < 0 || n.Layer >= len(s.layers) {
		return 0, fmt.Errorf("read %s: no layer %d", n.Name, n.Layer)
	}
	rc := readContext{parent: ctx, timeout: s.readTimeout}
	defer rc.release()
	l := s.layers[n.Layer]
	if l.Index.Format.Seekable() {
		return s.readSpans(&rc, l, n, p, off)
	}
	chunks := n.Chunks
	i := sort.Search(len(chunks), func(i int) bool { return chunks[i].Offset+chunks[i].Size > off })
	done := 0
	for ; i < len(chunks) && done < len(p); i++ {
		c := &chunks[i]
		key := l.chunkKey(c)
		data, ok := s.cache.Peek(key)
		var err error
		if !ok {
			data, err = s.cache.Get(rc.get(), key, s.chunkFill(l, c))
		}
		if err == nil && int64(len(data)) != c.Size {
			err = fmt.Errorf("cached chunk is %d bytes, index says %d: %w", len(data), c.Size, ErrDigest)
		}
		if err != nil {
			return done, fmt.Errorf("read %s [%d,+%d): %w", n.Name, c.Offset, c.Size, err)
		}
		if l.ahead.reached(c.BlobOffset, c.BlobEnd) {
			s.fetchChunksAhead(l)
		}
		done += copy(p[done:], data[off+int64(done)-c.Offset:])
	}
	if off+int64(done) >= n.Size {
		return done, io.EOF
	}
	return done, nil
}

// readContext is the context of one ReadAt: the caller's, bounded by the
// read timeout from the first time get is called. Reads served from
// memory never call it, and so never make a timer.
type readContext struct {
	parent  context.Context
	timeout time.Duration
	ctx     context.Context    // set by the first get
	cancel  context.CancelFunc // set by the first get
}

// get returns the bounded context, making it on the first call.
func (r *readContext) get() context.Context {
	if r.ctx == nil {
		r.ctx, r.cancel = context.WithTimeout(r.parent, r.timeout)
	}
	return r.ctx
}

// release frees the timer of the bounded context, if one was made.
func (r *readContext) release() {
	if r.cancel != nil {
		r.cancel()
	}
}

// chunkFill returns the fill function of chunk c for Cache.Get.
func (s *Stack) chunkFill(l *LayerState, c *index.Chunk) func(context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		// The fill outlives a waiter that gives up; bound it too.
		ctx, cancel := context.WithTimeout(ctx, s.readTimeout)
		defer cancel()
		return s.readChunkAhead(ctx, l, c)
	}
}

// readSpans serves a read of a file in a seekable layer from the spans of
// the layer's tar that hold it.
func (s *Stack) readSpans(rc *readContext, l *LayerState, n *index.Node, p []byte, off int64) (int, error) {
	chunks := n.Chunks
	i := sort.Search(len(chunks), func(i int) bool { return chunks[i].Offset+chunks[i].Size > off })
	done := 0
	for i < len(chunks) && done < len(p) {
		c := &chunks[i]
		pos := off + int64(done)
		tarPos := c.BlobOffset + pos - c.Offset
		si := l.Index.FindSpan(tarPos)
		if si < 0 {
			return done, fmt.Errorf("read %s at %d: %w: no span holds tar offset %d", n.Name, pos, index.ErrMalformed, tarPos)
		}
		out, in := l.Index.SpanRanges(si)
		key := l.spanKey(si)
		data, ok := s.cache.Peek(key)
		var err error
		if !ok {
			// The spans after si that this read needs too come in the
			// same request: a 1 MiB read would otherwise fetch its
			// spans one round trip after another.
			readEnd := c.BlobOffset + min(off+int64(len(p)), c.Offset+c.Size) - c.Offset
			need := max(0, l.Index.FindSpan(readEnd-1)-si)
			data, err = s.cache.Get(rc.get(), key, s.spanFill(l, si, need))
		}
		if err == nil && int64(len(data)) != out.End-out.Start {
			err = fmt.Errorf("cached span is %d bytes, index says %d: %w", len(data), out.End-out.Start, ErrDigest)
		}
		if err != nil {
			return done, fmt.Errorf("read %s at %d: %w", n.Name, pos, err)
		}
		if l.ahead.reached(in.Start, in.End) {
			s.fetchSpansAhead(l)
		}
		want := min(int64(len(p)-done), c.Offset+c.Size-pos)
		k := copy(p[done:int64(done)+want], data[tarPos-out.Start:])
		done += k
		if pos+int64(k) >= c.Offset+c.Size {
			i++
		}
	}
	if off+int64(done) >= n.Size {
		return done, io.EOF
	}
	return done, nil
}

// spanFill returns the fill function of span si for Cache.Get, for a read
// that needs the need spans after it too.
func (s *Stack) spanFill(l *LayerState, si, need int) func(context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		// The fill outlives a waiter that gives up; bound it too.
		ctx, cancel := context.WithTimeout(ctx, s.readTimeout)
		defer cancel()
		return s.readSpanAhead(ctx, l, si, need)
	}
}

// readSpan fetches span si of a seekable layer and decodes it; the index
// verifies the compressed bytes and the window first. The window comes
// from the span before when that is at hand or a batch under way holds
// its bytes, or from a batch under way that fetched it beside the span,
// else it is fetched from the windows blob while the span's bytes are.
func (s *Stack) readSpan(ctx context.Context, l *LayerState, si int) ([]byte, error) {
	out, in := l.Index.SpanRanges(si)
	window, ok := s.localWindow(l, si)
	if !ok {
		window, ok = s.chainedWindow(ctx, l, si)
	}
	var (
		fetched chan struct{}
		werr    error
	)
	if !ok {
		fetched = make(chan struct{})
		go func() {
			defer close(fetched)
			if w, ok := l.batchWindow(ctx, si); ok {
				window = w
				return
			}
			window, werr = fetchWindow(ctx, l, si)
		}()
	}
	src := make([]byte, in.End-in.Start)
	_, err := l.readBlob(ctx, src, in.Start)
	if fetched != nil {
		<-fetched
	}
	if err != nil && !(errors.Is(err, io.EOF) && in.End == l.blob.Size()) {
		return nil, err
	}
	if werr != nil {
		return nil, werr
	}
	dst := make([]byte, out.End-out.Start)
	if err := l.Index.DecodeSpan(si, window, src, dst); err != nil {
		if errors.Is(err, index.ErrSpanDigest) {
			return nil, fmt.Errorf("%w: %w", ErrDigest, err)
		}
		return nil, err
	}
	l.windows.noteDecoded(l.Index, si, dst)
	return dst, nil
}

// chainedWindow returns span si's window as the end of the span before
// it, decoded from a batch whose bytes are loading or loaded and hold that
// span too (a prefetch batch, a readahead). A batch decodes its spans in
// order, each the window of the next, and fetches only its first span's
// window; a read that lands further in before the batch's decoding got
// there (a program's pages, touched out of order) decodes the spans
// before it then, which costs some local work, not a window's round trip
// per read. Not when a batch fetches si's own window beside it, nor when
// the batch has not started: each span before would then be a request.
func (s *Stack) chainedWindow(ctx context.Context, l *LayerState, si int) ([]byte, bool) {
	if si == 0 || l.batchWindows(si) != nil {
		return nil, false
	}
	out, in := l.Index.SpanRanges(si - 1)
	if bb := l.inflight.covering(in.Start, in.End); bb == nil || !bb.serving() {
		return nil, false
	}
	prev, err := s.cache.Get(ctx, l.spanKey(si-1), s.spanFill(l, si-1, 0))
	n := l.Index.Spans[si].WinSize
	if err != nil || int64(len(prev)) != out.End-out.Start || int64(len(prev)) < n {
		return nil, false
	}
	return prev[int64(len(prev))-n:], true
}

// readChunk fetches, decompresses and verifies one chunk.
func (s *Stack) readChunk(ctx context.Context, l *LayerState, c *index.Chunk) ([]byte, error) {
	raw := make([]byte, c.BlobEnd-c.BlobOffset)
	if _, err := l.readBlob(ctx, raw, c.BlobOffset); err != nil && !(errors.Is(err, io.EOF) && c.BlobEnd == l.blob.Size()) {
		return nil, err
	}
	var data []byte
	switch l.Index.Format {
	case index.FormatTar:
		if c.InnerOffset+c.Size > int64(len(raw)) {
			return nil, fmt.Errorf("chunk at %d: %w: overruns its stored bytes", c.BlobOffset, index.ErrMalformed)
		}
		data = raw[c.InnerOffset : c.InnerOffset+c.Size]
	case index.FormatEStargz:
		buf := make([]byte, c.InnerOffset+c.Size)
		if err := index.GunzipPrefix(raw, buf); err != nil {
			return nil, fmt.Errorf("decompress chunk at %d: %w", c.BlobOffset, err)
		}
		data = buf[c.InnerOffset:]
	case index.FormatZstdChunked:
		zr, err := zstd.NewReader(bytes.NewReader(raw), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("chunk at %d: %w", c.BlobOffset, err)
		}
		data, err = readInner(zr, c)
		zr.Close()
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("chunk at %d: unknown format %q", c.BlobOffset, l.Index.Format)
	}
	sum := sha256.Sum256(data)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != c.Digest {
		return nil, fmt.Errorf("chunk at %d of %s is %s, index says %s: %w", c.BlobOffset, l.Index.Layer, got, c.Digest, ErrDigest)
	}
	return data, nil
}

// readInner reads the chunk c out of its decompressed unit.
func readInner(r io.Reader, c *index.Chunk) ([]byte, error) {
	buf := make([]byte, c.InnerOffset+c.Size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("decompress chunk at %d: %w", c.BlobOffset, err)
	}
	return buf[c.InnerOffset:], nil
}

// readerAt adapts a blobReader to io.ReaderAt under one context.
type readerAt struct {
	ctx context.Context
	b   blobReader
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) { return r.b.ReadAt(r.ctx, p, off) }

// unpackedFile is a local unpacked layer.
type unpackedFile struct {
	f    *os.File
	size int64
}

func openUnpacked(path string) (*unpackedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &unpackedFile{f: f, size: fi.Size()}, nil
}

var _ blobReader = (*unpackedFile)(nil)

func (u *unpackedFile) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return u.f.ReadAt(p, off)
}
func (u *unpackedFile) Size() int64  { return u.size }
func (u *unpackedFile) Close() error { return u.f.Close() }
