package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newTestDisk(t testing.TB, dir string, quota int64) *Disk {
	t.Helper()
	d, err := OpenDisk(dir, quota, t.Logf)
	if err != nil {
		t.Fatalf("OpenDisk(%q, %d): %v", dir, quota, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// content is the deterministic value of n bytes for key.
func content(key Key, n int) []byte {
	h := fnv.New64a()
	h.Write([]byte(key))
	r := rand.New(rand.NewPCG(h.Sum64(), uint64(n)))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// dirUsage is what a walk of a cache directory finds, measured
// independently of the Disk's own accounting.
type dirUsage struct {
	entryBytes int64 // files named like entries
	entries    int
	temps      int
	other      int   // files that are neither (the lock file)
	total      int64 // every regular file but the lock file
}

func walkDir(t testing.TB, dir string) dirUsage {
	t.Helper()
	var u dirUsage
	err := filepath.WalkDir(dir, func(path string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		name := de.Name()
		switch {
		case isHex(name, 64), isFileEntryName(name, filepath.Base(filepath.Dir(path))):
			u.entries++
			u.entryBytes += info.Size()
			u.total += info.Size()
		case strings.HasPrefix(name, tmpPrefix):
			u.temps++
			u.total += info.Size()
		case path == filepath.Join(dir, lockName):
			u.other++
		default:
			u.other++
			u.total += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return u
}

// entrySize is the file size of an entry for key with n data bytes.
func entrySize(key Key, n int) int64 { return int64(entryHeaderSize + len(key) + n) }

// checkUsage checks that Usage agrees with a walk of the directory.
func checkUsage(t *testing.T, d *Disk) dirUsage {
	t.Helper()
	bytes, entries, err := d.Usage()
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	w := walkDir(t, d.dir)
	if bytes != w.entryBytes || entries != w.entries {
		t.Errorf("Usage() = %d bytes, %d entries; walk finds %d bytes, %d entries", bytes, entries, w.entryBytes, w.entries)
	}
	return w
}

func TestOpenDisk(t *testing.T) {
	tests := []struct {
		name      string
		dir       string
		quota     int64
		wantQuota int64
		wantErr   bool
	}{
		{"default quota", "a", 0, DefaultDiskBytes, false},
		{"explicit quota", "b", 1 << 20, 1 << 20, false},
		{"nested dir created", "c/d/e", 1 << 20, 1 << 20, false},
		{"negative quota", "f", -1, 0, true},
		{"no dir", "", 1 << 20, 0, true},
	}
	base := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.dir
			if dir != "" {
				dir = filepath.Join(base, dir)
			}
			d, err := OpenDisk(dir, tt.quota, nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("OpenDisk error = %v, want error %v", err, tt.wantErr)
			}
			if d == nil {
				return
			}
			defer d.Close()
			if d.quota != tt.wantQuota {
				t.Errorf("quota = %d, want %d", d.quota, tt.wantQuota)
			}
			if _, err := os.Stat(filepath.Join(dir, lockName)); err != nil {
				t.Errorf("lock file: %v", err)
			}
		})
	}
}

func TestDiskRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"small", 100},
		{"chunk", 64 << 10},
		{"large", 1 << 20},
	}
	d := newTestDisk(t, t.TempDir(), 64<<20)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := NewKey("sha256:"+tt.name, 0, int64(tt.size))
			if _, ok := d.Get(key); ok {
				t.Fatalf("Get(%q) hit before Put", key)
			}
			want := content(key, tt.size)
			if err := d.Put(key, want); err != nil {
				t.Fatalf("Put: %v", err)
			}
			got, ok := d.Get(key)
			if !ok {
				t.Fatalf("Get(%q) missed after Put", key)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Get(%q) = %d bytes, not the %d put", key, len(got), len(want))
			}
			// A second Put of the same key is a no-op.
			if err := d.Put(key, want); err != nil {
				t.Errorf("second Put: %v", err)
			}
			info, err := os.Stat(d.entryPath(key))
			if err != nil {
				t.Fatal(err)
			}
			if info.Size() != entrySize(key, tt.size) {
				t.Errorf("entry file is %d bytes, want %d", info.Size(), entrySize(key, tt.size))
			}
		})
	}
	w := checkUsage(t, d)
	if w.entries != len(tests) || w.temps != 0 {
		t.Errorf("walk finds %d entries and %d temp files, want %d and 0", w.entries, w.temps, len(tests))
	}
	s := d.stats()
	if s.hits != uint64(len(tests)) || s.misses != uint64(len(tests)) || s.corrupt != 0 || s.writeErrors != 0 {
		t.Errorf("stats = %+v, want %d hits and misses, nothing else", s, len(tests))
	}
	if s.bytes != w.entryBytes || s.entries != int64(w.entries) {
		t.Errorf("stats say %d bytes in %d entries, walk finds %d in %d", s.bytes, s.entries, w.entryBytes, w.entries)
	}
}

