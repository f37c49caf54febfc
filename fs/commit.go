package fs

// Turning an overlay upper directory into a layer tar.
//
// The upper of a kernel overlayfs mount records changes in overlayfs's own
// terms; an OCI/Docker layer records them in tar terms. WriteUpperTar
// translates:
//
//	upper                                         layer tar
//	dir, file, symlink, fifo, device          ──► the same entry (mode, owner, mtime, xattrs)
//	char device 0:0, or a zero-size file
//	  with trusted.overlay.whiteout             ──► DIR/.wh.NAME (empty regular file)
//	dir with trusted.overlay.opaque = "y"     ──► DIR/ then DIR/.wh..wh..opq
//	dir with trusted.overlay.redirect         ──► DIR/ and DIR/.wh..wh..opq, then the whole
//	  (a renamed lower dir; redirect_dir=on)        directory as the MERGED view shows it
//	file with trusted.overlay.metacopy        ──► the file, content from the MERGED view
//	second name of one inode                  ──► a hardlink to the first name
//	trusted.overlay.* xattrs                  ──► dropped (overlay bookkeeping);
//	  trusted.overlay.overlay.X (escaped)           kept as trusted.overlay.X
//
// A renamed lower directory cannot be expressed as a change: the upper
// holds only what changed below the new name, and a layer cannot say "the
// lower tree that was at the old path". So it is written in full, opaque.
// overlayfs itself leaves a whiteout at the old name.
//
// Safety: the walk opens every directory and file relative to its parent's
// descriptor with O_NOFOLLOW, never by a full path, so a symlink (even one
// swapped in while the overlay is in use) never leads out of the tree.
// Extended attributes are read through /proc/self/fd/DIRFD/NAME, which
// pins the parent the same way. Sockets are skipped (tar cannot hold them),
// as is the root directory itself: its attributes are those of the upper
// directory, not the image's.

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Overlay markers in layer tars (OCI image spec, "Representing Changes").
const (
	tarWhiteoutPrefix = ".wh."
	tarOpaqueMarker   = ".wh..wh..opq"
)

// Extended attributes overlayfs keeps in the upper (trusted namespace, as
// a privileged mount without userxattr uses).
const (
	ovlXattrPrefix   = "trusted.overlay."
	ovlEscapedPrefix = "trusted.overlay.overlay."
	ovlOpaque        = "trusted.overlay.opaque"
	ovlRedirect      = "trusted.overlay.redirect"
	ovlWhiteout      = "trusted.overlay.whiteout"
	ovlMetacopy      = "trusted.overlay.metacopy"
)

// paxXattrPrefix prefixes extended attributes in PAX records.
const paxXattrPrefix = "SCHILY.xattr."

// WriteUpperTar writes the changes recorded in the overlayfs upper
// directory upper as an uncompressed OCI/Docker layer tar to w, in sorted
// order, directories before their contents. merged is where that overlay
// is mounted; it is read only for directories renamed from a lower layer
// (trusted.overlay.redirect) and metadata-only copies
// (trusted.overlay.metacopy), and may be "" if the upper has neither.
//
// The upper must not change while it is written: entries are read one at
// a time, and a file that shrinks while copied fails the call. Errors name
// the path inside the upper (or the merged view) they concern.
func WriteUpperTar(ctx context.Context, w io.Writer, upper, merged string) error {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		return fmt.Errorf("upper %s: reading extended attributes needs /proc: %w", upper, err)
	}
	root, err := openRoot(upper)
	if err != nil {
		return fmt.Errorf("upper %s: %w", upper, err)
	}
	defer root.Close()
	uw := &upperWriter{
		ctx:    ctx,
		tw:     tar.NewWriter(w),
		upper:  upper,
		merged: merged,
		links:  map[inodeKey]string{},
	}
	defer uw.closeMerged()
	if err := uw.walkDir(root, "", fromUpper); err != nil {
		return err
	}
	if err := uw.tw.Close(); err != nil {
		return fmt.Errorf("upper %s: %w", upper, err)
	}
	return nil
}

// source says which tree a walk reads: the upper, with overlay markers to
// translate, or the merged view, which shows the result as it is.
type source int

const (
	fromUpper source = iota
	fromMerged
)

// inodeKey identifies an inode, to find hardlinks.
type inodeKey struct{ dev, ino uint64 }

