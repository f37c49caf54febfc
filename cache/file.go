package cache

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// File entries: a whole file's bytes stored plain, with no header, so that
// the kernel can read them itself (FUSE passthrough needs a file whose
// offset 0 is the content's first byte). They live beside the chunk
// entries, named like them with fileSuffix added, and count against the
// same quota and LRU clock.
//
// A file entry carries no checksum: its writer checks the bytes as they
// are written (lazyroot copies them from verified chunks) and the file is
// fsynced before it is renamed into place, so it never appears partial,
// even after a power loss. An open checks its type and size only.
const fileSuffix = ".file"

// ErrNoDisk is returned by Cache.PutFile when the cache has no disk tier.
var ErrNoDisk = errors.New("no disk tier")

// filePath is where the file entry for key lives: the entry path plus
// fileSuffix.
func (d *Disk) filePath(key Key) string { return d.entryPath(key) + fileSuffix }

// isFileEntryName reports whether name, in the shard named shard, is a
// file entry's name.
func isFileEntryName(name, shard string) bool {
	base, ok := strings.CutSuffix(name, fileSuffix)
	return ok && isHex(base, sha256.Size*2) && base[:2] == shard
}

// maxFileFraction bounds a file entry to this fraction of the quota, so
// that one large file cannot evict most of the cache (the chunks it is
// being copied from included).
const maxFileFraction = 8

// PutFile stores a file entry of size bytes under key, written by write.
// It returns nil without calling write if the entry is there already
// (keys are content addresses). The room is reserved in the quota first,
// evicting as Put does; the bytes go to a temp file that is fsynced and
// renamed into place only if write returned nil and wrote exactly size
// bytes. A file larger than an eighth of the quota is refused
// (ErrTooLarge). A failure leaves nothing behind and is counted and
// logged like a failed Put (but ErrTooLarge and ErrClosed are not).
//
// write runs without any lock of the Disk held, so it may read from this
// Disk (as a copy from cached chunks does); if Close happens meanwhile,
// the write is dropped and PutFile returns ErrClosed.
func (d *Disk) PutFile(key Key, size int64, write func(w io.Writer) error) error {
	if size < 0 || size > d.quota/maxFileFraction {
		return fmt.Errorf("disk put file %s: %d bytes, more than an eighth of the quota (%d): %w", key, size, d.quota, ErrTooLarge)
	}
	if err := d.putFile(key, size, write); err != nil {
		err = fmt.Errorf("disk put file %s: %w", key, err)
		if errors.Is(err, ErrClosed) {
			return err
		}
		d.writeErrors.Add(1)
		d.writeWarn.printf("cache: disk write failed: %v", err)
		return err
	}
	return nil
}

func (d *Disk) putFile(key Key, size int64, write func(w io.Writer) error) error {
	tmp, fd, path, err := d.reserveFile(key, size)
	if err != nil || fd < 0 {
		return err
	}
	w := &limitedFD{fd: fd, left: size}
	werr := write(w)
	switch {
	case werr != nil:
	case w.left != 0:
		werr = fmt.Errorf("wrote %d of %d bytes", size-w.left, size)
	default:
		if err := unix.Fsync(fd); err != nil {
			werr = &os.PathError{Op: "fsync", Path: tmp, Err: err}
		}
	}
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		// The lock file is closed: drop the write without accounting;
		// the next scan forgets the reservation.
		unix.Unlink(tmp)
		unix.Close(fd)
		return ErrClosed
	}
	return d.commit(tmp, path, fd, size, werr)
}

// reserveFile reserves room for a file entry and creates its temp file,
// under the Disk's life lock; fd is -1 (and err nil) if the entry exists.
func (d *Disk) reserveFile(key Key, size int64) (tmp string, fd int, path string, err error) {
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return "", -1, "", ErrClosed
	}
	path = d.filePath(key)
	var st unix.Stat_t
	if unix.Lstat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		return "", -1, path, nil // already stored
	}
	shard := filepath.Dir(path)
	if err := os.Mkdir(shard, dirPerm); err != nil && !errors.Is(err, os.ErrExist) {
		return "", -1, "", err
	}
	tmp, fd, err = d.reserve(shard, size)
	if err != nil {
		return "", -1, "", err
	}
	return tmp, fd, path, nil
}

// limitedFD writes to a file descriptor, refusing to pass left bytes.
type limitedFD struct {
	fd   int
	left int64
}

func (w *limitedFD) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, fmt.Errorf("more than the %d bytes reserved", w.left)
	}
	if err := writeFull(w.fd, p); err != nil {
		return 0, err
	}
	w.left -= int64(len(p))
	return len(p), nil
}

// OpenFile opens the file entry for key read-only, if there is one of
// exactly size bytes, and refreshes its LRU clock as a hit does. An entry
// that is not a regular file of that size is counted as damaged and
// removed (without waiting for the directory lock). The caller closes the
// file; an entry evicted while open stays readable through it.
func (d *Disk) OpenFile(key Key, size int64) (*os.File, bool) {
	d.life.RLock()
	defer d.life.RUnlock()
	if d.closed {
		return nil, false
	}
	path := d.filePath(key)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	switch err {
	case nil:
	case unix.ENOENT, unix.ENOTDIR, unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.EINTR:
		return nil, false // absent, or no fault of the entry's
	default:
		d.corrupt.Add(1)
		if d.removeBad(path, nil) {
			d.corruptWarn.printf("cache: removed bad file entry %s (key %s): %v", path, key, err)
		}
		return nil, false
	}
	st := new(unix.Stat_t)
	err = unix.Fstat(fd, st)
	switch {
	case err != nil:
		err = fmt.Errorf("stat: %w", err)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = errors.New("not a regular file")
	case st.Size != size:
		err = fmt.Errorf("%d bytes long, want %d", st.Size, size)
	default:
		// Reads of a regular file never block; the flag only guarded the
		// open against a planted fifo.
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, 0)
	}
	if err != nil {
		unix.Close(fd)
		d.corrupt.Add(1)
		if d.removeBad(path, st) {
			d.corruptWarn.printf("cache: removed bad file entry %s (key %s): %v", path, key, err)
		}
		return nil, false
	}
	d.touch(path, st)
	return os.NewFile(uintptr(fd), path), true
}

// PutFile stores a whole file's bytes in the disk tier (see
// Disk.PutFile); ErrNoDisk without one.
func (c *Cache) PutFile(key Key, size int64, write func(w io.Writer) error) error {
	if c.disk == nil {
		return ErrNoDisk
	}
	return c.disk.PutFile(key, size, write)
}

// OpenFile opens a file entry of the disk tier (see Disk.OpenFile);
// false without a disk tier or after Close.
func (c *Cache) OpenFile(key Key, size int64) (*os.File, bool) {
	if c.disk == nil || c.closed.Load() {
		return nil, false
	}
	return c.disk.OpenFile(key, size)
}

// HasDisk reports whether the cache has a disk tier.
func (c *Cache) HasDisk() bool { return c.disk != nil }
