package bench

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DiffStats says what a layer made by Diff holds.
type DiffStats struct {
	Entries   int   // headers written, whiteouts included
	Whiteouts int   // .wh. entries
	Bytes     int64 // file content bytes
}

// Diff writes to w a layer tar that, extracted over the tree at lower with
// OCI whiteout rules, gives the tree at upper. lower may be "" for a base
// layer (everything in upper). A path is written when it is new, when its
// type, mode, owner, xattrs or link target changed, or, for a regular
// file, its size or mtime; a path of lower missing from upper becomes a
// ".wh." entry (one for a removed directory, not one per file in it).
// Hardlinked files are written once and linked after.
func Diff(w io.Writer, lower, upper string) (DiffStats, error) {
	var st DiffStats
	tw := tar.NewWriter(w)
	// Whiteouts first: a lower path missing from upper whose parent is
	// still a directory in upper.
	if lower != "" {
		err := filepath.WalkDir(lower, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(lower, p)
			if err != nil || rel == "." {
				return err
			}
			ufi, uerr := os.Lstat(filepath.Join(upper, rel))
			if uerr == nil {
				if d.IsDir() && !ufi.IsDir() {
					return fs.SkipDir // replaced by a file: its entry covers it
				}
				return nil
			}
			if !errors.Is(uerr, fs.ErrNotExist) && !errors.Is(uerr, syscall.ENOTDIR) {
				return uerr
			}
			parent, perr := os.Lstat(filepath.Join(upper, filepath.Dir(rel)))
			if perr == nil && parent.IsDir() {
				name := path.Join(filepath.ToSlash(filepath.Dir(rel)), ".wh."+d.Name())
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Format: tar.FormatPAX}); err != nil {
					return err
				}
				st.Entries++
				st.Whiteouts++
			}
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		})
		if err != nil {
			return st, fmt.Errorf("diff %s: %w", lower, err)
		}
	}
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(upper, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		xattrs, err := readXattrs(p)
		if err != nil {
			return err
		}
		if lower != "" {
			same, err := sameEntry(filepath.Join(lower, rel), p, fi, xattrs)
			if err != nil {
				return err
			}
			if same {
				return nil
			}
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if len(xattrs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range xattrs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && sys.Nlink > 1 {
			key := [2]uint64{sys.Dev, sys.Ino}
			if first, seen := links[key]; seen {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[key] = hdr.Name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		st.Entries++
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			n, err := io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			st.Bytes += n
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("diff %s: %w", upper, err)
	}
	return st, tw.Close()
}

// sameEntry says whether the lower path is the same entry as upper's fi.
func sameEntry(lowerPath, upperPath string, ufi fs.FileInfo, uxattrs map[string]string) (bool, error) {
	lfi, err := os.Lstat(lowerPath)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if lfi.Mode() != ufi.Mode() {
		return false, nil
	}
	ls, lok := lfi.Sys().(*syscall.Stat_t)
	us, uok := ufi.Sys().(*syscall.Stat_t)
	if !lok || !uok || ls.Uid != us.Uid || ls.Gid != us.Gid || ls.Rdev != us.Rdev {
		return false, nil
	}
	switch {
	case ufi.Mode().IsRegular(), ufi.IsDir():
		if lfi.Size() != ufi.Size() && !ufi.IsDir() {
			return false, nil
		}
		if !lfi.ModTime().Equal(ufi.ModTime()) {
			return false, nil
		}
	case ufi.Mode()&fs.ModeSymlink != 0:
		lt, err1 := os.Readlink(lowerPath)
		ut, err2 := os.Readlink(upperPath)
		if err1 != nil || err2 != nil || lt != ut {
			return false, nil
		}
	}
	lx, err := readXattrs(lowerPath)
	if err != nil {
		return false, err
	}
	if len(lx) != len(uxattrs) {
		return false, nil
	}
	for k, v := range lx {
		if uxattrs[k] != v {
			return false, nil
		}
	}
	return true, nil
}

// readXattrs returns the xattrs of p (not following a symlink), sorted
// names to values; file systems without xattrs give none.
func readXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.ERANGE) {
			return nil, nil
		}
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	if n == 0 {
		return nil, nil
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	out := map[string]string{}
	val := make([]byte, 64<<10)
	for _, name := range names {
		m, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			continue
		}
		out[name] = string(val[:m])
	}
	return out, nil
}
