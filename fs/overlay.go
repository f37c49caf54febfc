package fs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Upper is a directory that holds the writable layer of an overlay mount:
// its changes in Diff and overlayfs's scratch space in Work, both on one
// file system as overlayfs requires. While open it is locked, so two mounts
// never share one upper.
type Upper struct {
	// Dir is the directory the upper lives in.
	Dir string
	// Diff is the overlay upperdir: the files the job changed.
	Diff string
	// Work is the overlay workdir.
	Work string
	lock *os.File
	// mark is Diff's state when Mark was called; nil before.
	mark *unix.Stat_t
}

// upperStamp is what an upper records about the image it was made over.
type upperStamp struct {
	Image  string `json:"image"`
	Digest string `json:"digest"`
}

// ErrUpperInUse reports an upper held by another mount.
var ErrUpperInUse = errors.New("in use by another mount")

// OpenUpper creates or reopens the upper in dir for the image named image
// with manifest digest digest. Reopening continues where the last mount
// left off; an upper made over a different image is refused, since its
// whiteouts and copies would land on the wrong tree. An empty digest (a
// stack of local layer files) matches only an upper made with the same
// image name.
func OpenUpper(dir, image, digest string) (*Upper, error) {
	u := &Upper{Dir: dir, Diff: filepath.Join(dir, "diff"), Work: filepath.Join(dir, "work")}
	for _, d := range []string{dir, u.Diff, u.Work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("upper %s: %w", dir, err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("upper %s: %w", dir, err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("upper %s: %w", dir, ErrUpperInUse)
		}
		return nil, fmt.Errorf("upper %s: lock: %w", dir, err)
	}
	u.lock = lock
	want := upperStamp{Image: image, Digest: digest}
	stampPath := filepath.Join(dir, "image.json")
	b, err := os.ReadFile(stampPath)
	switch {
	case err == nil:
		var have upperStamp
		if err := json.Unmarshal(b, &have); err != nil {
			u.Close()
			return nil, fmt.Errorf("upper %s: %s: %w", dir, stampPath, err)
		}
		if !sameImage(have, want) {
			u.Close()
			return nil, fmt.Errorf("upper %s was made over %s (%s), not %s (%s): use another --upper", dir, have.Image, have.Digest, image, digest)
		}
	case errors.Is(err, os.ErrNotExist):
		b, _ := json.Marshal(want)
		if err := writeFileAtomic(stampPath, append(b, '\n')); err != nil {
			u.Close()
			return nil, fmt.Errorf("upper %s: %w", dir, err)
		}
	default:
		u.Close()
		return nil, fmt.Errorf("upper %s: %w", dir, err)
	}
	return u, nil
}

func sameImage(have, want upperStamp) bool {
	if have.Digest != "" || want.Digest != "" {
		return have.Digest == want.Digest
	}
	return have.Image == want.Image
}

// Close releases the upper's lock; its files stay.
func (u *Upper) Close() error {
	if u.lock == nil {
		return nil
	}
	err := u.lock.Close()
	u.lock = nil
	return err
}

// Remove deletes the upper and everything in it.
func (u *Upper) Remove() error {
	u.Close()
	return os.RemoveAll(u.Dir)
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// OverlaySource is the source name of overlays MountOverlay makes, as
// /proc/self/mountinfo shows it.
const OverlaySource = "lazyroot"

// OverlayOptions configure MountOverlay.
type OverlayOptions struct {
	// AllowSetuid honours setuid and setgid bits; see Options.
	AllowSetuid bool
	// AllowDevices lets device nodes in the tree be opened.
	AllowDevices bool
	// MetaTree, if set, is a metadata tree of the lower (WriteMetaTree):
	// it is stacked above the lower, which then serves file data only
	// (an overlayfs data-only layer). Kernels before 6.5 refuse it.
	MetaTree string
}

// MountOverlay mounts kernel overlayfs at dir: lower read-only beneath the
// upper u (and o.MetaTree above lower, if set). Renaming a lower
// directory works (redirect_dir), and copy-up copies whole files, so the
// upper alone holds every changed byte.
func MountOverlay(dir, lower string, u *Upper, o OverlayOptions) error {
	for _, p := range []string{lower, u.Diff, u.Work, o.MetaTree} {
		if strings.ContainsAny(p, ",:") {
			return fmt.Errorf("overlay at %s: path %q has a ',' or ':', which overlayfs options cannot hold", dir, p)
		}
	}
	lowers := lower
	if o.MetaTree != "" {
		lowers = o.MetaTree + "::" + lower
	}
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,metacopy=off,index=off", lowers, u.Diff, u.Work)
	var flags uintptr
	if !o.AllowSetuid {
		flags |= syscall.MS_NOSUID
	}
	if !o.AllowDevices {
		flags |= syscall.MS_NODEV
	}
	if err := syscall.Mount(OverlaySource, dir, "overlay", flags, data); err != nil {
		return fmt.Errorf("overlay mount at %s: %w", dir, err)
	}
	return nil
}

// Mark notes the state of u's diff directory, for Untouched: call it once
// the overlay is mounted, before any job runs in it.
func (u *Upper) Mark() error {
	var st unix.Stat_t
	if err := unix.Lstat(u.Diff, &st); err != nil {
		return fmt.Errorf("upper %s: %w", u.Dir, err)
	}
	u.mark = &st
	return nil
}

// Untouched reports whether nothing was written to u since Mark: its diff
// directory holds no entry, and its own inode is as it was (any entry
// made or removed in it, and any change to the mount's root directory,
// changes its ctime). An overlay over an untouched upper is as good as a
// new one. It is false without a Mark.
func (u *Upper) Untouched() bool {
	if u.mark == nil {
		return false
	}
	var st unix.Stat_t
	if err := unix.Lstat(u.Diff, &st); err != nil || st.Ctim != u.mark.Ctim || st.Mtim != u.mark.Mtim ||
		st.Ino != u.mark.Ino || st.Mode != u.mark.Mode || st.Uid != u.mark.Uid || st.Gid != u.mark.Gid {
		return false
	}
	f, err := os.Open(u.Diff)
	if err != nil {
		return false
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	return len(names) == 0 && errors.Is(err, io.EOF)
}

// BindOverlay mounts at to the overlay mounted at from, as a bind mount of
// it, with the flags MountOverlay gives: the two show one overlay, with
// the kernel's dentries and inodes that either has looked up. Unmounting
// from then leaves the overlay at to alone.
func BindOverlay(from, to string, o OverlayOptions) error {
	if err := syscall.Mount(from, to, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind overlay %s at %s: %w", from, to, err)
	}
	flags := uintptr(syscall.MS_REMOUNT | syscall.MS_BIND)
	if !o.AllowSetuid {
		flags |= syscall.MS_NOSUID
	}
	if !o.AllowDevices {
		flags |= syscall.MS_NODEV
	}
	if err := syscall.Mount("", to, "", flags, ""); err != nil {
		syscall.Unmount(to, syscall.MNT_DETACH)
		return fmt.Errorf("bind overlay %s at %s: flags: %w", from, to, err)
	}
	return nil
}

// CheckMetaTrees reports whether this kernel stacks metadata trees (see
// OverlayOptions.MetaTree): it mounts a one-file overlay in a directory
// it makes under dir, reads the file through a metacopy redirect, and
// removes it all. Kernels before 6.16 refuse a data-only layer without
// metacopy=on, which MountOverlay leaves off.
func CheckMetaTrees(dir string) (err error) {
	probe, err := os.MkdirTemp(dir, "probe-")
	if err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	defer os.RemoveAll(probe)
	meta, data, mnt := filepath.Join(probe, "meta"), filepath.Join(probe, "data"), filepath.Join(probe, "mnt")
	for _, d := range []string{meta, data, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("metadata tree probe: %w", err)
		}
	}
	const content = "stacked\n"
	if err := os.WriteFile(filepath.Join(data, "f"), []byte(content), 0o600); err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	f := filepath.Join(meta, "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	if err := os.Truncate(f, int64(len(content))); err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	if err := unix.Setxattr(f, ovlMetacopy, nil, 0); err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	if err := unix.Setxattr(f, ovlRedirect, []byte("/f"), 0); err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	u, err := OpenUpper(filepath.Join(probe, "upper"), "probe", "")
	if err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	defer u.Close()
	if err := MountOverlay(mnt, data, u, OverlayOptions{MetaTree: meta}); err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	defer syscall.Unmount(mnt, syscall.MNT_DETACH)
	got, err := os.ReadFile(filepath.Join(mnt, "f"))
	if err != nil {
		return fmt.Errorf("metadata tree probe: %w", err)
	}
	if string(got) != content {
		return fmt.Errorf("metadata tree probe: the overlay read %q, not the data layer's %q", got, content)
	}
	return nil
}
