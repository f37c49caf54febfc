package cache

import (
	"fmt"
	"sync"

	"github.com/dgraph-io/ristretto/v2"
)

// Sizing of the ristretto admission counters: ristretto wants about ten
// counters per item it will hold, and lazyroot chunks average about
// 64 KiB.
const (
	expectedItemBytes = 64 << 10
	countersPerItem   = 10
	minCounters       = 1000
	bufferItems       = 64 // ristretto's recommended Get buffer size
)

// Memory is the bytes-bounded in-memory tier: a ristretto cache whose cost
// for an entry is the length of its value (plus ristretto's small
// per-entry overhead), and beside it the values put last, whether or not
// ristretto admitted them (see recent), each charged its key and value
// and a small overhead, so the sum it holds stays within the bound given
// to NewMemory.
//
// Values are stored as the exact slices passed to Put and returned as is
// by Get: they are shared and must be treated as immutable by everyone.
//
// Lock order: mu, then ristretto's own locks or recent.mu (a leaf).
type Memory struct {
	// mu guards the lifetime of c: Get and Put hold it for reading,
	// Close for writing, so no call reaches ristretto while or after it
	// closes (ristretto itself does not allow that).
	mu     sync.RWMutex
	closed bool // protected by mu
	c      *ristretto.Cache[string, []byte]
	recent *recent
}

// NewMemory returns a memory tier that holds at most maxBytes bytes.
// maxBytes must be positive.
func NewMemory(maxBytes int64) (*Memory, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("new memory tier: bound %d bytes is not positive", maxBytes)
	}
	recentBytes := min(maxBytes/recentShare, maxRecentBytes)
	counters := max(maxBytes/expectedItemBytes*countersPerItem, minCounters)
	c, err := ristretto.NewCache(&ristretto.Config[string, []byte]{
		NumCounters: counters,
		MaxCost:     maxBytes - recentBytes,
		BufferItems: bufferItems,
	})
	if err != nil {
		return nil, fmt.Errorf("new memory tier: %w", err)
	}
	return &Memory{c: c, recent: newRecent(recentBytes)}, nil
}

// Get returns the bytes stored for key and whether there were any. The
// returned slice is shared: callers must not modify it. After Close, Get
// always misses.
func (m *Memory) Get(key Key) ([]byte, bool) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, false
	}
	if b, ok := m.c.Get(string(key)); ok {
		return b, true
	}
	return m.recent.get(key)
}

// Put stores b under key, keeping b itself (not a copy): neither the
// caller nor anyone else may modify b afterwards. When Put returns, a Get
// of key hits unless the entry was refused or evicted to keep the tier
// within its bound (an entry larger than the bound is never kept). Put
// after Close does nothing.
func (m *Memory) Put(key Key, b []byte) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return
	}
	m.recent.put(key, b)
	cost := int64(len(b))
	if !m.c.Set(string(key), b, cost) {
		// ristretto drops a set when its buffer is full; let the buffer
		// drain and try once more rather than lose a fill's result.
		m.c.Wait()
		m.c.Set(string(key), b, cost)
	}
	// ristretto applies sets on its own goroutine; wait for this one so
	// that a Get right after Put sees it.
	m.c.Wait()
}

// heldBytes reports the cost the tier holds now: value bytes plus
// ristretto's per-entry overhead. It is approximate while puts are in
// flight, and counts twice a value both ristretto and recent hold.
func (m *Memory) heldBytes() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return 0
	}
	return m.c.MaxCost() - m.c.RemainingCost() + m.recent.held()
}

// Close releases the tier's memory and its background goroutines. It may
// run concurrently with Get and Put; afterwards Get misses and Put does
// nothing. Close is idempotent.
func (m *Memory) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	m.closed = true
	m.c.Close()
	m.recent.clear()
}
