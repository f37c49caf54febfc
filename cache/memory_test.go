package cache

import (
	"bytes"
	"fmt"
	"testing"
)

func newTestMemory(t testing.TB, maxBytes int64) *Memory {
	t.Helper()
	m, err := NewMemory(maxBytes)
	if err != nil {
		t.Fatalf("NewMemory(%d): %v", maxBytes, err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestNewMemoryBound(t *testing.T) {
	tests := []struct {
		name     string
		maxBytes int64
		wantErr  bool
	}{
		{"one byte", 1, false},
		{"one MiB", 1 << 20, false},
		{"zero", 0, true},
		{"negative", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMemory(tt.maxBytes)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewMemory(%d) error = %v, want error %v", tt.maxBytes, err, tt.wantErr)
			}
			if m != nil {
				m.Close()
			}
		})
	}
}

func TestMemoryHitAfterPut(t *testing.T) {
	tests := []struct {
		name  string
		value []byte
	}{
		{"empty", []byte{}},
		{"small", []byte("hello lazyroot")},
		{"chunk", bytes.Repeat([]byte{0xa5}, 64<<10)},
		{"large chunk", bytes.Repeat([]byte{0x5a}, 4<<20)},
	}
	m := newTestMemory(t, 64<<20)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := NewKey("sha256:"+tt.name, 0, int64(len(tt.value)))
			if _, ok := m.Get(key); ok {
				t.Fatalf("Get(%q) hit before Put", key)
			}
			m.Put(key, tt.value)
			got, ok := m.Get(key)
			if !ok {
				t.Fatalf("Get(%q) missed right after Put", key)
			}
			if !bytes.Equal(got, tt.value) {
				t.Errorf("Get(%q) = %d bytes, want the %d put", key, len(got), len(tt.value))
			}
			if len(tt.value) > 0 && &got[0] != &tt.value[0] {
				t.Errorf("Get(%q) returned a copy, want the slice that was put", key)
			}
		})
	}
}

func TestMemoryBounded(t *testing.T) {
	tests := []struct {
		name      string
		bound     int64
		valueSize int
	}{
		{"small values", 1 << 20, 4 << 10},
		{"chunk values", 4 << 20, 64 << 10},
		{"values near the bound", 1 << 20, 300 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newTestMemory(t, tt.bound)
			value := make([]byte, tt.valueSize)
			n := int(10 * tt.bound / int64(tt.valueSize))
			keys := make([]Key, n)
			for i := range keys {
				keys[i] = NewKey("sha256:bounded", int64(i*tt.valueSize), int64(tt.valueSize))
				m.Put(keys[i], value)
			}
			held := m.heldBytes()
			if held > tt.bound {
				t.Errorf("tier holds cost %d after putting %d bytes, want at most %d", held, n*tt.valueSize, tt.bound)
			}
			if held <= 0 {
				t.Errorf("tier holds cost %d after putting %d bytes, want some", held, n*tt.valueSize)
			}
			var reachable int64
			for _, k := range keys {
				if b, ok := m.Get(k); ok {
					reachable += int64(len(b))
				}
			}
			if reachable > tt.bound {
				t.Errorf("%d value bytes reachable, want at most %d", reachable, tt.bound)
			}
		})
	}
}

// TestMemoryKeepsWhatAScanJustPut: once the tier is full of entries read
// often, ristretto refuses most new ones; the values put last must still
// be served, as a job reads a large file in several pieces just after
// readahead has fetched its chunks and a few more, and the tier must stay
// within its bound.
func TestMemoryKeepsWhatAScanJustPut(t *testing.T) {
	const bound = 32 << 20 // recent: 4 MiB
	const size = 256 << 10
	const ahead = 8 // values put before the first read of a value: 2 MiB
	m := newTestMemory(t, bound)
	value := make([]byte, size)
	for i := range 2 * bound / size {
		k := NewKey("sha256:hot", int64(i*size), size)
		m.Put(k, value)
		for range 8 {
			m.Get(k)
		}
	}
	const scan = 64
	key := func(i int) Key { return NewKey("sha256:scan", int64(i*size), size) }
	missed := 0
	for i := range scan + ahead {
		if i < scan {
			m.Put(key(i), value)
		}
		if r := i - ahead; r >= 0 {
			for piece := range 4 {
				if _, ok := m.Get(key(r)); !ok {
					missed++
					t.Logf("scan value %d missed at read %d, %d values after its Put", r, piece, ahead)
					break
				}
			}
		}
	}
	if missed > 0 {
		t.Errorf("%d of %d values missed within four reads, %d values after their Put", missed, scan, ahead)
	}
	if held := m.heldBytes(); held > bound {
		t.Errorf("tier holds cost %d after the scan, want at most %d", held, bound)
	}
}

