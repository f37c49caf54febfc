package cache

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
)

func newTestCache(t testing.TB, opts Options) *Cache {
	t.Helper()
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New(%+v): %v", opts, err)
	}
	t.Cleanup(c.Close)
	return c
}

// countingFill returns a fill that returns value (or err) and counts its
// calls in n.
func countingFill(n *atomic.Int64, value []byte, err error) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		n.Add(1)
		return value, err
	}
}

func TestNewOptions(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantBound int64
		wantErr   bool
	}{
		{"zero value", Options{}, DefaultMemoryBytes, false},
		{"explicit", Options{MemoryBytes: 1 << 20}, 1 << 20, false},
		{"negative", Options{MemoryBytes: -1}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.opts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New(%+v) error = %v, want error %v", tt.opts, err, tt.wantErr)
			}
			if c == nil {
				return
			}
			defer c.Close()
			if got := c.mem.c.MaxCost() + c.mem.recent.max; got != tt.wantBound {
				t.Errorf("memory bound = %d, want %d", got, tt.wantBound)
			}
			if got, want := c.mem.recent.max, min(tt.wantBound/recentShare, maxRecentBytes); got != want {
				t.Errorf("bound of the values put last = %d, want %d", got, want)
			}
		})
	}
}

func TestGet(t *testing.T) {
	errFetch := errors.New("fetch failed")
	tests := []struct {
		name      string
		values    [][]byte // what successive fills return
		errs      []error  // what successive fills fail with
		gets      int
		wantFills int64
		wantErr   error
		wantStats Stats
	}{
		{
			name:      "miss then hits",
			values:    [][]byte{[]byte("chunk")},
			gets:      3,
			wantFills: 1,
			wantStats: Stats{MemoryHits: 2, Misses: 1, Fills: 1},
		},
		{
			name:      "empty chunk is cached",
			values:    [][]byte{{}},
			gets:      2,
			wantFills: 1,
			wantStats: Stats{MemoryHits: 1, Misses: 1, Fills: 1},
		},
		{
			name:      "errors are not cached",
			errs:      []error{errFetch},
			gets:      3,
			wantFills: 3,
			wantErr:   errFetch,
			wantStats: Stats{Misses: 3, Fills: 3, FillErrors: 3},
		},
		{
			name:      "value too large to keep is returned but filled again",
			values:    [][]byte{make([]byte, 2<<20)},
			gets:      2,
			wantFills: 2,
			wantStats: Stats{Misses: 2, Fills: 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t, Options{MemoryBytes: 1 << 20})
			key := NewKey("sha256:get", 0, 5)
			var fills atomic.Int64
			var want []byte
			var wantErr error
			if len(tt.values) > 0 {
				want = tt.values[0]
			}
			if len(tt.errs) > 0 {
				wantErr = tt.errs[0]
			}
			for i := range tt.gets {
				got, err := c.Get(t.Context(), key, countingFill(&fills, want, wantErr))
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Get #%d error = %v, want %v", i, err, tt.wantErr)
				}
				if err == nil && !bytes.Equal(got, want) {
					t.Fatalf("Get #%d = %d bytes, want %d", i, len(got), len(want))
				}
			}
			if got := fills.Load(); got != tt.wantFills {
				t.Errorf("fill called %d times, want %d", got, tt.wantFills)
			}
			st := c.Stats()
			st.MemoryBytes = 0 // checked elsewhere
			if st != tt.wantStats {
				t.Errorf("Stats() = %+v, want %+v", st, tt.wantStats)
			}
		})
	}
}

func TestGetStatsMemoryBytes(t *testing.T) {
	c := newTestCache(t, Options{MemoryBytes: 1 << 20})
	var fills atomic.Int64
	for i := range 4 {
		key := NewKey("sha256:stats", int64(i)<<10, 1<<10)
		if _, err := c.Get(t.Context(), key, countingFill(&fills, make([]byte, 1<<10), nil)); err != nil {
			t.Fatal(err)
		}
	}
	// Each entry costs its bytes plus a small fixed overhead, in
	// ristretto, and its bytes again among the values put last.
	if got := c.Stats().MemoryBytes; got < 2*4<<10 || got > 2*4<<10+4*256 {
		t.Errorf("Stats().MemoryBytes = %d, want about %d", got, 2*4<<10)
	}
}

// TestGetSingleFlight starts many Gets of one key while the fill blocks,
// and checks that the fill runs once and every caller gets its result.
func TestGetSingleFlight(t *testing.T) {
	errFetch := errors.New("fetch failed")
	tests := []struct {
		name    string
		value   []byte
		err     error
		waiters int
	}{
		{"value reaches all waiters", []byte("one chunk for all"), nil, 50},
		{"error reaches all waiters", nil, errFetch, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newTestCache(t, Options{MemoryBytes: 1 << 20})
				key := NewKey("sha256:flight", 0, int64(len(tt.value)))
				release := make(chan struct{})
				var fills atomic.Int64
				fill := func(context.Context) ([]byte, error) {
					fills.Add(1)
					<-release
					return tt.value, tt.err
				}

				type result struct {
					b   []byte
					err error
				}
				results := make(chan result, tt.waiters)
				for range tt.waiters {
					go func() {
						b, err := c.Get(t.Context(), key, fill)
						results <- result{b, err}
					}()
				}
				synctest.Wait() // every caller now waits on the one fill
				if got := fills.Load(); got != 1 {
					t.Fatalf("fill called %d times while %d callers wait, want 1", got, tt.waiters)
				}
				close(release)
				for range tt.waiters {
					r := <-results
					if !errors.Is(r.err, tt.err) {
						t.Errorf("Get error = %v, want %v", r.err, tt.err)
					}
					if r.err == nil && !bytes.Equal(r.b, tt.value) {
						t.Errorf("Get = %q, want %q", r.b, tt.value)
					}
				}
				if got := fills.Load(); got != 1 {
					t.Errorf("fill called %d times, want 1", got)
				}

				// A later Get hits if the fill succeeded and fills again if
				// it failed.
				var later atomic.Int64
				b, err := c.Get(t.Context(), key, countingFill(&later, tt.value, tt.err))
				if !errors.Is(err, tt.err) || (err == nil && !bytes.Equal(b, tt.value)) {
					t.Errorf("later Get = %q, %v; want %q, %v", b, err, tt.value, tt.err)
				}
				wantLater := int64(0)
				if tt.err != nil {
					wantLater = 1
				}
				if got := later.Load(); got != wantLater {
					t.Errorf("later Get called fill %d times, want %d", got, wantLater)
				}
			})
		})
	}
}

