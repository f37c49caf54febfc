// Package fs serves a merged, immutable index.Tree as a read-only FUSE file
// system, puts kernel overlayfs over it for jobs that write (Upper,
// MountOverlay), and writes an overlay's upper back out as a layer tar
// (WriteUpperTar). Owners can be shown through id maps (Root.MapIDs) without
// copying anything.
//
// Inodes are made as the kernel looks names up, from the tree already in
// memory, so lookups never block on the network; hardlinked names share
// one inode. Because the tree never changes, entries and
// attributes are cached by the kernel for a long time, opened files keep
// their page cache (FOPEN_KEEP_CACHE) and need no FLUSH on close,
// directory listings are cached by the kernel (FOPEN_CACHE_DIR; the
// kernel is told once that directories need no OPENDIR, so listing one
// costs no OPENDIR or RELEASEDIR round trip: see noOpendir), and
// POSIX ACLs are left to the kernel, which caches them. Reads are up to
// 1 MiB and readahead is raised past the kernel's 128 KiB default (see
// mount.go for the numbers and why). A read whose bytes the
// ContentReader serves from memory allocates nothing here (the read
// result is recycled). File content is asked of a
// ContentReader, whose errors are turned into errno values by toErrno:
// cancellation becomes EINTR, a missing file ENOENT, anything else EIO with
// a log line, so a job sees a failed read rather than a hang.
//
// With a Backing (Root.UseBacking), a file that has a whole copy on local
// disk is opened in FUSE passthrough: the kernel reads (and maps) the copy
// itself, so such reads cost what a local file's do. Once this server has
// served a file's size in bytes, the Backing is told (ReadWhole) so that
// it can make that copy for later opens. The kernel serves an inode one
// way at a time, so a file keeps the way it was opened until its last
// handle closes (fileNode counts its handles of each kind).
//
// A metadata tree (WriteMetaTree) is the tree's metadata on a local file
// system: each non-empty file a sparse overlayfs metacopy file that
// redirects to /NAME/INO, where a mount with Root.ServeInodes shows the
// file by inode number (a directory looked up, never listed).
// MountOverlay with OverlayOptions.MetaTree stacks it over such a mount as
// a data-only layer (kernel 6.16+, CheckMetaTrees), so an overlay walks
// the tree on local disk and asks the FUSE server for bytes only.
//
// The go-fuse server calls node methods from many goroutines; a file node's
// handle counts and backing file are under its mutex, the rest of a node
// never changes.
package fs
