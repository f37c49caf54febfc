package cache

// Lock order, outermost first (see doc.go for the protocol):
//
//	Disk.life    read-held by every operation, write-held by Close
//	Disk.turn    this process's turn at the lock file
//	flock(dir/lock, LOCK_EX)   the node-wide accounting lock
//	flock(temp file)           held by its writer alone
//
// One exception: commit takes the turn and the flock on dir/lock while its
// temp file's flock is held. That cannot deadlock because nobody ever
// waits for a temp file's flock: the only other taker, scanTemp, tries it
// with LOCK_NB.
//
// The turn and the flock on dir/lock are only ever waited for with a
// bound (see lock); Disk.Close ends such waits at once.
//
// Functions named ...Locked need the turn and the flock on dir/lock held.

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultDiskBytes is the quota of the disk tier when none is given:
// 10 GiB.
const DefaultDiskBytes int64 = 10 << 30

// ErrTooLarge is returned by Disk.Put for an entry that could not fit in
// the quota even if the tier were empty.
var ErrTooLarge = errors.New("entry larger than the disk quota")

const (
	// lowWaterDivisor: once a put finds the tier full, eviction frees
	// room down to the quota less 1/lowWaterDivisor of it (90%).
	lowWaterDivisor = 10
	// defaultTouchInterval is how stale an entry's mtime must be before a
	// hit refreshes it; the LRU order is no finer than this.
	defaultTouchInterval = time.Minute
	// warnInterval spaces warnings of one kind in the log.
	warnInterval = time.Minute

	// putLockWait bounds a put's wait for the directory lock, once to
	// reserve and once to commit. After a put gives up, puts for the next
	// putLockWait try the lock once and fail at once if it is busy.
	putLockWait = 2 * time.Second
	// openLockWait bounds OpenDisk's wait for the lock to scan the
	// directory; if it is busy that long, OpenDisk opens without the scan.
	openLockWait = 2 * time.Second
	// maintLockWait bounds the wait of Usage and Prune, which serve
	// maintenance commands, not reads.
	maintLockWait = 30 * time.Second
	// lockPollMin and lockPollMax bound the pause between two tries of
	// the busy directory lock; it doubles from one to the other.
	lockPollMin = 100 * time.Microsecond
	lockPollMax = 5 * time.Millisecond
	// maxRefreshed bounds the keys remembered by refreshKey.
	maxRefreshed = 1 << 14

	lockName  = "lock"
	tmpPrefix = ".tmp-"
	dirPerm   = 0o700
	filePerm  = 0o600
)

// Entry file layout, little endian:
//
//	[0:4)   magic "lzc\x01"
//	[4:8)   CRC-32C of everything from byte 8 to the end of the file
//	[8:12)  key length k
//	[12:20) data length n
//	[20:20+k)     key
//	[20+k:20+k+n) data
//
// The file is exactly 20+k+n bytes long.
const (
	entryMagic      = "lzc\x01"
	entryHeaderSize = 20
)

