package main

// Metadata trees. A shared lower's overlays walk a new tree through FUSE:
// every directory listed and every link read is a round trip to the
// server (ls -lR of 47,000 entries: about 9,400 of them, 3x the time on an
// extracted tree). So a server writes the image's metadata tree
// (fs.WriteMetaTree) under ROOT/trees once per image, and every later
// server of the image stacks it above its FUSE tree, which then serves
// file bytes only: a walk is served by the local file system.
//
// The tree is written at the lowest CPU priority, a few seconds after the
// mount is ready (off a job's start-up) or, for a shorter-lived server, as
// it exits, within a bound the umount command's wait allows. Writing is
// idempotent: a server stopped by the bound leaves what it wrote for the
// next one to go on from (creating inodes can be slow: on ext4 without a
// journal, for a minute after many files were deleted, 48,000 of them
// took 13 s instead of 1.2 s).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/index"
)

const (
	// metaTreeDelay is how long a server serves before it writes the
	// image's metadata tree.
	metaTreeDelay = 3 * time.Second
	// metaTreeExitBound bounds the time an exiting server spends on the
	// tree: well within the umount command's default wait of 10 s.
	metaTreeExitBound = 3 * time.Second
	// metaTreeRetry is how long servers leave a tree that failed to be
	// written (a full disk, an xattr the file system refuses) before they
	// try it again.
	metaTreeRetry = 24 * time.Hour
)

// metaTreeDir is where the metadata tree of tree is kept under root: the
// tree of the image with manifest digest, as layer indexes trusted under
// indexSource make it, showing owners through uids and gids. Its size
// (inodes and bytes) is in the name too, a check that the tree written
// and the tree served are one. "" for an image with no manifest digest
// (local layer files, which may change under one name).
func metaTreeDir(root, digest, indexSource string, tree *index.Tree, uids, gids fs.IDMap) string {
	if digest == "" {
		return ""
	}
	b, _ := json.Marshal([]any{"version", fs.MetaTreeVersion, "digest", digest, "index-source", indexSource,
		"uids", uids, "gids", gids, "inodes", tree.Inodes, "bytes", tree.Bytes})
	sum := sha256.Sum256(b)
	return filepath.Join(root, "trees", hex.EncodeToString(sum[:8]))
}

// haveMetaTree says whether the metadata tree at dir is written.
func haveMetaTree(dir string) bool {
	if dir == "" {
		return false
	}
	fi, err := os.Stat(dir)
	return err == nil && fi.IsDir()
}

// metaTreeWriter writes one metadata tree in the background.
type metaTreeWriter struct {
	nowCh  chan struct{}
	done   chan struct{}
	cancel context.CancelFunc
}

// startMetaTree writes tree's metadata tree at dir after metaTreeDelay, or
// at once when now is called first. A tree that failed to be written (a
// marker beside it says why) is left alone for metaTreeRetry.
func startMetaTree(dir string, tree *index.Tree, uids, gids fs.IDMap, logger *log.Logger) *metaTreeWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &metaTreeWriter{nowCh: make(chan struct{}), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		timer := time.NewTimer(metaTreeDelay)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-w.nowCh:
		case <-ctx.Done():
			return
		}
		// The thread is never unlocked: its lowered priority ends with it.
		runtime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19); err != nil {
			logger.Printf("metadata tree: lower the writer's priority: %v", err)
		}
		if fi, err := os.Stat(failedMarker(dir)); err == nil && time.Since(fi.ModTime()) < metaTreeRetry {
			return // this tree could not be written; the marker says why
		}
		start := time.Now()
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			logger.Printf("metadata tree: %v", err)
			return
		}
		if err := fs.CheckMetaTrees(filepath.Dir(dir)); err != nil {
			logger.Printf("%v: this kernel cannot stack metadata trees; mounts walk the image through FUSE", err)
			return
		}
		switch err := fs.WriteMetaTree(ctx, dir, tree, uids, gids); {
		case errors.Is(err, fs.ErrMetaTreeBusy):
			logger.Printf("%v", err)
			return
		case ctx.Err() != nil:
			logger.Printf("stopped writing the image's metadata tree at %s after %v: the next server goes on from there",
				dir, time.Since(start).Round(time.Millisecond))
			return
		case err != nil:
			logger.Printf("%v: later mounts walk the image through FUSE", err)
			// The same tree would most likely fail the same way.
			os.WriteFile(failedMarker(dir), []byte(err.Error()+"\n"), 0o600)
			return
		}
		logger.Printf("wrote the image's metadata tree at %s in %v: later mounts walk it on local disk",
			dir, time.Since(start).Round(time.Millisecond))
	}()
	return w
}

// failedMarker is the file that records that the tree at dir could not
// be written, and why.
func failedMarker(dir string) string { return dir + ".failed" }

// now has the tree written at once if it was not begun.
func (w *metaTreeWriter) now() {
	select {
	case <-w.nowCh:
	default:
		close(w.nowCh)
	}
}

// wait waits for the writing to end, up to deadline; then it stops it,
// and what it wrote stays for the next server to go on from.
func (w *metaTreeWriter) wait(deadline time.Time) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-w.done:
	case <-timer.C:
		w.stop()
	}
}

// stop ends the writing, if begun, and waits for it to clean up.
func (w *metaTreeWriter) stop() {
	w.cancel()
	<-w.done
}
