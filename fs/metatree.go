package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/index"
)

// MetaTreeVersion changes whenever WriteMetaTree writes a tree differently,
// so that callers naming stored trees by it never mount one an older
// release wrote.
const MetaTreeVersion = 1

// WriteMetaTree writes at dir, on a local file system, the tree's metadata
// as the FUSE mount of tree presents it (types, modes, owners through
// uids and gids, sizes, times, link targets, device numbers, hardlinks and
// extended attributes), with no file data. Each non-empty regular file is
// an overlayfs metacopy file (sparse, of the file's size) that redirects
// to the file's name under the FUSE mount's inode directory (see
// ServeInodes): MountOverlay with OverlayOptions.MetaTree stacks dir over
// a mount that serves it, as a data-only layer, so walking the tree is
// served by the local file system and only opening a file for its bytes
// reaches the FUSE server. The redirects are short enough for ext4 to keep
// them in the inode (with 256-byte inodes), not in a block of their own.
//
// An extended attribute of the image named trusted.overlay.X is written
// escaped (trusted.overlay.overlay.X), so overlayfs shows it as it is and
// never acts on it.
//
// The tree is written in a directory beside dir (dir.partial), under a
// lock (dir.lock), and renamed to dir once complete. Writing is
// idempotent: when ctx ends it early, the entries written stay, and the
// next call goes on from them. If dir exists, nothing is written. A call
// that finds the lock held returns ErrMetaTreeBusy at once.
func WriteMetaTree(ctx context.Context, dir string, tree *index.Tree, uids, gids IDMap) error {
	if _, err := os.Lstat(dir); err == nil {
		return nil
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("metadata tree %s: %w", dir, err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("metadata tree %s: %w", dir, ErrMetaTreeBusy)
		}
		return fmt.Errorf("metadata tree %s: lock: %w", dir, err)
	}
	if _, err := os.Lstat(dir); err == nil {
		return nil // written while this call waited for the lock
	}
	tmp := dir + ".partial"
	if err := os.Mkdir(tmp, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("metadata tree %s: %w", dir, err)
	}
	rootFD, err := unix.Open(tmp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("metadata tree %s: %w", dir, err)
	}
	defer unix.Close(rootFD)
	w := &metaWriter{ctx: ctx, root: tmp, rootFD: rootFD, uids: uids, gids: gids, links: map[uint64]string{}, inodeDir: InodeDirName(tree)}
	if err := w.dir(rootFD, tree.Root, ""); err != nil {
		return fmt.Errorf("metadata tree %s: %w", dir, err)
	}
	// The tree is renamed into place only once it is on disk: a crash
	// must not leave a complete-looking tree of files without their
	// redirects.
	if err := unix.Syncfs(rootFD); err != nil {
		return fmt.Errorf("metadata tree %s: sync: %w", dir, err)
	}
	if err := unix.Rename(tmp, dir); err != nil {
		return fmt.Errorf("metadata tree %s: %w", dir, err)
	}
	return nil
}

// ErrMetaTreeBusy reports a metadata tree another writer is writing.
var ErrMetaTreeBusy = errors.New("being written by another process")

// metaWriter writes one metadata tree.
type metaWriter struct {
	ctx  context.Context
	root string
	// rootFD is root, open.
	rootFD     int
	uids, gids IDMap
	// links maps the inode number of a file with more than one name to
	// the path written for its first.
	links map[uint64]string
	// inodeDir is the FUSE mount's InodeDirName.
	inodeDir string
	n        int
}

// dir writes the children of directory n, open as fd (at rel, "" for
// the root), then n's own attributes, which writing children changes.
func (w *metaWriter) dir(fd int, n *index.Node, rel string) error {
	for _, name := range n.Names() {
		if w.n++; w.n%256 == 0 {
			if err := w.ctx.Err(); err != nil {
				return err
			}
		}
		crel := name
		if rel != "" {
			crel = rel + "/" + name
		}
		if err := w.entry(fd, n.Children[name], name, crel); err != nil {
			return err
		}
	}
	return w.attrs(fd, "", n, rel)
}

// entry writes the child name of the directory open as dirfd (at rel).
// It works through descriptors: no syscall walks the path again. An entry
// a call before made is kept, and its attributes set again; a link of the
// wrong target is made again.
func (w *metaWriter) entry(dirfd int, n *index.Node, name, rel string) error {
	if n.Type != index.TypeDir && n.Nlink > 1 {
		if first, ok := w.links[n.Ino]; ok {
			return w.link(dirfd, first, name, rel)
		}
		w.links[n.Ino] = rel
	}
	switch n.Type {
	case index.TypeDir:
		if err := unix.Mkdirat(dirfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %s: %w", rel, err)
		}
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", rel, err)
		}
		defer unix.Close(fd)
		return w.dir(fd, n, rel)
	case index.TypeReg:
		return w.file(dirfd, n, name, rel)
	case index.TypeSymlink:
		if err := w.symlink(dirfd, n.Linkname, name, rel); err != nil {
			return err
		}
	case index.TypeChar, index.TypeBlock, index.TypeFifo:
		if err := unix.Mknodat(dirfd, name, fileType(n)|0o600, int(mkdev(n.Devmajor, n.Devminor))); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mknod %s: %w", rel, err)
		}
	default:
		return fmt.Errorf("%s: %w: entry type %v", rel, index.ErrMalformed, n.Type)
	}
	return w.attrs(dirfd, name, n, rel)
}

