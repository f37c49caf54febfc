package layer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// digestRecord remembers the sha256 of a byte range of a local file, for
// the file as it was: same device, inode, size and modification time.
type digestRecord struct {
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtimeNs"`
	Offset  int64  `json:"offset"`
	Length  int64  `json:"length"`
	Digest  string `json:"digest"`
}

// maxDigestRecord bounds the record file read.
const maxDigestRecord = 4 << 10

// fileIdentity is the record of fi (without the range and digest), false
// if fi carries no device and inode.
func fileIdentity(fi fs.FileInfo) (digestRecord, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return digestRecord{}, false
	}
	return digestRecord{Dev: uint64(st.Dev), Ino: st.Ino, Size: fi.Size(), MtimeNs: fi.ModTime().UnixNano()}, true
}

func (s *Store) digestPath(r digestRecord) string {
	return filepath.Join(s.root, "digests", fmt.Sprintf("%d-%d-%d-%d.json", r.Dev, r.Ino, r.Offset, r.Length))
}

// fileDigest returns the sha256 of the n bytes at off of f, whose stat is
// fi. It takes it from the record under the store's digests/ directory
// when that record matches f's device, inode, size and modification time
// (in nanoseconds); else it reads the bytes once and writes the record
// (when the file did not change meanwhile). A damaged or stale record is
// ignored and replaced. s may be nil: the bytes are then always read.
func (s *Store) fileDigest(ctx context.Context, f *os.File, fi fs.FileInfo, off, n int64) (v1.Hash, error) {
	id, ok := fileIdentity(fi)
	id.Offset, id.Length = off, n
	if s != nil && ok {
		if d, ok := s.loadDigest(id); ok {
			return d, nil
		}
	}
	d, err := hashSection(ctx, f, off, n)
	if err != nil {
		return v1.Hash{}, err
	}
	if s == nil || !ok {
		return d, nil
	}
	// Only a file that kept its identity while it was read is recorded.
	if fi2, err := f.Stat(); err != nil {
		return d, nil
	} else if id2, _ := fileIdentity(fi2); id2.Dev != id.Dev || id2.Ino != id.Ino || id2.Size != id.Size || id2.MtimeNs != id.MtimeNs {
		return d, nil
	}
	id.Digest = d.String()
	path := s.digestPath(id)
	// A record that cannot be written costs a hash next time, no more.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err == nil {
		_ = writeFileAtomic(path, func(w *bufio.Writer) error { return json.NewEncoder(w).Encode(id) })
	}
	return d, nil
}

// loadDigest returns the digest recorded for id, if a record matches it.
func (s *Store) loadDigest(id digestRecord) (v1.Hash, bool) {
	f, err := os.Open(s.digestPath(id))
	if err != nil {
		return v1.Hash{}, false
	}
	defer f.Close()
	p, err := readAllLimit(f, maxDigestRecord, "digest record")
	if err != nil {
		return v1.Hash{}, false
	}
	var r digestRecord
	if err := json.Unmarshal(p, &r); err != nil {
		return v1.Hash{}, false
	}
	d, err := v1.NewHash(r.Digest)
	if err != nil || d.Algorithm != "sha256" {
		return v1.Hash{}, false
	}
	r.Digest = ""
	if r != id {
		return v1.Hash{}, false
	}
	return d, true
}

// hashSection reads the n bytes at off of f and returns their sha256.
func hashSection(ctx context.Context, f *os.File, off, n int64) (v1.Hash, error) {
	h := sha256.New()
	r := &sectionStream{ctx: ctx, r: io.NewSectionReader(f, off, n), s: &fileSection{}}
	got, err := io.CopyBuffer(h, r, make([]byte, 1<<20))
	if err != nil {
		return v1.Hash{}, fmt.Errorf("hash: %w", err)
	}
	if got != n {
		return v1.Hash{}, fmt.Errorf("hash: read %d bytes, want %d: %w", got, n, io.ErrUnexpectedEOF)
	}
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}, nil
}
