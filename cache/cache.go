package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sync/singleflight"
)

// DefaultMemoryBytes is the bound of the memory tier when
// Options.MemoryBytes is 0: 512 MiB.
const DefaultMemoryBytes int64 = 512 << 20

// ErrClosed is returned by Cache.Get after Close.
var ErrClosed = errors.New("cache closed")

// Options configure a Cache. The zero value is usable.
type Options struct {
	// MemoryBytes bounds the memory tier in bytes; 0 means
	// DefaultMemoryBytes. Negative values are an error.
	MemoryBytes int64
}

// Stats are counters of a Cache since New.
type Stats struct {
	// MemoryHits counts Gets answered by the memory tier.
	MemoryHits uint64
	// Misses counts Gets the memory tier could not answer; each either
	// joined a fill already running or started one.
	Misses uint64
	// Fills counts calls of a fill function.
	Fills uint64
	// FillErrors counts fills that returned an error.
	FillErrors uint64
	// MemoryBytes is the cost the memory tier holds now (value bytes plus
	// a small per-entry overhead); approximate while puts are in flight.
	MemoryBytes int64
}

// Cache is the read-through front of lazyroot's chunk cache: it answers
// from its tiers (today the memory tier only) and, on a miss, runs one
// fill per key however many callers wait for it.
type Cache struct {
	mem    *Memory
	flight singleflight.Group

	closed     atomic.Bool
	memoryHits atomic.Uint64
	misses     atomic.Uint64
	fills      atomic.Uint64
	fillErrors atomic.Uint64
}

// New returns a Cache configured by opts.
func New(opts Options) (*Cache, error) {
	memBytes := opts.MemoryBytes
	switch {
	case memBytes < 0:
		return nil, fmt.Errorf("new cache: memory bytes %d is negative", memBytes)
	case memBytes == 0:
		memBytes = DefaultMemoryBytes
	}
	mem, err := NewMemory(memBytes)
	if err != nil {
		return nil, fmt.Errorf("new cache: %w", err)
	}
	return &Cache{mem: mem}, nil
}

// Get returns the bytes for key. The returned slice is shared and must not
// be modified.
//
// On a miss Get calls fill once for all concurrent callers of the same key
// (the first caller's fill runs; the others' are not called), stores a
// successful result and returns it to every waiter. A fill error is
// returned unchanged to every waiter and nothing is stored, so the next
// Get fills again.
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
	if b, ok := c.mem.Get(key); ok {
		c.memoryHits.Add(1)
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
		c.fills.Add(1)
		b, err := fill(fillCtx)
		if err != nil {
			c.fillErrors.Add(1)
			return nil, err
		}
		// Put makes b visible before the flight ends, so a caller that
		// misses after this point finds b in memory instead of filling.
		c.mem.Put(key, b)
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

// Stats returns the counters so far. Counters are read one by one, so
// they need not be mutually consistent while Gets run.
func (c *Cache) Stats() Stats {
	return Stats{
		MemoryHits:  c.memoryHits.Load(),
		Misses:      c.misses.Load(),
		Fills:       c.fills.Load(),
		FillErrors:  c.fillErrors.Load(),
		MemoryBytes: c.mem.heldBytes(),
	}
}

// Close releases the tiers. Gets and fills still running finish safely;
// their results are no longer stored. Later Gets return ErrClosed. Close
// is idempotent.
func (c *Cache) Close() {
	c.closed.Store(true)
	c.mem.Close()
}
