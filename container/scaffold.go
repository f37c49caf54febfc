package container

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Scaffold is what SetupRoot adds to a kept overlay upper (mount points for
// /proc, /dev, /sys, the /etc files and binds): taken out again after the
// job, so the upper holds the job's changes alone and a commit of it does
// not carry them. Note it before SetupRoot; Remove it once the overlay is
// unmounted. A nil Scaffold removes nothing.
type Scaffold struct {
	diff  string
	fresh []string        // relative paths the upper did not have, deepest last
	lower map[string]bool // which of them the image has
}

// NoteScaffold records which of the paths setup may create are not yet
// in the upper at diff, and which the image (mounted at lower) has.
func NoteScaffold(diff, lower string, binds []Bind) *Scaffold {
	paths := []string{"proc", "dev", "sys", "etc", "etc/resolv.conf", "etc/hosts"}
	for _, b := range binds {
		rel := strings.TrimPrefix(path.Clean("/"+b.Target), "/")
		var parts []string
		for _, part := range strings.Split(rel, "/") {
			parts = append(parts, part)
			paths = append(paths, strings.Join(parts, "/"))
		}
	}
	sc := &Scaffold{diff: diff, lower: map[string]bool{}}
	for _, p := range paths {
		if _, err := statNoFollow(diff, p); errors.Is(err, unix.ENOENT) {
			sc.fresh = append(sc.fresh, p)
			_, err := statNoFollow(lower, p)
			sc.lower[p] = err == nil
		}
	}
	return sc
}

// Remove deletes the fresh paths that are still empty directories or
// empty files, deepest first; whatever the job put there stays. No
// symlink is followed on the way, so one the job left in the upper
// cannot turn a removal to the node's files.
func (sc *Scaffold) Remove() {
	if sc == nil {
		return
	}
	for i := len(sc.fresh) - 1; i >= 0; i-- {
		rel := sc.fresh[i]
		parent, name, err := openParentNoFollow(sc.diff, rel)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				if st.Size == 0 {
					unix.Unlinkat(parent, name, 0)
				}
			case unix.S_IFDIR:
				// An empty opaque directory over one of the image's was
				// emptied by the job; only the mount points setup itself
				// replaced go regardless.
				_, err := unix.Lgetxattr(fmt.Sprintf("/proc/self/fd/%d/%s", parent, name), "trusted.overlay.opaque", nil)
				if err != nil || !sc.lower[rel] || slices.Contains([]string{"proc", "dev", "sys"}, rel) {
					unix.Unlinkat(parent, name, unix.AT_REMOVEDIR) // fails, harmlessly, if not empty
				}
			}
		}
		unix.Close(parent)
	}
}

// openParentNoFollow opens the directory holding rel inside dir, following
// no symlink, and returns it with rel's last name.
func openParentNoFollow(dir, rel string) (int, string, error) {
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", err
	}
	defer unix.Close(dfd)
	for {
		fd, err := unix.Openat2(dfd, path.Dir(rel), &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_SYMLINKS,
		})
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		return fd, path.Base(rel), err
	}
}

// statNoFollow stats rel inside dir without following any symlink.
func statNoFollow(dir, rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	parent, name, err := openParentNoFollow(dir, rel)
	if err != nil {
		return st, err
	}
	defer unix.Close(parent)
	err = unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}
