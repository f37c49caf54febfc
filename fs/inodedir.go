package fs

import (
	"context"
	"strconv"
	"sync"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lazyroot/lazyroot/index"
)

// InodeDirName is the name of the directory, at the root of a mount of
// tree, under which ServeInodes shows each regular file of the tree by its
// inode number: ".i", or the first of ".i0", ".i1", ... that names no entry
// of the tree's root. It is short so that a metadata tree's redirects
// ("/.i/INO") fit in the inode of a local file system.
func InodeDirName(tree *index.Tree) string {
	name := ".i"
	for i := 0; tree.Root.Children[name] != nil; i++ {
		name = ".i" + strconv.Itoa(i)
	}
	return name
}

// inodePath is where ServeInodes shows the regular file n.
func inodePath(dirName string, n *index.Node) string {
	return "/" + dirName + "/" + strconv.FormatUint(n.Ino, 10)
}

// ServeInodes has the mount show every regular file of the tree also at
// /NAME/INO (NAME: InodeDirName), for the redirects of a metadata tree
// (WriteMetaTree). The directory is looked up, never listed: a walk of the
// tree does not see it. Call it before mounting.
func (r *Root) ServeInodes() {
	r.inodeDir = InodeDirName(r.tree)
	r.inodes.root = r
}

var _ = (fusefs.NodeLookuper)((*Root)(nil))

// Lookup finds name in the root directory, where the directory of
// ServeInodes lies too.
func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	if r.inodeDir == "" || name != r.inodeDir {
		return r.dirNode.Lookup(ctx, name, out)
	}
	r.inodes.fillAttr(&out.Attr)
	if c := r.GetChild(name); c != nil {
		return c, 0
	}
	// The tree numbers its inodes from 1 to Inodes: the next is free.
	return r.NewInode(ctx, &r.inodes, fusefs.StableAttr{Mode: syscall.S_IFDIR, Ino: r.tree.Inodes + 1}), 0
}

// inodeDir is the directory of ServeInodes. Its files are the tree's own
// inodes (go-fuse keeps one per inode number), so a file read through
// either name shares one page cache.
type inodeDir struct {
	fusefs.Inode
	root *Root
	// byIno maps inode numbers to regular files, made on first lookup.
	once  sync.Once
	byIno map[uint64]*index.Node
}

var _ = (fusefs.NodeLookuper)((*inodeDir)(nil))
var _ = (fusefs.NodeGetattrer)((*inodeDir)(nil))
var _ = (fusefs.NodeOpendirHandler)((*inodeDir)(nil))

func (d *inodeDir) fillAttr(a *fuse.Attr) {
	a.Ino = d.root.tree.Inodes + 1
	a.Mode = syscall.S_IFDIR | 0o500
	a.Nlink = 2
	a.Blksize = 4096
}

// Getattr reports a directory only root may search.
func (d *inodeDir) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fillAttr(&out.Attr)
	return 0
}

// Lookup returns the regular file whose inode number is name.
func (d *inodeDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	ino, err := strconv.ParseUint(name, 10, 64)
	if err != nil {
		return nil, syscall.ENOENT
	}
	d.once.Do(func() {
		d.byIno = map[uint64]*index.Node{}
		indexFiles(d.root.tree.Root, d.byIno)
	})
	n := d.byIno[ino]
	if n == nil {
		return nil, syscall.ENOENT
	}
	d.root.fillAttr(n, &out.Attr)
	if c := d.GetChild(name); c != nil {
		return c, 0
	}
	return d.NewInode(ctx, d.root.newNode(n), fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: n.Ino}), 0
}

// indexFiles adds the regular files under n to byIno.
func indexFiles(n *index.Node, byIno map[uint64]*index.Node) {
	for _, c := range n.Children {
		switch c.Type {
		case index.TypeReg:
			byIno[c.Ino] = c
		case index.TypeDir:
			indexFiles(c, byIno)
		}
	}
}

// OpendirHandle lists nothing: the directory is for lookups.
func (d *inodeDir) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	return fusefs.NewListDirStream(nil), 0, 0
}
