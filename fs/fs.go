package fs

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lazyroot/lazyroot/index"
)

// ContentReader reads the content of regular files of the tree.
type ContentReader interface {
	// ReadAt reads len(p) bytes of n's content at off; io.EOF at the end.
	ReadAt(ctx context.Context, n *index.Node, p []byte, off int64) (int, error)
}

// blockSize is the unit st_blocks and statfs are reported in.
const blockSize = 512

// Root is the root directory of a mounted tree.
type Root struct {
	dirNode
	tree   *index.Tree
	reader ContentReader
	logger *log.Logger
	// noXattrs is set by OnAdd, before any request, when no entry of the
	// tree has an extended attribute.
	noXattrs bool
	uids     IDMap
	gids     IDMap
	backing  Backing // nil: every read comes to the server
	// inodeDir names the directory of ServeInodes; "" when not served.
	inodeDir string
	inodes   inodeDir
}

var _ = (fusefs.NodeOnAdder)((*Root)(nil))
var _ = (fusefs.NodeStatfser)((*Root)(nil))

// NewRoot returns the root node serving tree, reading content from r.
func NewRoot(tree *index.Tree, r ContentReader, logger *log.Logger) *Root {
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	root := &Root{tree: tree, reader: r, logger: logger}
	root.entry = tree.Root
	root.root = root
	return root
}

// MapIDs shows owners through the given maps (image id to host id); call
// it before mounting. Empty maps show owners as the image has them.
func (r *Root) MapIDs(uids, gids IDMap) {
	r.uids, r.gids = uids, gids
}

// OnAdd notes, before any request, whether any entry of the tree has an
// extended attribute. Inodes are made as the kernel looks names up (see
// dirNode.Lookup), not here: a mount of a tree of many files is ready
// without building them all.
func (r *Root) OnAdd(ctx context.Context) {
	r.noXattrs = !hasXattrs(r.tree.Root)
}

// hasXattrs reports whether n or any entry under it has an extended
// attribute.
func hasXattrs(n *index.Node) bool {
	if len(n.Xattrs) > 0 {
		return true
	}
	for _, c := range n.Children {
		if hasXattrs(c) {
			return true
		}
	}
	return false
}

func (r *Root) newNode(n *index.Node) fusefs.InodeEmbedder {
	switch n.Type {
	case index.TypeDir:
		return &dirNode{baseNode: baseNode{entry: n, root: r}}
	case index.TypeReg:
		return &fileNode{baseNode: baseNode{entry: n, root: r}}
	case index.TypeSymlink:
		return &symlinkNode{baseNode: baseNode{entry: n, root: r}}
	default:
		return &specialNode{baseNode: baseNode{entry: n, root: r}}
	}
}

// Statfs reports the tree's size; the file system has no free space.
func (r *Root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = uint64(r.tree.Bytes+4095) / 4096
	out.Files = r.tree.Inodes
	out.NameLen = 255
	return 0
}

// baseNode holds what every kind of inode shares: attributes and xattrs.
type baseNode struct {
	fusefs.Inode
	entry *index.Node
	root  *Root
}

var _ = (fusefs.NodeGetattrer)((*baseNode)(nil))
var _ = (fusefs.NodeGetxattrer)((*baseNode)(nil))
var _ = (fusefs.NodeListxattrer)((*baseNode)(nil))

// Getattr reports the entry's metadata.
func (n *baseNode) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.root.fillAttr(n.entry, &out.Attr)
	return 0
}

func (r *Root) fillAttr(n *index.Node, a *fuse.Attr) {
	a.Ino = n.Ino
	a.Mode = fileType(n) | n.Mode&07777
	a.Nlink = n.Nlink
	a.Owner = fuse.Owner{Uid: r.uids.Map(uint32(n.UID)), Gid: r.gids.Map(uint32(n.GID))}
	a.Size = uint64(n.Size)
	if n.Type == index.TypeSymlink {
		a.Size = uint64(len(n.Linkname))
	}
	a.Blocks = (a.Size + blockSize - 1) / blockSize
	a.Blksize = 4096
	if n.Type == index.TypeChar || n.Type == index.TypeBlock {
		a.Rdev = mkdev(n.Devmajor, n.Devminor)
	}
	t := n.ModTime
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	a.SetTimes(&t, &t, &t)
}