// TestDiskReopen checks that a new Disk on a directory finds the entries
// there, removes the temp files of dead writers and keeps those of live
// ones (counting what they reserved).
func TestDiskReopen(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDisk(dir, 1<<20, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]Key, 5)
	for i := range keys {
		keys[i] = NewKey(fmt.Sprintf("sha256:reopen%d", i), 0, 1<<10)
		if err := d.Put(keys[i], content(keys[i], 1<<10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// A crashed writer's temp file, and a live writer's (we hold its lock).
	shard := filepath.Dir(d.entryPath(keys[0]))
	dead := filepath.Join(shard, tmpPrefix+"3000-dead")
	if err := os.WriteFile(dead, make([]byte, 1234), 0o600); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(shard, tmpPrefix+"5000-live")
	lf, err := os.Create(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	// A damaged usage record must not matter: open rescans.
	if err := os.WriteFile(filepath.Join(dir, lockName), []byte("garbage garbage garbage garbage!"), 0o600); err != nil {
		t.Fatal(err)
	}

	d = newTestDisk(t, dir, 1<<20)
	for _, k := range keys {
		got, ok := d.Get(k)
		if !ok || !bytes.Equal(got, content(k, 1<<10)) {
			t.Errorf("after reopen Get(%q) = %d bytes, %v; want the bytes put", k, len(got), ok)
		}
	}
	if _, err := os.Stat(dead); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dead writer's temp file: stat error %v, want it removed", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("live writer's temp file: %v, want it kept", err)
	}
	if err := d.lock(time.Minute); err != nil {
		t.Fatal(err)
	}
	u, ok := d.readUsageLocked()
	d.unlock()
	wantBytes := 5 * entrySize(keys[0], 1<<10)
	if !ok || u.bytes != wantBytes || u.entries != 5 || u.reserved != 5000 {
		t.Errorf("usage record = %+v, %v; want %d bytes, 5 entries, 5000 reserved", u, ok, wantBytes)
	}

	// Once the live writer is gone, the next scan removes its file.
	lf.Close()
	w := checkUsage(t, d)
	if w.temps != 0 {
		t.Errorf("%d temp files left after the writer died", w.temps)
	}
}

// TestDiskQuota writes many entries into a small quota and checks after
// every put that the directory holds no more than the quota.
func TestDiskQuota(t *testing.T) {
	tests := []struct {
		name  string
		quota int64
		n     int
		size  func(i int) int
	}{
		{"equal chunks", 1 << 20, 200, func(int) int { return 64 << 10 }},
		{"mixed sizes", 512 << 10, 200, func(i int) int { return 1 + (i*7919)%(100<<10) }},
		{"chunks near the quota", 300 << 10, 30, func(i int) int { return 100<<10 + i }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newTestDisk(t, t.TempDir(), tt.quota)
			var maxChunk int64
			filled := false
			for i := range tt.n {
				key := NewKey("sha256:quota", int64(i)<<20, int64(tt.size(i)))
				maxChunk = max(maxChunk, entrySize(key, tt.size(i)))
				if err := d.Put(key, content(key, tt.size(i))); err != nil {
					t.Fatalf("Put #%d: %v", i, err)
				}
				w := walkDir(t, d.dir)
				if w.total > tt.quota {
					t.Fatalf("after Put #%d the directory holds %d bytes, quota %d", i, w.total, tt.quota)
				}
				if w.total+maxChunk > tt.quota {
					filled = true
				}
				// Eviction stops at the low-water mark; it does not empty
				// the tier.
				if filled && w.entryBytes < tt.quota/2 {
					t.Errorf("after Put #%d only %d bytes held of %d", i, w.entryBytes, tt.quota)
				}
				if w.temps != 0 {
					t.Fatalf("after Put #%d: %d temp files", i, w.temps)
				}
				if _, ok := d.Get(key); !ok {
					t.Errorf("Get of the entry just put (#%d) missed", i)
				}
			}
			checkUsage(t, d)
			if s := d.stats(); s.evictions == 0 || s.writeErrors != 0 {
				t.Errorf("stats = %+v, want evictions and no write errors", s)
			}
		})
	}
}

// setMtime sets the mtime of key's entry to t.
func setMtime(tb testing.TB, d *Disk, key Key, mt time.Time) {
	tb.Helper()
	if err := os.Chtimes(d.entryPath(key), mt, mt); err != nil {
		tb.Fatal(err)
	}
}

func exists(d *Disk, key Key) bool {
	_, err := os.Lstat(d.entryPath(key))
	return err == nil
}

// TestDiskLRU checks that eviction removes the least recently used
// entries first, where a hit counts as a use.
func TestDiskLRU(t *testing.T) {
	const size = 64 << 10
	keys := make([]Key, 12)
	for i := range keys {
		keys[i] = NewKey(fmt.Sprintf("sha256:lru%02d", i), 0, size) // all one length
	}
	esize := entrySize(keys[0], size)
	// Ten entries fill the quota; an eleventh evicts down to 90%, that is
	// to nine entries including the new one: two go.
	d := newTestDisk(t, t.TempDir(), 10*esize)
	old := time.Now().Add(-time.Hour)
	for i, k := range keys[:10] {
		if err := d.Put(k, content(k, size)); err != nil {
			t.Fatal(err)
		}
		setMtime(t, d, k, old.Add(time.Duration(i)*time.Second)) // keys[0] oldest
	}
	for _, k := range keys[:3] {
		if _, ok := d.Get(k); !ok {
			t.Fatalf("Get(%q) missed", k)
		}
	}
	if err := d.Put(keys[10], content(keys[10], size)); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys[:11] {
		want := i < 3 || i > 4
		if got := exists(d, k); got != want {
			t.Errorf("entry %d present = %v, want %v", i, got, want)
		}
	}
	if s := d.stats(); s.evictions != 2 {
		t.Errorf("evictions = %d, want 2", s.evictions)
	}

	// A hit within the touch interval leaves the mtime alone.
	recent := time.Now().Add(-10 * time.Second).Truncate(time.Second)
	setMtime(t, d, keys[0], recent)
	if _, ok := d.Get(keys[0]); !ok {
		t.Fatal("miss")
	}
	info, err := os.Stat(d.entryPath(keys[0]))
	if err != nil {
		t.Fatal(err)
	}
	if !info.ModTime().Equal(recent) {
		t.Errorf("a hit %v after the last refresh moved mtime to %v", time.Since(recent).Round(time.Second), info.ModTime())
	}
}

// TestDiskCorrupt damages a stored entry in various ways and checks that
// Get misses, removes it, counts it, and that a new Put works.
func TestDiskCorrupt(t *testing.T) {
	const size = 4 << 10
	flip := func(at func(n int64) int64) func(t *testing.T, path, _ string) {
		return func(t *testing.T, path, _ string) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[at(int64(len(b)))] ^= 0x40
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	truncate := func(to func(n int64) int64) func(t *testing.T, path, _ string) {
		return func(t *testing.T, path, _ string) {
			info, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, to(info.Size())); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name   string
		damage func(t *testing.T, path, other string)
	}{
		{"data byte flipped", flip(func(n int64) int64 { return n - 1 })},
		{"first data byte flipped", flip(func(n int64) int64 { return n - size })},
		{"key byte flipped", flip(func(int64) int64 { return entryHeaderSize + 2 })},
		{"checksum flipped", flip(func(int64) int64 { return 5 })},
		{"length flipped", flip(func(int64) int64 { return 13 })},
		{"magic flipped", flip(func(int64) int64 { return 0 })},
		{"truncated by one", truncate(func(n int64) int64 { return n - 1 })},
		{"truncated into header", truncate(func(int64) int64 { return 10 })},
		{"empty", truncate(func(int64) int64 { return 0 })},
		{"extended", truncate(func(n int64) int64 { return n + 1 })},
		{"other key's entry", func(t *testing.T, path, other string) {
			if err := os.Rename(other, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink", func(t *testing.T, path, other string) {
			os.Remove(path)
			if err := os.Symlink(other, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, path, _ string) {
			os.Remove(path)
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs atomic.Int64
			d, err := OpenDisk(t.TempDir(), 1<<20, func(f string, a ...any) { logs.Add(1); t.Logf(f, a...) })
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			key := NewKey("sha256:corrupt", 0, size)
			other := NewKey("sha256:other", 0, size)
			for _, k := range []Key{key, other} {
				if err := d.Put(k, content(k, size)); err != nil {
					t.Fatal(err)
				}
			}
			path := d.entryPath(key)
			tt.damage(t, path, d.entryPath(other))

			if b, ok := d.Get(key); ok {
				t.Fatalf("Get served a damaged entry (%d bytes)", len(b))
			}
			if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("damaged entry still there (lstat error %v)", err)
			}
			s := d.stats()
			if s.corrupt != 1 || s.misses != 1 || s.hits != 0 {
				t.Errorf("stats = %+v, want 1 corrupt, 1 miss, 0 hits", s)
			}
			if logs.Load() != 1 {
				t.Errorf("%d warnings logged, want 1", logs.Load())
			}
			checkUsage(t, d)
			if err := d.Put(key, content(key, size)); err != nil {
				t.Fatal(err)
			}
			if b, ok := d.Get(key); !ok || !bytes.Equal(b, content(key, size)) {
				t.Errorf("Get after re-Put = %d bytes, %v; want the bytes put", len(b), ok)
			}
		})
	}
}

func TestDiskTooLarge(t *testing.T) {
	d := newTestDisk(t, t.TempDir(), 1<<10)
	key := NewKey("sha256:big", 0, 1<<10)
	if err := d.Put(key, make([]byte, 1<<10)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Put of an entry over the quota: error %v, want %v", err, ErrTooLarge)
	}
	if w := walkDir(t, d.dir); w.total != 0 {
		t.Errorf("%d bytes on disk after a refused Put", w.total)
	}
	if s := d.stats(); s.writeErrors != 1 {
		t.Errorf("write errors = %d, want 1", s.writeErrors)
	}
}

func TestDiskPrune(t *testing.T) {
	const size = 1 << 10
	d := newTestDisk(t, t.TempDir(), 1<<20)
	ages := []time.Duration{3 * time.Hour, 2 * time.Hour, 90 * time.Minute, time.Minute, 0}
	keys := make([]Key, len(ages))
	for i, age := range ages {
		keys[i] = NewKey(fmt.Sprintf("sha256:prune%d", i), 0, size) // all one length
		if err := d.Put(keys[i], content(keys[i], size)); err != nil {
			t.Fatal(err)
		}
		setMtime(t, d, keys[i], time.Now().Add(-age))
	}
	esize := entrySize(keys[0], size)
	steps := []struct {
		olderThan   time.Duration
		wantEntries int
		wantLeft    int
	}{
		{4 * time.Hour, 0, 5},
		{time.Hour, 3, 2},
		{time.Hour, 0, 2},
		{0, 2, 0},
		{0, 0, 0},
	}
	for _, st := range steps {
		b, n, err := d.Prune(st.olderThan)
		if err != nil {
			t.Fatalf("Prune(%v): %v", st.olderThan, err)
		}
		if n != st.wantEntries || b != int64(st.wantEntries)*esize {
			t.Errorf("Prune(%v) = %d bytes, %d entries; want %d, %d", st.olderThan, b, n, int64(st.wantEntries)*esize, st.wantEntries)
		}
		if w := checkUsage(t, d); w.entries != st.wantLeft {
			t.Errorf("after Prune(%v) %d entries left, want %d", st.olderThan, w.entries, st.wantLeft)
		}
	}
	if _, _, err := d.Prune(-time.Second); err == nil {
		t.Error("Prune of a negative age: no error")
	}
}

func TestDiskClose(t *testing.T) {
	d, err := OpenDisk(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := NewKey("sha256:close", 0, 1)
	if err := d.Put(key, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, ok := d.Get(key); ok {
		t.Error("Get after Close hit")
	}
	if err := d.Put(key, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close: %v, want %v", err, ErrClosed)
	}
	if _, _, err := d.Usage(); !errors.Is(err, ErrClosed) {
		t.Errorf("Usage after Close: %v, want %v", err, ErrClosed)
	}
	if _, _, err := d.Prune(0); !errors.Is(err, ErrClosed) {
		t.Errorf("Prune after Close: %v, want %v", err, ErrClosed)
	}
}

func TestWarnerRateLimited(t *testing.T) {
	var lines []string
	w := warner{logf: func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }, every: time.Hour}
	for i := range 3 {
		w.printf("warning %d", i)
	}
	if len(lines) != 1 || lines[0] != "warning 0" {
		t.Fatalf("logged %q, want just %q", lines, "warning 0")
	}
	w.last = time.Now().Add(-2 * time.Hour)
	w.printf("warning %d", 3)
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "warning 3 (2 more like it") {
		t.Errorf("logged %q, want a second line counting the two held back", lines)
	}
	(&warner{}).printf("no logger") // must not panic
}

// lockDir takes the directory's node-wide lock through a descriptor of its
// own, as another process would, and returns the unlock.
func lockDir(t testing.TB, dir string) func() {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	return func() { f.Close() }
}

// The two-process test: the test binary runs itself as the second
// process, which runs diskWorkload under the same directory.
const childEnv = "LAZYROOT_CACHE_TEST_CHILD_DIR"

const (
	// Writes in progress hold reservations: per process two Disk workers
	// and the Cache's diskWriters, each at most 64 KiB, leave room here.
	mpQuota    = 1 << 20
	mpKeys     = 64
	mpWorkers  = 3
	mpDuration = 1500 * time.Millisecond
)

func mpKey(i int) (Key, int) {
	size := 8<<10 + (i*7919)%(56<<10)
	return NewKey("sha256:multiprocess", int64(i)<<20, int64(size)), size
}

// diskWorkload gets and puts overlapping keys from several goroutines,
// through a Disk and through a Cache, checking every byte it is served.
func diskWorkload(t *testing.T, dir string, seed uint64) {
	d := newTestDisk(t, dir, mpQuota)
	c := newTestCache(t, Options{MemoryBytes: 1, Dir: dir, DiskBytes: mpQuota, Logf: t.Logf})
	deadline := time.Now().Add(mpDuration)
	var wg sync.WaitGroup
	var gets, hits atomic.Int64
	for w := range mpWorkers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for time.Now().Before(deadline) {
				key, size := mpKey(r.IntN(mpKeys))
				want := content(key, size)
				gets.Add(1)
				if w == 0 {
					b, err := c.Get(t.Context(), key, func(context.Context) ([]byte, error) { return want, nil })
					if err != nil || !bytes.Equal(b, want) {
						t.Errorf("Cache.Get(%q) = %d bytes, %v; want the right %d", key, len(b), err, size)
						return
					}
					continue
				}
				if b, ok := d.Get(key); ok {
					hits.Add(1)
					if !bytes.Equal(b, want) {
						t.Errorf("Disk.Get(%q) served %d wrong bytes", key, len(b))
						return
					}
					continue
				}
				if err := d.Put(key, want); err != nil {
					t.Errorf("Put(%q): %v", key, err)
				}
			}
		})
	}
	wg.Wait()
	c.Flush()
	s, cs := d.stats(), c.Stats()
	t.Logf("pid %d: %d gets, %d disk hits; disk %+v; cache %+v", os.Getpid(), gets.Load(), hits.Load(), s, cs)
	if s.corrupt != 0 || s.writeErrors != 0 || cs.DiskCorrupt != 0 || cs.DiskWriteErrors != 0 {
		t.Errorf("corrupt entries or write errors: disk %+v, cache %+v", s, cs)
	}
	if hits.Load() == 0 || s.evictions+cs.DiskEvictions == 0 {
		t.Errorf("workload too light to test anything: %d hits, %d evictions", hits.Load(), s.evictions+cs.DiskEvictions)
	}
}

