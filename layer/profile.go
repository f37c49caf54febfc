package layer

// Access profiles: which files a run of an image reads at start-up, in the
// order it first reads them. A Recorder notes them through a TrackedReader,
// the Store keeps them by image digest (profiles/), PushProfile and
// FindProfile share them through the registry, and a Prefetch replays them.
//
// A profile is only a hint: a wrong or forged one costs bandwidth, never
// correctness, since every byte it makes a Prefetch fetch is verified like
// any other.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/index"
)

// ProfileVersion is the version of the profile encoding.
const ProfileVersion = 1

// MaxProfileFiles bounds the files of one profile, recorded or decoded.
const MaxProfileFiles = 100000

// Recorder defaults.
const (
	// DefaultProfileFiles and DefaultProfileWindow bound what a Recorder
	// notes: the first files read, for the first while.
	DefaultProfileFiles  = 10000
	DefaultProfileWindow = 60 * time.Second
)

// Profile is an image's access profile.
type Profile struct {
	Version int `json:"version"`
	// Image is the digest of the image manifest.
	Image string `json:"image"`
	// Created is when the recording ended.
	Created time.Time `json:"created"`
	// Files are the files read, in the order of their first read.
	Files []ProfileFile `json:"files"`
}

// ProfileFile names a file by the layer that holds its bytes and its path
// in that layer (index.Entry.Name).
type ProfileFile struct {
	Layer string `json:"layer"`
	Path  string `json:"path"`
}

// Validate checks a profile's shape.
func (p *Profile) Validate() error {
	if p.Version != ProfileVersion {
		return fmt.Errorf("profile: version %d, want %d", p.Version, ProfileVersion)
	}
	if _, err := v1.NewHash(p.Image); err != nil {
		return fmt.Errorf("profile: image %q: %w", p.Image, err)
	}
	if len(p.Files) > MaxProfileFiles {
		return fmt.Errorf("profile of %s: %d files, at most %d", p.Image, len(p.Files), MaxProfileFiles)
	}
	for _, f := range p.Files {
		if _, err := v1.NewHash(f.Layer); err != nil {
			return fmt.Errorf("profile of %s: layer %q: %w", p.Image, f.Layer, err)
		}
		if clean, err := index.CleanName(f.Path); err != nil || clean != f.Path || clean == "" {
			return fmt.Errorf("profile of %s: path %q: %w", p.Image, f.Path, index.ErrMalformed)
		}
	}
	return nil
}

// Encode writes p as JSON.
func (p *Profile) Encode(w io.Writer) error { return json.NewEncoder(w).Encode(p) }

