package layer

// Prefetch: warming the chunk cache before files are read.
//
// A Prefetch runs in two phases after a mount is ready, on goroutines of
// its own; it never holds the mount back and its errors never fail a read.
//
//  1. Priority: the files an eStargz writer put before its prefetch
//     landmark (Index.Prefetch), then the files of the image's access
//     profile (found under the Store, else in the registry), in the order
//     they were first read; while there is no profile at hand, the files
//     nearly every job reads first instead (startupFiles: the loader, its
//     cache, the C library, the local time zone, the locale's files). A
//     few batches run at once, at full speed. Apart from the phases, a
//     program a job starts has the files it opens before its own code
//     runs fetched at once: the loader's (FollowELF) and, for a Python
//     interpreter, the modules it imports first (fetchRuntimeStart).
//  2. Layers (PrefetchAll only): every span or chunk of every remote layer,
//     one batch at a time, at most Rate bytes a second, and only while no
//     on-demand read is in flight (see Activity).
//
// Every span and chunk goes through cache.Get with the keys on-demand
// reads use (prefetchChunkKey, prefetchSpanKey), and is filled by the same verifying
// decoders (readChunk, readSpan): what prefetch warms is what reads look
// up, a read and a prefetch of one chunk share one fetch, and bytes that
// fail a check are not cached. Units whose compressed ranges lie close
// together in the blob are fetched as one range request (a batch) and cut
// up locally, so the dozens of small files of a profile cost a few
// requests; a unit already cached costs no request at all.
//
// Concurrency: Prefetch's counters are atomics; its goroutines end when
// Stop returns.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/fetch"
	"github.com/lazyroot/lazyroot/index"
	"golang.org/x/sync/errgroup"
)

// PrefetchMode says what a mount fetches before it is read.
type PrefetchMode string

// Prefetch modes.
const (
	// PrefetchNone fetches nothing ahead.
	PrefetchNone PrefetchMode = "none"
	// PrefetchProfile fetches the TOC's prioritized files and the files of
	// the image's recorded access profile.
	PrefetchProfile PrefetchMode = "profile"
	// PrefetchAll does what PrefetchProfile does, then fetches every layer
	// whole in the background.
	PrefetchAll PrefetchMode = "all"
)

// ParsePrefetchMode checks a --prefetch value.
func ParsePrefetchMode(s string) (PrefetchMode, error) {
	switch m := PrefetchMode(s); m {
	case PrefetchNone, PrefetchProfile, PrefetchAll:
		return m, nil
	}
	return "", fmt.Errorf("prefetch %q: want none, profile or all", s)
}

const (
	// priorityJobs bounds the priority batches in flight.
	priorityJobs = 6
	// priorityBatch and layerBatch bound the compressed bytes one batch
	// fetches; the background's are smaller so that an on-demand read
	// joining one of its fills waits less.
	priorityBatch = 1 << 20
	layerBatch    = 1 << 20
	// batchGap is the largest hole between two units of one batch. The
	// units' bytes are asked for in one multi-range request, holes left
	// out (or, where the registry cannot, a request per run of units).
	batchGap = 1 << 20
	// idleQuiet is how long after the last on-demand read ends the
	// background waits before its next batch; idlePoll how often it looks.
	idleQuiet = 20 * time.Millisecond
	idlePoll  = 5 * time.Millisecond
)

// PrefetchOptions configure StartPrefetch.
type PrefetchOptions struct {
	// Mode says what to fetch; "" or PrefetchNone fetches nothing.
	Mode PrefetchMode
	// Image and Store are where the access profile is looked for (the
	// Store, then the image's registry); either may be nil.
	Image *Image
	Store *Store
	// Profile, if set, is used instead of looking one up.
	Profile *Profile
	// Lookup, if set, is the registry lookup of the profile, started
	// early (LookupProfile); prefetch waits for it instead of asking the
	// registry itself.
	Lookup *ProfileLookup
	// Tree, if set, limits TOC-prioritized files to those visible in the
	// merged tree (not hidden by an upper layer).
	Tree *index.Tree
	// Rate caps the bytes a second the background whole-layer phase
	// fetches; 0 means no cap.
	Rate int64
	// Activity, if set, counts on-demand reads; the background phase
	// waits while any is in flight.
	Activity *Activity
	// Logf receives a summary and the first errors.
	Logf func(format string, args ...any)
	// clock paces the rate cap (tests use a fake one).
	clock clock
}

