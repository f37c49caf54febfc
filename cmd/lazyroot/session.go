package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
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
	root := fs.NewRoot(m.tree, m.stack, logger)
	root.MapIDs(o.uidMap, o.gidMap)
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
	return s, nil
}

// digestString names the mounted image's content: its manifest digest, or
// for a stack of local layer files (which has none) a digest of their
// digests, so an upper made over one stack is refused for another.
func digestString(m *mounted) string {
	if m.img.Digest.Hex != "" {
		return m.img.Digest.String()
	}
	h := sha256.New()
	for _, l := range m.img.Layers {
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
		f, err := os.Open("/proc/self/mountinfo")
		if err == nil {
			defer f.Close()
		}
		for {
			if !isLazyrootMount(s.dir) {
				return
			}
			// mountinfo polls ready when the mount table changes; the
			// timeout covers a kernel that does not say.
			wait := 2 * time.Second
			if err == nil {
				fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLPRI}}
				unix.Poll(fds, int(wait.Milliseconds()))
			} else {
				time.Sleep(wait)
			}
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
}
