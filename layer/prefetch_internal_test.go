package layer

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/fetch"
	"github.com/lazyroot/lazyroot/index"
)

// fakeClock advances only when slept on.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return ctx.Err()
}

func (c *fakeClock) advance(d time.Duration) { c.Sleep(context.Background(), d) }

func TestLimiterBoundsBytesOverAWindow(t *testing.T) {
	const rate = 1 << 20 // 1 MiB/s
	for _, unit := range []int64{4 << 10, 300 << 10, 3 << 20} {
		c := &fakeClock{now: time.Unix(1000, 0)}
		l := newLimiter(rate, c)
		start := c.Now()
		var sent int64
		// Transfers start only when the limiter lets them: count what is
		// sent by the time each starts.
		for range 200 {
			elapsed := c.Now().Sub(start).Seconds()
			if bound := rate*(elapsed+1) + float64(unit); float64(sent) > bound {
				t.Fatalf("unit %d: %d bytes sent after %.2fs; the cap allows %.0f", unit, sent, elapsed, bound)
			}
			sent += unit
			if err := l.wait(context.Background(), unit); err != nil {
				t.Fatal(err)
			}
		}
		// And the cap is not much lower than asked for.
		if elapsed := c.Now().Sub(start).Seconds(); float64(sent) < rate*elapsed {
			t.Errorf("unit %d: %d bytes in %.2fs, below the rate", unit, sent, elapsed)
		}
	}
}

func TestLimiterIdleTimeRefillsOnlyABurst(t *testing.T) {
	c := &fakeClock{now: time.Unix(1000, 0)}
	l := newLimiter(1000, c)
	c.advance(time.Hour)
	before := c.Now()
	l.wait(context.Background(), 1000) // the burst
	if c.Now() != before {
		t.Fatal("a burst's worth waited")
	}
	l.wait(context.Background(), 500)
	if got := c.Now().Sub(before); got != 500*time.Millisecond {
		t.Fatalf("after an idle hour, 500 bytes past the burst waited %v, want 500ms", got)
	}
}

func TestActivityIdle(t *testing.T) {
	var a Activity
	now := time.Now()
	if !a.idle(now, time.Millisecond) {
		t.Fatal("a fresh Activity is busy")
	}
	a.Begin()
	if a.idle(now.Add(time.Hour), time.Millisecond) {
		t.Fatal("idle with a read in flight")
	}
	a.End()
	if a.idle(time.Now(), time.Hour) {
		t.Fatal("idle right after a read ended")
	}
	if !a.idle(time.Now().Add(2*time.Hour), time.Hour) {
		t.Fatal("busy long after the last read")
	}
}

