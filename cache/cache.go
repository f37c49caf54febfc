package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// DefaultMemoryBytes is the bound of the memory tier when
// Options.MemoryBytes is 0: 512 MiB.
const DefaultMemoryBytes int64 = 512 << 20

// Write-behind limits: at most diskWriters disk writes of one Cache run
// at once (each holds a reservation in the shared quota while it runs),
// and at most maxPendingWriteBytes of fills wait for them; a fill that
// would pass that is not written.
const (
	diskWriters          = 2
	maxPendingWriteBytes = 256 << 20
)

// closeWriteWait bounds how long Close waits for pending disk writes;
// those that have not landed by then are dropped. A write waits at most
// 2×putLockWait for the directory lock, so this lets writes already
// running finish unless the lock is held elsewhere.
const closeWriteWait = 5 * time.Second

// ErrClosed is returned by Cache.Get after Close.
var ErrClosed = errors.New("cache closed")

// Options configure a Cache. The zero value is usable.
type Options struct {
	// MemoryBytes bounds the memory tier in bytes; 0 means
	// DefaultMemoryBytes. Negative values are an error.
	MemoryBytes int64
	// Dir is the directory of the disk tier, shared with every other
	// process using it; empty means no disk tier.
	Dir string
	// DiskBytes is the disk tier's quota in bytes; 0 means
	// DefaultDiskBytes. Negative values are an error.
	DiskBytes int64
	// Logf, if set, receives warnings (at most one a minute of each kind)
	// about failed disk writes and damaged disk entries, and one if the
	// disk tier's directory lock was too busy to check its accounting at
	// open.
	Logf func(format string, args ...any)
}

// Stats are counters of a Cache since New. The Disk counters stay zero
// without a disk tier.
type Stats struct {
	// MemoryHits counts Gets answered by the memory tier.
	MemoryHits uint64
	// Misses counts Gets the memory tier could not answer; each either
	// joined a lookup already running or started one. A lookup asks the
	// disk tier and then, if it misses, fills.
	Misses uint64
	// Fills counts calls of a fill function.
	Fills uint64
	// FillErrors counts fills that returned an error.
	FillErrors uint64
	// MemoryBytes is the cost the memory tier holds now (value bytes plus
	// a small per-entry overhead); approximate while puts are in flight,
	// and a value put last that ristretto also kept counts twice.
	MemoryBytes int64

	// DiskHits and DiskMisses count lookups in the disk tier (one per
	// lookup, however many Gets wait for it). DiskMisses includes
	// DiskCorrupt.
	DiskHits   uint64
	DiskMisses uint64
	// DiskCorrupt counts disk lookups that found the entry damaged. The
	// entry is removed then, or by a later lookup if the directory lock
	// was busy.
	DiskCorrupt uint64
	// DiskEvictions counts disk entries this Cache evicted for room.
	DiskEvictions uint64
	// DiskWriteErrors counts fills that could not be written to disk
	// (full disk, I/O error, larger than the quota).
	DiskWriteErrors uint64
	// DiskWritesSkipped counts fills not written to disk because too many
	// bytes were already waiting to be written, or because Close stopped
	// waiting for them.
	DiskWritesSkipped uint64
	// DiskBytes and DiskEntries are what the disk tier holds, across every
	// process sharing its directory, as last recorded (not counting
	// writes in progress).
	DiskBytes   int64
	DiskEntries int64
}

// Cache is the read-through front of lazyroot's chunk cache: it answers
// from its tiers (memory, then disk if configured) and, on a miss, runs
// one fill per key however many callers wait for it.
//
// Lock order: Cache.wmu is a leaf: no other lock is taken while it is
// held, and it is taken while holding no other lock of the package.
type Cache struct {
	mem    *Memory
	disk   *Disk // nil without a disk tier
	flight singleflight.Group

	closed     atomic.Bool
	memoryHits atomic.Uint64
	misses     atomic.Uint64
	fills      atomic.Uint64
	fillErrors atomic.Uint64
	skipped    atomic.Uint64

	// Write-behind to the disk tier.
	wmu          sync.Mutex
	wdone        sync.Cond      // on wmu; broadcast when a write lands
	pending      map[Key][]byte // protected by wmu: fills being written
	pendingBytes int64          // protected by wmu
	wclosed      bool           // protected by wmu: no new writes
	wdrop        atomic.Bool    // Close gave up: writes not started are dropped
	wslots       chan struct{}  // a token per disk write running
	pendingLimit int64          // maxPendingWriteBytes; set in New (tests lower it)
	closeWait    time.Duration  // closeWriteWait; set in New (tests lower it)
}