// Usage record, the first bytes of the lock file, little endian:
//
//	[0:4)   magic "lzu\x01"
//	[4:8)   CRC-32C of [8:32)
//	[8:16)  bytes of committed entry files
//	[16:24) number of committed entries
//	[24:32) bytes reserved by writers whose temp files are not yet renamed
const (
	usageMagic = "lzu\x01"
	usageSize  = 32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// usage is what the usage record holds.
type usage struct {
	bytes    int64 // sizes of committed entry files
	entries  int64 // number of committed entry files
	reserved int64 // sizes reserved by writers in progress
}

// total is what counts against the quota.
func (u usage) total() int64 { return u.bytes + u.reserved }

// Disk is the disk tier: one file per entry under a directory, named by
// the SHA-256 of its key, checked by CRC-32C and its key when read, within
// a byte quota kept by evicting the least recently used entries. Many
// Disks, in one process or many, may share a directory; see the package
// documentation for the protocol.
//
// Get returns a fresh slice read from the entry's file; Put does not keep
// the slice it is given.
type Disk struct {
	dir      string
	quota    int64
	lowWater int64
	// touchInterval: a hit refreshes the entry's mtime when it is older
	// than this. lockWait: how long a put waits for the directory lock
	// (putLockWait). Set before use only (tests).
	touchInterval time.Duration
	lockWait      time.Duration

	// life is read-held by every operation and write-held by Close, so
	// lockFD stays open while any operation runs.
	life   sync.RWMutex
	closed bool // protected by life
	// closing is closed when Close starts: it ends waits for the lock.
	closing   chan struct{}
	closeOnce sync.Once

	// turn (a semaphore of one) gives one goroutine of this process at a
	// time the use of lockFD: flock locks belong to the open file, so two
	// goroutines flocking the same descriptor would not exclude each
	// other. It is a channel so that waiting for it can be bounded.
	turn   chan struct{}
	lockFD int // the lock file, open from OpenDisk until Close
	// lockBusyUntil (UnixNano): until then, after a put found the lock
	// held for a whole putLockWait, puts do not wait for it.
	lockBusyUntil atomic.Int64

	// refreshed remembers when refreshKey last refreshed a key's entry
	// (Key to UnixNano int64); refreshedN counts its keys, roughly.
	refreshed  sync.Map
	refreshedN atomic.Int64

	hits, misses, corrupt, evictions, writeErrors atomic.Uint64
	// lastBytes and lastEntries are the usage last seen under the lock.
	lastBytes, lastEntries atomic.Int64

	writeWarn, corruptWarn warner
}

// OpenDisk opens (creating it if need be) the disk tier in dir with a
// quota of quota bytes (0 means DefaultDiskBytes). logf, which may be nil,
// receives rate-limited warnings of failed writes and damaged entries, and
// one if the open skipped its scan.
//
// OpenDisk takes the directory's lock and scans it: it removes temp files
// left by writers that died and writes the usage it found, so a
// directory whose accounting a crash left stale is corrected here. The
// scan reads every entry's metadata, so it takes time in proportion to the
// number of entries. If another process holds the lock for more than two
// seconds, OpenDisk logs so and opens without the scan: the accounting is
// then corrected by the first scan that needs it (the first eviction, or
// Usage).
func OpenDisk(dir string, quota int64, logf func(format string, args ...any)) (*Disk, error) {
	switch {
	case quota < 0:
		return nil, fmt.Errorf("open disk cache %s: quota %d is negative", dir, quota)
	case quota == 0:
		quota = DefaultDiskBytes
	}
	if dir == "" {
		return nil, errors.New("open disk cache: no directory")
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("open disk cache: %w", err)
	}
	fd, err := unix.Open(filepath.Join(dir, lockName), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, filePerm)
	if err != nil {
		return nil, fmt.Errorf("open disk cache %s: %w", dir, &os.PathError{Op: "open", Path: filepath.Join(dir, lockName), Err: err})
	}
	d := &Disk{
		dir:           dir,
		quota:         quota,
		lowWater:      quota - quota/lowWaterDivisor,
		touchInterval: defaultTouchInterval,
		lockWait:      putLockWait,
		closing:       make(chan struct{}),
		turn:          make(chan struct{}, 1),
		lockFD:        fd,
		writeWarn:     warner{logf: logf, every: warnInterval},
		corruptWarn:   warner{logf: logf, every: warnInterval},
	}
	if err := d.lock(openLockWait); err != nil {
		if !errors.Is(err, errLockBusy) {
			unix.Close(fd)
			return nil, fmt.Errorf("open disk cache %s: %w", dir, err)
		}
		if logf != nil {
			logf("cache: opening disk cache %s without checking its accounting: %v", dir, err)
		}
		return d, nil
	}
	_, u, err := d.scanLocked(false)
	if err == nil {
		err = d.writeUsageLocked(u)
	}
	d.unlock()
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open disk cache %s: %w", dir, err)
	}
	return d, nil
}

// Get returns the data stored under key and whether there was any. An
// entry that fails its checks (checksum, length, key, type, or a read
// error) is counted, removed and reported as a miss; Get does not wait
// for the directory lock to remove it: if the lock is busy the entry is
// left for a later Get to remove. A hit refreshes the entry's mtime, the
// LRU clock, when it is older than a minute. After Close, Get always
// misses.
func (d *Disk) Get(key Key) ([]byte, bool) {
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return nil, false
	}
	path := d.entryPath(key)
	b, st, err := readEntry(path, key, d.quota)
	switch {
	case err == nil:
		d.hits.Add(1)
		d.touch(path, st)
		return b, true
	case errors.Is(err, errAbsent):
		d.misses.Add(1)
		return nil, false
	default:
		d.misses.Add(1)
		d.corrupt.Add(1)
		if d.removeBad(path, st) {
			d.corruptWarn.printf("cache: removed bad disk entry %s (key %s): %v", path, key, err)
		} else {
			d.corruptWarn.printf("cache: bad disk entry %s (key %s): %v; cache directory busy, a later read will remove it", path, key, err)
		}
		return nil, false
	}
}