// upperWriter holds one WriteUpperTar's state. It is used by one goroutine.
type upperWriter struct {
	ctx    context.Context
	tw     *tar.Writer
	upper  string
	merged string
	// mergedRoot is merged, opened when first needed and checked to be an
	// overlay mount.
	mergedRoot *os.File
	// links maps an inode with several names to the tar name it was
	// first written under.
	links map[inodeKey]string
}

// openDir opens the directory name under dirfd without following a
// symlink.
func openDir(dirfd int, name string) (*os.File, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// openRoot opens the directory at p, which may be reached through
// symlinks: it is where the caller says the tree is.
func openRoot(p string) (*os.File, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// displayPath is what errors call the entry rel of src.
func (w *upperWriter) displayPath(src source, rel string) string {
	base := w.upper
	if src == fromMerged {
		base = w.merged
	}
	if rel == "" {
		return base
	}
	return base + "/" + rel
}

// walkDir writes the entries of dir, whose path in the layer is rel ("" for
// the root), in sorted order.
func (w *upperWriter) walkDir(dir *os.File, rel string, src source) error {
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", w.displayPath(src, rel), err)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if err := w.entry(dir, rel, name, src); err != nil {
			return err
		}
	}
	return nil
}

// entry writes the entry name of dir (at rel in the layer) and, for a
// directory, everything below it.
func (w *upperWriter) entry(dir *os.File, rel, name string, src source) error {
	p := path.Join(rel, name)
	where := w.displayPath(src, p)
	dirfd := int(dir.Fd())
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %s: %w", where, err)
	}
	xattrs, err := readXattrs(procPath(dirfd, name))
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	typ := st.Mode & unix.S_IFMT
	if src == fromUpper {
		if isWhiteout(&st, xattrs) {
			return w.writeMarker(path.Join(rel, tarWhiteoutPrefix+name), 0, &st, where)
		}
		if typ == unix.S_IFDIR {
			if _, ok := xattrs[ovlRedirect]; ok {
				return w.redirectedDir(rel, name)
			}
		}
	}
	if strings.HasPrefix(name, tarWhiteoutPrefix) {
		return fmt.Errorf("%s: a file named %q cannot be stored in a layer (it would read as a whiteout)", where, name)
	}
	hdr := header(p, &st, keptXattrs(xattrs, src))
	switch typ {
	case unix.S_IFDIR:
		opaque := src == fromUpper && xattrs[ovlOpaque] == "y"
		return w.dir(dir, name, p, hdr, &st, opaque, src)
	case unix.S_IFREG:
		if src == fromUpper {
			if _, ok := xattrs[ovlMetacopy]; ok {
				return w.metacopyFile(rel, name, hdr)
			}
		}
		return w.file(dirfd, name, hdr, &st, where)
	case unix.S_IFLNK:
		target, err := readlinkat(dirfd, name)
		if err != nil {
			return fmt.Errorf("readlink %s: %w", where, err)
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if typ == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(st.Rdev))
		hdr.Devminor = int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	default: // a socket: tar has no type for it
		return nil
	}
	if w.hardlinked(hdr, &st) {
		hdr.PAXRecords = nil
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", where, err)
	}
	return nil
}

// dir writes the directory name of parent, at p in the layer, then (if
// opaque) its opaque marker, then its contents.
func (w *upperWriter) dir(parent *os.File, name, p string, hdr *tar.Header, st *unix.Stat_t, opaque bool, src source) error {
	where := w.displayPath(src, p)
	hdr.Typeflag = tar.TypeDir
	hdr.Name = p + "/"
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", where, err)
	}
	if opaque {
		if err := w.writeMarker(path.Join(p, tarOpaqueMarker), int64(st.Mode&0o777), st, where); err != nil {
			return err
		}
	}
	d, err := openDir(int(parent.Fd()), name)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	defer d.Close()
	var dst unix.Stat_t
	if err := unix.Fstat(int(d.Fd()), &dst); err != nil {
		return fmt.Errorf("stat %s: %w", where, err)
	}
	if dst.Dev != st.Dev || dst.Ino != st.Ino {
		return fmt.Errorf("%s: replaced while being read", where)
	}
	return w.walkDir(d, p, src)
}

