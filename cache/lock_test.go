package cache

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lockHolderEnv makes TestDiskLockHeldElsewhere, run as a child process,
// hold the directory lock of the directory it names until its standard
// input ends.
const lockHolderEnv = "LAZYROOT_CACHE_TEST_LOCK_HOLDER_DIR"

const lockHolderReady = "LOCK HELD"

// holdLockChild is the child's side: take the lock, say so, and hold it
// until the parent closes our standard input (or dies).
func holdLockChild(t *testing.T, dir string) {
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	fmt.Println(lockHolderReady)
	io.Copy(io.Discard, os.Stdin)
}

// holdLock runs a child process that holds dir's lock, and returns the
// function that makes it let go and exit. The child is killed when the
// test ends in any case.
func holdLock(t *testing.T, dir string) (release func()) {
	t.Helper()
	cmd := testCommand(t, "^TestDiskLockHeldElsewhere$", lockHolderEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan bool, 1)
	var out bytes.Buffer
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if sc.Text() == lockHolderReady {
				ready <- true
				io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Fatalf("lock holder exited without taking the lock:\n%s%s", out.Bytes(), stderr.Bytes())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("lock holder did not take the lock within 30s")
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Errorf("lock holder: %v\n%s", err, stderr.Bytes())
			}
		})
	}
	t.Cleanup(release)
	return release
}

// within runs f and fails the test if it has not returned after limit.
// It returns how long f took.
func within(t *testing.T, limit time.Duration, what string, f func()) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
		return time.Since(start)
	case <-time.After(limit):
		t.Fatalf("%s still waiting after %v", what, limit)
		return 0
	}
}

// logRecorder collects what a Cache logs.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