// Has reports whether an entry for key is stored, without reading or
// checking it: a Get may still find it bad and miss. It costs one stat(2).
// After Close, Has always reports false.
func (d *Disk) Has(key Key) bool {
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return false
	}
	var st unix.Stat_t
	return unix.Stat(d.entryPath(key), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
}

// Put stores data under key. It returns nil without writing if an entry
// for key is already there (keys are content addresses). The entry
// becomes visible whole or not at all: it is written to a temp file that
// is renamed into place. To make room Put evicts least recently used
// entries down to 90% of the quota.
//
// Put waits at most two seconds for the directory lock each time it needs
// it (to reserve room, then to rename the written file into place), and
// fails if another process holds it longer. After such a failure, Puts
// for the next two seconds fail at once if the lock is busy rather than
// wait again.
//
// A failed put (full disk, I/O error, ErrTooLarge, the lock busy) leaves
// nothing behind, is counted in the write errors and logged at most once a
// minute; the error is returned for the caller's information only. After
// Close, or if Close interrupts its wait for the lock, Put returns an
// error wrapping ErrClosed, not counted.
func (d *Disk) Put(key Key, data []byte) error {
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return fmt.Errorf("disk put %s: %w", key, ErrClosed)
	}
	if err := d.put(key, data); err != nil {
		err = fmt.Errorf("disk put %s: %w", key, err)
		if errors.Is(err, ErrClosed) {
			return err
		}
		d.writeErrors.Add(1)
		d.writeWarn.printf("cache: disk write failed, serving without the disk tier: %v", err)
		return err
	}
	return nil
}

func (d *Disk) put(key Key, data []byte) error {
	size := int64(entryHeaderSize) + int64(len(key)) + int64(len(data))
	if size > d.quota {
		return fmt.Errorf("%d bytes: %w", size, ErrTooLarge)
	}
	path := d.entryPath(key)
	var st unix.Stat_t
	if unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		return nil // already stored
	}
	shard := filepath.Dir(path)
	if err := os.Mkdir(shard, dirPerm); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	tmp, fd, err := d.reserve(shard, size)
	if err != nil {
		return err
	}
	werr := writeEntry(fd, key, data)
	return d.commit(tmp, path, fd, size, werr)
}

// putLock takes the directory lock for a put: waiting at most lockWait,
// or not at all while a recent put found it busy that long.
func (d *Disk) putLock() error {
	wait := d.lockWait
	if time.Now().UnixNano() < d.lockBusyUntil.Load() {
		wait = 0
	}
	err := d.lock(wait)
	switch {
	case err == nil:
		if d.lockBusyUntil.Load() != 0 {
			d.lockBusyUntil.Store(0)
		}
	case errors.Is(err, errLockBusy) && wait > 0:
		d.lockBusyUntil.Store(time.Now().Add(d.lockWait).UnixNano())
	}
	return err
}

// reserve makes room for an entry of size bytes, evicting if need be,
// and creates and flocks its temp file in dir, counting size as reserved.
func (d *Disk) reserve(dir string, size int64) (tmp string, fd int, err error) {
	if err := d.putLock(); err != nil {
		return "", -1, err
	}
	defer d.unlock()
	u, err := d.loadUsageLocked()
	if err != nil {
		return "", -1, err
	}
	if u.total()+size > d.quota {
		if u, err = d.evictLocked(size); err != nil {
			return "", -1, err
		}
		if err := d.writeUsageLocked(u); err != nil {
			return "", -1, err
		}
		if u.total()+size > d.quota {
			// What is left is reserved by writers in progress.
			return "", -1, fmt.Errorf("no room in quota %d: %d bytes held, %d being written", d.quota, u.bytes, u.reserved)
		}
	}
	for {
		var rnd [8]byte
		rand.Read(rnd[:])
		tmp = filepath.Join(dir, tmpPrefix+strconv.FormatInt(size, 10)+"-"+hex.EncodeToString(rnd[:]))
		fd, err = unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, filePerm)
		if err != unix.EEXIST {
			break
		}
	}
	if err != nil {
		return "", -1, &os.PathError{Op: "create", Path: tmp, Err: err}
	}
	// The temp file is new, so nobody else holds its lock. Holding it
	// marks the reservation live for scans in other processes.
	if err = flock(fd, unix.LOCK_EX|unix.LOCK_NB); err == nil {
		u.reserved += size
		err = d.writeUsageLocked(u)
	}
	if err != nil {
		unix.Unlink(tmp)
		unix.Close(fd)
		return "", -1, err
	}
	return tmp, fd, nil
}