// PrefetchStatus is a snapshot of a Prefetch's progress.
type PrefetchStatus struct {
	Mode PrefetchMode `json:"mode"`
	// State is "priority", "layers", "done" or "stopped".
	State string `json:"state"`
	// ProfileSource says where the access profile came from: "store",
	// "registry", "given" or "" (none).
	ProfileSource string `json:"profileSource,omitempty"`
	// PriorityFiles counts the prioritized and profile files planned;
	// PriorityBytes and PriorityDoneBytes the compressed bytes of their
	// chunks or spans, planned and handled (found cached or fetched).
	PriorityFiles     int   `json:"priorityFiles"`
	PriorityBytes     int64 `json:"priorityBytes"`
	PriorityDoneBytes int64 `json:"priorityDoneBytes"`
	// LayerBytes and LayerDoneBytes are the same for the whole-layer
	// phase.
	LayerBytes     int64 `json:"layerBytes"`
	LayerDoneBytes int64 `json:"layerDoneBytes"`
	// FetchedBytes counts the bytes prefetch fetched itself (not found
	// cached); Errors the batches that failed.
	FetchedBytes int64 `json:"fetchedBytes"`
	Errors       int64 `json:"errors"`
	// ELFFiles counts the files planned because an ELF file a job read
	// needs them (its loader, the loader's cache, its libraries; found
	// cached or fetched), and the programs and ELF files whose rest was
	// fetched once a job started reading them (FetchProgram); ELFBytes
	// and ELFDoneBytes their compressed bytes to fetch and handled, and
	// ELFFollowing the ELF files whose needs are being fetched.
	ELFFiles     int64 `json:"elfFiles,omitempty"`
	ELFBytes     int64 `json:"elfBytes,omitempty"`
	ELFDoneBytes int64 `json:"elfDoneBytes,omitempty"`
	ELFFollowing int64 `json:"elfFollowing,omitempty"`
}

// Prefetch is prefetch running for one Stack.
type Prefetch struct {
	s      *Stack
	opts   PrefetchOptions
	logf   func(string, ...any)
	cancel context.CancelFunc
	done   chan struct{} // closed when every phase has ended
	prio   chan struct{} // closed when the priority phase has ended
	limit  *limiter      // nil without a rate cap

	state         atomic.Value // string
	profileSource atomic.Value // string
	priorityFiles atomic.Int64
	priorityBytes atomic.Int64
	priorityDone  atomic.Int64
	layerBytes    atomic.Int64
	layerDone     atomic.Int64
	fetched       atomic.Int64
	errs          atomic.Int64
	// saving is the store's write of a registry profile.
	saving sync.WaitGroup

	// life ends with Stop; the ELF followers (see FollowELF) run in it.
	life       context.Context
	elfSeen    sync.Map // *index.Node → true, once followed
	elfFetched sync.Map // *index.Node → true, once planned whole, or its rest (FetchProgram)
	// runtimeSeen holds the programs fetchRuntimeStart looked at.
	runtimeSeen sync.Map // *index.Node → true
	elfCount    atomic.Int64
	restCount   atomic.Int64 // files whose rest was asked for
	// elfFiles and elfFollowing are Status's ELFFiles and ELFFollowing.
	elfFiles     atomic.Int64
	elfBytes     atomic.Int64
	elfDone      atomic.Int64
	elfFollowing atomic.Int64
	// elfSlots bounds the followers fetching at once; restSlots the
	// files whose rest is fetched (FetchProgram).
	elfSlots  chan struct{}
	restSlots chan struct{}
	elfMu     sync.Mutex
	elfJobs   sync.WaitGroup // guarded by elfMu for Add
	stopped   bool           // guarded by elfMu
}

