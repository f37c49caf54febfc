package fs

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lazyroot/lazyroot/index"
)

// Backing keeps whole copies of file contents on local disk, so that the
// kernel can read them itself (FUSE passthrough) instead of asking this
// server for every read.
type Backing interface {
	// OpenBacking returns a read-only file whose bytes are exactly n's
	// content, or nil if there is no such copy (yet).
	OpenBacking(n *index.Node) *os.File
	// ReadWhole tells that this server has served as many bytes of n as
	// it holds: a good moment to make a copy, since they are all cached.
	ReadWhole(n *index.Node)
}

// UseBacking serves regular files through b: a file opened while b has a
// copy of it is read by the kernel from that copy, without this server.
// Call it before mounting; without it every read comes here.
//
// The kernel serves an inode either through the server and its page cache
// or through a backing file, never both at once: a file keeps the way it
// was first opened until its last handle is closed.
func (r *Root) UseBacking(b Backing) { r.backing = b }

// fileNode is a regular file whose content the root's ContentReader reads,
// or the kernel reads from a backing file (see Root.UseBacking).
type fileNode struct {
	baseNode
	// served counts the bytes Read returned, to tell the Backing once
	// when it reaches the file's size (noted).
	served atomic.Int64
	noted  atomic.Bool

	mu      sync.Mutex
	backing *os.File // open while passOpens > 0
	// passOpens and cachedOpens count the open handles of each kind.
	passOpens, cachedOpens int
}

var _ = (fusefs.NodeOpener)((*fileNode)(nil))
var _ = (fusefs.NodeReader)((*fileNode)(nil))

// Open allows reading only. A file with a backing copy, and no handle open
// the other way, is passed through to the copy. Otherwise the page cache
// is kept across opens since the content never changes. Closing needs no
// FLUSH round trip since nothing is ever written.
func (f *fileNode) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.root.backing; b != nil && f.cachedOpens == 0 {
		if f.backing == nil {
			f.backing = b.OpenBacking(f.entry)
		}
		if f.backing != nil {
			f.passOpens++
			// go-fuse drops KEEP_CACHE when it passes the file through;
			// if it cannot, the page cache is kept as for any file.
			return &passthroughHandle{f}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
		}
	}
	f.cachedOpens++
	return &cachedHandle{f}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

// Read reads file content through the ContentReader. A read the reader
// serves without allocating allocates nothing here either (see
// readResult).
func (f *fileNode) Read(ctx context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := f.root.reader.ReadAt(ctx, f.entry, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, toErrno(f.root.logger, err)
	}
	// Once noted, a file's reads leave the shared counter alone.
	if b := f.root.backing; b != nil && !f.noted.Load() && f.served.Add(int64(n)) >= f.entry.Size && !f.noted.Swap(true) {
		b.ReadWhole(f.entry)
	}
	return newReadResult(dest[:n]), 0
}

// cachedHandle is a handle read through this server.
type cachedHandle struct{ f *fileNode }

var _ = (fusefs.FileReleaser)((*cachedHandle)(nil))

// Release forgets the handle.
func (h *cachedHandle) Release(ctx context.Context) syscall.Errno {
	h.f.mu.Lock()
	h.f.cachedOpens--
	h.f.mu.Unlock()
	return 0
}

// passthroughHandle is a handle the kernel reads from the node's backing
// file. If the kernel cannot pass through (go-fuse then serves the file
// as usual), its reads come to fileNode.Read like any other.
type passthroughHandle struct{ f *fileNode }

var _ = (fusefs.FilePassthroughFder)((*passthroughHandle)(nil))
var _ = (fusefs.FileReleaser)((*passthroughHandle)(nil))

// PassthroughFd returns the backing file's descriptor, open from this
// handle's Open to its Release.
func (h *passthroughHandle) PassthroughFd() (int, bool) {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	if h.f.backing == nil {
		return 0, false
	}
	return int(h.f.backing.Fd()), true
}

// Release closes the backing file with the node's last passthrough handle
// (the kernel keeps its own reference while it uses the file).
func (h *passthroughHandle) Release(ctx context.Context) syscall.Errno {
	h.f.mu.Lock()
	defer h.f.mu.Unlock()
	if h.f.passOpens--; h.f.passOpens == 0 && h.f.backing != nil {
		h.f.backing.Close()
		h.f.backing = nil
	}
	return 0
}