func (r *logRecorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// TestDiskLockHeldElsewhere has another process hold the directory lock
// (as a long prune, a frozen mount or another mount's start would) and
// checks that nothing waits for it without a bound: a Get of a damaged
// entry is served by the fill within the caller's deadline, a Put fails
// in bounded time leaving nothing behind, Close returns, and a new Cache
// opens. Once the lock is free, the next reader removes the damaged entry
// and its refill lands.
func TestDiskLockHeldElsewhere(t *testing.T) {
	if dir := os.Getenv(lockHolderEnv); dir != "" {
		holdLockChild(t, dir)
		return
	}
	// Generous limits for a loaded machine; a wait without a bound fails
	// them all.
	const (
		getDeadline = time.Second // less than a put's wait for the lock
		bound       = 20 * time.Second
	)
	dir := t.TempDir()
	var logs logRecorder
	// A memory tier too small for the chunks sends every Get to disk.
	c, err := New(Options{MemoryBytes: 1, Dir: dir, Logf: logs.logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	const size = 8 << 10
	bad := NewKey("sha256:held-bad", 0, size)
	want := content(bad, size)
	if err := c.disk.Put(bad, want); err != nil {
		t.Fatal(err)
	}
	path := c.disk.entryPath(bad)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-100] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}

	release := holdLock(t, dir)

	// The damaged entry cannot be removed now; the read is served anyway.
	ctx, cancel := context.WithTimeout(t.Context(), getDeadline)
	got, err := c.Get(ctx, bad, func(context.Context) ([]byte, error) { return want, nil })
	cancel()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Get of a damaged entry with the lock held elsewhere = %d bytes, %v; want the fill's %d bytes", len(got), err, size)
	}
	if s := c.Stats(); s.DiskCorrupt != 1 || s.Fills != 1 {
		t.Errorf("stats %+v, want 1 disk corrupt and 1 fill", s)
	}

	// A Put gives up in bounded time and leaves no temp file.
	key := NewKey("sha256:held-put", 0, size)
	var perr error
	took := within(t, bound, "Disk.Put with the lock held elsewhere", func() { perr = c.disk.Put(key, content(key, size)) })
	t.Logf("Put gave up after %v: %v", took, perr)
	if perr == nil {
		t.Error("Put with the lock held elsewhere succeeded")
	}
	if took < putLockWait/2 {
		t.Errorf("Put gave up after %v; it should wait about %v", took, putLockWait)
	}
	if w := walkDir(t, dir); w.temps != 0 || w.entries != 1 {
		t.Errorf("after the failed Put: %d temp files, %d entries; want 0, 1", w.temps, w.entries)
	}
	if s := c.Stats(); s.DiskWriteErrors != 1 {
		t.Errorf("DiskWriteErrors = %d, want 1", s.DiskWriteErrors)
	}
	if n := logs.count("disk write failed"); n != 1 {
		t.Errorf("%d write failures logged, want 1: %q", n, logs.lines)
	}

	// Fills keep being served while their writes cannot land, and Close
	// returns.
	for i := range 6 {
		k := NewKey("sha256:held-fill", int64(i), size)
		v := content(k, size)
		if got, err := c.Get(t.Context(), k, func(context.Context) ([]byte, error) { return v, nil }); err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Get = %d bytes, %v", len(got), err)
		}
	}
	took = within(t, bound, "Cache.Close with the lock held elsewhere", c.Close)
	t.Logf("Close returned after %v; stats %+v", took, c.Stats())
	if w := walkDir(t, dir); w.temps != 0 || w.entries != 1 {
		t.Errorf("after Close: %d temp files, %d entries; want 0, 1", w.temps, w.entries)
	}

	// Another mount starting meanwhile opens the tier in bounded time.
	var c2 *Cache
	took = within(t, bound, "New with the lock held elsewhere", func() {
		c2, err = New(Options{MemoryBytes: 1, Dir: dir, Logf: logs.logf})
	})
	if err != nil {
		t.Fatalf("New with the lock held elsewhere: %v", err)
	}
	t.Cleanup(c2.Close)
	t.Logf("New returned after %v", took)

	release()
	got, err = c2.Get(t.Context(), bad, func(context.Context) ([]byte, error) { return want, nil })
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Get once the lock is free = %d bytes, %v", len(got), err)
	}
	c2.Flush()
	if s := c2.Stats(); s.DiskCorrupt != 1 || s.Fills != 1 || s.DiskWriteErrors != 0 {
		t.Errorf("stats %+v, want 1 disk corrupt, 1 fill, no write errors", s)
	}
	if got, ok := c2.disk.Get(bad); !ok || !bytes.Equal(got, want) {
		t.Errorf("entry after the refill: %d bytes, %v; want the right bytes", len(got), ok)
	}
	if w := walkDir(t, dir); w.temps != 0 {
		t.Errorf("%d temp files left", w.temps)
	}
	checkUsage(t, c2.disk)
}

// TestScanTempUnopened checks what a scan does with a temp file it could
// not open to test its writer's lock: an open that failed for want of
// descriptors or memory, or was interrupted, says nothing about the
// writer, so the file is kept and its reservation counted; a file that is
// not one a writer could have made and locked is removed.
func TestScanTempUnopened(t *testing.T) {
	tests := []struct {
		err       error
		named     bool // the name carries the reserved size
		wantKept  bool
		wantBytes int64
	}{
		{unix.EMFILE, true, true, 5000},
		{unix.ENFILE, true, true, 5000},
		{unix.ENOMEM, true, true, 5000},
		{unix.EINTR, true, true, 5000},
		{unix.EMFILE, false, true, 3}, // no size in the name: its length
		{unix.ENOENT, true, true, 0},  // vanished (here: still there, untouched)
		{unix.ELOOP, true, false, 0},  // a symlink
		{unix.EACCES, true, false, 0},
		{unix.ENXIO, true, false, 0}, // a socket
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/named=%v", tt.err, tt.named), func(t *testing.T) {
			name := tmpPrefix + "5000-0123456789abcdef"
			if !tt.named {
				name = tmpPrefix + "x-0123456789abcdef"
			}
			path := filepath.Join(t.TempDir(), name)
			if err := os.WriteFile(path, []byte("abc"), 0o600); err != nil {
				t.Fatal(err)
			}
			n := scanTempUnopened(path, tt.err)
			_, err := os.Lstat(path)
			if kept := err == nil; kept != tt.wantKept || n != tt.wantBytes {
				t.Errorf("scanTempUnopened(%v) = %d, file kept %v; want %d, kept %v", tt.err, n, kept, tt.wantBytes, tt.wantKept)
			}
		})
	}
}

