package cache

import (
	"context"
	"testing"
)

// TestPeek checks that Peek answers from memory only, counts hits as Get
// does, never fills, allocates nothing on a hit, and misses after Close.
func TestPeek(t *testing.T) {
	c, err := New(Options{MemoryBytes: 1 << 20, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	key := NewKey("sha256:abc", 0, 3)
	if _, ok := c.Peek(key); ok {
		t.Fatal("Peek hit an empty cache")
	}
	if s := c.Stats(); s.MemoryHits != 0 || s.Misses != 0 || s.Fills != 0 {
		t.Fatalf("a missing Peek counted: %+v", s)
	}
	if _, err := c.Get(context.Background(), key, func(context.Context) ([]byte, error) { return []byte("abc"), nil }); err != nil {
		t.Fatal(err)
	}
	b, ok := c.Peek(key)
	if !ok || string(b) != "abc" {
		t.Fatalf("Peek after Get = %q, %v", b, ok)
	}
	if s := c.Stats(); s.MemoryHits != 1 || s.Fills != 1 {
		t.Fatalf("stats after one Peek hit: %+v", s)
	}
	if allocs := testing.AllocsPerRun(100, func() { c.Peek(key) }); allocs != 0 {
		t.Errorf("Peek hit allocates %v times, want 0", allocs)
	}
	// A hit on a value ristretto dropped, served from the values put last.
	c.mem.c.Del(string(key))
	c.mem.c.Wait()
	if b, ok := c.Peek(key); !ok || string(b) != "abc" {
		t.Fatalf("Peek of a value put last = %q, %v", b, ok)
	}
	if allocs := testing.AllocsPerRun(100, func() { c.Peek(key) }); allocs != 0 {
		t.Errorf("Peek hit on a value put last allocates %v times, want 0", allocs)
	}
	c.Close()
	if _, ok := c.Peek(key); ok {
		t.Error("Peek hit after Close")
	}
}
