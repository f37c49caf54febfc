package cache

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// testCommand returns a command that runs this test binary's tests
// matching pattern with env added to the environment.
func testCommand(t *testing.T, pattern string, env ...string) *exec.Cmd {
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run="+pattern, "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// failingFill is a fill that must not run.
func failingFill(t *testing.T) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		t.Error("fill called")
		return nil, errors.New("fill called")
	}
}

func TestNewDiskOptions(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantQuota int64
		wantErr   bool
	}{
		{"no disk tier", Options{}, 0, false},
		{"default quota", Options{Dir: "x"}, DefaultDiskBytes, false},
		{"explicit quota", Options{Dir: "x", DiskBytes: 1 << 20}, 1 << 20, false},
		{"negative quota", Options{Dir: "x", DiskBytes: -1}, 0, true},
		{"negative quota without dir", Options{DiskBytes: -1}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.opts.Dir != "" {
				tt.opts.Dir = filepath.Join(t.TempDir(), tt.opts.Dir)
			}
			c, err := New(tt.opts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("New(%+v) error = %v, want error %v", tt.opts, err, tt.wantErr)
			}
			if c == nil {
				return
			}
			defer c.Close()
			switch {
			case tt.wantQuota == 0 && c.disk != nil:
				t.Errorf("disk tier opened without Dir")
			case tt.wantQuota != 0 && (c.disk == nil || c.disk.quota != tt.wantQuota):
				t.Errorf("disk tier %+v, want quota %d", c.disk, tt.wantQuota)
			}
		})
	}
}

// TestCacheDiskTier follows a chunk from a fill to disk and, after a
// restart, from disk to memory.
func TestCacheDiskTier(t *testing.T) {
	dir := t.TempDir()
	key := NewKey("sha256:tiers", 0, 64<<10)
	want := content(key, 64<<10)

	c1, err := New(Options{MemoryBytes: 1 << 20, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var fills atomic.Int64
	if b, err := c1.Get(t.Context(), key, countingFill(&fills, want, nil)); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("Get = %d bytes, %v", len(b), err)
	}
	c1.Flush()
	s := c1.Stats()
	if s.Misses != 1 || s.DiskMisses != 1 || s.Fills != 1 || s.DiskBytes != entrySize(key, len(want)) || s.DiskEntries != 1 {
		t.Errorf("first cache stats = %+v, want one miss in both tiers, one fill, one entry on disk", s)
	}
	c1.Close() // a restart

	c2 := newTestCache(t, Options{MemoryBytes: 1 << 20, Dir: dir})
	for range 2 {
		if b, err := c2.Get(t.Context(), key, failingFill(t)); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("Get after restart = %d bytes, %v", len(b), err)
		}
	}
	// The disk hit went into memory, so the second Get hit there.
	s = c2.Stats()
	s.MemoryBytes = 0
	wantStats := Stats{MemoryHits: 1, Misses: 1, DiskHits: 1, DiskBytes: entrySize(key, len(want)), DiskEntries: 1}
	if s != wantStats {
		t.Errorf("Stats() = %+v,\nwant %+v", s, wantStats)
	}
}

// TestCacheDiskCorruptRefills damages the entry behind a Cache and checks
// that Get fills again and returns the right bytes.
func TestCacheDiskCorruptRefills(t *testing.T) {
	dir := t.TempDir()
	// A memory tier too small for the chunk sends every Get to disk.
	c := newTestCache(t, Options{MemoryBytes: 1, Dir: dir})
	key := NewKey("sha256:refill", 0, 8<<10)
	want := content(key, 8<<10)
	var fills atomic.Int64
	fill := countingFill(&fills, want, nil)
	for range 2 {
		if b, err := c.Get(t.Context(), key, fill); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("Get = %d bytes, %v", len(b), err)
		}
		c.Flush()
	}
	if n := fills.Load(); n != 1 {
		t.Fatalf("%d fills before the damage, want 1", n)
	}
	path := c.disk.entryPath(key)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-100] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := c.Get(t.Context(), key, fill); err != nil || !bytes.Equal(b, want) {
		t.Fatalf("Get of the damaged entry = %d bytes, %v; want the right bytes", len(b), err)
	}
	c.Flush()
	if n := fills.Load(); n != 2 {
		t.Errorf("%d fills, want 2", n)
	}
	s := c.Stats()
	if s.DiskCorrupt != 1 || s.DiskHits != 1 || s.DiskMisses != 2 {
		t.Errorf("stats = %+v, want 1 corrupt, 1 disk hit, 2 disk misses", s)
	}
	// The refill was written back, soundly.
	if got, ok := c.disk.Get(key); !ok || !bytes.Equal(got, want) {
		t.Errorf("disk entry after refill: %d bytes, %v", len(got), ok)
	}
}

