package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/layer"
)

// session is a mounted image: the read-only tree, and the overlay over it
// unless the mount is read-only.
type session struct {
	m      *mounted
	server *fuse.Server
	// dir is the visible mount: the overlay, or the tree when read-only.
	dir string
	// lower is where the tree is mounted beneath the overlay ("" when
	// read-only).
	lower string
	upper *fs.Upper
	// tempUpper says the upper is removed when the session ends.
	tempUpper bool
	// done is closed when the tree's FUSE server has stopped.
	done   chan struct{}
	logger *log.Logger
	// profileOnce saves (and publishes) the recorded profile once: when
	// recording ends, or when the session closes.
	profileOnce    sync.Once
	publishProfile bool
}

// sessionOptions say how to mount a prepared image.
type sessionOptions struct {
	readOnly bool
	// work holds the lower mount point and a temporary upper.
	work string
	// upper is a named upper directory; "" makes a temporary one.
	upper          string
	allowSetuid    bool
	uidMap, gidMap fs.IDMap
	debug          bool
	// prefetch says what to fetch ahead, prefetchRate caps the whole-layer
	// phase (bytes a second, 0: none), prefetchWait bounds how long the
	// mount waits for the priority phase.
	prefetch       layer.PrefetchMode
	prefetchRate   int64
	prefetchWait   time.Duration
	recordProfile  bool
	publishProfile bool
	// passthrough lets the kernel read files the disk cache holds whole.
	passthrough bool
	// inodes serves the tree's files by inode number too, for the
	// redirects of a metadata tree (fs.Root.ServeInodes).
	inodes bool
}

// openSession mounts m at dir: the tree alone when read-only, else the
// tree under work and an overlay at dir.
func openSession(m *mounted, dir string, o sessionOptions, logger *log.Logger) (_ *session, err error) {
	s := &session{m: m, dir: dir, logger: logger, done: make(chan struct{})}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if o.recordProfile && m.img.Digest.Hex != "" {
		m.recorder = layer.NewRecorder(m.stack, layer.RecorderOptions{})
		s.publishProfile = o.publishProfile
	} else if o.recordProfile {
		logger.Printf("not recording a profile: %s has no digest to keep it under", m.img.Name())
	}
	// The tree reads through a TrackedReader: it notes the reads for the
	// recorder, and tells prefetch when on-demand reads are in flight.
	reader := layer.NewTrackedReader(m.stack, m.recorder)
	// Prefetch needs only the stack: it starts while the tree mounts.
	s.startPrefetch(o, reader)
	root := fs.NewRoot(m.tree, reader, logger)
	root.MapIDs(o.uidMap, o.gidMap)
	if o.inodes {
		root.ServeInodes()
	}
	// A recording must see every read, which passthrough would hide.
	if o.passthrough && m.recorder == nil {
		root.UseBacking(reader)
	}
	fopts := fs.Options{FsName: m.img.Name(), Logger: logger, Debug: o.debug, AllowSetuid: o.allowSetuid}
	treeDir := dir
	if !o.readOnly {
		if err := os.MkdirAll(o.work, 0o700); err != nil {
			return nil, fmt.Errorf("work directory: %w", err)
		}
		s.lower = filepath.Join(o.work, "lower")
		clearStaleMount(s.lower, logger)
		if err := os.MkdirAll(s.lower, 0o755); err != nil {
			return nil, fmt.Errorf("work directory: %w", err)
		}
		treeDir = s.lower
	}
	server, err := fs.Mount(treeDir, root, fopts)
	if err != nil {
		return nil, err
	}
	s.server = server
	go func() { s.server.Wait(); close(s.done) }()
	if o.readOnly {
		s.mounted(o)
		return s, nil
	}
	upperDir := o.upper
	if upperDir == "" {
		upperDir = filepath.Join(o.work, "upper")
		s.tempUpper = true
		// A temporary upper left by a server that died is stale.
		if err := os.RemoveAll(upperDir); err != nil {
			return nil, fmt.Errorf("remove stale upper: %w", err)
		}
	}
	if s.upper, err = fs.OpenUpper(upperDir, m.img.Name(), digestString(m)); err != nil {
		return nil, err
	}
	if err := fs.MountOverlay(dir, s.lower, s.upper, fs.OverlayOptions{AllowSetuid: o.allowSetuid}); err != nil {
		return nil, err
	}
	s.mounted(o)
	return s, nil
}

// startPrefetch starts prefetch in the background.
func (s *session) startPrefetch(o sessionOptions, reader *layer.TrackedReader) {
	m := s.m
	if o.prefetch != layer.PrefetchNone && o.prefetch != "" {
		m.prefetch = layer.StartPrefetch(context.Background(), m.stack, layer.PrefetchOptions{
			Mode: o.prefetch, Image: m.img, Store: m.store, Tree: m.tree, Rate: o.prefetchRate,
			Lookup: m.profileLookup, Activity: reader.Activity(), Logf: s.logger.Printf,
		})
		// A program a job starts brings its loader and libraries along.
		reader.FollowELF(m.prefetch)
	}
}