func TestPlanBatches(t *testing.T) {
	l := &LayerState{Index: &index.Index{Format: index.FormatEStargz}}
	c, err := cache.New(cache.Options{MemoryBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pl := newPlan(&Stack{layers: []*LayerState{l}, cache: c})
	chunk := func(name string, off, end int64) *index.Chunk {
		return &index.Chunk{Offset: 0, Size: end - off, BlobOffset: off, BlobEnd: end, Digest: name}
	}
	// Added in profile order: far, near start, next to it, a huge one, a
	// duplicate.
	for _, c := range []*index.Chunk{
		chunk("far", 10<<20, 10<<20+100),
		chunk("a", 0, 1000),
		chunk("b", 1000+batchGap, 2000+batchGap),
		chunk("huge", 3<<20, 9<<20),
		chunk("a", 0, 1000),
	} {
		pl.addChunk(l, c)
	}
	bs := pl.batches(priorityBatch)
	type want struct {
		start, end int64
		units      int
	}
	wants := []want{{10 << 20, 10<<20 + 100, 1}, {0, 2000 + batchGap, 2}, {3 << 20, 9 << 20, 1}}
	if len(bs) != len(wants) {
		t.Fatalf("%d batches, want %d: %+v", len(bs), len(wants), bs)
	}
	for i, w := range wants {
		if b := bs[i]; b.start != w.start || b.end != w.end || len(b.units) != w.units {
			t.Errorf("batch %d: [%d,%d) of %d units, want [%d,%d) of %d", i, b.start, b.end, len(b.units), w.start, w.end, w.units)
		}
	}
	// The batch of two units apart fetches only their bytes; the others
	// are one range each.
	if ps := bs[1].pieces(); len(ps) != 2 || ps[0].off != 0 || ps[0].end != 1000 || ps[1].off != 1000+batchGap || ps[1].end != 2000+batchGap {
		t.Errorf("pieces of batch 1: %+v", ps)
	}
	if ps := bs[0].pieces(); ps != nil {
		t.Errorf("pieces of a one-unit batch: %+v, want nil (the whole range)", ps)
	}
}

// TestBatchBlobPieces: a batch with pieces serves reads inside them from
// one multi-range fetch, passes other reads through, and holds exactly its
// pieces.
func TestBatchBlobPieces(t *testing.T) {
	data := make([]byte, 1000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	src := &rangesBlob{data: data}
	bb := &batchBlob{blobReader: src, start: 100, end: 900, pieces: []piece{{off: 100, end: 200}, {off: 500, end: 600}, {off: 800, end: 900}}}
	for _, tc := range []struct {
		off, end int64
		holds    bool
	}{{100, 200, true}, {150, 160, true}, {500, 600, true}, {199, 201, false}, {300, 400, false}, {850, 900, true}, {50, 150, false}, {880, 950, false}} {
		if got := bb.holds(tc.off, tc.end); got != tc.holds {
			t.Errorf("holds [%d,%d) = %v, want %v", tc.off, tc.end, got, tc.holds)
		}
	}
	ctx := context.Background()
	for _, r := range [][2]int64{{150, 170}, {500, 600}, {880, 900}, {300, 310}} {
		p := make([]byte, r[1]-r[0])
		if n, err := bb.ReadAt(ctx, p, r[0]); err != nil || n != len(p) || !bytes.Equal(p, data[r[0]:r[1]]) {
			t.Errorf("read [%d,%d): %d, %v, right bytes %v", r[0], r[1], n, err, bytes.Equal(p, data[r[0]:r[1]]))
		}
	}
	if src.multi != 1 || src.single != 1 {
		t.Errorf("%d multi-range and %d single reads, want 1 and 1 (the read outside the pieces)", src.multi, src.single)
	}
	if got := bb.fetched.Load(); got != 300+10 {
		t.Errorf("fetched %d bytes, want 310", got)
	}
}

// rangesBlob is a blob in memory that counts its reads.
type rangesBlob struct {
	data          []byte
	multi, single int
}

func (b *rangesBlob) Size() int64 { return int64(len(b.data)) }

func (b *rangesBlob) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	b.single++
	return copy(p, b.data[off:]), nil
}

func (b *rangesBlob) ReadRanges(_ context.Context, rs []fetch.Range) error {
	b.multi++
	for _, r := range rs {
		copy(r.Buf, b.data[r.Off:])
	}
	return nil
}

// TestCoveringPrefersStartedBatches: a read inside both a batch claimed
// but not started and one loading joins the one loading, whatever their
// order; with only the claimed one, it is told of that one.
func TestCoveringPrefersStartedBatches(t *testing.T) {
	claimed := &batchBlob{start: 0, end: 100}
	live := &batchBlob{start: 50, end: 150, loading: make(chan struct{})}
	var bs batchSet
	bs.add(claimed)
	bs.add(live)
	if got := bs.covering(60, 70); got != live {
		t.Errorf("covering(60, 70) = %p; want the loading batch %p", got, live)
	}
	if got := bs.covering(10, 20); got != claimed {
		t.Errorf("covering(10, 20) = %p; want the claimed batch %p", got, claimed)
	}
	if got := bs.covering(120, 160); got != nil {
		t.Errorf("covering(120, 160) = %p; want none", got)
	}
}