// commit renames the written temp file tmp into place at path, or removes
// it if werr says the write failed, and releases the reservation. It
// closes fd.
//
// It waits for the directory lock while holding the temp file's flock (fd):
// no deadlock, as nobody waits for a temp file's flock (scanTemp tries it
// with LOCK_NB).
func (d *Disk) commit(tmp, path string, fd int, size int64, werr error) error {
	defer unix.Close(fd)
	// Always wait the full bound here: the bytes are written already.
	err := d.lock(d.lockWait)
	if errors.Is(err, errLockBusy) {
		d.lockBusyUntil.Store(time.Now().Add(d.lockWait).UnixNano())
	}
	if err != nil {
		// Without the lock we may not touch the accounting. We remove the
		// temp file anyway (its name is ours alone, and the files present
		// only shrink); its reservation stays counted in the record until
		// the next scan, which errs on the safe side.
		unix.Unlink(tmp)
		return errors.Join(werr, err)
	}
	defer d.unlock()
	u, err := d.loadUsageLocked()
	if err != nil {
		unix.Unlink(tmp)
		return errors.Join(werr, err)
	}
	if werr == nil {
		var old unix.Stat_t
		hadOld := unix.Lstat(path, &old) == nil && old.Mode&unix.S_IFMT == unix.S_IFREG
		if err := unix.Rename(tmp, path); err != nil {
			werr = &os.LinkError{Op: "rename", Old: tmp, New: path, Err: err}
		} else {
			if hadOld {
				u.bytes -= old.Size
				u.entries--
			}
			u.bytes += size
			u.entries++
			u.reserved -= size
		}
	}
	if werr != nil {
		if unix.Unlink(tmp) == nil {
			u.reserved -= size
		} // else: keep it counted until a scan removes the dead temp file
	}
	return errors.Join(werr, d.writeUsageLocked(u))
}