// DecodeProfile reads and validates a profile Encode wrote.
func DecodeProfile(r io.Reader) (*Profile, error) {
	p := new(Profile)
	if err := json.NewDecoder(io.LimitReader(r, MaxProfileBlobSize)).Decode(p); err != nil {
		return nil, fmt.Errorf("decode profile: %w: %w", index.ErrMalformed, err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

func (s *Store) profilePath(image v1.Hash, p Provenance) string {
	name := image.Algorithm + "-" + image.Hex
	if p == FetchedFromRegistry {
		name += ".registry"
	}
	return filepath.Join(s.root, "profiles", name+".json")
}

// SaveProfile stores p under its image digest with provenance prov,
// replacing the one stored before.
func (s *Store) SaveProfile(p *Profile, prov Provenance) error {
	d, err := v1.NewHash(p.Image)
	if err != nil {
		return fmt.Errorf("save profile: image %q: %w", p.Image, err)
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	path := s.profilePath(d, prov)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	return writeFileAtomic(path, func(w *bufio.Writer) error { return p.Encode(w) })
}

// LoadProfile returns the stored profile of image with provenance prov. It
// fails with fs.ErrNotExist when there is none.
func (s *Store) LoadProfile(image v1.Hash, prov Provenance) (*Profile, error) {
	b, err := os.ReadFile(s.profilePath(image, prov))
	if err != nil {
		return nil, err
	}
	p, err := DecodeProfile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("stored profile of %s: %w", image, err)
	}
	if p.Image != image.String() {
		return nil, fmt.Errorf("stored profile of %s: %w: it is of %s", image, index.ErrMalformed, p.Image)
	}
	return p, nil
}

// RecorderOptions bound a Recorder; zero values mean the defaults.
type RecorderOptions struct {
	MaxFiles int
	Window   time.Duration
}

// Recorder notes the first read of each file of a Stack, in order, up to
// MaxFiles files or for Window after it starts, whichever ends first.
type Recorder struct {
	s        *Stack
	maxFiles int
	timer    *time.Timer
	full     chan struct{} // closed when recording has ended
	stopped  atomic.Bool   // set when recording has ended

	mu      sync.Mutex
	seen    map[*index.Node]bool // protected by mu
	files   []ProfileFile        // protected by mu
	endOnce sync.Once
}

// NewRecorder starts recording s's reads (see TrackedReader).
func NewRecorder(s *Stack, opts RecorderOptions) *Recorder {
	if opts.MaxFiles <= 0 || opts.MaxFiles > MaxProfileFiles {
		opts.MaxFiles = min(DefaultProfileFiles, MaxProfileFiles)
	}
	if opts.Window <= 0 {
		opts.Window = DefaultProfileWindow
	}
	r := &Recorder{s: s, maxFiles: opts.MaxFiles, full: make(chan struct{}), seen: map[*index.Node]bool{}}
	r.timer = time.AfterFunc(opts.Window, r.Stop)
	return r
}

// note records n if it is the first read of n.
func (r *Recorder) note(n *index.Node) {
	if r.stopped.Load() || n.Layer < 0 || n.Layer >= len(r.s.layers) {
		return
	}
	r.mu.Lock()
	if r.seen[n] || r.stopped.Load() {
		r.mu.Unlock()
		return
	}
	r.seen[n] = true
	r.files = append(r.files, ProfileFile{Layer: r.s.layers[n.Layer].Layer.Descriptor.Digest.String(), Path: n.Name})
	full := len(r.files) >= r.maxFiles
	r.mu.Unlock()
	if full {
		r.Stop()
	}
}

// Stop ends recording; later reads are not noted. It is idempotent.
func (r *Recorder) Stop() {
	r.endOnce.Do(func() {
		r.stopped.Store(true)
		r.timer.Stop()
		close(r.full)
	})
}

// Ended is closed when recording has ended: Stop, or a bound reached.
func (r *Recorder) Ended() <-chan struct{} { return r.full }

// Len returns the files recorded so far.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.files)
}

// Profile returns what was recorded as a profile of img, or nil when no
// file was read or img has no digest.
func (r *Recorder) Profile(img *Image) *Profile {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.files) == 0 || img.Digest.Hex == "" {
		return nil
	}
	return &Profile{Version: ProfileVersion, Image: img.Digest.String(), Created: time.Now().UTC(), Files: append([]ProfileFile(nil), r.files...)}
}

// TrackedReader reads a Stack's files on demand (it is what the FUSE tree
// reads through): it counts the reads in flight in an Activity, for
// prefetch to yield to, and lets a Recorder note them.
type TrackedReader struct {
	s   *Stack
	act *Activity
	rec *Recorder // nil when not recording
	// elf, if set, follows the ELF files jobs start reading.
	elf atomic.Pointer[Prefetch]
}

// FollowELF has p fetch, when a job starts reading a program or an ELF
// file, the rest of it and the files the loader will open for it (see
// Prefetch.FetchProgram and Prefetch.FollowELF).
func (t *TrackedReader) FollowELF(p *Prefetch) { t.elf.Store(p) }

// NewTrackedReader wraps s; rec may be nil.
func NewTrackedReader(s *Stack, rec *Recorder) *TrackedReader {
	return &TrackedReader{s: s, act: new(Activity), rec: rec}
}

// Activity returns the counter of the reads in flight.
func (t *TrackedReader) Activity() *Activity { return t.act }

// OpenBacking opens a whole copy of n's content, like Stack.OpenBacking.
func (t *TrackedReader) OpenBacking(n *index.Node) *os.File { return t.s.OpenBacking(n) }

// ReadWhole copies n's content for passthrough like Stack.ReadWhole, but
// the copy yields to the on-demand reads made through t: it reads its next
// piece only once none has been in flight for a moment.
func (t *TrackedReader) ReadWhole(n *index.Node) { t.s.readWhole(n, t.act) }

// ReadAt reads like Stack.ReadAt.
func (t *TrackedReader) ReadAt(ctx context.Context, n *index.Node, p []byte, off int64) (int, error) {
	t.act.Begin()
	defer t.act.End()
	if t.rec != nil {
		t.rec.note(n)
	}
	pf := t.elf.Load()
	if off == 0 && pf != nil {
		pf.FetchProgram(n, int64(len(p)))
	}
	got, err := t.s.ReadAt(ctx, n, p, off)
	if off == 0 && got > 0 && pf != nil {
		pf.FollowELF(n, p[:got])
	}
	return got, err
}
