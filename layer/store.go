package layer

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/lazyroot/lazyroot/index"
)

// Store keeps what a node learns of images under a state root: layer
// indexes, image configs, unpacked layers, local layer files' digests,
// access profiles, and the registries' ping answers.
type Store struct {
	root string
}

// NewStore opens (creating if needed) the store under root.
func NewStore(root string) (*Store, error) {
	for _, d := range []string{"index", "layers"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("state root %s: %w", root, err)
		}
	}
	return &Store{root: root}, nil
}

// Provenance says who built a stored index.
type Provenance string

// Provenances of stored indexes. They are stored apart, so a node that
// trusts only its own indexes never mistakes a registry's for one.
const (
	// BuiltHere: built on this node from the verified blob or its TOC.
	BuiltHere Provenance = "built"
	// FetchedFromRegistry: taken from an index artifact in the registry.
	FetchedFromRegistry Provenance = "registry"
)

func (s *Store) indexPath(d v1.Hash, p Provenance) string {
	name := d.Algorithm + "-" + d.Hex
	if p == FetchedFromRegistry {
		name += ".registry"
	}
	return filepath.Join(s.root, "index", name+".idx")
}

// hasIndex reports whether an index of layer d with provenance p is stored
// (whether or not it will prove usable).
func (s *Store) hasIndex(d v1.Hash, p Provenance) bool {
	_, err := os.Stat(s.indexPath(d, p))
	return err == nil
}

// windowsPath is where the windows blob w of a gzip seek index is stored.
// Windows blobs are named by their digest, whoever built them: every
// window in one is checked against the index that names it.
func (s *Store) windowsPath(w *index.BlobRef) string {
	return filepath.Join(s.root, "index", strings.Replace(w.Digest, ":", "-", 1)+".windows")
}

// SaveWindows stores the windows blob of x, an index BuildGzip made, so
// that x can be saved and read later; nothing when x names none.
func (s *Store) SaveWindows(x *index.Index) error {
	w, data := x.Windows, x.BuiltWindows()
	if w == nil {
		return nil
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != w.Size || "sha256:"+hex.EncodeToString(sum[:]) != w.Digest {
		return fmt.Errorf("save windows of %s: %w: the index names other bytes than it holds", x.Layer, index.ErrMalformed)
	}
	return writeFileAtomic(s.windowsPath(w), func(bw *bufio.Writer) error {
		_, err := bw.Write(data)
		return err
	})
}

// windowsFile is a windows blob being written into the store, under a
// temporary name until its digest is known.
type windowsFile struct {
	st  *Store
	f   *os.File
	buf *bufio.Writer
}

// createWindows starts a windows blob in the store.
func (s *Store) createWindows() (*windowsFile, error) {
	f, err := os.CreateTemp(filepath.Join(s.root, "index"), ".tmp-windows-*")
	if err != nil {
		return nil, err
	}
	return &windowsFile{st: s, f: f, buf: bufio.NewWriterSize(f, 1<<20)}, nil
}

func (w *windowsFile) Write(p []byte) (int, error) { return w.buf.Write(p) }

// commit syncs the blob and names it w, which must say what was written.
func (w *windowsFile) commit(ref *index.BlobRef) (err error) {
	defer func() {
		if err != nil {
			w.abort()
		}
	}()
	if err := w.buf.Flush(); err != nil {
		return err
	}
	if fi, err := w.f.Stat(); err != nil {
		return err
	} else if fi.Size() != ref.Size {
		return fmt.Errorf("windows blob %s: %d bytes written, want %d", ref.Digest, fi.Size(), ref.Size)
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	if err := w.f.Close(); err != nil {
		return err
	}
	return os.Rename(w.f.Name(), w.st.windowsPath(ref))
}

// abort drops the blob.
func (w *windowsFile) abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

// maxStoredConfig bounds the image configs the store keeps: most are a
// few KiB.
const maxStoredConfig = 1 << 20

func (s *Store) configPath(d v1.Hash) string {
	return filepath.Join(s.root, "configs", d.Algorithm+"-"+d.Hex+".json")
}

// LoadConfig returns the stored image config desc names, if the store
// holds it and its bytes still match desc's size and sha256 digest.
func (s *Store) LoadConfig(desc v1.Descriptor) ([]byte, bool) {
	if desc.Digest.Algorithm != "sha256" || desc.Size <= 0 || desc.Size > maxStoredConfig {
		return nil, false
	}
	path := s.configPath(desc.Digest)
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() || fi.Size() != desc.Size {
		return nil, false
	}
	raw, err := os.ReadFile(path)
	if err != nil || int64(len(raw)) != desc.Size {
		return nil, false
	}
	if sum := sha256.Sum256(raw); hex.EncodeToString(sum[:]) != desc.Digest.Hex {
		return nil, false
	}
	return raw, true
}

// SaveConfig stores raw, the image config desc names, which the caller
// has verified: configs are named by their digest, so a warm mount of an
// image takes its config from here rather than from the registry. Large
// configs are not kept.
func (s *Store) SaveConfig(desc v1.Descriptor, raw []byte) error {
	if desc.Digest.Algorithm != "sha256" || int64(len(raw)) != desc.Size || desc.Size > maxStoredConfig {
		return nil
	}
	path := s.configPath(desc.Digest)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// Not synced: LoadConfig checks the digest, so a torn file is only
	// fetched again.
	return replaceFile(path, raw)
}

// replaceFile writes b to path through a temporary file in the same
// directory, renamed into place but not synced: for files whose readers
// tell a torn one and do without it.
func replaceFile(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

func (s *Store) unpackedPath(d v1.Hash) string {
	return filepath.Join(s.root, "layers", d.Algorithm+"-"+d.Hex+".tar")
}

// LoadIndex returns the stored index of layer d with provenance p. It fails
// with fs.ErrNotExist when there is none, and with another error when the
// stored one cannot be trusted (damaged, another version, another layer).
func (s *Store) LoadIndex(d v1.Hash, p Provenance) (*index.Index, error) {
	f, err := os.Open(s.indexPath(d, p))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	x, err := index.Decode(bufio.NewReader(f))
	if err != nil {
		return nil, fmt.Errorf("stored index %s: %w", f.Name(), err)
	}
	if x.Layer != d.String() {
		return nil, fmt.Errorf("stored index %s: %w: it indexes %s", f.Name(), index.ErrMalformed, x.Layer)
	}
	return x, nil
}

// SaveIndex stores x under its layer digest with provenance p.
func (s *Store) SaveIndex(x *index.Index, p Provenance) error {
	d, err := v1.NewHash(x.Layer)
	if err != nil {
		return fmt.Errorf("save index: layer %q: %w", x.Layer, err)
	}
	return writeFileAtomic(s.indexPath(d, p), func(w *bufio.Writer) error { return x.Encode(w) })
}

// saveEncodedIndex stores b, bytes Decode accepted as the index of layer
// d, under d with provenance p.
func (s *Store) saveEncodedIndex(d v1.Hash, p Provenance, b []byte) error {
	return writeFileAtomic(s.indexPath(d, p), func(w *bufio.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// writeFileAtomic writes path through a temporary file in the same
// directory, synced and renamed into place.
func writeFileAtomic(path string, write func(*bufio.Writer) error) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 1<<20)
	if err = write(w); err != nil {
		return err
	}
	if err = w.Flush(); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
