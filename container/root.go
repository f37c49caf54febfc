package container

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Bind is a directory or file of the node made visible inside the root.
type Bind struct {
	// Source is the node's path.
	Source string
	// Target is the path inside the root.
	Target string
	// ReadOnly keeps the job from writing through the bind.
	ReadOnly bool
}

// ParseBind parses SRC:DST[:ro|rw].
func ParseBind(s string) (Bind, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Bind{}, fmt.Errorf("bind %q: want SRC:DST[:ro]", s)
	}
	b := Bind{Source: parts[0], Target: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			b.ReadOnly = true
		case "rw":
		default:
			return Bind{}, fmt.Errorf("bind %q: option %q: want ro or rw", s, parts[2])
		}
	}
	if !filepath.IsAbs(b.Target) {
		return Bind{}, fmt.Errorf("bind %q: %s is not an absolute path inside the root", s, b.Target)
	}
	abs, err := filepath.Abs(b.Source)
	if err != nil {
		return Bind{}, fmt.Errorf("bind %q: %w", s, err)
	}
	b.Source = abs
	return b, nil
}

// RootOptions say what SetupRoot puts in the root beyond the image.
type RootOptions struct {
	// Binds are mounted in order, after the standard mounts.
	Binds []Bind
	// StateDir holds the root's copies of the node's resolv.conf and
	// hosts; it must exist and outlive the job.
	StateDir string
	// Hostname is written to /etc/hostname, if set.
	Hostname string
}

