package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// putFile stores data as a file entry for key, writing it in pieces.
func putFile(d *Disk, key Key, data []byte) error {
	return d.PutFile(key, int64(len(data)), func(w io.Writer) error {
		for b := data; len(b) > 0; {
			n := min(len(b), 1000)
			if _, err := w.Write(b[:n]); err != nil {
				return err
			}
			b = b[n:]
		}
		return nil
	})
}

func readFileEntry(t *testing.T, d *Disk, key Key, size int64) ([]byte, bool) {
	t.Helper()
	f, ok := d.OpenFile(key, size)
	if !ok {
		return nil, false
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read file entry %s: %v", key, err)
	}
	return b, true
}

func TestDiskFileRoundTrip(t *testing.T) {
	d := newTestDisk(t, t.TempDir(), 1<<20)
	key := Key("file-a")
	data := content(key, 100_000)
	if err := putFile(d, key, data); err != nil {
		t.Fatalf("PutFile: %v", err)
	}
	got, ok := readFileEntry(t, d, key, int64(len(data)))
	if !ok || !bytes.Equal(got, data) {
		t.Fatalf("OpenFile after PutFile: ok=%v, %d bytes, equal=%v", ok, len(got), bytes.Equal(got, data))
	}
	// The bytes are plain, from offset 0: what passthrough needs.
	raw, err := os.ReadFile(d.filePath(key))
	if err != nil || !bytes.Equal(raw, data) {
		t.Fatalf("file entry on disk is not the bytes alone (err %v)", err)
	}
	// A file entry is not a chunk entry, and a second put writes nothing.
	if _, ok := d.Get(key); ok {
		t.Error("Get found a chunk entry for a file entry's key")
	}
	called := false
	if err := d.PutFile(key, int64(len(data)), func(io.Writer) error { called = true; return nil }); err != nil || called {
		t.Errorf("second PutFile: err %v, write called %v; want nil, false", err, called)
	}
	w := checkUsage(t, d)
	if w.entries != 1 || w.entryBytes != int64(len(data)) || w.temps != 0 {
		t.Errorf("walk after PutFile: %+v; want one entry of %d bytes", w, len(data))
	}
	if _, ok := d.OpenFile(Key("file-b"), 10); ok {
		t.Error("OpenFile of a key never stored succeeded")
	}
}

func TestDiskFileFailedWrites(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		size    int64
		write   func(io.Writer) error
		counted uint64 // write errors counted
	}{
		{"write error", 100, func(w io.Writer) error { w.Write(make([]byte, 50)); return boom }, 1},
		{"short", 100, func(w io.Writer) error { _, err := w.Write(make([]byte, 99)); return err }, 1},
		{"long", 100, func(w io.Writer) error { _, err := w.Write(make([]byte, 101)); return err }, 1},
		// An eighth of the quota at most: a larger file would evict most
		// of the cache.
		{"past an eighth of the quota", 1<<17 + 1, func(w io.Writer) error { _, err := w.Write(make([]byte, 1<<17+1)); return err }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDisk(t, t.TempDir(), 1<<20)
			if err := d.PutFile("k", tc.size, tc.write); err == nil {
				t.Fatal("PutFile succeeded")
			}
			if _, ok := d.OpenFile("k", tc.size); ok {
				t.Error("OpenFile found the failed entry")
			}
			if w := checkUsage(t, d); w.entries != 0 || w.temps != 0 || w.total != 0 {
				t.Errorf("walk after a failed PutFile: %+v; want nothing", w)
			}
			if got := d.stats().writeErrors; got != tc.counted {
				t.Errorf("write errors = %d, want %d", got, tc.counted)
			}
		})
	}
}