// mkdev encodes a device number as Linux's new_encode_dev does.
func mkdev(major, minor uint32) uint32 {
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12
}

func fileType(n *index.Node) uint32 {
	switch n.Type {
	case index.TypeDir:
		return syscall.S_IFDIR
	case index.TypeSymlink:
		return syscall.S_IFLNK
	case index.TypeChar:
		return syscall.S_IFCHR
	case index.TypeBlock:
		return syscall.S_IFBLK
	case index.TypeFifo:
		return syscall.S_IFIFO
	default:
		return syscall.S_IFREG
	}
}

// Getxattr returns one extended attribute. A tree without any answers
// ENOSYS, which the kernel remembers for the whole mount: it then answers
// every later getxattr and listxattr itself (no attributes), sparing a
// round trip per file that ls -l, ACL checks and security modules make.
func (n *baseNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if n.root.noXattrs {
		return 0, syscall.ENOSYS
	}
	v, ok := n.entry.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// Listxattr lists the extended attribute names, NUL-terminated.
func (n *baseNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if n.root.noXattrs {
		return 0, syscall.ENOSYS
	}
	names := make([]string, 0, len(n.entry.Xattrs))
	for k := range n.entry.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte(0)
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), 0
}

// dirNode is a directory; its children's inodes are made as they are
// looked up.
type dirNode struct {
	baseNode
	// listing is the directory's entries in name order, made once: every
	// listing shares it (go-fuse's list stream copies what it returns).
	listOnce sync.Once
	listing  []fuse.DirEntry
}

var _ = (fusefs.NodeOpendirHandler)((*dirNode)(nil))
var _ = (fusefs.NodeLookuper)((*dirNode)(nil))

// Lookup returns the inode of the entry name, made on its first lookup.
// A hardlinked file has one inode under all its names: go-fuse keeps one
// inode per inode number.
func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	n, ok := d.entry.Children[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	d.root.fillAttr(n, &out.Attr)
	if c := d.GetChild(name); c != nil {
		return c, 0
	}
	return d.NewInode(ctx, d.root.newNode(n), fusefs.StableAttr{Mode: fileType(n), Ino: n.Ino}), 0
}

// OpendirHandle lists the directory from the tree and lets the kernel
// cache the listing (FOPEN_CACHE_DIR, kept across opens): the tree never
// changes, so a directory is listed by this server once while the kernel
// keeps its pages. "." and ".." are left to the kernel, as go-fuse's own
// listing does.
//
// Each READDIRPLUS opens a handle of its own (see noOpendir), so the
// listing is built once per directory, not per handle: a directory of
// many entries is listed in time proportional to its size.
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	d.listOnce.Do(func() {
		names := d.entry.Names()
		d.listing = make([]fuse.DirEntry, len(names))
		for i, name := range names {
			c := d.entry.Children[name]
			d.listing[i] = fuse.DirEntry{Name: name, Ino: c.Ino, Mode: fileType(c)}
		}
	})
	return fusefs.NewListDirStream(d.listing), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// symlinkNode is a symbolic link.
type symlinkNode struct{ baseNode }

var _ = (fusefs.NodeReadlinker)((*symlinkNode)(nil))

// Readlink returns the link target.
func (n *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(n.entry.Linkname), 0
}

// specialNode is a device node or fifo: attributes only.
type specialNode struct{ baseNode }

// toErrno maps an error to the errno a reader should see, logging
// unexpected ones.
func toErrno(logger *log.Logger, err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.As(err, &errno):
		return errno
	}
	logger.Printf("read failed: %v", err)
	return syscall.EIO
}
