package fs

import (
	"fmt"
	"log"
	"os"
	"strconv"
	"syscall"
	"time"

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
}

// Mount serves root at dir, read-only, and returns once the kernel has the
// mount. Unmount with the returned server's Unmount, or umount(2).
func Mount(dir string, root *Root, o Options) (*fuse.Server, error) {
	timeout := cacheTimeout
	suid := "nosuid"
	if o.AllowSetuid {
		suid = "suid"
	}
	mo := fuse.MountOptions{
		FsName: o.FsName,
		Name:   "lazyroot",
		// The kernel checks permissions from the modes we report, so
		// other users of the image see what its owners allowed them.
		Options:              []string{"default_permissions", "ro", suid, "nodev"},
		AllowOther:           os.Geteuid() == 0,
		DirectMount:          true,
		DirectMountFlags:     syscall.MS_RDONLY | syscall.MS_NODEV,
		MaxReadAhead:         1 << 20,
		MaxBackground:        64,
		Debug:                o.Debug,
		Logger:               o.Logger,
		EnableSymlinkCaching: true,
	}
	server, err := fusefs.Mount(dir, root, &fusefs.Options{
		MountOptions:    mo,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		Logger:          o.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("fuse mount at %s: %w", dir, err)
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