func TestDiskFileDamaged(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(path string) error
	}{
		{"truncated", func(p string) error { return os.Truncate(p, 10) }},
		{"grown", func(p string) error { return os.Truncate(p, 5000) }},
		{"a directory", func(p string) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Mkdir(p, 0o700)
		}},
		{"a symlink", func(p string) error {
			if err := os.Remove(p); err != nil {
				return err
			}
			return os.Symlink("/etc/passwd", p)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newTestDisk(t, t.TempDir(), 1<<20)
			key := Key("k")
			data := content(key, 1000)
			if err := putFile(d, key, data); err != nil {
				t.Fatal(err)
			}
			if err := tc.damage(d.filePath(key)); err != nil {
				t.Fatal(err)
			}
			if f, ok := d.OpenFile(key, 1000); ok {
				f.Close()
				t.Fatal("OpenFile served a damaged entry")
			}
			if d.stats().corrupt == 0 {
				t.Error("the damaged entry was not counted")
			}
			if _, err := os.Lstat(d.filePath(key)); !os.IsNotExist(err) {
				t.Errorf("the damaged entry is still there: %v", err)
			}
			// A new put replaces it.
			if err := putFile(d, key, data); err != nil {
				t.Fatal(err)
			}
			if got, ok := readFileEntry(t, d, key, 1000); !ok || !bytes.Equal(got, data) {
				t.Error("the entry written again does not read back")
			}
		})
	}
}

func TestDiskFileEviction(t *testing.T) {
	// File entries and chunk entries share the quota and the LRU clock.
	d := newTestDisk(t, t.TempDir(), 800_000)
	old := Key("old-file")
	if err := putFile(d, old, content(old, 100_000)); err != nil {
		t.Fatal(err)
	}
	setMtimePath(t, d.filePath(old), time.Now().Add(-time.Hour))
	var chunks []Key
	for i := range 6 {
		k := Key(fmt.Sprintf("chunk-%d", i))
		if err := d.Put(k, content(k, 100_000)); err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, k)
	}
	// No room for this one without evicting the old file.
	if err := putFile(d, "new-file", content("new-file", 100_000)); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.OpenFile(old, 100_000); ok {
		t.Error("the least recently used file entry was not evicted")
	}
	for _, k := range chunks {
		if _, ok := d.Get(k); !ok {
			t.Errorf("the newer chunk entry %s was evicted", k)
		}
	}
	if w := checkUsage(t, d); w.total > 800_000 {
		t.Errorf("files hold %d bytes, past the quota", w.total)
	}
	if n, _, err := d.Prune(0); err != nil || n == 0 {
		t.Fatalf("Prune: %d bytes, %v", n, err)
	}
	if w := walkDir(t, d.dir); w.entries != 0 {
		t.Errorf("Prune left %d entries", w.entries)
	}
}

func TestCacheFileWithoutDisk(t *testing.T) {
	c, err := New(Options{MemoryBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.PutFile("k", 1, func(io.Writer) error { return nil }); !errors.Is(err, ErrNoDisk) {
		t.Errorf("PutFile without a disk tier: %v, want ErrNoDisk", err)
	}
	if _, ok := c.OpenFile("k", 1); ok || c.HasDisk() {
		t.Error("a cache without a disk tier opened a file entry")
	}
}

func setMtimePath(t *testing.T, path string, mt time.Time) {
	t.Helper()
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func TestDiskFileWriteReadsWhileClosing(t *testing.T) {
	// A copy reads chunks from the same Disk while it writes; a Close
	// arriving meanwhile must neither deadlock nor leave the entry.
	dir := t.TempDir()
	d := newTestDisk(t, dir, 1<<20)
	if err := d.Put("chunk", []byte("chunk bytes")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var blocked atomic.Bool
	go func() {
		done <- d.PutFile("copy", 11, func(w io.Writer) error {
			closed := make(chan struct{})
			go func() { d.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				blocked.Store(true)
				return errors.New("Close is blocked by the write")
			}
			b, _ := d.Get("chunk") // a miss after Close
			_, err := w.Write(append(b, make([]byte, 11-len(b))...))
			return err
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) || blocked.Load() {
			t.Errorf("PutFile across Close: %v (Close blocked: %v), want ErrClosed", err, blocked.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("PutFile deadlocked with Close")
	}
	if w := walkDir(t, dir); w.entries != 1 || w.temps != 0 {
		t.Errorf("after PutFile across Close: %+v; want the chunk alone", w)
	}
}
