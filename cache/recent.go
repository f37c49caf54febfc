package cache

import "sync"

// recentShare is the part of the memory tier's bound kept for the latest
// values put (1/recentShare of it, at most maxRecentBytes); ristretto gets
// the rest.
const (
	recentShare    = 8
	maxRecentBytes = 64 << 20
	// recentEntryCost is what recent charges an entry beyond its key and
	// value: its map entry and its place in the queue.
	recentEntryCost = 64
)

// recent holds the values most recently put in the memory tier, up to a
// byte bound, oldest out first, whether or not ristretto admitted them.
//
// ristretto admits a new entry only if it looks used more often than the
// ones it would evict: once the tier is full, a chunk just fetched is
// mostly refused. A job reading a large file reads each chunk in several
// pieces (a FUSE read is at most 1 MiB, an eStargz chunk up to 4 MiB)
// right after the chunk is fetched, and without recent each piece after
// the first would read the whole chunk back from the disk tier.
//
// Its methods are safe for concurrent use; mu is a leaf lock.
type recent struct {
	mu    sync.Mutex
	max   int64          // set once
	bytes int64          // guarded by mu: sum of the entries' costs (entryCost)
	vals  map[Key][]byte // guarded by mu
	order []Key          // guarded by mu: keys of vals from order[head], oldest first
	head  int            // guarded by mu
}

func newRecent(max int64) *recent {
	return &recent{max: max, vals: make(map[Key][]byte)}
}

// get returns the value put under key if it is still held.
func (r *recent) get(key Key) ([]byte, bool) {
	r.mu.Lock()
	b, ok := r.vals[key]
	r.mu.Unlock()
	return b, ok
}

// entryCost is what an entry of key and b counts against the bound.
func entryCost(key Key, b []byte) int64 {
	return int64(len(key)) + int64(len(b)) + recentEntryCost
}

// put holds b under key, dropping the oldest values to stay within the
// bound. A value whose entry costs more than the bound is not held; a key
// already held keeps its value and place.
func (r *recent) put(key Key, b []byte) {
	n := entryCost(key, b)
	if n > r.max {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.vals[key]; ok {
		return
	}
	for r.bytes+n > r.max && r.head < len(r.order) {
		old := r.order[r.head]
		r.order[r.head] = ""
		r.head++
		r.bytes -= entryCost(old, r.vals[old])
		delete(r.vals, old)
	}
	if r.head > len(r.order)/2 {
		r.order = append(r.order[:0], r.order[r.head:]...)
		r.head = 0
	}
	r.order = append(r.order, key)
	r.vals[key] = b
	r.bytes += n
}

// held returns the cost of the entries held.
func (r *recent) held() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bytes
}

// clear drops every value.
func (r *recent) clear() {
	r.mu.Lock()
	r.vals = make(map[Key][]byte)
	r.order, r.head, r.bytes = nil, 0, 0
	r.mu.Unlock()
}