// TestCacheWriteBehind checks that waiters do not wait for the disk write,
// that a fill whose write has not landed is served without filling again,
// and that Flush waits for the write.
func TestCacheWriteBehind(t *testing.T) {
	dir := t.TempDir()
	c := newTestCache(t, Options{MemoryBytes: 1, Dir: dir})
	key := NewKey("sha256:behind", 0, 4<<10)
	want := content(key, 4<<10)

	unlock := lockDir(t, dir) // the disk write blocks on this
	var fills atomic.Int64
	for range 3 {
		if b, err := c.Get(t.Context(), key, countingFill(&fills, want, nil)); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("Get = %d bytes, %v", len(b), err)
		}
	}
	if n := fills.Load(); n != 1 {
		t.Errorf("%d fills while the write is pending, want 1", n)
	}
	if exists(c.disk, key) {
		t.Fatal("entry on disk while the directory is locked")
	}
	flushed := make(chan struct{})
	go func() { c.Flush(); close(flushed) }()
	select {
	case <-flushed:
		t.Fatal("Flush returned while the write could not land")
	default:
	}
	unlock()
	<-flushed
	if !exists(c.disk, key) {
		t.Error("entry not on disk after Flush")
	}
}

// TestCacheCloseWaitsForWrites checks that Close lets started writes land.
func TestCacheCloseWaitsForWrites(t *testing.T) {
	dir := t.TempDir()
	c, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			key := NewKey("sha256:close", int64(i), 1<<10)
			c.Get(t.Context(), key, func(context.Context) ([]byte, error) { return content(key, 1<<10), nil })
		})
	}
	wg.Wait()
	c.Close()
	if w := walkDir(t, dir); w.entries != 8 || w.temps != 0 {
		t.Errorf("after Close: %d entries, %d temp files; want 8, 0", w.entries, w.temps)
	}
	if _, err := c.Get(t.Context(), NewKey("sha256:close", 0, 1<<10), failingFill(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close: %v, want %v", err, ErrClosed)
	}
}

// mountTmpfs mounts a tmpfs of the given size on a new directory, or
// skips the test if it cannot.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestCacheDiskFull puts the disk tier on a tmpfs far smaller than its
// quota and checks that Gets keep returning the right bytes, that failed
// writes are counted and logged (rate-limited), and that nothing
// half-written remains.
func TestCacheDiskFull(t *testing.T) {
	dir := filepath.Join(mountTmpfs(t, "256k"), "cache")
	var mu sync.Mutex
	var logs []string
	logf := func(f string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		logs = append(logs, f)
		t.Logf(f, a...)
	}
	c := newTestCache(t, Options{MemoryBytes: 1, Dir: dir, Logf: logf})
	const size = 100 << 10
	keys := make([]Key, 8)
	for i := range keys {
		keys[i] = NewKey("sha256:full", int64(i)*size, size)
	}
	for round := range 3 {
		for _, k := range keys {
			want := content(k, size)
			b, err := c.Get(t.Context(), k, func(context.Context) ([]byte, error) { return want, nil })
			if err != nil || !bytes.Equal(b, want) {
				t.Fatalf("round %d: Get(%q) = %d bytes, %v; want the right %d", round, k, len(b), err, size)
			}
			c.Flush()
		}
	}
	s := c.Stats()
	t.Logf("stats %+v", s)
	if s.DiskWriteErrors == 0 {
		t.Error("no write errors counted on a full disk")
	}
	if s.DiskHits == 0 {
		t.Error("no disk hits: what fitted should have been served")
	}
	mu.Lock()
	if len(logs) != 1 || !strings.Contains(logs[0], "disk write failed") {
		t.Errorf("logged %q, want one rate-limited write warning", logs)
	}
	mu.Unlock()

	w := walkDir(t, dir)
	if w.temps != 0 {
		t.Errorf("%d temp files left on the full disk", w.temps)
	}
	found := 0
	for _, k := range keys {
		if b, ok := c.disk.Get(k); ok {
			found++
			if !bytes.Equal(b, content(k, size)) {
				t.Errorf("entry %q holds wrong bytes", k)
			}
		}
	}
	if found != w.entries || c.Stats().DiskCorrupt != 0 {
		t.Errorf("%d sound entries of %d files, %d corrupt", found, w.entries, c.Stats().DiskCorrupt)
	}
	checkUsage(t, c.disk)
}