// TestGetWaiterLeaves checks that a caller whose context ends stops
// waiting at once, and that the fill, even when that caller started it,
// runs on for the others with an uncancelled context.
func TestGetWaiterLeaves(t *testing.T) {
	tests := []struct {
		name      string
		leaverIdx int // which caller, in start order, gives up
		callers   int
	}{
		{"first caller leaves", 0, 5},
		{"later caller leaves", 3, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := newTestCache(t, Options{MemoryBytes: 1 << 20})
				key := NewKey("sha256:leave", 0, 5)
				value := []byte("chunk")
				release := make(chan struct{})
				var fillCtxErr error
				fill := func(ctx context.Context) ([]byte, error) {
					<-release
					fillCtxErr = ctx.Err()
					return value, nil
				}

				leaverCtx, cancel := context.WithCancel(t.Context())
				defer cancel()
				leaverDone := make(chan error, 1)
				var wg sync.WaitGroup
				errs := make([]error, tt.callers)
				for i := range tt.callers {
					if i == tt.leaverIdx {
						go func() {
							_, err := c.Get(leaverCtx, key, fill)
							leaverDone <- err
						}()
					} else {
						wg.Go(func() {
							var b []byte
							b, errs[i] = c.Get(t.Context(), key, fill)
							if errs[i] == nil && !bytes.Equal(b, value) {
								t.Errorf("caller %d got %q, want %q", i, b, value)
							}
						})
					}
					synctest.Wait() // fix the start order
				}

				cancel()
				synctest.Wait()
				select {
				case err := <-leaverDone:
					if !errors.Is(err, context.Canceled) {
						t.Errorf("leaving caller error = %v, want %v", err, context.Canceled)
					}
				default:
					t.Fatal("leaving caller still waits after its context was cancelled")
				}

				close(release)
				wg.Wait()
				for i, err := range errs {
					if i != tt.leaverIdx && err != nil {
						t.Errorf("caller %d error = %v, want nil", i, err)
					}
				}
				if fillCtxErr != nil {
					t.Errorf("fill context error = %v, want nil", fillCtxErr)
				}
			})
		})
	}
}

func TestGetCancelledBeforeMiss(t *testing.T) {
	c := newTestCache(t, Options{MemoryBytes: 1 << 20})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var fills atomic.Int64
	key := NewKey("sha256:cancelled", 0, 1)
	if _, err := c.Get(ctx, key, countingFill(&fills, []byte("x"), nil)); !errors.Is(err, context.Canceled) {
		t.Errorf("Get error = %v, want %v", err, context.Canceled)
	}
	if n := fills.Load(); n != 0 {
		t.Errorf("fill called %d times for a caller already gone, want 0", n)
	}

	// A hit is served even to a caller whose context has ended.
	if _, err := c.Get(t.Context(), key, countingFill(&fills, []byte("x"), nil)); err != nil {
		t.Fatal(err)
	}
	if b, err := c.Get(ctx, key, countingFill(&fills, []byte("x"), nil)); err != nil || string(b) != "x" {
		t.Errorf("Get with ended ctx on a hit = %q, %v; want %q, nil", b, err, "x")
	}
}

func TestGetAfterClose(t *testing.T) {
	c, err := New(Options{MemoryBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close() // idempotent
	var fills atomic.Int64
	_, err = c.Get(t.Context(), NewKey("sha256:closed", 0, 1), countingFill(&fills, []byte("x"), nil))
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close error = %v, want %v", err, ErrClosed)
	}
	if n := fills.Load(); n != 0 {
		t.Errorf("fill called %d times after Close, want 0", n)
	}
}

// TestCloseDuringFill checks that a fill outliving Close finishes safely
// and its waiter still gets the bytes.
func TestCloseDuringFill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := New(Options{MemoryBytes: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := c.Get(t.Context(), NewKey("sha256:closing", 0, 1), func(context.Context) ([]byte, error) {
				<-release
				return []byte("x"), nil
			})
			done <- err
		}()
		synctest.Wait()
		c.Close()
		close(release)
		if err := <-done; err != nil {
			t.Errorf("Get across Close error = %v, want nil", err)
		}
	})
}

// BenchmarkCacheGetHit measures the read-through front on a memory hit of
// a 64 KiB chunk.
func BenchmarkCacheGetHit(b *testing.B) {
	const size = 64 << 10
	c := newTestCache(b, Options{MemoryBytes: 64 << 20})
	key := NewKey("sha256:bench", 0, size)
	value := make([]byte, size)
	fill := func(context.Context) ([]byte, error) { return value, nil }
	ctx := b.Context()
	if _, err := c.Get(ctx, key, fill); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	for b.Loop() {
		if _, err := c.Get(ctx, key, fill); err != nil {
			b.Fatal(err)
		}
	}
}