// evictLocked scans the directory and removes entries, oldest mtime
// first, until an entry of need bytes fits under the low-water mark or
// nothing evictable is left. It returns the usage after, not yet written.
func (d *Disk) evictLocked(need int64) (usage, error) {
	ents, u, err := d.scanLocked(true)
	if err != nil {
		return u, err
	}
	slices.SortFunc(ents, func(a, b diskEntry) int {
		if c := a.mtime.Compare(b.mtime); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	for _, e := range ents {
		if u.total()+need <= d.lowWater {
			break
		}
		if err := unix.Unlink(e.path); err != nil && err != unix.ENOENT {
			continue
		}
		u.bytes -= e.size
		u.entries--
		d.evictions.Add(1)
	}
	return u, nil
}

// removeBad removes the bad entry at path, if it is still the file that
// was read (st; nil when the open itself failed), and accounts for it. It
// does not wait for the lock: if the lock is busy it leaves the entry
// for a later read and returns false. It returns true if the entry is
// gone (or was replaced by another file).
func (d *Disk) removeBad(path string, st *unix.Stat_t) bool {
	if err := d.lock(0); err != nil {
		return false
	}
	defer d.unlock()
	var cur unix.Stat_t
	if unix.Lstat(path, &cur) != nil {
		return true
	}
	if st != nil && (cur.Dev != st.Dev || cur.Ino != st.Ino) {
		return true // replaced since; the new file is checked when read
	}
	u, err := d.loadUsageLocked()
	if err != nil {
		return false
	}
	if cur.Mode&unix.S_IFMT == unix.S_IFDIR {
		return os.RemoveAll(path) == nil
	}
	if unix.Unlink(path) != nil {
		return false
	}
	if cur.Mode&unix.S_IFMT == unix.S_IFREG { // scans count regular files only
		u.bytes -= cur.Size
		u.entries--
	}
	d.writeUsageLocked(u)
	return true
}

// touch refreshes the mtime of the entry at path, just read with status
// st, when it is older than the touch interval.
func (d *Disk) touch(path string, st *unix.Stat_t) {
	mtime := time.Unix(st.Mtim.Unix())
	if time.Since(mtime) < d.touchInterval {
		return
	}
	now := unix.Timespec{Nsec: unix.UTIME_NOW}
	// By path: if the entry was replaced meanwhile, the new one (same key,
	// same bytes) is refreshed instead, which is as good.
	unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{now, now}, unix.AT_SYMLINK_NOFOLLOW)
}

// refreshKey refreshes the mtime of key's entry, if there is one, for a
// hit served by the memory tier: at most once per touch interval per key
// in this process (remembering up to maxRefreshed keys at a time), so
// that an entry kept hot in memory does not look unused to eviction. It
// costs a map lookup most of the time, and one utimensat(2) when due.
func (d *Disk) refreshKey(key Key) {
	now := time.Now().UnixNano()
	if v, ok := d.refreshed.Load(key); ok && now-v.(int64) < int64(d.touchInterval) {
		return
	}
	if _, loaded := d.refreshed.Swap(key, now); !loaded && d.refreshedN.Add(1) > maxRefreshed {
		// Forget them all: each key then costs one more refresh.
		d.refreshed.Clear()
		d.refreshedN.Store(0)
	}
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return
	}
	ts := unix.NsecToTimespec(now)
	// ENOENT (not written yet, or evicted) is fine: nothing to keep.
	unix.UtimesNanoAt(unix.AT_FDCWD, d.entryPath(key), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// Usage scans the directory and returns the bytes and number of the
// entries it holds, not counting writes in progress. It also removes
// temp files of dead writers and corrects the shared usage record. It is
// safe while other processes use the directory; it fails if another
// process holds the directory lock for more than 30 seconds.
func (d *Disk) Usage() (bytes int64, entries int, err error) {
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return 0, 0, fmt.Errorf("disk usage: %w", ErrClosed)
	}
	if err := d.lock(maintLockWait); err != nil {
		return 0, 0, fmt.Errorf("disk usage: %w", err)
	}
	defer d.unlock()
	_, u, err := d.scanLocked(false)
	if err == nil {
		err = d.writeUsageLocked(u)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("disk usage: %w", err)
	}
	return u.bytes, int(u.entries), nil
}

// Prune removes the entries whose mtime (last write, or last hit
// refreshed at most once a minute) is more than olderThan ago; olderThan 0
// removes every entry. Writes in progress are not touched. It returns
// what it removed, and is safe while other processes use the directory;
// it fails if another process holds the directory lock for more than 30
// seconds.
func (d *Disk) Prune(olderThan time.Duration) (removedBytes int64, removedEntries int, err error) {
	if olderThan < 0 {
		return 0, 0, fmt.Errorf("disk prune: negative age %v", olderThan)
	}
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return 0, 0, fmt.Errorf("disk prune: %w", ErrClosed)
	}
	if err := d.lock(maintLockWait); err != nil {
		return 0, 0, fmt.Errorf("disk prune: %w", err)
	}
	defer d.unlock()
	ents, u, err := d.scanLocked(true)
	if err != nil {
		return 0, 0, fmt.Errorf("disk prune: %w", err)
	}
	cutoff := time.Now().Add(-olderThan)
	var errs []error
	for _, e := range ents {
		if olderThan != 0 && !e.mtime.Before(cutoff) {
			continue
		}
		if err := unix.Unlink(e.path); err != nil && err != unix.ENOENT {
			errs = append(errs, &os.PathError{Op: "remove", Path: e.path, Err: err})
			continue
		}
		u.bytes -= e.size
		u.entries--
		removedBytes += e.size
		removedEntries++
	}
	errs = append(errs, d.writeUsageLocked(u))
	if err := errors.Join(errs...); err != nil {
		return removedBytes, removedEntries, fmt.Errorf("disk prune: %w", err)
	}
	return removedBytes, removedEntries, nil
}

// Close releases the lock file. Operations waiting for the directory lock
// give up at once (a Put then fails with ErrClosed); other operations
// still running finish first. Afterwards Get misses and the other methods
// return ErrClosed. Close is idempotent.
func (d *Disk) Close() error {
	d.closeOnce.Do(func() { close(d.closing) })
	d.life.Lock()
	defer d.life.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return unix.Close(d.lockFD)
}

// diskStats are the Disk's counters for Cache.Stats.
type diskStats struct {
	hits, misses, corrupt, evictions, writeErrors uint64
	bytes, entries                                int64
}

