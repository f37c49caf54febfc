package cache

import (
	"context"
	"fmt"
	"testing"
)

// Hit throughput with 1 MiB entries. Goals on the reference machine: a
// memory hit ≥ 2 GB/s, a disk hit (page-cached file, read and verified)
// ≥ 1 GB/s.

const (
	benchEntry = 1 << 20
	benchKeys  = 64
)

func benchKeyset() []Key {
	keys := make([]Key, benchKeys)
	for i := range keys {
		keys[i] = NewKey(fmt.Sprintf("sha256:bench%02d", i), 0, benchEntry)
	}
	return keys
}

// benchGets runs get over the keys, serially and from GOMAXPROCS
// goroutines, counting the entry size per Get.
func benchGets(b *testing.B, keys []Key, get func(Key) bool) {
	b.Run("serial", func(b *testing.B) {
		b.SetBytes(benchEntry)
		i := 0
		for b.Loop() {
			if !get(keys[i%len(keys)]) {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetBytes(benchEntry)
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if !get(keys[i%len(keys)]) {
					b.Error("miss")
					return
				}
				i++
			}
		})
	})
}

// BenchmarkMemoryHit1MiB measures a memory-tier hit through the Cache
// front.
func BenchmarkMemoryHit1MiB(b *testing.B) {
	keys := benchKeyset()
	c := newTestCache(b, Options{MemoryBytes: 2 * benchKeys * benchEntry})
	ctx := b.Context()
	fill := func(context.Context) ([]byte, error) { return make([]byte, benchEntry), nil }
	for _, k := range keys {
		if _, err := c.Get(ctx, k, fill); err != nil {
			b.Fatal(err)
		}
	}
	noFill := func(context.Context) ([]byte, error) { return nil, fmt.Errorf("filled") }
	benchGets(b, keys, func(k Key) bool {
		_, err := c.Get(ctx, k, noFill)
		return err == nil
	})
	if s := c.Stats(); s.Fills != benchKeys {
		b.Errorf("%d fills, want %d: the benchmark did not hit memory", s.Fills, benchKeys)
	}
}

// BenchmarkDiskHit1MiB measures a disk-tier hit on the Disk itself: open,
// read, checksum and key check, mtime check.
func BenchmarkDiskHit1MiB(b *testing.B) {
	keys := benchKeyset()
	d := newTestDisk(b, b.TempDir(), 2*benchKeys*benchEntry)
	for _, k := range keys {
		if err := d.Put(k, content(k, benchEntry)); err != nil {
			b.Fatal(err)
		}
	}
	benchGets(b, keys, func(k Key) bool {
		_, ok := d.Get(k)
		return ok
	})
}

// BenchmarkCacheDiskHit1MiB measures a disk hit through the Cache front,
// whose memory tier is too small to keep anything.
func BenchmarkCacheDiskHit1MiB(b *testing.B) {
	keys := benchKeyset()
	c := newTestCache(b, Options{MemoryBytes: 1, Dir: b.TempDir(), DiskBytes: 2 * benchKeys * benchEntry})
	ctx := b.Context()
	for _, k := range keys {
		if _, err := c.Get(ctx, k, func(context.Context) ([]byte, error) { return content(k, benchEntry), nil }); err != nil {
			b.Fatal(err)
		}
	}
	c.Flush()
	noFill := func(context.Context) ([]byte, error) { return nil, fmt.Errorf("filled") }
	benchGets(b, keys, func(k Key) bool {
		_, err := c.Get(ctx, k, noFill)
		return err == nil
	})
	if s := c.Stats(); s.MemoryHits != 0 || s.Fills != benchKeys {
		b.Errorf("stats %+v: the benchmark did not hit disk only", s)
	}
}

// BenchmarkDiskPut1MiB measures writing a new 1 MiB entry (temp file,
// reservation, rename), with eviction once the quota is reached.
func BenchmarkDiskPut1MiB(b *testing.B) {
	d := newTestDisk(b, b.TempDir(), 64*benchEntry)
	value := make([]byte, benchEntry)
	b.SetBytes(benchEntry)
	i := 0
	for b.Loop() {
		if err := d.Put(NewKey("sha256:put", int64(i), benchEntry), value); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