// TestCacheWriteBehindBounded checks that fills beyond the pending-bytes
// limit are served but not written, and counted.
func TestCacheWriteBehindBounded(t *testing.T) {
	dir := t.TempDir()
	c := newTestCache(t, Options{MemoryBytes: 1, Dir: dir})
	c.pendingLimit = 10 << 10
	unlock := lockDir(t, dir) // no write can land
	keys := make([]Key, 3)
	for i := range keys {
		keys[i] = NewKey("sha256:bounded", int64(i), 4<<10)
		want := content(keys[i], 4<<10)
		if b, err := c.Get(t.Context(), keys[i], func(context.Context) ([]byte, error) { return want, nil }); err != nil || !bytes.Equal(b, want) {
			t.Fatalf("Get = %d bytes, %v", len(b), err)
		}
	}
	if s := c.Stats(); s.DiskWritesSkipped != 1 {
		t.Errorf("DiskWritesSkipped = %d, want 1", s.DiskWritesSkipped)
	}
	unlock()
	c.Flush()
	for i, k := range keys {
		if got, want := exists(c.disk, k), i < 2; got != want {
			t.Errorf("entry %d on disk = %v, want %v", i, got, want)
		}
	}
}

// TestHoldsLooksInEveryTierWithoutReading: Holds answers for memory and
// disk alike, does not count a memory hit, and takes a disk entry's word
// without checking it (the Get that follows finds it bad and fills).
func TestHoldsLooksInEveryTierWithoutReading(t *testing.T) {
	dir := t.TempDir()
	k1, k2 := NewKey("sha256:aa", 0, 3), NewKey("sha256:bb", 0, 3)
	c, err := New(Options{MemoryBytes: 1 << 20, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(context.Background(), k1, func(context.Context) ([]byte, error) { return []byte("one"), nil }); err != nil {
		t.Fatal(err)
	}
	c.Flush()
	if !c.Holds(k1) || c.Holds(k2) {
		t.Fatalf("memory: Holds(k1) = %v, Holds(k2) = %v", c.Holds(k1), c.Holds(k2))
	}
	if st := c.Stats(); st.MemoryHits != 0 {
		t.Errorf("Holds counted %d memory hits", st.MemoryHits)
	}
	c.Close()
	if c.Holds(k1) {
		t.Error("Holds after Close")
	}

	c, err = New(Options{MemoryBytes: 1 << 20, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Holds(k1) || c.Holds(k2) {
		t.Fatalf("disk: Holds(k1) = %v, Holds(k2) = %v", c.Holds(k1), c.Holds(k2))
	}
	if st := c.Stats(); st.DiskHits != 0 || st.DiskMisses != 0 {
		t.Errorf("Holds read the disk tier: %+v", st)
	}
	// Damage the entry: Holds still says yes, Get finds it bad and fills.
	if err := os.WriteFile(c.disk.entryPath(k1), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !c.Holds(k1) {
		t.Error("Holds checked the entry")
	}
	b, err := c.Get(context.Background(), k1, func(context.Context) ([]byte, error) { return []byte("one"), nil })
	if err != nil || string(b) != "one" || c.Stats().Fills != 1 {
		t.Errorf("Get of a damaged entry: %q, %v, %+v", b, err, c.Stats())
	}
}