// stats returns the counters and the shared usage record, read without
// waiting: if another process holds the lock, the usage last seen is
// returned instead.
func (d *Disk) stats() diskStats {
	d.life.RLock()
	if !d.closed && d.tryTurn() {
		if flock(d.lockFD, unix.LOCK_SH|unix.LOCK_NB) == nil {
			if u, ok := d.readUsageLocked(); ok {
				d.noteUsage(u)
			}
			flock(d.lockFD, unix.LOCK_UN)
		}
		<-d.turn
	}
	d.life.RUnlock()
	return diskStats{
		hits:        d.hits.Load(),
		misses:      d.misses.Load(),
		corrupt:     d.corrupt.Load(),
		evictions:   d.evictions.Load(),
		writeErrors: d.writeErrors.Load(),
		bytes:       d.lastBytes.Load(),
		entries:     d.lastEntries.Load(),
	}
}

// errLockBusy: the directory lock stayed held by others for the whole
// wait.
var errLockBusy = errors.New("busy")

// lock takes this process's turn and then the node-wide lock, waiting
// at most wait for both together (0: trying each once). It fails with
// errLockBusy when the wait ends, and with ErrClosed when Close starts.
//
// flock has no timed wait, so the lock is tried with LOCK_NB, pausing
// between tries.
func (d *Disk) lock(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	fail := func(err error) error {
		return fmt.Errorf("lock %s: %w", filepath.Join(d.dir, lockName), err)
	}
	busy := func() error {
		if wait <= 0 {
			return fail(fmt.Errorf("%w (held by another process or operation)", errLockBusy))
		}
		return fail(fmt.Errorf("%w for %v (held by another process or operation)", errLockBusy, wait))
	}
	select {
	case <-d.closing:
		return fail(ErrClosed)
	default:
	}
	if !d.tryTurn() {
		if wait <= 0 {
			return busy()
		}
		t := time.NewTimer(wait)
		select {
		case d.turn <- struct{}{}:
			t.Stop()
		case <-t.C:
			return busy()
		case <-d.closing:
			t.Stop()
			return fail(ErrClosed)
		}
	}
	pause := lockPollMin
	for {
		err := flock(d.lockFD, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != unix.EWOULDBLOCK {
			<-d.turn
			return fail(err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			<-d.turn
			return busy()
		}
		t := time.NewTimer(min(pause, left))
		select {
		case <-t.C:
		case <-d.closing:
			t.Stop()
			<-d.turn
			return fail(ErrClosed)
		}
		pause = min(2*pause, lockPollMax)
	}
}

// tryTurn takes this process's turn at the lock file if it is free.
func (d *Disk) tryTurn() bool {
	select {
	case d.turn <- struct{}{}:
		return true
	default:
		return false
	}
}

func (d *Disk) unlock() {
	flock(d.lockFD, unix.LOCK_UN)
	<-d.turn
}

// loadUsageLocked returns the usage record, rebuilding it by a scan if it
// is missing or damaged.
func (d *Disk) loadUsageLocked() (usage, error) {
	if u, ok := d.readUsageLocked(); ok {
		d.noteUsage(u)
		return u, nil
	}
	_, u, err := d.scanLocked(false)
	if err != nil {
		return u, err
	}
	return u, d.writeUsageLocked(u)
}

// readUsageLocked reads and checks the usage record. (The shared flock
// suffices.)
func (d *Disk) readUsageLocked() (usage, bool) {
	var b [usageSize]byte
	n, err := unix.Pread(d.lockFD, b[:], 0)
	if err != nil || n != usageSize || string(b[:4]) != usageMagic ||
		binary.LittleEndian.Uint32(b[4:]) != crc32.Checksum(b[8:], castagnoli) {
		return usage{}, false
	}
	u := usage{
		bytes:    int64(binary.LittleEndian.Uint64(b[8:])),
		entries:  int64(binary.LittleEndian.Uint64(b[16:])),
		reserved: int64(binary.LittleEndian.Uint64(b[24:])),
	}
	if u.bytes < 0 || u.entries < 0 || u.reserved < 0 {
		return usage{}, false
	}
	return u, true
}

func (d *Disk) writeUsageLocked(u usage) error {
	// Counts that went negative (a file removed by hand, say) would only
	// make the record wrong in the unsafe direction; a scan will fix them.
	u.bytes, u.entries, u.reserved = max(u.bytes, 0), max(u.entries, 0), max(u.reserved, 0)
	var b [usageSize]byte
	copy(b[:], usageMagic)
	binary.LittleEndian.PutUint64(b[8:], uint64(u.bytes))
	binary.LittleEndian.PutUint64(b[16:], uint64(u.entries))
	binary.LittleEndian.PutUint64(b[24:], uint64(u.reserved))
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:], castagnoli))
	n, err := unix.Pwrite(d.lockFD, b[:], 0)
	if err == nil && n != usageSize {
		err = unix.EIO
	}
	if err != nil {
		return fmt.Errorf("write usage record: %w", err)
	}
	d.noteUsage(u)
	return nil
}