// file writes the regular file name of dirfd with its content.
func (w *upperWriter) file(dirfd int, name string, hdr *tar.Header, st *unix.Stat_t, where string) error {
	hdr.Typeflag = tar.TypeReg
	if w.hardlinked(hdr, st) {
		hdr.PAXRecords = nil
		if err := w.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar %s: %w", where, err)
		}
		return nil
	}
	// O_NONBLOCK: should the name have become a fifo since the stat, the
	// open does not wait for a writer (and the inode check below fails).
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", where, err)
	}
	f := os.NewFile(uintptr(fd), where)
	defer f.Close()
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err != nil {
		return fmt.Errorf("stat %s: %w", where, err)
	}
	if fst.Dev != st.Dev || fst.Ino != st.Ino || fst.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: replaced while being read", where)
	}
	return w.copyFile(hdr, f, st.Size, where)
}

// copyFile writes hdr with size and then size bytes of f.
func (w *upperWriter) copyFile(hdr *tar.Header, f *os.File, size int64, where string) error {
	hdr.Size = size
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", where, err)
	}
	n, err := io.Copy(w.tw, io.LimitReader(ctxReader{w.ctx, f}, size))
	if err != nil {
		if w.ctx.Err() != nil {
			return w.ctx.Err()
		}
		return fmt.Errorf("copy %s: %w", where, err)
	}
	if n != size {
		return fmt.Errorf("copy %s: file shrank from %d to %d bytes while being read", where, size, n)
	}
	return nil
}

// hardlinked reports whether st is an inode already written under another
// name, and if so makes hdr a hardlink to that name. Otherwise it records
// hdr's name for later names of a multiply linked inode.
func (w *upperWriter) hardlinked(hdr *tar.Header, st *unix.Stat_t) bool {
	if st.Nlink <= 1 {
		return false
	}
	key := inodeKey{uint64(st.Dev), st.Ino}
	if first, ok := w.links[key]; ok {
		hdr.Typeflag = tar.TypeLink
		hdr.Linkname = first
		hdr.Size = 0
		return true
	}
	w.links[key] = hdr.Name
	return false
}

// writeMarker writes an empty regular file name (a whiteout or an opaque
// marker) with mode and the owner and mtime of st.
func (w *upperWriter) writeMarker(name string, mode int64, st *unix.Stat_t, where string) error {
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Mode:     mode,
		Uid:      int(st.Uid),
		Gid:      int(st.Gid),
		ModTime:  time.Unix(st.Mtim.Sec, 0),
		Format:   tar.FormatPAX,
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", where, err)
	}
	return nil
}

// redirectedDir writes the directory name under rel, a lower directory
// renamed in the overlay, in full from the merged view, as an opaque
// directory.
func (w *upperWriter) redirectedDir(rel, name string) error {
	p := path.Join(rel, name)
	parent, err := w.openMergedDir(rel, p)
	if err != nil {
		return err
	}
	defer parent.Close()
	where := w.displayPath(fromMerged, p)
	dirfd := int(parent.Fd())
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %s: %w", where, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s: renamed directory is a %s in the merged view", where, fileTypeName(st.Mode))
	}
	xattrs, err := readXattrs(procPath(dirfd, name))
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	hdr := header(p, &st, keptXattrs(xattrs, fromMerged))
	return w.dir(parent, name, p, hdr, &st, true, fromMerged)
}

// metacopyFile writes the file name under rel, whose upper copy holds only
// metadata, with its content (and size) from the merged view.
func (w *upperWriter) metacopyFile(rel, name string, hdr *tar.Header) error {
	p := path.Join(rel, name)
	parent, err := w.openMergedDir(rel, p)
	if err != nil {
		return err
	}
	defer parent.Close()
	where := w.displayPath(fromMerged, p)
	var st unix.Stat_t
	if err := unix.Fstatat(int(parent.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %s: %w", where, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: metadata-only copy is a %s in the merged view", where, fileTypeName(st.Mode))
	}
	return w.file(int(parent.Fd()), name, hdr, &st, where)
}

