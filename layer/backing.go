package layer

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
)

// Whole copies of files for FUSE passthrough.
//
// A file the mount has served whole (ReadWhole) is copied, in the
// background, from the chunk cache into a file entry of the cache's disk
// tier (cache.Cache.PutFile). Later opens of a file with the same content,
// by any mount on the node, get that copy (OpenBacking), which the kernel
// reads without the mount server. The copy is made of chunks verified as
// they are read, and the disk tier fsyncs it before it appears, so it is
// never partial; it is keyed by what determines the content (the chunks'
// digests, or the seek spans' keys), as chunk entries are.

const (
	// DefaultBackingMinSize is the smallest file copied for passthrough
	// when StackOptions.BackingMinSize is 0: below it, reads through the
	// server cost little and a copy would cost an inode and a write.
	DefaultBackingMinSize = 256 << 10
	// copyYield is the longest a copy waits for on-demand reads to pause
	// before each piece: under reads that never pause it still goes on,
	// a piece at a time.
	copyYield = time.Second
	// closeGrace is how long Close lets copies under way finish before it
	// cancels them.
	closeGrace = 10 * time.Second
	// copyBufferSize is the size of the reads a copy makes.
	copyBufferSize = 1 << 20
	// copiesAtOnce bounds the copies that run at once (each holds a read
	// buffer and a reservation in the quota); the others wait their turn.
	copiesAtOnce = 2
)

// OpenBacking returns a read-only file holding exactly n's content, if the
// cache's disk tier has a copy; nil otherwise. The caller closes it.
func (s *Stack) OpenBacking(n *index.Node) *os.File {
	if n.Size < s.backingMin || !s.cache.HasDisk() {
		return nil
	}
	key, ok := s.fileKey(n)
	if !ok {
		return nil
	}
	f, ok := s.cache.OpenFile(key, n.Size)
	if !ok {
		return nil
	}
	return f
}

// ReadWhole starts a background copy of n's content into the disk tier,
// unless n is small, the cache has no disk tier, a copy exists or one is
// under way. The mount calls it when it has served as many bytes of n as n
// holds, so the chunks are usually in the cache and the copy costs no
// fetch (what is missing is fetched and verified as any read is). At most
// copiesAtOnce copies run at a time; the others wait for a turn.
func (s *Stack) ReadWhole(n *index.Node) { s.readWhole(n, nil) }

// readWhole is ReadWhole, the copy yielding to the reads act counts (none
// if nil).
func (s *Stack) readWhole(n *index.Node, act *Activity) {
	if n.Size < s.backingMin || !s.cache.HasDisk() {
		return
	}
	key, ok := s.fileKey(n)
	if !ok {
		return
	}
	if _, busy := s.copying.LoadOrStore(key, true); busy {
		return
	}
	s.inBackground(func() {
		defer s.copying.Delete(key)
		// Wait for a pause in the reads before holding a slot and room in
		// the quota.
		if act.waitIdleAtMost(s.life, copyYield) != nil {
			return
		}
		select {
		case s.copySlots <- struct{}{}:
			defer func() { <-s.copySlots }()
		case <-s.life.Done():
			return
		}
		// Each piece's read is bounded by the read timeout; Close ends
		// the copy through s.life.
		ctx := s.life
		err := s.cache.PutFile(key, n.Size, func(w io.Writer) error { return s.copyContent(ctx, n, w, act) })
		if err != nil && !errors.Is(err, cache.ErrClosed) && !errors.Is(err, cache.ErrTooLarge) {
			s.logf("no passthrough copy of %s: %v", n.Name, err)
		}
	})
}

// copyContent writes n's content to w, read (and verified) through the
// cache, each piece once the reads act counts pause (or copyYield has
// passed).
func (s *Stack) copyContent(ctx context.Context, n *index.Node, w io.Writer, act *Activity) error {
	buf := make([]byte, min(copyBufferSize, n.Size))
	for off := int64(0); off < n.Size; {
		if err := act.waitIdleAtMost(ctx, copyYield); err != nil {
			return err
		}
		k, err := s.ReadAt(ctx, n, buf, off)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return werr
			}
			off += int64(k)
		}
		switch {
		case errors.Is(err, io.EOF):
			if off != n.Size {
				return fmt.Errorf("content ends at %d of %d bytes", off, n.Size)
			}
			return nil
		case err != nil:
			return err
		case k == 0:
			return fmt.Errorf("no progress at %d", off)
		}
	}
	return nil
}

// fileKey is the cache key of n's whole content: a digest over the keys of
// the chunks (or span pieces) that make it up, so two files share a key
// only if they are read from the same verified bytes. False if a chunk has
// no digest to key it by.
func (s *Stack) fileKey(n *index.Node) (cache.Key, bool) {
	if n.Layer < 0 || n.Layer >= len(s.layers) {
		return "", false
	}
	if k, ok := s.fileKeys.Load(n); ok {
		return k.(cache.Key), true
	}
	l := s.layers[n.Layer]
	h := sha256.New()
	h.Write([]byte("lazyroot file\x00"))
	var nums [24]byte
	piece := func(key cache.Key, off, size int64) {
		binary.BigEndian.PutUint64(nums[0:], uint64(len(key)))
		binary.BigEndian.PutUint64(nums[8:], uint64(off))
		binary.BigEndian.PutUint64(nums[16:], uint64(size))
		h.Write(nums[:])
		h.Write([]byte(key))
	}
	for i := range n.Chunks {
		c := &n.Chunks[i]
		if !l.Index.Format.Seekable() {
			if c.Digest == "" {
				return "", false
			}
			piece(l.chunkKey(c), 0, c.Size)
			continue
		}
		for pos, end := c.BlobOffset, c.BlobOffset+c.Size; pos < end; {
			si := l.Index.FindSpan(pos)
			if si < 0 {
				return "", false
			}
			out, _ := l.Index.SpanRanges(si)
			next := min(end, out.End)
			if next <= pos {
				return "", false
			}
			piece(l.spanKey(si), pos-out.Start, next-pos)
			pos = next
		}
	}
	key := cache.NewKey("sha256:"+hex.EncodeToString(h.Sum(nil)), 0, n.Size)
	s.fileKeys.Store(n, key)
	return key, true
}