// StartPrefetch starts prefetch for s as opts say and returns at once.
// Stop it before closing s or its cache.
func StartPrefetch(ctx context.Context, s *Stack, opts PrefetchOptions) *Prefetch {
	if opts.Mode == "" {
		opts.Mode = PrefetchNone
	}
	if opts.clock == nil {
		opts.clock = realClock{}
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &Prefetch{s: s, opts: opts, logf: opts.Logf, cancel: cancel, done: make(chan struct{}), prio: make(chan struct{}), life: ctx,
		elfSlots: make(chan struct{}, elfFollowersAtOnce), restSlots: make(chan struct{}, restJobsAtOnce)}
	if p.logf == nil {
		p.logf = func(string, ...any) {}
	}
	if opts.Rate > 0 {
		p.limit = newLimiter(opts.Rate, opts.clock)
	}
	p.state.Store("priority")
	p.profileSource.Store("")
	go p.run(ctx)
	return p
}

// Stop ends prefetch and waits for its goroutines. Fills already started
// end within the stack's read timeout and are still cached. Stop is
// idempotent; a nil Prefetch does nothing.
func (p *Prefetch) Stop() {
	if p == nil {
		return
	}
	p.cancel()
	p.elfMu.Lock()
	p.stopped = true
	p.elfMu.Unlock()
	p.elfJobs.Wait()
	<-p.done
}

// Done is closed when prefetch has ended, done or stopped.
func (p *Prefetch) Done() <-chan struct{} { return p.done }

// WaitPriority waits until the priority phase has ended, or ctx has.
func (p *Prefetch) WaitPriority(ctx context.Context) error {
	select {
	case <-p.prio:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status returns the progress so far.
func (p *Prefetch) Status() PrefetchStatus {
	return PrefetchStatus{
		Mode:              p.opts.Mode,
		State:             p.state.Load().(string),
		ProfileSource:     p.profileSource.Load().(string),
		PriorityFiles:     int(p.priorityFiles.Load()),
		PriorityBytes:     p.priorityBytes.Load(),
		PriorityDoneBytes: p.priorityDone.Load(),
		LayerBytes:        p.layerBytes.Load(),
		LayerDoneBytes:    p.layerDone.Load(),
		FetchedBytes:      p.fetched.Load(),
		Errors:            p.errs.Load(),
		ELFFiles:          p.elfFiles.Load(),
		ELFBytes:          p.elfBytes.Load(),
		ELFDoneBytes:      p.elfDone.Load(),
		ELFFollowing:      p.elfFollowing.Load(),
	}
}

func (p *Prefetch) run(ctx context.Context) {
	defer close(p.done)
	defer p.saving.Wait()
	start := time.Now()
	defer func() {
		if ctx.Err() != nil {
			p.state.Store("stopped")
			return
		}
		p.state.Store("done")
		st := p.Status()
		if st.PriorityBytes+st.LayerBytes > 0 {
			p.logf("prefetch done in %v: %d priority files, fetched %d bytes, %d errors", time.Since(start).Round(time.Millisecond), st.PriorityFiles, st.FetchedBytes, st.Errors)
		}
	}()
	if p.opts.Mode == PrefetchNone {
		close(p.prio)
		return
	}
	p.priority(ctx)
	close(p.prio)
	if p.opts.Mode == PrefetchAll && ctx.Err() == nil {
		p.state.Store("layers")
		p.layers(ctx)
	}
}

// priority fetches the TOC-prioritized files and the profile's files.
func (p *Prefetch) priority(ctx context.Context) {
	pl := newPlan(p.s)
	for i, l := range p.s.layers {
		if !isRemote(l) {
			continue
		}
		for j := range l.Index.Entries[:l.Index.Prefetch] {
			e := &l.Index.Entries[j]
			if e.Type != index.TypeReg || !p.visible(i, e) {
				continue
			}
			if pl.addFile(l, e) {
				p.priorityFiles.Add(1)
			}
		}
	}
	prof, src := p.opts.Profile, "given"
	if prof == nil && p.opts.Image != nil && p.opts.Store != nil {
		// The Store answers at once: use it together with the TOC files.
		prof, src = p.storedProfile(), "store"
	}
	asked := false
	if prof == nil && p.opts.Lookup != nil && p.opts.Lookup.finished() {
		// The early lookup is back already: the same.
		prof, src, asked = p.registryProfile(ctx), "registry", true
	}
	if prof != nil {
		p.profileSource.Store(src)
		p.priorityFiles.Add(int64(pl.addProfile(prof)))
	} else {
		// Nothing says what this job reads: what nearly every job reads
		// first, fetched while it starts rather than miss after miss as
		// the loader opens one file after another.
		p.priorityFiles.Add(int64(p.addStartupFiles(pl)))
	}
	p.runPlan(ctx, pl)
	if prof != nil || asked || p.opts.Image == nil || p.opts.Image.Local() || ctx.Err() != nil {
		return
	}
	// No profile yet: wait for the registry's, after the TOC's files.
	if prof = p.registryProfile(ctx); prof == nil {
		return
	}
	p.profileSource.Store("registry")
	pl = newPlan(p.s)
	p.priorityFiles.Add(int64(pl.addProfile(prof)))
	p.runPlan(ctx, pl)
}

// addStartupFiles adds to pl the files of the merged tree that
// startupFiles names (none without a tree), as planWhole does, and returns
// how many it added.
func (p *Prefetch) addStartupFiles(pl *plan) int {
	if p.opts.Tree == nil {
		return 0
	}
	arch := runtime.GOARCH
	var env []string
	if im := p.opts.Image; im != nil && im.Config != nil {
		if im.Config.Architecture != "" {
			arch = im.Config.Architecture
		}
		env = im.Config.Config.Env
	}
	added := 0
	for _, f := range startupFiles(p.opts.Tree, arch, env) {
		if p.planWhole(pl, f) {
			added++
		}
	}
	return added
}

// registryProfile is the image's profile from its registry, through the
// early lookup if there is one, kept in the Store for later mounts; nil if
// there is none or it cannot be had.
func (p *Prefetch) registryProfile(ctx context.Context) *Profile {
	var prof *Profile
	var err error
	if p.opts.Lookup != nil {
		prof, err = p.opts.Lookup.Wait(ctx)
	} else {
		prof, err = FindProfile(ctx, p.opts.Image)
	}
	if err != nil {
		if ctx.Err() == nil {
			p.logf("prefetch: no profile from the registry: %v", err)
		}
		return nil
	}
	if prof == nil {
		return nil
	}
	if st := p.opts.Store; st != nil {
		// Stored for later mounts, off this one's way: the write syncs.
		p.saving.Go(func() {
			if err := st.SaveProfile(prof, FetchedFromRegistry); err != nil {
				p.logf("prefetch: keeping the registry's profile in memory only: %v", err)
			}
		})
	}
	return prof
}

// storedProfile is the image's profile from the Store: this node's own,
// else one taken from the registry earlier.
func (p *Prefetch) storedProfile() *Profile {
	d := p.opts.Image.Digest
	if d.Hex == "" {
		return nil
	}
	for _, prov := range []Provenance{BuiltHere, FetchedFromRegistry} {
		prof, err := p.opts.Store.LoadProfile(d, prov)
		if err == nil {
			return prof
		}
		if !isNotExist(err) {
			p.logf("prefetch: ignoring stored profile: %v", err)
		}
	}
	return nil
}

// visible reports whether entry e of layer i is what the merged tree shows
// at its name (always true without a tree).
func (p *Prefetch) visible(i int, e *index.Entry) bool {
	if p.opts.Tree == nil {
		return true
	}
	n, ok := p.opts.Tree.Lookup(e.Name)
	return ok && n.Layer == i && n.Type == index.TypeReg
}

// runPlan runs the plan's batches, a few at a time, in plan order.
func (p *Prefetch) runPlan(ctx context.Context, pl *plan) {
	p.runPlanCounting(ctx, pl, &p.priorityBytes, &p.priorityDone, nil)
}

// runPlanCounting runs pl's batches, adding their bytes to planned and,
// as each ends, to done; and then one to files, if set.
func (p *Prefetch) runPlanCounting(ctx context.Context, pl *plan, planned, done, files *atomic.Int64) {
	p.runClaimedCounting(ctx, &claimedPlan{batches: pl.batches(priorityBatch)}, planned, done, files)
}

// claimedPlan is a plan's batches, with, once claimed, the batch blob of
// each already among its layer's fetches in flight.
type claimedPlan struct {
	batches []batch
	blobs   []*batchBlob // nil until claimed
	removes []func()
}

// claimPlan returns pl's batches claimed: on-demand reads that plan a
// fetch of their own from now on stop where these begin (and join them
// once they load), though they run later.
func claimPlan(pl *plan) *claimedPlan {
	c := &claimedPlan{batches: pl.batches(priorityBatch)}
	for _, b := range c.batches {
		bb := b.blob()
		c.blobs = append(c.blobs, bb)
		c.removes = append(c.removes, b.layer.inflight.add(bb))
	}
	return c
}

// release takes the claimed batches out of the fetches in flight; a batch
// run takes its own out when it is done.
func (c *claimedPlan) release() {
	for _, remove := range c.removes {
		remove()
	}
}

// runClaimedCounting runs the batches of c (claimed or not) as
// runPlanCounting does, and releases them.
func (p *Prefetch) runClaimedCounting(ctx context.Context, c *claimedPlan, planned, done, files *atomic.Int64) {
	defer c.release()
	for _, b := range c.batches {
		planned.Add(b.unitBytes)
	}
	if files != nil {
		files.Add(1)
	}
	g, gctx := errgroup.WithContext(ctx)
	wins := p.planWindows(gctx, c.batches)
	defer wins.wait()
	g.SetLimit(priorityJobs)
	for i, b := range c.batches {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if c.blobs != nil {
				p.runBatchOn(gctx, b, c.blobs[i], wins.of(i))
				c.removes[i]()
			} else {
				p.runBatchWith(gctx, b, wins.of(i))
			}
			done.Add(b.unitBytes)
			return nil
		})
	}
	g.Wait()
}

// planWindows fetches the span windows a plan's batches need: those of
// each run of priorityJobs batches (the ones that start together) in one
// request per layer rather than one per batch, a round trip and a
// connection each batch would otherwise spend beside its bytes. A run's
// request goes out when its first batch starts, so that the first batches
// wait for no other's windows.
type planWindows struct {
	p       *Prefetch
	ctx     context.Context
	batches []batch
	runs    []*windowsRun
}

// windowsRun is the windows of one run of a plan's batches, by layer.
type windowsRun struct {
	once sync.Once
	wins map[*LayerState]*batchWindows // set by once
}

func (p *Prefetch) planWindows(ctx context.Context, batches []batch) *planWindows {
	w := &planWindows{p: p, ctx: ctx, batches: batches}
	for range (len(batches) + priorityJobs - 1) / priorityJobs {
		w.runs = append(w.runs, &windowsRun{})
	}
	return w
}

// of returns the windows of batch i's layer in its run, starting the run's
// fetches if they have not started; nil if the layer needs none.
func (w *planWindows) of(i int) *batchWindows {
	r := w.runs[i/priorityJobs]
	r.once.Do(func() {
		from := i / priorityJobs * priorityJobs
		r.wins = w.p.fetchRunWindows(w.ctx, w.batches[from:min(from+priorityJobs, len(w.batches))])
	})
	return r.wins[w.batches[i].layer]
}

// wait waits for the windows' fetches that started to end; it is called
// once no batch can start any more.
func (w *planWindows) wait() {
	for _, r := range w.runs {
		for _, bw := range r.wins {
			<-bw.ready
		}
	}
}

// fetchRunWindows starts fetching the windows batches need (see
// windowSpans), in one request per layer.
func (p *Prefetch) fetchRunWindows(ctx context.Context, batches []batch) map[*LayerState]*batchWindows {
	spans := map[*LayerState][]int{}
	for _, b := range batches {
		if b.layer.windows != nil {
			spans[b.layer] = append(spans[b.layer], p.s.windowSpans(b.layer, b.units)...)
		}
	}
	wins := make(map[*LayerState]*batchWindows, len(spans))
	for l, ss := range spans {
		slices.Sort(ss)
		bw := &batchWindows{spans: slices.Compact(ss), ready: make(chan struct{})}
		wins[l] = bw
		go func() {
			defer close(bw.ready)
			// Bounded: on-demand reads of its spans may wait for it.
			wctx, cancel := context.WithTimeout(ctx, p.s.readTimeout)
			defer cancel()
			var fetched atomic.Int64
			bw.ws = p.s.fetchWindows(wctx, l, bw.spans, &fetched)
			p.fetched.Add(fetched.Load())
		}()
	}
	return wins
}

// layers fetches every remote layer whole, one batch at a time, yielding
// to on-demand reads and keeping to the rate cap.
func (p *Prefetch) layers(ctx context.Context) {
	var all [][]batch
	for _, l := range p.s.layers {
		if !isRemote(l) {
			continue
		}
		pl := newPlan(p.s)
		pl.addLayer(l)
		bs := pl.batches(layerBatch)
		for _, b := range bs {
			p.layerBytes.Add(b.unitBytes)
		}
		all = append(all, bs)
	}
	for _, bs := range all {
		for _, b := range bs {
			if err := p.waitIdle(ctx); err != nil {
				return
			}
			n := p.runBatch(ctx, b)
			p.layerDone.Add(b.unitBytes)
			if p.limit != nil && n > 0 {
				if err := p.limit.wait(ctx, n); err != nil {
					return
				}
			}
		}
	}
}

// waitIdle waits until no on-demand read has been in flight for a while.
func (p *Prefetch) waitIdle(ctx context.Context) error { return p.opts.Activity.waitIdle(ctx) }

// waitIdle waits until no on-demand read has been in flight for idleQuiet;
// a nil Activity is always idle.
func (a *Activity) waitIdle(ctx context.Context) error { return a.waitIdleAtMost(ctx, 0) }

// waitIdleAtMost is waitIdle, giving up the wait (without an error) after
// max if max is positive.
func (a *Activity) waitIdleAtMost(ctx context.Context, max time.Duration) error {
	var until time.Time
	if max > 0 {
		until = time.Now().Add(max)
	}
	for a != nil && !a.idle(time.Now(), idleQuiet) && (until.IsZero() || time.Now().Before(until)) {
		t := time.NewTimer(idlePoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return ctx.Err()
}

// runBatch warms the cache with b's units and returns the bytes it
// fetched. Errors are counted and logged, never returned: a unit that
// failed is simply read on demand later.
func (p *Prefetch) runBatch(ctx context.Context, b batch) int64 {
	return p.runBatchWith(ctx, b, nil)
}

// runBatchWith is runBatch with the windows of b's spans fetched (or
// being fetched) in wins, if not nil.
func (p *Prefetch) runBatchWith(ctx context.Context, b batch, wins *batchWindows) int64 {
	bb := b.blob()
	// On-demand reads of its bytes wait for it meanwhile.
	defer b.layer.inflight.add(bb)()
	return p.runBatchOn(ctx, b, bb, wins)
}

// runBatchOn is runBatchWith fetching through bb, b's blob, which the
// caller puts among the layer's fetches in flight.
func (p *Prefetch) runBatchOn(ctx context.Context, b batch, bb *batchBlob, wins *batchWindows) int64 {
	view := b.layer.view(bb)
	if b.layer.windows != nil {
		bw := wins
		if bw == nil {
			// The windows its spans need, in one request rather than one
			// round trip per span, while the batch's bytes are fetched.
			bw = &batchWindows{spans: p.s.windowSpans(b.layer, b.units), ready: make(chan struct{})}
			go func() {
				// Bounded: on-demand reads of its spans may wait for it.
				wctx, cancel := context.WithTimeout(ctx, p.s.readTimeout)
				defer cancel()
				bw.ws = p.s.fetchWindows(wctx, b.layer, bw.spans, &bb.fetched)
				close(bw.ready)
			}()
		}
		bb.windows.Store(bw)
		bb.load(ctx) // an error is the first unit's to report
		<-bw.ready
		view.windows = bw.ws
	}
	var failed error
	for _, u := range b.units {
		if ctx.Err() != nil {
			break
		}
		_, err := p.s.cache.Get(ctx, u.key, func(context.Context) ([]byte, error) {
			// Bounded like an on-demand fill, and ended by Stop.
			fctx, cancel := context.WithTimeout(ctx, p.s.readTimeout)
			defer cancel()
			return u.fill(fctx, view)
		})
		if err != nil && ctx.Err() == nil && failed == nil {
			failed = err
		}
	}
	n := bb.fetched.Load()
	p.fetched.Add(n)
	if failed != nil {
		if k := p.errs.Add(1); k <= 3 {
			p.logf("prefetch of %s [%d,%d): %v", b.layer.Layer.Descriptor.Digest, b.start, b.end, failed)
		}
	}
	return n
}

// isRemote reports whether l's bytes come from a registry, the only layers
// worth prefetching (local files and unpacked copies are on disk).
func isRemote(l *LayerState) bool {
	_, ok := l.blob.(*fetch.RemoteBlob)
	return ok
}

// prefetchChunkKey is the cache key of chunk c, as Stack.ReadAt uses it:
// by content, so equal chunks of different layers share one entry.
func prefetchChunkKey(c *index.Chunk) cache.Key { return cache.NewKey(c.Digest, 0, c.Size) }

// prefetchSpanKey is the cache key of span si of l, as Stack.ReadAt uses
// it. (TestPrefetchWarmsWhatReadsLookUp checks that both stay so.)
func prefetchSpanKey(l *LayerState, si int) cache.Key {
	out, _ := l.Index.SpanRanges(si)
	return cache.NewKey(l.Index.SpanKey(si), 0, out.End-out.Start)
}

// unit is one cache entry to warm: a chunk or a span.
type unit struct {
	key  cache.Key
	in   index.Range // the compressed bytes it is decoded from
	rank int         // its place in the plan's order
	span int         // the span it is, -1 for a chunk
	fill func(ctx context.Context, l *LayerState) ([]byte, error)
}

// plan collects units per layer, each key once, in the order added.
type plan struct {
	s      *Stack
	seen   map[cache.Key]bool
	units  map[*LayerState][]unit
	order  []*LayerState
	next   int
	byName map[*LayerState]map[string]*index.Entry
}

func newPlan(s *Stack) *plan {
	return &plan{s: s, seen: map[cache.Key]bool{}, units: map[*LayerState][]unit{}, byName: map[*LayerState]map[string]*index.Entry{}}
}

// add plans u, a unit of l, unless it is planned already or the cache
// holds it (in memory or on disk: a node's later mounts fetch nothing
// again for what its earlier ones read).
func (pl *plan) add(l *LayerState, u unit) {
	if pl.seen[u.key] {
		return
	}
	pl.seen[u.key] = true
	if pl.s.cache.Holds(u.key) {
		return
	}
	if _, ok := pl.units[l]; !ok {
		pl.order = append(pl.order, l)
	}
	u.rank = pl.next
	pl.next++
	pl.units[l] = append(pl.units[l], u)
}

func (pl *plan) addChunk(l *LayerState, c *index.Chunk) {
	pl.add(l, unit{key: prefetchChunkKey(c), in: index.Range{Start: c.BlobOffset, End: c.BlobEnd}, span: -1, fill: func(ctx context.Context, v *LayerState) ([]byte, error) {
		return pl.s.readChunk(ctx, v, c)
	}})
}

func (pl *plan) addSpan(l *LayerState, si int) {
	_, in := l.Index.SpanRanges(si)
	pl.add(l, unit{key: prefetchSpanKey(l, si), in: in, span: si, fill: func(ctx context.Context, v *LayerState) ([]byte, error) {
		return pl.s.readSpan(ctx, v, si)
	}})
}

// addFile plans the chunks or spans of the regular file e of l, and
// reports whether it added anything.
func (pl *plan) addFile(l *LayerState, e *index.Entry) bool {
	return pl.addFileRange(l, e, 0, e.Size)
}

// addFileRange plans the chunks or spans that hold the bytes [from, to) of
// the regular file e of l, and reports whether it added anything.
func (pl *plan) addFileRange(l *LayerState, e *index.Entry, from, to int64) bool {
	before := pl.next
	for ci := range e.Chunks {
		c := &e.Chunks[ci]
		if c.Offset+c.Size <= from || c.Offset >= to {
			continue
		}
		if !l.Index.Format.Seekable() {
			pl.addChunk(l, c)
			continue
		}
		// A seekable index places chunks in the uncompressed tar: the
		// chunk's bytes [start, end) of the file are [tarStart, tarEnd).
		start, end := max(from, c.Offset), min(to, c.Offset+c.Size)
		tarStart, tarEnd := c.BlobOffset+start-c.Offset, c.BlobOffset+end-c.Offset
		for si := l.Index.FindSpan(tarStart); si >= 0 && si < len(l.Index.Spans); si++ {
			pl.addSpan(l, si)
			if out, _ := l.Index.SpanRanges(si); out.End >= tarEnd {
				break
			}
		}
	}
	return pl.next > before
}

// addProfile plans the profile's files that the stack's remote layers
// hold, in order, and returns how many it added.
func (pl *plan) addProfile(prof *Profile) int {
	n := 0
	for _, f := range prof.Files {
		for _, l := range pl.s.layers {
			if l.Layer.Descriptor.Digest.String() != f.Layer {
				continue
			}
			if e := pl.entry(l, f.Path); e != nil && isRemote(l) && pl.addFile(l, e) {
				n++
			}
			break
		}
	}
	return n
}

// entry returns l's regular file name, or nil.
func (pl *plan) entry(l *LayerState, name string) *index.Entry {
	m, ok := pl.byName[l]
	if !ok {
		m = map[string]*index.Entry{}
		for i := range l.Index.Entries {
			if e := &l.Index.Entries[i]; e.Type == index.TypeReg {
				m[e.Name] = e
			}
		}
		pl.byName[l] = m
	}
	return m[name]
}

// addLayer plans every span or chunk of l.
func (pl *plan) addLayer(l *LayerState) {
	if l.Index.Format.Seekable() {
		for si := range l.Index.Spans {
			pl.addSpan(l, si)
		}
		return
	}
	for i := range l.Index.Entries {
		e := &l.Index.Entries[i]
		for ci := range e.Chunks {
			pl.addChunk(l, &e.Chunks[ci])
		}
	}
}

// batch is units of one layer fetched with one request.
type batch struct {
	layer      *LayerState
	start, end int64 // the compressed range its units lie in
	units      []unit
	unitBytes  int64 // the units' compressed bytes
	rank       int   // the least rank of its units
}

// blob returns the batch blob that fetches b's bytes.
func (b batch) blob() *batchBlob {
	return &batchBlob{blobReader: b.layer.blob, start: b.start, end: b.end, pieces: b.pieces()}
}

// pieces returns the byte ranges b's units cover, merged where they touch
// or overlap, in blob order; nil when that is the whole [start, end).
func (b batch) pieces() []piece {
	var ps []piece
	for _, u := range b.units { // sorted by start
		if n := len(ps); n > 0 && u.in.Start <= ps[n-1].end {
			ps[n-1].end = max(ps[n-1].end, u.in.End)
			continue
		}
		ps = append(ps, piece{off: u.in.Start, end: u.in.End})
	}
	if len(ps) == 1 && ps[0].off == b.start && ps[0].end == b.end {
		return nil
	}
	return ps
}

// batches groups each layer's units by their place in the blob, units at
// most batchGap apart and at most limit of their bytes to a batch, and
// orders the batches by their first unit in the plan.
func (pl *plan) batches(limit int64) []batch {
	var out []batch
	for _, l := range pl.order {
		us := slices.Clone(pl.units[l])
		slices.SortStableFunc(us, func(a, b unit) int {
			if a.in.Start != b.in.Start {
				return cmpInt64(a.in.Start, b.in.Start)
			}
			return cmpInt64(a.in.End, b.in.End)
		})
		var cur *batch
		for _, u := range us {
			if cur != nil && u.in.Start <= cur.end+batchGap && cur.unitBytes+u.in.End-u.in.Start <= limit {
				cur.end = max(cur.end, u.in.End)
			} else {
				out = append(out, batch{layer: l, start: u.in.Start, end: u.in.End, rank: u.rank})
				cur = &out[len(out)-1]
			}
			cur.units = append(cur.units, u)
			cur.unitBytes += u.in.End - u.in.Start
			cur.rank = min(cur.rank, u.rank)
		}
	}
	slices.SortStableFunc(out, func(a, b batch) int { return a.rank - b.rank })
	return out
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// batchBlob serves reads inside [start, end) of a blob (or inside its
// pieces, when it has some) from one fetch of those bytes, made on first
// need, and passes other reads through.
type batchBlob struct {
	blobReader
	start, end int64
	// pieces, if set, are the only bytes of [start, end) fetched: sorted,
	// disjoint, and read with one multi-range request where the blob can.
	pieces  []piece
	fetched atomic.Int64

	mu sync.Mutex
	// loading is closed when the load under way ends; nil when none is.
	loading chan struct{} // protected by mu
	loaded  bool          // protected by mu
	err     error         // protected by mu; set once loaded
	// buf holds [start, end) once loaded, when there are no pieces.
	buf []byte // set before loaded

	// windows, when set, are the span windows fetched beside the batch's
	// bytes: an on-demand decode of one of its spans takes its window
	// there rather than fetching it again.
	windows atomic.Pointer[batchWindows]
}

// batchWindows are the span windows a batch fetches beside its bytes: those
// of spans, in order. ws is set before ready is closed.
type batchWindows struct {
	spans []int
	ready chan struct{}
	ws    *windowSource
}

// piece is the bytes [off, end) of a blob, held in buf once loaded.
type piece struct {
	off, end int64
	buf      []byte
}

// rangesReader is a blob that reads several ranges in one request.
type rangesReader interface {
	ReadRanges(ctx context.Context, rs []fetch.Range) error
}

// started reports whether b's load has begun (or ended).
func (b *batchBlob) started() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.loading != nil || b.loaded
}

// serving reports whether b's bytes are loading or loaded without error:
// a read inside them then needs no request of its own.
func (b *batchBlob) serving() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.loaded && b.err == nil || !b.loaded && b.loading != nil
}

// holds reports whether [off, end) is among the bytes b fetches.
func (b *batchBlob) holds(off, end int64) bool {
	if off < b.start || end > b.end {
		return false
	}
	if b.pieces == nil {
		return true
	}
	i := sort.Search(len(b.pieces), func(i int) bool { return b.pieces[i].end > off })
	return i < len(b.pieces) && b.pieces[i].off <= off && end <= b.pieces[i].end
}

// heldEnd returns where the bytes b fetches that hold off end: the end of
// its piece holding off, or b's end.
func (b *batchBlob) heldEnd(off int64) int64 {
	i := sort.Search(len(b.pieces), func(i int) bool { return b.pieces[i].end > off })
	if i < len(b.pieces) && b.pieces[i].off <= off {
		return b.pieces[i].end
	}
	return b.end
}

// ReadAt reads p at off, from the batch's bytes if they hold it (loading
// them first if no one has), else from the blob.
func (b *batchBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if !b.holds(off, end) {
		n, err := b.blobReader.ReadAt(ctx, p, off)
		b.fetched.Add(int64(n))
		return n, err
	}
	if err := b.load(ctx); err != nil {
		return 0, err
	}
	return b.copyOut(p, off), nil
}

// join copies p at off out of the batch's bytes if it holds them and a
// load of them is done or under way, waiting for that as long as ctx
// allows. It reports false, having copied nothing, when there is no load
// to join or it failed: the caller then fetches the bytes itself, rather
// than load the whole batch for a few of them.
func (b *batchBlob) join(ctx context.Context, p []byte, off int64) (int, bool) {
	if !b.holds(off, off+int64(len(p))) {
		return 0, false
	}
	b.mu.Lock()
	loading, loaded, err := b.loading, b.loaded, b.err
	b.mu.Unlock()
	if !loaded {
		if loading == nil {
			return 0, false
		}
		select {
		case <-loading:
		case <-ctx.Done():
			return 0, false
		}
		b.mu.Lock()
		loaded, err = b.loaded, b.err
		b.mu.Unlock()
	}
	if !loaded || err != nil {
		return 0, false
	}
	return b.copyOut(p, off), true
}

// copyOut copies p at off out of the loaded bytes, which hold it.
func (b *batchBlob) copyOut(p []byte, off int64) int {
	if b.pieces == nil {
		return copy(p, b.buf[off-b.start:])
	}
	i := sort.Search(len(b.pieces), func(i int) bool { return b.pieces[i].end > off })
	return copy(p, b.pieces[i].buf[off-b.pieces[i].off:])
}

// load fetches the batch's bytes unless they are loaded, waiting for a
// load under way instead of starting another.
func (b *batchBlob) load(ctx context.Context) error {
	for {
		b.mu.Lock()
		if b.loaded {
			err := b.err
			b.mu.Unlock()
			return err
		}
		loading := b.loading
		if loading == nil {
			b.loading = make(chan struct{})
			b.mu.Unlock()
			return b.fetchAll(ctx)
		}
		b.mu.Unlock()
		select {
		case <-loading:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fetchAll fetches the batch's bytes: its pieces in one multi-range
// request where the blob can, else [start, end) in one request.
func (b *batchBlob) fetchAll(ctx context.Context) error {
	var (
		buf  []byte
		bufs = make([][]byte, len(b.pieces))
		err  error
	)
	if rr, ok := b.blobReader.(rangesReader); ok && len(b.pieces) > 1 {
		rs := make([]fetch.Range, len(b.pieces))
		for i, pc := range b.pieces {
			bufs[i] = make([]byte, pc.end-pc.off)
			rs[i] = fetch.Range{Off: pc.off, Buf: bufs[i]}
		}
		if err = rr.ReadRanges(ctx, rs); err == nil {
			for _, pc := range b.pieces {
				b.fetched.Add(pc.end - pc.off)
			}
		}
	} else {
		// One request for the whole range; pieces share its buffer.
		buf = make([]byte, b.end-b.start)
		var n int
		n, err = b.blobReader.ReadAt(ctx, buf, b.start)
		b.fetched.Add(int64(n))
		if errors.Is(err, io.EOF) && n == len(buf) {
			err = nil
		}
		for i, pc := range b.pieces {
			bufs[i] = buf[pc.off-b.start : pc.end-b.start]
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.loading)
	b.loading = nil
	if err != nil && ctx.Err() != nil {
		return err // not loaded: a later unit may try again
	}
	if err == nil {
		b.buf = buf
		for i := range b.pieces {
			b.pieces[i].buf = bufs[i]
		}
	}
	b.loaded, b.err = true, err
	return err
}

// Activity counts on-demand reads in flight, for background work to yield
// to. Its methods are safe for concurrent use and do not allocate.
type Activity struct {
	n    atomic.Int64
	last atomic.Int64 // unix nanoseconds when a read last ended
}

// Begin notes an on-demand read starting.
func (a *Activity) Begin() { a.n.Add(1) }

// End notes an on-demand read ending.
func (a *Activity) End() {
	a.last.Store(time.Now().UnixNano())
	a.n.Add(-1)
}

// InFlight returns the on-demand reads in flight.
func (a *Activity) InFlight() int64 { return a.n.Load() }

// idle reports whether no read is in flight and none ended in the quiet
// period before now.
func (a *Activity) idle(now time.Time, quiet time.Duration) bool {
	return a.n.Load() == 0 && now.UnixNano()-a.last.Load() >= int64(quiet)
}

// clock is time as the rate limiter sees it.
type clock interface {
	Now() time.Time
	// Sleep waits d, or until ctx ends.
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// limiter is a token bucket paid after the fact: a transfer of n bytes
// takes n tokens, and the next waits until the bucket is no longer in
// debt. Tokens accrue at rate a second up to one second's worth. So over
// any window of W seconds from the start, transfers total at most
// rate*(W+1) plus the largest single transfer.
type limiter struct {
	rate  float64
	burst float64
	clock clock

	mu     sync.Mutex
	tokens float64   // protected by mu
	last   time.Time // protected by mu
}

func newLimiter(rate int64, c clock) *limiter {
	return &limiter{rate: float64(rate), burst: float64(rate), clock: c, tokens: float64(rate), last: c.Now()}
}

// wait takes n tokens and waits until the bucket is out of debt.
func (l *limiter) wait(ctx context.Context, n int64) error {
	l.mu.Lock()
	l.refillLocked()
	l.tokens -= float64(n)
	debt := -l.tokens
	l.mu.Unlock()
	if debt <= 0 {
		return nil
	}
	return l.clock.Sleep(ctx, time.Duration(debt/l.rate*float64(time.Second)))
}

func (l *limiter) refillLocked() {
	now := l.clock.Now()
	if el := now.Sub(l.last); el > 0 {
		l.tokens = min(l.burst, l.tokens+el.Seconds()*l.rate)
	}
	l.last = now
}