// devices are the nodes of the node's /dev every job gets.
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// SetupRoot mounts what a job expects inside root: /proc, a tmpfs /dev
// with the usual devices, pts and shm, a read-only /sys, /etc/resolv.conf
// and /etc/hosts from the node, and o.Binds. It must run in a private
// mount namespace; on error, what it mounted is left to the namespace.
func SetupRoot(root string, o RootOptions) error {
	steps := []struct {
		what string
		do   func() error
	}{
		{"/proc", func() error {
			return mountIn(root, "/proc", dirTarget, "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		}},
		{"/dev", func() error { return setupDev(root) }},
		{"/sys", func() error { return setupSys(root) }},
		{"/etc", func() error { return setupEtc(root, o) }},
	}
	for _, s := range steps {
		// The standard mount points are directories of the root itself:
		// an image's symlink there is replaced, not followed.
		if s.what != "/etc" {
			if err := replaceSymlinkIn(root, s.what); err != nil {
				return fmt.Errorf("set up %s in %s: %w", s.what, root, err)
			}
		}
		if err := s.do(); err != nil {
			return fmt.Errorf("set up %s in %s: %w", s.what, root, err)
		}
	}
	for _, b := range o.Binds {
		if err := bindIn(root, b); err != nil {
			return fmt.Errorf("bind %s to %s: %w", b.Source, b.Target, err)
		}
	}
	return nil
}

func setupDev(root string) error {
	// nodev: a device node the job makes cannot be opened; the devices
	// bound below keep their own mounts' flags.
	if err := mountIn(root, "/dev", dirTarget, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_STRICTATIME, "mode=755,size=65536k"); err != nil {
		return err
	}
	for _, d := range devices {
		src := "/dev/" + d
		if _, err := os.Stat(src); err != nil {
			continue // not every node has a /dev/tty
		}
		if err := mountIn(root, "/dev/"+d, fileTarget, src, "", unix.MS_BIND, ""); err != nil {
			return err
		}
	}
	if err := mountIn(root, "/dev/pts", dirTarget, "devpts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	if err := mountIn(root, "/dev/shm", dirTarget, "shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=65536k"); err != nil {
		return err
	}
	links := [][2]string{
		{"/dev/ptmx", "pts/ptmx"}, {"/dev/fd", "/proc/self/fd"},
		{"/dev/stdin", "/proc/self/fd/0"}, {"/dev/stdout", "/proc/self/fd/1"}, {"/dev/stderr", "/proc/self/fd/2"},
	}
	dev, err := openIn(root, "/dev", true)
	if err != nil {
		return err
	}
	defer unix.Close(dev)
	for _, l := range links {
		if err := unix.Symlinkat(l[1], dev, filepath.Base(l[0])); err != nil {
			return fmt.Errorf("symlink %s: %w", l[0], err)
		}
	}
	return nil
}

func setupSys(root string) error {
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY)
	err := mountIn(root, "/sys", dirTarget, "sysfs", "sysfs", flags, "")
	if err == nil {
		return nil
	}
	// A new sysfs may be refused (outside the node's network namespace,
	// say): show the node's, read-only.
	if err := mountIn(root, "/sys", dirTarget, "/sys", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	return remountReadOnly(root, "/sys", unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
}

// setupEtc binds copies of the node's resolv.conf and hosts (and a
// hostname file) over the image's, as container runtimes do: the job sees
// the node's name service, and the image's files are left as they were.
func setupEtc(root string, o RootOptions) error {
	files := map[string][]byte{}
	for _, name := range []string{"resolv.conf", "hosts"} {
		b, err := os.ReadFile("/etc/" + name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		files[name] = b
	}
	if _, ok := files["hosts"]; !ok {
		files["hosts"] = []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	}
	if o.Hostname != "" {
		files["hostname"] = []byte(o.Hostname + "\n")
	}
	if o.StateDir == "" {
		return errors.New("no state directory for the root's /etc files")
	}
	for name, b := range files {
		copyPath := filepath.Join(o.StateDir, name)
		if err := os.WriteFile(copyPath, b, 0o644); err != nil {
			return err
		}
		etc, err := mkdirAllIn(root, "/etc")
		if err != nil {
			return err
		}
		unix.Close(etc)
		if err := replaceSymlinkIn(root, "/etc/"+name); err != nil {
			return err
		}
		if err := mountIn(root, "/etc/"+name, fileTarget, copyPath, "", unix.MS_BIND, ""); err != nil {
			return err
		}
	}
	return nil
}

// replaceSymlinkIn removes path inside root if it is a symlink, which a
// bind mount would otherwise follow (resolv.conf often is one).
func replaceSymlinkIn(root, path string) error {
	dir, err := openIn(root, filepath.Dir(path), true)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	err = unix.Fstatat(dir, filepath.Base(path), &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return unix.Unlinkat(dir, filepath.Base(path), 0)
	}
	return nil
}

func bindIn(root string, b Bind) error {
	fi, err := os.Stat(b.Source)
	if err != nil {
		return err
	}
	kind := fileTarget
	if fi.IsDir() {
		kind = dirTarget
	}
	if err := mountIn(root, b.Target, kind, b.Source, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return err
	}
	if b.ReadOnly {
		return remountReadOnly(root, b.Target, 0)
	}
	return nil
}

// remountReadOnly makes the mount at path inside root, and every mount
// beneath it (a recursive bind brings the node's submounts along), read-only
// with the extra MOUNT_ATTR_* flags.
func remountReadOnly(root, path string, flags uint64) error {
	fd, err := openIn(root, path, false)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | flags}
	err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr)
	if errors.Is(err, unix.ENOSYS) {
		// Before Linux 5.12: the top mount only.
		var ms uintptr = unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY
		for _, f := range [][2]uint64{{unix.MOUNT_ATTR_NOSUID, unix.MS_NOSUID}, {unix.MOUNT_ATTR_NODEV, unix.MS_NODEV}, {unix.MOUNT_ATTR_NOEXEC, unix.MS_NOEXEC}} {
			if flags&f[0] != 0 {
				ms |= uintptr(f[1])
			}
		}
		err = unix.Mount("", fdPath(fd), "", ms, "")
	}
	if err != nil {
		return fmt.Errorf("make %s read-only: %w", path, err)
	}
	return nil
}

// targetKind says what a mount point must be: a directory or a file.
type targetKind int

const (
	dirTarget targetKind = iota
	fileTarget
)

// mountIn mounts source (of type fstype; "" for a bind) at path inside
// root, creating the mount point as kind if it is missing.
func mountIn(root, path string, kind targetKind, source, fstype string, flags uintptr, data string) error {
	fd, err := makeIn(root, path, kind)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Mount(source, fdPath(fd), fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", source, path, err)
	}
	return nil
}

// makeIn opens path inside root as an O_PATH descriptor, first creating it
// (and its parents) as kind if missing.
func makeIn(root, path string, kind targetKind) (int, error) {
	if fd, err := openIn(root, path, false); err == nil {
		return fd, nil
	} else if !errors.Is(err, unix.ENOENT) {
		return -1, err
	}
	parent, err := mkdirAllIn(root, filepath.Dir(path))
	if err != nil {
		return -1, err
	}
	defer unix.Close(parent)
	name := filepath.Base(path)
	switch kind {
	case dirTarget:
		err = unix.Mkdirat(parent, name, 0o755)
	default:
		var fd int
		fd, err = unix.Openat(parent, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
		if err == nil {
			unix.Close(fd)
		}
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("create %s: %w", path, err)
	}
	return openIn(root, path, false)
}

// mkdirAllIn creates path and its parents inside root and returns the
// directory opened O_PATH.
func mkdirAllIn(root, path string) (int, error) {
	fd, err := openIn(root, "/", true)
	if err != nil {
		return -1, err
	}
	for _, part := range strings.Split(filepath.Clean("/"+path), "/") {
		if part == "" {
			continue
		}
		err := unix.Mkdirat(fd, part, 0o755)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return -1, fmt.Errorf("create %s: %w", path, err)
		}
		next, err := openat2(fd, part, true)
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", path, err)
		}
		fd = next
	}
	return fd, nil
}

// openIn opens path inside root, resolving every symlink as if root were
// /, so nothing in the image can lead outside it.
func openIn(root, path string, dir bool) (int, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rfd)
	rel := strings.TrimPrefix(filepath.Clean("/"+path), "/")
	if rel == "" {
		rel = "."
	}
	fd, err := openat2(rfd, rel, dir)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", path, err)
	}
	return fd, nil
}

func openat2(dirfd int, path string, dir bool) (int, error) {
	flags := uint64(unix.O_PATH | unix.O_CLOEXEC)
	if dir {
		flags |= unix.O_DIRECTORY
	}
	for {
		fd, err := unix.Openat2(dirfd, path, &unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		return fd, err
	}
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// ReadFileIn reads path inside root, resolving symlinks within root.
func ReadFileIn(root, path string) ([]byte, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", root, err)
	}
	defer unix.Close(rfd)
	rel := strings.TrimPrefix(filepath.Clean("/"+path), "/")
	// Non-blocking, and regular files only: a fifo in an image must not
	// hang the caller.
	fd, err := unix.Openat2(rfd, rel, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, &os.PathError{Op: "read", Path: path, Err: errors.New("not a regular file")}
	}
	return io.ReadAll(io.LimitReader(f, 16<<20))
}

// MkdirIn creates path and its parents inside root, as the job's working
// directory may need.
func MkdirIn(root, path string) error {
	fd, err := mkdirAllIn(root, path)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}
