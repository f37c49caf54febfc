//go:build linux

package testutil

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Walk reads the directory tree at dir (for example a FUSE mount) into the
// shape Oracle returns, with dir itself as "/". It lstats every name, reads
// symlink targets and all extended attributes, and hashes regular files by
// opening and reading them; it never executes or maps a file, and never
// opens anything but regular files. LinkGroup is "dev:ino" for
// non-directories whose link count is above one.
//
// A name that cannot be read is reported with t.Errorf and the walk goes on,
// so one broken file does not hide the rest.
func Walk(t testing.TB, dir string) map[string]Node {
	t.Helper()
	tree := map[string]Node{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return err
			}
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := "/"
		if rel != "." {
			name += filepath.ToSlash(rel)
		}
		n, err := walkNode(p, name)
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			if d.IsDir() && p != dir {
				return fs.SkipDir
			}
			return nil
		}
		tree[n.Path] = n
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return tree
}

func walkNode(p, name string) (Node, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return Node{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Node{}, fmt.Errorf("no stat_t")
	}
	n := Node{
		Path:    name,
		Mode:    st.Mode & 0o7777,
		UID:     int(st.Uid),
		GID:     int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, 0).UTC(),
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		n.Type = tar.TypeReg
		n.Size = st.Size
		if n.SHA256, err = hashFile(p); err != nil {
			return Node{}, err
		}
	case syscall.S_IFDIR:
		n.Type = tar.TypeDir
	case syscall.S_IFLNK:
		n.Type = tar.TypeSymlink
		if n.Linkname, err = os.Readlink(p); err != nil {
			return Node{}, err
		}
	case syscall.S_IFCHR:
		n.Type = tar.TypeChar
	case syscall.S_IFBLK:
		n.Type = tar.TypeBlock
	case syscall.S_IFIFO:
		n.Type = tar.TypeFifo
	}
	if n.Type == tar.TypeChar || n.Type == tar.TypeBlock {
		n.Devmajor = unix.Major(st.Rdev)
		n.Devminor = unix.Minor(st.Rdev)
	}
	if n.Type != tar.TypeDir && st.Nlink > 1 {
		n.LinkGroup = fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	}
	if n.Xattrs, err = readXattrs(p); err != nil {
		return Node{}, err
	}
	return n, nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// readXattrs returns every extended attribute of p (not following a
// symlink), or nil if there are none or the filesystem has no xattrs.
func readXattrs(p string) (map[string]string, error) {
	var buf []byte
	for {
		sz, err := unix.Llistxattr(p, nil)
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ENOSYS) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		if sz == 0 {
			return nil, nil
		}
		buf = make([]byte, sz)
		sz, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // the list grew between the two calls
		}
		if err != nil {
			return nil, fmt.Errorf("listxattr: %w", err)
		}
		buf = buf[:sz]
		break
	}
	out := map[string]string{}
	for _, key := range strings.Split(strings.TrimRight(string(buf), "\x00"), "\x00") {
		if key == "" {
			continue
		}
		v, err := getXattr(p, key)
		if errors.Is(err, unix.ENODATA) {
			continue // removed since it was listed
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", key, err)
		}
		out[key] = v
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func getXattr(p, key string) (string, error) {
	for {
		sz, err := unix.Lgetxattr(p, key, nil)
		if err != nil {
			return "", err
		}
		buf := make([]byte, sz)
		sz, err = unix.Lgetxattr(p, key, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:sz]), nil
	}
}