func (d *Disk) noteUsage(u usage) {
	d.lastBytes.Store(u.bytes)
	d.lastEntries.Store(u.entries)
}

// diskEntry is a committed entry file found by a scan.
type diskEntry struct {
	path  string
	size  int64
	mtime time.Time
}

// scanLocked walks the directory and returns its usage: the committed
// entries (listed too if list is set) and the reservations of live
// writers. It removes temp files whose writer is gone: a live writer
// holds its temp file's flock from creation (under the directory lock) to
// rename or removal (under it too), so a temp file whose flock can be
// taken here belongs to a writer that died.
func (d *Disk) scanLocked(list bool) ([]diskEntry, usage, error) {
	var u usage
	var ents []diskEntry
	shards, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, u, fmt.Errorf("scan: %w", err)
	}
	for _, sh := range shards {
		if !sh.IsDir() || !isHex(sh.Name(), 2) {
			continue
		}
		shard := filepath.Join(d.dir, sh.Name())
		f, err := os.Open(shard)
		if err != nil {
			return nil, u, fmt.Errorf("scan: %w", err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return nil, u, fmt.Errorf("scan: %w", err)
		}
		for _, name := range names {
			path := filepath.Join(shard, name)
			switch {
			case isHex(name, sha256.Size*2) && name[:2] == sh.Name(), isFileEntryName(name, sh.Name()):
				var st unix.Stat_t
				if unix.Lstat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
					continue
				}
				u.bytes += st.Size
				u.entries++
				if list {
					ents = append(ents, diskEntry{path, st.Size, time.Unix(st.Mtim.Unix())})
				}
			case strings.HasPrefix(name, tmpPrefix):
				u.reserved += scanTemp(path)
			}
		}
	}
	return ents, u, nil
}

// scanTemp returns the bytes reserved by the temp file at path if its
// writer is alive, and removes it if not.
func scanTemp(path string) int64 {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return scanTempUnopened(path, err)
	}
	defer unix.Close(fd)
	if err := flock(fd, unix.LOCK_EX|unix.LOCK_NB); err == nil {
		unix.Unlink(path) // its writer is gone
		return 0
	}
	// A writer holds it.
	return tempReserved(path, func(st *unix.Stat_t) error { return unix.Fstat(fd, st) })
}

// scanTempUnopened is scanTemp for a temp file whose open failed with
// err. Like readEntry's, an open that failed for want of descriptors or
// memory, or was interrupted, says nothing about the file: it may be a
// live writer's, so it is kept and its reservation counted (the next scan
// looks again). Other failures (a symlink, a special file, no
// permission) mean it is not a file a writer of ours made and locked:
// it is removed.
func scanTempUnopened(path string, err error) int64 {
	switch err {
	case unix.ENOENT, unix.ENOTDIR:
		return 0 // gone
	case unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.EINTR:
		return tempReserved(path, func(st *unix.Stat_t) error { return unix.Lstat(path, st) })
	}
	unix.Unlink(path)
	return 0
}

// tempReserved returns what the live writer of the temp file at path
// reserved: the size in its name, or else its size by stat.
func tempReserved(path string, stat func(*unix.Stat_t) error) int64 {
	rest := strings.TrimPrefix(filepath.Base(path), tmpPrefix)
	size, _, _ := strings.Cut(rest, "-")
	if n, err := strconv.ParseInt(size, 10, 64); err == nil && n > 0 {
		return n
	}
	var st unix.Stat_t
	if stat(&st) == nil {
		return st.Size
	}
	return 0
}