// link makes name in the directory open as dirfd a hardlink of first (a
// path under the root), replacing an entry of that name that is not.
func (w *metaWriter) link(dirfd int, first, name, rel string) error {
	err := unix.Linkat(w.rootFD, first, dirfd, name, 0)
	if errors.Is(err, unix.EEXIST) {
		var have, want unix.Stat_t
		if unix.Fstatat(dirfd, name, &have, unix.AT_SYMLINK_NOFOLLOW) == nil &&
			unix.Fstatat(w.rootFD, first, &want, unix.AT_SYMLINK_NOFOLLOW) == nil && have.Ino == want.Ino {
			return nil
		}
		if err = unix.Unlinkat(dirfd, name, 0); err == nil {
			err = unix.Linkat(w.rootFD, first, dirfd, name, 0)
		}
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", rel, err)
	}
	return nil
}

// symlink makes name in the directory open as dirfd a symlink to target,
// replacing an entry of that name that is not.
func (w *metaWriter) symlink(dirfd int, target, name, rel string) error {
	err := unix.Symlinkat(target, dirfd, name)
	if errors.Is(err, unix.EEXIST) {
		buf := make([]byte, len(target)+1)
		if n, rerr := unix.Readlinkat(dirfd, name, buf); rerr == nil && string(buf[:n]) == target {
			return nil
		}
		if err = unix.Unlinkat(dirfd, name, 0); err == nil {
			err = unix.Symlinkat(target, dirfd, name)
		}
	}
	if err != nil {
		return fmt.Errorf("symlink %s: %w", rel, err)
	}
	return nil
}

// file writes a regular file: a metacopy of the FUSE tree's file when it
// has bytes, a plain empty file when not.
func (w *metaWriter) file(dirfd int, n *index.Node, name, rel string) error {
	fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", rel, err)
	}
	defer unix.Close(fd)
	if n.Size > 0 {
		if err := unix.Ftruncate(fd, n.Size); err != nil {
			return fmt.Errorf("size %s: %w", rel, err)
		}
		if err := unix.Fsetxattr(fd, ovlMetacopy, nil, 0); err != nil {
			return fmt.Errorf("metacopy %s: %w", rel, err)
		}
		if err := unix.Fsetxattr(fd, ovlRedirect, []byte(inodePath(w.inodeDir, n)), 0); err != nil {
			return fmt.Errorf("redirect %s: %w", rel, err)
		}
	}
	return w.attrs(fd, "", n, rel)
}

// attrs sets the owner, mode, extended attributes and times of an entry:
// the one open as fd when name is "", else name in the directory open as
// fd (a symlink or device node). The order matters: a change of owner
// clears setuid bits and file capabilities, and only the times must
// outlast the rest.
func (w *metaWriter) attrs(fd int, name string, n *index.Node, rel string) error {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags = unix.AT_EMPTY_PATH
	}
	// Entries are made by root, as root's.
	if uid, gid := w.uids.Map(uint32(n.UID)), w.gids.Map(uint32(n.GID)); uid != 0 || gid != 0 {
		if err := unix.Fchownat(fd, name, int(uid), int(gid), flags); err != nil {
			return fmt.Errorf("owner of %s: %w", rel, err)
		}
	}
	switch {
	case n.Type == index.TypeSymlink:
	case name == "":
		if err := unix.Fchmod(fd, n.Mode&0o7777); err != nil {
			return fmt.Errorf("mode of %s: %w", rel, err)
		}
	default:
		if err := unix.Fchmodat(fd, name, n.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("mode of %s: %w", rel, err)
		}
	}
	for key, v := range n.Xattrs {
		if strings.HasPrefix(key, "user.") && n.Type != index.TypeReg && n.Type != index.TypeDir {
			continue // the kernel allows user.* on files and directories only
		}
		if strings.HasPrefix(key, ovlXattrPrefix) {
			key = ovlEscapedPrefix + strings.TrimPrefix(key, ovlXattrPrefix)
		}
		var err error
		if name == "" {
			err = unix.Fsetxattr(fd, key, v, 0)
		} else {
			err = unix.Lsetxattr(filepath.Join(w.root, rel), key, v, 0)
		}
		if err != nil {
			return fmt.Errorf("xattr %s of %s: %w", key, rel, err)
		}
	}
	t := n.ModTime
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	ts := unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
	if err := unix.UtimesNanoAt(fd, name, []unix.Timespec{ts, ts}, flags); err != nil {
		return fmt.Errorf("times of %s: %w", rel, err)
	}
	return nil
}
