package fs

import (
	"fmt"
	"log"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// cacheTimeout is how long the kernel may keep entries and attributes: the
// tree never changes while mounted.
const cacheTimeout = 24 * time.Hour

// Options configure Mount.
type Options struct {
	// FsName is shown as the mount's source (the image reference).
	FsName string
	// Logger receives read errors; nil discards them.
	Logger *log.Logger
	// Debug logs every FUSE request.
	Debug bool
	// AllowSetuid honours setuid and setgid bits. Off, the bits are still
	// shown but do not raise privileges (nosuid): anyone who can reach
	// the mount could otherwise run an image's setuid binaries as root.
	AllowSetuid bool

	// tune, if set, changes the mount options before mounting; for the
	// benchmarks that compare option sets.
	tune func(*mountTuning)
}

// Read path tuning for an immutable lower (measured by the benchmarks in
// readpath_bench_test.go):
//
//   - maxRequest is the largest READ the kernel sends. go-fuse derives the
//     kernel's max_pages (and max_read) from MaxWrite, so although
//     nothing is ever written, MaxWrite sets the read size: 1 MiB, the
//     kernel's limit (fs.fuse.max_pages_limit, 256 pages).
//   - readAheadKB is the largest readahead window of the mount's backing
//     device. FUSE's INIT reply can only lower the kernel's 128 KiB
//     default, so Mount raises it afterwards through
//     /sys/class/bdi/MAJOR:MINOR/read_ahead_kb. 4 MiB: larger windows help a sequential reader served from the disk
//     tier (16 MiB measured best there), but the bound is also the
//     read-around of a page fault on a mapped file, so a job that
//     executes big binaries and libraries from a cold mount would fetch up
//     to that much around every first fault.
//   - maxBackground bounds the asynchronous (readahead) requests the
//     kernel keeps in flight, over all files; the congestion threshold is
//     left at 3/4 of it. One sequential reader needs 4 (readAheadKB /
//     maxRequest); 128 leaves room for many files read at once, as at a
//     job's start.
const (
	maxRequest    = 1 << 20
	readAheadKB   = 4 << 10
	maxBackground = 128
)

// mountTuning is what Mount asks of go-fuse and of the kernel.
type mountTuning struct {
	fuse.MountOptions
	// readAheadKB, if positive, is written to the mount's read_ahead_kb.
	readAheadKB int
	// opendir keeps OPENDIR and RELEASEDIR requests (see noOpendir).
	opendir bool
}

// Mount serves root at dir, read-only, and returns once the kernel has the
// mount. Unmount with the returned server's Unmount, or umount(2).
func Mount(dir string, root *Root, o Options) (*fuse.Server, error) {
	timeout := cacheTimeout
	suid := "nosuid"
	if o.AllowSetuid {
		suid = "suid"
	}
	mt := mountTuning{
		MountOptions: fuse.MountOptions{
			FsName: o.FsName,
			Name:   "lazyroot",
			// The kernel checks permissions from the modes we report, so
			// other users of the image see what its owners allowed them.
			Options:          []string{"default_permissions", "ro", suid, "nodev"},
			AllowOther:       os.Geteuid() == 0,
			DirectMount:      true,
			DirectMountFlags: syscall.MS_RDONLY | syscall.MS_NODEV,
			MaxWrite:         maxRequest,
			MaxReadAhead:     maxRequest,
			MaxBackground:    maxBackground,
			// Reads answer with bytes, never a file descriptor: go-fuse's
			// splice path would only cost a pipe round trip per read.
			DisableSplice: true,
			// POSIX ACLs handled by the kernel, which then caches them
			// (and enforces any an image carries): without this every
			// getxattr of system.posix_acl_access, one per file of an
			// ls -l, is a round trip to this server.
			EnableAcl:            true,
			Debug:                o.Debug,
			Logger:               o.Logger,
			EnableSymlinkCaching: true,
		},
		readAheadKB: readAheadKB,
	}
	if o.tune != nil {
		o.tune(&mt)
	}
	var raw fuse.RawFileSystem = fusefs.NewNodeFS(root, &fusefs.Options{
		MountOptions:    mt.MountOptions,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		Logger:          o.Logger,
	})
	if !mt.opendir {
		raw = &noOpendir{raw}
	}
	server, err := fuse.NewServer(raw, dir, &mt.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("fuse mount at %s: %w", dir, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		server.Unmount() // ends Serve
		return nil, fmt.Errorf("fuse mount at %s: %w", dir, err)
	}
	if mt.readAheadKB > 0 {
		if err := setReadAhead(dir, mt.readAheadKB); err != nil && o.Logger != nil {
			o.Logger.Printf("fuse mount at %s: readahead stays at the kernel default: %v", dir, err)
		}
	}
	closeFuseOnExec()
	return server, nil
}

// closeFuseOnExec marks this process's /dev/fuse descriptors close-on-exec.
// go-fuse leaves the descriptor of a direct mount inheritable, and a child
// that kept it would keep the connection alive after this server died: a
// job could then hang in its own file system, unkillable.
func closeFuseOnExec() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			syscall.CloseOnExec(fd)
		}
	}
}

// setReadAhead sets the readahead window of the file system mounted at
// dir to kb KiB, through its backing device's sysfs entry.
func setReadAhead(dir string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(path, []byte(strconv.Itoa(kb)), 0)
}