// New returns a Cache configured by opts. With opts.Dir set it opens the
// disk tier there (see OpenDisk).
func New(opts Options) (*Cache, error) {
	memBytes := opts.MemoryBytes
	switch {
	case memBytes < 0:
		return nil, fmt.Errorf("new cache: memory bytes %d is negative", memBytes)
	case memBytes == 0:
		memBytes = DefaultMemoryBytes
	}
	if opts.DiskBytes < 0 {
		return nil, fmt.Errorf("new cache: disk bytes %d is negative", opts.DiskBytes)
	}
	mem, err := NewMemory(memBytes)
	if err != nil {
		return nil, fmt.Errorf("new cache: %w", err)
	}
	c := &Cache{mem: mem, pending: make(map[Key][]byte), wslots: make(chan struct{}, diskWriters), pendingLimit: maxPendingWriteBytes, closeWait: closeWriteWait}
	c.wdone.L = &c.wmu
	if opts.Dir != "" {
		if c.disk, err = OpenDisk(opts.Dir, opts.DiskBytes, opts.Logf); err != nil {
			mem.Close()
			return nil, fmt.Errorf("new cache: %w", err)
		}
	}
	return c, nil
}

// Get returns the bytes for key. The returned slice is shared and must not
// be modified.
//
// On a memory miss Get looks the key up once for all concurrent callers of
// the same key: in the disk tier (a hit is also put in memory), and
// failing that by calling fill (the first caller's fill runs; the others'
// are not called). A successful fill is put in memory and returned to
// every waiter at once; its disk write happens afterwards on its own
// goroutine (see Flush). A fill error is returned unchanged to every
// waiter and nothing is stored, so the next Get fills again. Disk errors
// are never returned: the disk tier only ever misses.
//
// The fill runs on its own goroutine with
// context.WithoutCancel(first caller's ctx): it keeps the context's values
// but not its deadline or cancellation, so the fill must bound its own
// waits. A caller whose ctx ends stops waiting and returns ctx.Err()
// without cancelling the fill for the others; a caller whose ctx has
// already ended on a miss returns ctx.Err() without starting a fill.
//
// After Close, Get returns an error wrapping ErrClosed.
func (c *Cache) Get(ctx context.Context, key Key, fill func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("get %s: %w", key, ErrClosed)
	}
	// A memory hit keeps the key's disk entry from looking unused to the
	// disk tier's LRU.
	if b, ok := c.Peek(key); ok {
		return b, nil
	}
	c.misses.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fillCtx := context.WithoutCancel(ctx)
	ch := c.flight.DoChan(string(key), func() (any, error) {
		// A fill for key may have finished and been stored between our
		// miss above and this call; don't fetch it twice.
		if b, ok := c.mem.Get(key); ok {
			return b, nil
		}
		if c.disk != nil {
			if b, ok := c.pendingWrite(key); ok {
				return b, nil
			}
			if b, ok := c.disk.Get(key); ok {
				c.mem.Put(key, b)
				return b, nil
			}
		}
		c.fills.Add(1)
		b, err := fill(fillCtx)
		if err != nil {
			c.fillErrors.Add(1)
			return nil, err
		}
		// Put makes b visible before the flight ends, so a caller that
		// misses after this point finds b in memory instead of filling;
		// should memory not keep it, the pending write holds it until it
		// is on disk.
		c.mem.Put(key, b)
		if c.disk != nil {
			c.writeBehind(key, b)
		}
		return b, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Peek returns the bytes for key if the memory tier holds them, as a Get
// that hits memory would: the hit is counted and the key's disk entry kept
// fresh. It never waits, fills or reads the disk tier, and allocates
// nothing on a hit, so a reader can try it before setting up what a Get
// that may fill needs (a deadline, a fill function) and call Get only when
// it misses. A miss is not counted: the Get that follows counts it. The
// returned slice is shared and must not be modified. After Close, Peek
// always misses.
func (c *Cache) Peek(key Key) ([]byte, bool) {
	if c.closed.Load() {
		return nil, false
	}
	b, ok := c.mem.Get(key)
	if !ok {
		return nil, false
	}
	c.memoryHits.Add(1)
	if c.disk != nil {
		c.disk.refreshKey(key)
	}
	return b, true
}

// writeBehind starts writing a fill's result to the disk tier, unless the
// Cache is closing, the key is already being written, or too many bytes
// already wait.
func (c *Cache) writeBehind(key Key, b []byte) {
	c.wmu.Lock()
	if c.wclosed {
		c.wmu.Unlock()
		return
	}
	if _, ok := c.pending[key]; ok {
		c.wmu.Unlock()
		return
	}
	if c.pendingBytes+int64(len(b)) > c.pendingLimit && len(c.pending) > 0 {
		c.wmu.Unlock()
		c.skipped.Add(1)
		return
	}
	c.pending[key] = b
	c.pendingBytes += int64(len(b))
	c.wmu.Unlock()
	go func() {
		c.wslots <- struct{}{}
		if c.wdrop.Load() {
			c.skipped.Add(1)
		} else if err := c.disk.Put(key, b); errors.Is(err, ErrClosed) {
			// Close ended the write's wait for the lock. Other errors are
			// counted and logged by the Disk.
			c.skipped.Add(1)
		}
		<-c.wslots
		c.wmu.Lock()
		delete(c.pending, key)
		c.pendingBytes -= int64(len(b))
		c.wdone.Broadcast()
		c.wmu.Unlock()
	}()
}

// Holds reports whether a Get of key would be served without a fill:
// the memory tier holds it, its disk write is pending, or the disk tier
// has an entry for it. The disk entry is not read or checked (a Get that
// finds it bad fills after all), and the memory tier's counters are not
// touched. It lets a caller leave out of a fetch what is held locally.
// After Close, Holds reports false.
func (c *Cache) Holds(key Key) bool {
	if c.closed.Load() {
		return false
	}
	if _, ok := c.mem.Get(key); ok {
		return true
	}
	if c.disk == nil {
		return false
	}
	if _, ok := c.pendingWrite(key); ok {
		return true
	}
	return c.disk.Has(key)
}

// pendingWrite returns a fill's result still on its way to disk.
func (c *Cache) pendingWrite(key Key) ([]byte, bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b, ok := c.pending[key]
	return b, ok
}

// Flush waits until no fill is waiting to be written to the disk tier:
// every write started before it (and any started while it waits) has
// landed or failed. Without a disk tier it returns at once.
func (c *Cache) Flush() {
	c.waitWrites(0)
}

// waitWrites waits until no write is pending, or for at most timeout if
// it is positive. It reports whether none is pending.
func (c *Cache) waitWrites(timeout time.Duration) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	expired := false // protected by wmu
	if timeout > 0 {
		t := time.AfterFunc(timeout, func() {
			c.wmu.Lock()
			expired = true
			c.wdone.Broadcast()
			c.wmu.Unlock()
		})
		defer t.Stop()
	}
	for len(c.pending) > 0 && !expired {
		c.wdone.Wait()
	}
	return len(c.pending) == 0
}

// Stats returns the counters so far. Counters are read one by one, so
// they need not be mutually consistent while Gets run.
func (c *Cache) Stats() Stats {
	s := Stats{
		MemoryHits:        c.memoryHits.Load(),
		Misses:            c.misses.Load(),
		Fills:             c.fills.Load(),
		FillErrors:        c.fillErrors.Load(),
		MemoryBytes:       c.mem.heldBytes(),
		DiskWritesSkipped: c.skipped.Load(),
	}
	if c.disk != nil {
		d := c.disk.stats()
		s.DiskHits, s.DiskMisses, s.DiskCorrupt = d.hits, d.misses, d.corrupt
		s.DiskEvictions, s.DiskWriteErrors = d.evictions, d.writeErrors
		s.DiskBytes, s.DiskEntries = d.bytes, d.entries
	}
	return s
}

// Close releases the tiers. It waits up to five seconds for disk writes
// already started to land, then drops those that have not (counted in
// Stats.DiskWritesSkipped): writes waiting for the directory lock give up
// at once, writes not yet started are not made. So Close returns in
// bounded time even if another process holds the directory lock. Gets
// and fills still running finish safely, but their results are no longer
// stored. Later Gets return ErrClosed. Close is idempotent.
func (c *Cache) Close() {
	c.closed.Store(true)
	c.wmu.Lock()
	c.wclosed = true
	c.wmu.Unlock()
	if c.disk != nil && !c.waitWrites(c.closeWait) {
		c.wdrop.Store(true)
		// Ends the running writes' waits for the lock; they and the
		// dropped ones then finish at once.
		c.disk.Close()
		c.waitWrites(0)
	}
	c.mem.Close()
	if c.disk != nil {
		c.disk.Close()
	}
}