// TestRecentDropsOldestFirst checks which values recent keeps within its
// bound, each charged its key, its value and a fixed overhead.
func TestRecentDropsOldestFirst(t *testing.T) {
	const k = 1 << 10
	type put struct{ key, size int }
	tests := []struct {
		name     string
		max      int64
		puts     []put
		wantHeld []int // keys held at the end
	}{
		{"all fit", 10 * k, []put{{0, 3 * k}, {1, 3 * k}, {2, 3 * k}}, []int{0, 1, 2}},
		{"oldest out", 10 * k, []put{{0, 4 * k}, {1, 4 * k}, {2, 4 * k}}, []int{1, 2}},
		{"several out for a large one", 10 * k, []put{{0, 3 * k}, {1, 3 * k}, {2, 3 * k}, {3, 9 * k}}, []int{3}},
		{"larger than the bound", 10 * k, []put{{0, 4 * k}, {1, 11 * k}}, []int{0}},
		{"keys and overhead count", 6 * k, []put{{0, 2 * k}, {1, 2 * k}, {2, 2 * k}, {3, 2 * k}}, []int{2, 3}},
		{"a key put again keeps its place", 10 * k, []put{{0, 3 * k}, {1, 3 * k}, {0, 3 * k}, {2, 3 * k}, {3, 3 * k}}, []int{1, 2, 3}},
		{"empty values are charged", 4 * recentEntryCost, []put{{0, 0}, {1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}}, []int{3, 4, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecent(tt.max)
			key := func(i int) Key { return NewKey(fmt.Sprintf("sha256:%02d", i), 0, 0) }
			last := 0
			for _, p := range tt.puts {
				r.put(key(p.key), make([]byte, p.size))
				last = max(last, p.key)
			}
			var held []int
			var cost int64
			for i := range last + 1 {
				if b, ok := r.get(key(i)); ok {
					held = append(held, i)
					cost += entryCost(key(i), b)
				}
			}
			if fmt.Sprint(held) != fmt.Sprint(tt.wantHeld) {
				t.Errorf("held %v, want %v", held, tt.wantHeld)
			}
			if cost > tt.max || cost != r.held() {
				t.Errorf("entries cost %d (counted %d), want the count and at most %d", cost, r.held(), tt.max)
			}
		})
	}
}

func TestMemoryRefusesValueOverBound(t *testing.T) {
	m := newTestMemory(t, 1<<10)
	key := NewKey("sha256:big", 0, 2<<10)
	m.Put(key, make([]byte, 2<<10))
	if _, ok := m.Get(key); ok {
		t.Errorf("Get(%q) hit for a value larger than the whole tier", key)
	}
	if held := m.heldBytes(); held != 0 {
		t.Errorf("tier holds cost %d, want 0", held)
	}
}

func TestMemoryClose(t *testing.T) {
	m, err := NewMemory(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	key := NewKey("sha256:closed", 0, 3)
	m.Put(key, []byte("abc"))
	m.Close()
	m.Close() // idempotent
	if _, ok := m.Get(key); ok {
		t.Errorf("Get after Close hit")
	}
	m.Put(key, []byte("abc")) // must not panic
	if held := m.heldBytes(); held != 0 {
		t.Errorf("held cost after Close = %d, want 0", held)
	}
}

func TestMemoryCloseWhileBusy(t *testing.T) {
	m, err := NewMemory(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 2000 {
				k := NewKey(fmt.Sprintf("sha256:%d", g), int64(i), 8)
				m.Put(k, make([]byte, 8))
				m.Get(k)
			}
		}()
	}
	m.Close()
	for range 4 {
		<-done
	}
}

// BenchmarkMemoryHit measures a memory-tier hit on a 64 KiB chunk.
func BenchmarkMemoryHit(b *testing.B) {
	const size = 64 << 10
	const nkeys = 256
	m := newTestMemory(b, 2*nkeys*size)
	keys := make([]Key, nkeys)
	for i := range keys {
		keys[i] = NewKey("sha256:bench", int64(i*size), size)
		m.Put(keys[i], make([]byte, size))
		if _, ok := m.Get(keys[i]); !ok {
			b.Fatalf("setup: Get(%q) missed after Put", keys[i])
		}
	}
	b.Run("serial", func(b *testing.B) {
		b.SetBytes(size)
		i := 0
		for b.Loop() {
			if _, ok := m.Get(keys[i%nkeys]); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetBytes(size)
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, ok := m.Get(keys[i%nkeys]); !ok {
					b.Error("miss")
					return
				}
				i++
			}
		})
	})
}

// BenchmarkMemoryPut measures Put of a new 64 KiB chunk, including the
// wait that makes it visible to the next Get.
func BenchmarkMemoryPut(b *testing.B) {
	const size = 64 << 10
	m := newTestMemory(b, 64<<20)
	value := make([]byte, size)
	b.SetBytes(size)
	i := 0
	for b.Loop() {
		m.Put(NewKey("sha256:put", int64(i*size), size), value)
		i++
	}
}
