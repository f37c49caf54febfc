package layer

import (
	"context"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/fetch"
	"github.com/lazyroot/lazyroot/index"
)

// earlyTOCTimeout bounds the reads WithEarlyTOC starts: Open, which uses
// them, follows Resolve at once.
const earlyTOCTimeout = 30 * time.Second

// tailRead is a read of the end of a layer blob, [off, size), under way or
// done, for the TOC there.
type tailRead struct {
	off   int64
	buf   []byte
	ready chan struct{}     // closed once blob is set, or could not be
	blob  *fetch.RemoteBlob // set before ready is closed; nil if Blob failed
	done  chan struct{}     // closed when the read ended
	err   error             // set before done is closed
}

// earlyTails bounds the tail reads in flight at once, so that with many
// layers the config and the referrers listing still find a connection.
const earlyTails = 4

// readTails starts reading the tail of each layer of m that has a TOC and
// no index in st, through blobs of fc in repo (made within ctx, which
// must outlive Resolve's wait for them), and returns the reads by layer
// digest. The reads run within rctx; end,
// called once they all ended, releases it.
func readTails(ctx, rctx context.Context, end context.CancelFunc, fc *fetch.Client, repo name.Repository, m *v1.Manifest, st *Store) map[v1.Hash]*tailRead {
	tails := map[v1.Hash]*tailRead{}
	var wg sync.WaitGroup
	slots := make(chan struct{}, earlyTails)
	for _, d := range m.Layers {
		if _, _, ok := (&Layer{Descriptor: d}).TOC(); !ok || d.Size <= 0 || st.hasIndex(d.Digest, BuiltHere) {
			continue
		}
		n := index.TailReadSize(d.Size)
		t := &tailRead{off: d.Size - n, buf: make([]byte, n), ready: make(chan struct{}), done: make(chan struct{})}
		tails[d.Digest] = t
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(t.done)
			// Its handshake, if not done yet, does not hold the config
			// request back.
			b, err := fc.Blob(ctx, repo, d)
			t.blob = b
			close(t.ready)
			if err != nil {
				t.err = err // Resolve makes it again, and says what is wrong
				return
			}
			select {
			case slots <- struct{}{}:
				defer func() { <-slots }()
			case <-rctx.Done():
				t.err = rctx.Err()
				return
			}
			if _, err := b.ReadAt(rctx, t.buf, t.off); err != nil {
				t.err = err
			}
		}()
	}
	go func() {
		wg.Wait()
		end()
	}()
	return tails
}

// waitReady waits until t's blob is made (or could not be), or ctx ends,
// and reports which.
func waitReady(ctx context.Context, t *tailRead) bool {
	select {
	case <-t.ready:
		return true
	case <-ctx.Done():
		return false
	}
}

// tocReader reads l's blob for ReadTOC: from the tail read started early,
// the first time a read falls inside it, and else (or when that read
// failed) from the blob.
type tocReader struct {
	ctx context.Context
	l   *Layer
}

// ReadAt implements io.ReaderAt.
func (r tocReader) ReadAt(p []byte, off int64) (int, error) {
	if t := r.l.tail.Load(); t != nil && off >= t.off && off+int64(len(p)) <= t.off+int64(len(t.buf)) {
		select {
		case <-t.done:
			r.l.tail.CompareAndSwap(t, nil) // used once: let its bytes go
			if t.err == nil {
				return copy(p, t.buf[off-t.off:]), nil
			}
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	return r.l.blob.ReadAt(r.ctx, p, off)
}