// entryPath is where the entry for key lives: dir/ab/abcd… with the hex
// SHA-256 of the key.
func (d *Disk) entryPath(key Key) string {
	sum := sha256.Sum256([]byte(key))
	var name [sha256.Size * 2]byte
	hex.Encode(name[:], sum[:])
	return d.dir + string(os.PathSeparator) + string(name[:2]) + string(os.PathSeparator) + string(name[:])
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// errAbsent reports that there is no entry file: a plain miss.
var errAbsent = errors.New("no entry")

// errBadEntry wraps what is wrong with an entry file.
var errBadEntry = errors.New("bad entry")

// readEntry reads and checks the entry file at path for key. It returns
// the data and the file's status (nil if it could not be opened). An
// error wrapping errAbsent means there is no entry, or it could not be
// read for reasons that are not its fault (out of descriptors); any other
// error means the entry is bad.
func readEntry(path string, key Key, maxData int64) ([]byte, *unix.Stat_t, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		switch err {
		case unix.ENOENT, unix.ENOTDIR, unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.EINTR:
			return nil, nil, fmt.Errorf("%w: %w", errAbsent, err)
		}
		return nil, nil, fmt.Errorf("%w: open: %w", errBadEntry, err)
	}
	defer unix.Close(fd)
	st := new(unix.Stat_t)
	if err := unix.Fstat(fd, st); err != nil {
		return nil, nil, fmt.Errorf("%w: stat: %w", errBadEntry, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, st, fmt.Errorf("%w: not a regular file", errBadEntry)
	}
	head := int64(entryHeaderSize + len(key))
	if st.Size < head || st.Size-head > maxData {
		return nil, st, fmt.Errorf("%w: %d bytes long", errBadEntry, st.Size)
	}
	buf := make([]byte, st.Size)
	for n := 0; n < len(buf); {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, st, fmt.Errorf("%w: read: %w", errBadEntry, err)
		}
		if m == 0 {
			return nil, st, fmt.Errorf("%w: ends after %d of %d bytes", errBadEntry, n, len(buf))
		}
		n += m
	}
	if string(buf[:4]) != entryMagic {
		return nil, st, fmt.Errorf("%w: bad magic %q", errBadEntry, buf[:4])
	}
	keyLen := int64(binary.LittleEndian.Uint32(buf[8:]))
	dataLen := binary.LittleEndian.Uint64(buf[12:])
	if keyLen != int64(len(key)) || dataLen != uint64(st.Size-head) {
		return nil, st, fmt.Errorf("%w: header says key %d and data %d bytes, file has %d", errBadEntry, keyLen, dataLen, st.Size)
	}
	if sum := crc32.Checksum(buf[8:], castagnoli); sum != binary.LittleEndian.Uint32(buf[4:]) {
		return nil, st, fmt.Errorf("%w: checksum %08x, header says %08x", errBadEntry, sum, binary.LittleEndian.Uint32(buf[4:]))
	}
	if string(buf[entryHeaderSize:head]) != string(key) {
		return nil, st, fmt.Errorf("%w: holds key %q", errBadEntry, buf[entryHeaderSize:head])
	}
	return buf[head:], st, nil
}

// writeEntry writes the entry for key and data to fd.
func writeEntry(fd int, key Key, data []byte) error {
	head := make([]byte, entryHeaderSize+len(key))
	copy(head, entryMagic)
	binary.LittleEndian.PutUint32(head[8:], uint32(len(key)))
	binary.LittleEndian.PutUint64(head[12:], uint64(len(data)))
	copy(head[entryHeaderSize:], key)
	sum := crc32.Update(crc32.Checksum(head[8:], castagnoli), castagnoli, data)
	binary.LittleEndian.PutUint32(head[4:], sum)
	if err := writeFull(fd, head); err != nil {
		return err
	}
	return writeFull(fd, data)
}

func writeFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("write: %w", unix.EIO)
		}
		b = b[n:]
	}
	return nil
}

// flock is unix.Flock retried on EINTR.
func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}

// warner passes warnings to logf at most once per interval, saying how
// many it held back.
type warner struct {
	logf  func(format string, args ...any)
	every time.Duration

	mu         sync.Mutex
	last       time.Time // protected by mu
	suppressed int       // protected by mu
}

func (w *warner) printf(format string, args ...any) {
	if w.logf == nil {
		return
	}
	w.mu.Lock()
	now := time.Now()
	if !w.last.IsZero() && now.Sub(w.last) < w.every {
		w.suppressed++
		w.mu.Unlock()
		return
	}
	n := w.suppressed
	w.last, w.suppressed = now, 0
	w.mu.Unlock()
	if n > 0 {
		format += " (%d more like it in the last %v)"
		args = append(args, n, w.every)
	}
	w.logf(format, args...)
}