// TestDiskTwoProcesses runs the workload in this process and a child at
// once on one directory under a small quota. While they run it samples,
// under the directory lock, that the files never pass the quota; after,
// it checks that every entry is sound, Usage agrees with the files, and
// no temp file is left.
func TestDiskTwoProcesses(t *testing.T) {
	if dir := os.Getenv(childEnv); dir != "" {
		diskWorkload(t, dir, 2)
		return
	}
	if testing.Short() {
		t.Skip("multi-process test skipped in short mode")
	}
	dir := t.TempDir()
	// Create the directory and lock file before the workers race to.
	d0 := newTestDisk(t, dir, mpQuota)

	cmd := testCommand(t, "^TestDiskTwoProcesses$", childEnv+"="+dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	sampled := make(chan int)
	go func() {
		n := 0
		defer func() { sampled <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			unlock := lockDir(t, dir)
			// Under the lock no entry or temp file appears or goes, and
			// temp files only grow up to what their writers reserved.
			w := walkDir(t, dir)
			unlock()
			n++
			if w.total > mpQuota {
				t.Errorf("directory holds %d bytes, quota %d", w.total, mpQuota)
				return
			}
		}
	}()
	diskWorkload(t, dir, 1)
	err := cmd.Wait()
	close(stop)
	n := <-sampled
	t.Logf("child:\n%s", out.Bytes())
	if err != nil {
		t.Fatalf("child process: %v", err)
	}
	t.Logf("%d samples taken under the lock", n)

	w := walkDir(t, dir)
	if w.temps != 0 || w.total > mpQuota {
		t.Errorf("afterwards: %d temp files, %d bytes (quota %d)", w.temps, w.total, mpQuota)
	}
	checkUsage(t, d0)
	found := 0
	for i := range mpKeys {
		key, size := mpKey(i)
		if b, ok := d0.Get(key); ok {
			found++
			if !bytes.Equal(b, content(key, size)) {
				t.Errorf("entry %d holds wrong bytes", i)
			}
		}
	}
	if s := d0.stats(); s.corrupt != 0 || found != w.entries {
		t.Errorf("checking every entry: %d corrupt, %d sound of %d files", s.corrupt, found, w.entries)
	}
}
