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
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Extract applies one layer tar to dir with OCI overlay rules: ".wh.NAME"
// removes NAME, ".wh..wh..opq" empties its directory of what lower layers
// put there, an entry replaces a path of another type, and a directory over
// a directory keeps its children. Owners, modes, mtimes, xattrs, hardlinks,
// symlinks and device nodes are made as the tar says. This is what a
// pull-based runtime does with each layer, base first. Inputs are trusted.
func Extract(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	written := map[string]bool{} // paths this layer made, kept by opaque markers
	type dirTime struct {
		p string
		t time.Time
	}
	var dirTimes []dirTime
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("extract: %w", err)
		}
		name := path.Clean("/" + hdr.Name)[1:]
		if name == "" {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		parent, base := path.Split(name)
		switch {
		case base == ".wh..wh..opq":
			pd := filepath.Join(dir, filepath.FromSlash(parent))
			ents, err := os.ReadDir(pd)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			for _, e := range ents {
				if !written[path.Join(parent, e.Name())] {
					if err := os.RemoveAll(filepath.Join(pd, e.Name())); err != nil {
						return err
					}
				}
			}
			continue
		case strings.HasPrefix(base, ".wh."):
			if err := os.RemoveAll(filepath.Join(dir, filepath.FromSlash(parent), base[len(".wh."):])); err != nil {
				return err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if fi, err := os.Lstat(target); err == nil && !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(target); err != nil {
				return err
			}
		}
		mode := uint32(hdr.Mode & 0o7777)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			dirTimes = append(dirTimes, dirTime{target, hdr.ModTime})
		case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // old tars
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeLink:
			src := filepath.Join(dir, filepath.FromSlash(path.Clean("/" + hdr.Linkname)[1:]))
			if err := os.Link(src, target); err != nil {
				return err
			}
			written[name] = true
			continue // the link shares its source's metadata
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
			if err := unix.Mknod(target, kind|mode, int(dev)); err != nil {
				return fmt.Errorf("mknod %s: %w", name, err)
			}
		default:
			continue
		}
		written[name] = true
		if os.Geteuid() == 0 {
			if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
				return err
			}
		}
		for k, v := range hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if err := unix.Lsetxattr(target, x, []byte(v), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
					return fmt.Errorf("setxattr %s %s: %w", name, x, err)
				}
			}
		}
		if hdr.Typeflag != tar.TypeSymlink {
			// After chown, which clears setuid bits.
			if err := unix.Fchmodat(unix.AT_FDCWD, target, mode, 0); err != nil {
				return err
			}
		}
		if hdr.Typeflag != tar.TypeDir {
			ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return err
			}
		}
	}
	for i := len(dirTimes) - 1; i >= 0; i-- {
		d := dirTimes[i]
		ts := []unix.Timespec{unix.NsecToTimespec(d.t.UnixNano()), unix.NsecToTimespec(d.t.UnixNano())}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, d.p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