// mounted runs once the tree is mounted: it waits for prefetch's
// priority phase up to o.prefetchWait, and has the recorded profile saved
// once recording ends.
func (s *session) mounted(o sessionOptions) {
	if s.m.prefetch != nil && o.prefetchWait > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), o.prefetchWait)
		if err := s.m.prefetch.WaitPriority(ctx); err != nil {
			s.logger.Printf("mounting without waiting longer for prefetch (--prefetch-wait %v)", o.prefetchWait)
		}
		cancel()
	}
	if rec := s.m.recorder; rec != nil {
		go func() {
			select {
			case <-rec.Ended():
				s.saveProfile()
			case <-s.done:
			}
		}()
	}
}

// saveProfile stores the recorded profile under the state root, and pushes
// it with --publish-profile; once per session. Failures are logged only.
func (s *session) saveProfile() {
	rec := s.m.recorder
	if rec == nil {
		return
	}
	s.profileOnce.Do(func() {
		rec.Stop()
		p := rec.Profile(s.m.img)
		if p == nil {
			s.logger.Printf("no file was read: no profile recorded")
			return
		}
		if err := s.m.store.SaveProfile(p, layer.BuiltHere); err != nil {
			s.logger.Printf("saving the access profile: %v", err)
			return
		}
		s.logger.Printf("recorded an access profile of %d files for %s", len(p.Files), p.Image)
		if !s.publishProfile {
			return
		}
		if s.m.img.Local() {
			s.logger.Printf("not publishing the profile of local image %s", s.m.img.Name())
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if d, err := layer.PushProfile(ctx, s.m.img, p); err != nil {
			s.logger.Printf("publishing the access profile: %v", err)
		} else {
			s.logger.Printf("published the access profile as %s", d)
		}
	})
}

// digestString names the mounted image's content: its manifest digest, or
// for a stack of local layer files (which has none) a digest of their
// digests, so an upper made over one stack is refused for another.
func digestString(m *mounted) string { return imageDigest(m.img) }

// imageDigest is digestString for a resolved image.
func imageDigest(img *layer.Image) string {
	if img.Digest.Hex != "" {
		return img.Digest.String()
	}
	h := sha256.New()
	for _, l := range img.Layers {
		fmt.Fprintln(h, l.Descriptor.Digest)
	}
	return fmt.Sprintf("layers:sha256:%x", h.Sum(nil))
}

// clearStaleMount detaches whatever a dead server left mounted at dir.
func clearStaleMount(dir string, logger *log.Logger) {
	if isMounted(dir) {
		logger.Printf("detaching a stale mount at %s", dir)
		syscall.Unmount(dir, syscall.MNT_DETACH)
	}
}

// gone returns a channel closed when the session's visible mount is no
// longer there: its FUSE server stopped, or someone unmounted the overlay.
func (s *session) gone(ctx context.Context) <-chan struct{} {
	if s.lower == "" {
		return s.done
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		changes := newMountTableWaiter()
		defer changes.close()
		for {
			if !isLazyrootMount(s.dir) {
				return
			}
			changes.wait()
			select {
			case <-ctx.Done():
				return
			case <-s.done:
				return
			default:
			}
		}
	}()
	return ch
}

// close unmounts the overlay and the tree, waits for the FUSE server and
// removes a temporary upper. A busy mount is detached: the kernel ends it
// when its last user lets go.
func (s *session) close() {
	// Prefetch reads the stack and its cache, which close after us.
	s.m.prefetch.Stop()
	if s.upper != nil && isLazyrootMount(s.dir) {
		if err := syscall.Unmount(s.dir, 0); err != nil {
			s.logger.Printf("unmount %s: %v; detaching", s.dir, err)
			syscall.Unmount(s.dir, syscall.MNT_DETACH)
		}
	}
	if s.server != nil {
		if err := s.server.Unmount(); err != nil && !errors.Is(err, syscall.EINVAL) {
			dir := s.dir
			if s.lower != "" {
				dir = s.lower
			}
			s.logger.Printf("unmount %s: %v; detaching", dir, err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		<-s.done
	}
	if s.upper != nil {
		if s.tempUpper {
			if err := s.upper.Remove(); err != nil {
				s.logger.Printf("remove temporary upper %s: %v", s.upper.Dir, err)
			}
		} else {
			s.upper.Close()
		}
	}
	if s.lower != "" {
		os.Remove(s.lower)
		os.Remove(filepath.Dir(s.lower))
	}
	s.saveProfile()
}