// TestCacheCloseDropsWrites checks that Close stops waiting for writes
// that cannot land after its bound, drops them, and counts them skipped,
// even when a write would wait far longer for the directory lock.
func TestCacheCloseDropsWrites(t *testing.T) {
	dir := t.TempDir()
	c := newTestCache(t, Options{MemoryBytes: 1, Dir: dir})
	c.disk.lockWait = time.Hour
	c.closeWait = 200 * time.Millisecond
	release := holdLock(t, dir)
	const n, size = 6, 4 << 10
	for i := range n {
		k := NewKey("sha256:drop", int64(i), size)
		v := content(k, size)
		if got, err := c.Get(t.Context(), k, func(context.Context) ([]byte, error) { return v, nil }); err != nil || !bytes.Equal(got, v) {
			t.Fatalf("Get = %d bytes, %v", len(got), err)
		}
	}
	took := within(t, 20*time.Second, "Cache.Close", c.Close)
	t.Logf("Close returned after %v", took)
	if took < c.closeWait {
		t.Errorf("Close returned after %v, before its bound %v, with writes pending", took, c.closeWait)
	}
	if s := c.Stats(); s.DiskWritesSkipped != n || s.DiskWriteErrors != 0 {
		t.Errorf("stats %+v; want %d writes skipped, no write errors", s, n)
	}
	release()
	if w := walkDir(t, dir); w.temps != 0 || w.entries != 0 {
		t.Errorf("after Close: %d temp files, %d entries; want none", w.temps, w.entries)
	}
}

// TestCacheMemoryHitRefreshesDisk checks that hits served by the memory
// tier refresh the disk entry's mtime (at most once per interval), so that
// an entry hot in memory is not the first the disk tier evicts.
func TestCacheMemoryHitRefreshesDisk(t *testing.T) {
	const size = 64 << 10
	hot := NewKey("sha256:hot", 0, size)
	cold := NewKey("sha256:cold", 0, size)
	third := NewKey("sha256:third", 0, size)
	// Room for two entries, not three; evicting one makes room.
	quota := entrySize(hot, size) * 5 / 2
	c := newTestCache(t, Options{Dir: t.TempDir(), DiskBytes: quota})
	get := func(k Key) {
		t.Helper()
		want := content(k, size)
		if got, err := c.Get(t.Context(), k, func(context.Context) ([]byte, error) { return want, nil }); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Get(%q) = %d bytes, %v", k, len(got), err)
		}
	}
	mtime := func(k Key) time.Time {
		t.Helper()
		fi, err := os.Stat(c.disk.entryPath(k))
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	get(hot)
	get(cold)
	c.Flush()
	now := time.Now()
	setMtime(t, c.disk, hot, now.Add(-2*time.Hour))
	setMtime(t, c.disk, cold, now.Add(-time.Hour))

	hits := c.Stats().MemoryHits
	get(hot)
	if c.Stats().MemoryHits != hits+1 {
		t.Fatal("the Get did not hit memory")
	}
	if m := mtime(hot); now.Sub(m) > time.Minute {
		t.Errorf("hot entry's mtime %v after a memory hit, want about %v", m, now)
	}

	// The third entry's write evicts the least recently used: cold.
	get(third)
	c.Flush()
	if !exists(c.disk, hot) || exists(c.disk, cold) || !exists(c.disk, third) {
		t.Errorf("after eviction: hot %v, cold %v, third %v; want true, false, true", exists(c.disk, hot), exists(c.disk, cold), exists(c.disk, third))
	}

	// Once per interval only: another hit right after does not touch it.
	old := now.Add(-2 * time.Hour).Truncate(time.Second)
	setMtime(t, c.disk, hot, old)
	get(hot)
	if m := mtime(hot); !m.Equal(old) {
		t.Errorf("another memory hit within the interval changed the mtime to %v", m)
	}
}