// openMergedDir opens the directory rel of the merged view, one component
// at a time without following symlinks. p is the entry that needs it.
func (w *upperWriter) openMergedDir(rel, p string) (*os.File, error) {
	if w.mergedRoot == nil {
		if w.merged == "" {
			return nil, fmt.Errorf("%s: renamed or metadata-only entry: its content is only in the merged view, and no merged directory was given", w.displayPath(fromUpper, p))
		}
		root, err := openRoot(w.merged)
		if err != nil {
			return nil, fmt.Errorf("merged view %s: %w", w.merged, err)
		}
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(int(root.Fd()), &sfs); err != nil {
			root.Close()
			return nil, fmt.Errorf("merged view %s: %w", w.merged, err)
		}
		if sfs.Type != unix.OVERLAYFS_SUPER_MAGIC {
			root.Close()
			return nil, fmt.Errorf("merged view %s: not an overlay mount (file system type %#x)", w.merged, sfs.Type)
		}
		w.mergedRoot = root
	}
	d, err := openDir(int(w.mergedRoot.Fd()), ".")
	if err != nil {
		return nil, fmt.Errorf("merged view %s: %w", w.merged, err)
	}
	if rel == "" {
		return d, nil
	}
	for _, part := range strings.Split(rel, "/") {
		next, err := openDir(int(d.Fd()), part)
		d.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.displayPath(fromMerged, rel), err)
		}
		d = next
	}
	return d, nil
}

func (w *upperWriter) closeMerged() {
	if w.mergedRoot != nil {
		w.mergedRoot.Close()
	}
}

// header returns the tar header common to every type: name p, permission
// bits, owner, mtime (whole seconds, as Docker writes them) and xattrs.
func header(p string, st *unix.Stat_t, xattrs map[string]string) *tar.Header {
	hdr := &tar.Header{
		Name:    p,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, 0),
		Format:  tar.FormatPAX,
	}
	if len(xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(xattrs))
		for k, v := range xattrs {
			hdr.PAXRecords[paxXattrPrefix+k] = v
		}
	}
	return hdr
}

// isWhiteout reports an overlay whiteout: a character device 0:0, or a
// zero-size regular file marked with trusted.overlay.whiteout.
func isWhiteout(st *unix.Stat_t, xattrs map[string]string) bool {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		return st.Rdev == 0
	case unix.S_IFREG:
		_, ok := xattrs[ovlWhiteout]
		return ok && st.Size == 0
	}
	return false
}

// keptXattrs returns the xattrs that belong in the layer. From the upper,
// overlay's own (trusted.overlay.*) are dropped, and ones a user set under
// that prefix, which overlayfs stores escaped as trusted.overlay.overlay.*,
// are unescaped. The merged view shows xattrs as they are.
func keptXattrs(xattrs map[string]string, src source) map[string]string {
	if src == fromMerged {
		return xattrs
	}
	out := map[string]string{}
	for k, v := range xattrs {
		switch {
		case strings.HasPrefix(k, ovlEscapedPrefix):
			out[ovlXattrPrefix+strings.TrimPrefix(k, ovlEscapedPrefix)] = v
		case strings.HasPrefix(k, ovlXattrPrefix):
		default:
			out[k] = v
		}
	}
	return out
}

// procPath names the entry name of the open directory dirfd so that
// path-based calls resolve it from that directory.
func procPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// readXattrs returns every extended attribute of p, not following a
// symlink; nil when there are none or the file system has none.
func readXattrs(p string) (map[string]string, error) {
	var buf []byte
	for {
		sz, err := unix.Llistxattr(p, nil)
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENOSYS) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		if sz == 0 {
			return nil, nil
		}
		buf = make([]byte, sz)
		sz, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // the list grew between the calls
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		buf = buf[:sz]
		break
	}
	out := map[string]string{}
	for _, key := range strings.Split(strings.TrimRight(string(buf), "\x00"), "\x00") {
		if key == "" {
			continue
		}
		v, err := getXattr(p, key)
		if errors.Is(err, unix.ENODATA) {
			continue // removed since it was listed
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", key, err)
		}
		out[key] = v
	}
	return out, nil
}

func getXattr(p, key string) (string, error) {
	for {
		sz, err := unix.Lgetxattr(p, key, nil)
		if err != nil {
			return "", err
		}
		buf := make([]byte, sz)
		sz, err = unix.Lgetxattr(p, key, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // the value grew between the calls
		}
		if err != nil {
			return "", err
		}
		return string(buf[:sz]), nil
	}
}

// readlinkat returns the target of the symlink name of dirfd.
func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

func fileTypeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "file of unknown type"
}

// ctxReader stops reading when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
