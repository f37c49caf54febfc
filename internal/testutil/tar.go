package testutil

import (
	"archive/tar"
	"bytes"
	"testing"
	"time"
)

// DefaultModTime is the modification time of entries that leave ModTime zero.
var DefaultModTime = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// Entry is one tar entry of a test layer.
type Entry struct {
	Name string
	// Type is a tar type flag: tar.TypeReg (the default when 0), TypeDir,
	// TypeSymlink, TypeLink, TypeChar, TypeBlock or TypeFifo.
	Type byte
	// Mode holds the permission bits, including setuid 04000, setgid 02000
	// and sticky 01000. Zero means the default: 0755 for directories, 0777
	// for symlinks, 0644 for everything else.
	Mode     int64
	UID, GID int
	// ModTime defaults to DefaultModTime.
	ModTime time.Time
	// Linkname is the target of a symlink or hardlink.
	Linkname string
	// Content is the body of a regular file; ignored for other types.
	Content            []byte
	Devmajor, Devminor int64
	// Xattrs are written as PAX records "SCHILY.xattr."+key.
	Xattrs map[string]string
}

// Tar returns an uncompressed tar stream (PAX format) of entries in the
// given order, names exactly as given.
func Tar(t testing.TB, entries []Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.header()
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %q: %v", e.Name, err)
		}
		if hdr.Size > 0 {
			if _, err := tw.Write(e.Content); err != nil {
				t.Fatalf("tar body %q: %v", e.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("tar close: %v", err)
	}
	return buf.Bytes()
}

func (e Entry) header() *tar.Header {
	typ := e.Type
	if typ == 0 {
		typ = tar.TypeReg
	}
	mode := e.Mode
	if mode == 0 {
		switch typ {
		case tar.TypeDir:
			mode = 0o755
		case tar.TypeSymlink:
			mode = 0o777
		default:
			mode = 0o644
		}
	}
	mtime := e.ModTime
	if mtime.IsZero() {
		mtime = DefaultModTime
	}
	hdr := &tar.Header{
		Typeflag: typ,
		Name:     e.Name,
		Linkname: e.Linkname,
		Mode:     mode,
		Uid:      e.UID,
		Gid:      e.GID,
		ModTime:  mtime,
		Devmajor: e.Devmajor,
		Devminor: e.Devminor,
		Format:   tar.FormatPAX,
	}
	if typ == tar.TypeReg {
		hdr.Size = int64(len(e.Content))
	}
	if len(e.Xattrs) > 0 {
		hdr.PAXRecords = make(map[string]string, len(e.Xattrs))
		for k, v := range e.Xattrs {
			hdr.PAXRecords[xattrPAXPrefix+k] = v
		}
	}
	return hdr
}

// xattrPAXPrefix prefixes extended attributes in PAX records.
const xattrPAXPrefix = "SCHILY.xattr."
