package fs

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// noOpendir serves directories without OPENDIR and RELEASEDIR round trips.
//
// Listing a directory normally costs the kernel four requests: OPENDIR,
// a READDIRPLUS with the entries, an empty one for the end, and
// RELEASEDIR. A server that answers OPENDIR with ENOSYS is never sent
// OPENDIR or RELEASEDIR again, and the kernel then caches listings as if
// every directory were opened with FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE,
// which is what dirNode asks for anyway. go-fuse's node bridge lists only
// through a handle it opened, so each READDIRPLUS without one (Fh 0) is
// served here through a handle opened and released around it, in this
// process: no round trip.
type noOpendir struct {
	fuse.RawFileSystem
}

// OpenDir tells the kernel to stop opening directories.
func (w *noOpendir) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

// ReadDirPlus lists a directory the kernel did not open.
func (w *noOpendir) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status { return w.RawFileSystem.ReadDirPlus(cancel, in, out) })
}

// ReadDir lists a directory the kernel did not open.
func (w *noOpendir) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return w.withHandle(cancel, in, func(in *fuse.ReadIn) fuse.Status { return w.RawFileSystem.ReadDir(cancel, in, out) })
}

// withHandle runs list with in's directory opened in the bridge, unless
// the kernel opened it itself.
func (w *noOpendir) withHandle(cancel <-chan struct{}, in *fuse.ReadIn, list func(*fuse.ReadIn) fuse.Status) fuse.Status {
	if in.Fh != 0 {
		return list(in)
	}
	var opened fuse.OpenOut
	if st := w.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: in.InHeader}, &opened); !st.Ok() {
		return st
	}
	defer w.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: in.InHeader, Fh: opened.Fh})
	with := *in
	with.Fh = opened.Fh
	return list(&with)
}
