package fetch

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Blob is random access to one blob.
type Blob interface {
	// ReadAt reads len(p) bytes at off, with io.ReaderAt semantics: it
	// returns n < len(p) only with an error, and io.EOF at the end of the
	// blob.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// Size is the blob size in bytes.
	Size() int64
}

var _ Blob = (*RemoteBlob)(nil)

// errClosed is returned by reads from a stream after Close.
var errClosed = errors.New("read after close")

// RemoteBlob is a blob in a registry repository, read with HTTP Range
// requests from the registry's mirrors and the registry itself. It is safe
// for concurrent use.
type RemoteBlob struct {
	client    *Client
	repo      name.Repository
	endpoints []*endpoint // mirrors first, the registry (or its server) last
	digest    v1.Hash
	size      int64
	counters  *blobCounters // shared by every RemoteBlob of this digest
	flightID  string        // names the repository in flight keys
}

// Size returns the blob size from its descriptor.
func (b *RemoteBlob) Size() int64 { return b.size }

// Digest returns the blob digest from its descriptor.
func (b *RemoteBlob) Digest() v1.Hash { return b.digest }

// Stats returns the requests sent and body bytes read for this blob's
// digest by the Client, through any RemoteBlob of it.
func (b *RemoteBlob) Stats() BlobStats {
	return BlobStats{Requests: b.counters.requests.Load(), Bytes: b.counters.bytes.Load()}
}

// ReadAt reads len(p) bytes at off with one Range request, retried on
// temporary failures; a retry asks only for the bytes still missing. Reads
// past the end are clamped to Size and return io.EOF; off >= Size returns
// io.EOF without a request. Concurrent calls for the same bytes of the same
// blob share one request. The bytes are not verified.
func (b *RemoteBlob) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, b.fail(off, off+int64(len(p)), errors.New("negative offset"))
	}
	if off >= b.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), b.size-off)
	if want == 0 {
		return 0, nil
	}
	end := off + want
	if err := ctx.Err(); err != nil {
		return 0, b.fail(off, end, err)
	}
	n, err := b.readAt(ctx, p[:want], off)
	if err != nil {
		return n, b.fail(off+int64(n), end, err)
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// readAt fills p, not empty and within the blob, with the bytes at off,
// sharing the request with concurrent reads of the same bytes. It returns
// how many bytes it got and, if not all, a *failure.
func (b *RemoteBlob) readAt(ctx context.Context, p []byte, off int64) (int, error) {
	key := flightKey{repo: b.flightID, digest: b.digest, off: off, end: off + int64(len(p))}
	return b.client.shared(ctx, key, p, func(p []byte) (int, error) {
		return b.fetch(ctx, p, off)
	})
}

// tries is what one read learned about the endpoints.
type tries struct {
	failed     []bool // mirrors that failed during this read, by index
	round      int    // pauses made so far
	reresolved bool   // a reused storage URL failed and the registry was asked again
}

func (b *RemoteBlob) newTries() *tries {
	return &tries{failed: make([]bool, len(b.endpoints))}
}

// fetch fills p with the bytes at off, moving on from failing mirrors and
// retrying the last endpoint with backoff. It returns how many bytes it
// got and, if not all, a *failure.
func (b *RemoteBlob) fetch(ctx context.Context, p []byte, off int64) (int, error) {
	got := 0
	err := b.retry(ctx, func(st *tries) (int, bool, error) {
		bd, i, err := b.open(ctx, st, b.single(off+int64(got), off+int64(len(p)), true))
		if err != nil {
			return -1, false, err
		}
		n, err := io.ReadFull(bd, p[got:])
		bd.Close()
		got += n
		return i, n > 0, err
	})
	return got, err
}

// retry runs attempt until it succeeds, and returns nil, or until no more
// tries are allowed, and returns the last failure. An attempt reports the
// endpoint whose answer failed (-1 when no endpoint answered well, see
// open), and whether it made progress: progress restarts the count of
// failures that bounds the retries and sets the backoff. After an answer
// from a mirror fails, the next attempt follows at once (the mirror is
// skipped); otherwise it follows a pause.
func (b *RemoteBlob) retry(ctx context.Context, attempt func(st *tries) (endpoint int, progress bool, err error)) error {
	c := b.client
	st := b.newTries()
	var (
		last     error
		failures int  // consecutive failed attempts without progress
		fellBack bool // last was a mirror failing: go on without a pause
	)
	for {
		if last != nil {
			if !fellBack {
				if err := c.wait(ctx, failures, last); err != nil {
					return err
				}
				failures++
				st.round++
				c.stats.retries.Add(1)
			} else if ctx.Err() != nil {
				return ctxFailure(ctx, last)
			}
		}
		i, progress, err := attempt(st)
		if err == nil {
			return nil
		}
		if progress {
			failures = 0
		}
		last, fellBack = lastFailure(ctx, last, err), i >= 0 && b.mirrorFailed(ctx, st, i, err)
	}
}

// mirrorFailed notes that endpoint i failed with err while a body was
// read. It reports whether i is a mirror, so the next endpoint can take
// over without a pause.
func (b *RemoteBlob) mirrorFailed(ctx context.Context, st *tries, i int, err error) bool {
	if i == len(b.endpoints)-1 || ctx.Err() != nil {
		return false
	}
	st.failed[i] = true
	b.client.penalize(b.endpoints[i], b.digest, err)
	b.client.stats.fallbacks.Add(1)
	return true
}

// open sends q to the first endpoint that answers well and returns the
// body and the endpoint's index. Mirrors that failed during this read are
// skipped, and so, before the first pause, are mirrors that misbehaved
// lately; a mirror that fails now is passed over for the next endpoint.
// The last endpoint is always tried; its failure is the result (or, when
// the context ended, the failure before that). A multi-range query stops
// with errMultiRange at the first endpoint that refuses it or whose host
// is known not to serve it.
func (b *RemoteBlob) open(ctx context.Context, st *tries, q *query) (*body, int, error) {
	c := b.client
	lastIdx := len(b.endpoints) - 1
	var prev error // a mirror's failure in this pass
	for i, e := range b.endpoints {
		last := i == lastIdx
		if !last && (st.failed[i] || st.round == 0 && c.penalized(e, b.digest)) {
			continue
		}
		if q.multi && c.noMultiRange(e.host) {
			return nil, i, &failure{err: errMultiRange}
		}
		bd, err := b.sendTo(ctx, st, e, q, last)
		if err == nil {
			return bd, i, nil
		}
		if refused(err) {
			return nil, i, err
		}
		if last || ctx.Err() != nil {
			return nil, i, lastFailure(ctx, prev, err)
		}
		prev = err
		st.failed[i] = true
		c.penalize(e, b.digest, err)
		c.stats.fallbacks.Add(1)
	}
	panic("unreachable: the last endpoint always answers")
}

// Open streams the whole blob, starting with one GET without Range. If the
// connection breaks part way, the stream resumes with a Range request for
// the rest, within the retry limit (from the next endpoint, when a mirror
// broke). The caller verifies the digest. ctx governs the whole stream;
// Close releases it.
func (b *RemoteBlob) Open(ctx context.Context) (io.ReadCloser, error) {
	s := &stream{blob: b, ctx: ctx, st: b.newTries()}
	if err := ctx.Err(); err != nil {
		return nil, b.fail(0, b.size, err)
	}
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

// fail counts a failed read and describes it.
func (b *RemoteBlob) fail(off, end int64, err error) *Error {
	b.client.stats.errors.Add(1)
	return newError(b.digest, off, end, err)
}

// stream is the reader returned by Open. It is used by one goroutine at a
// time, like any io.Reader.
type stream struct {
	blob     *RemoteBlob
	ctx      context.Context
	st       *tries
	off      int64 // bytes delivered so far
	body     *body // current response positioned at off; nil between attempts
	bodyIdx  int   // the endpoint body comes from
	last     error // failure of the previous attempt; nil if it did not fail
	fellBack bool  // last was a mirror failing: go on without a pause
	failures int   // consecutive failed attempts without progress
	err      error // sticky: io.EOF, the final *Error, or errClosed
}

// connect makes sure there is a response body positioned at s.off, backing
// off and retrying as allowed.
func (s *stream) connect() error {
	b := s.blob
	if s.body == nil && s.off > 0 && s.off >= b.size {
		s.err = io.EOF
		return s.err
	}
	for s.body == nil {
		if s.last != nil {
			if !s.fellBack {
				if err := b.client.wait(s.ctx, s.failures, s.last); err != nil {
					s.err = b.fail(s.off, b.size, err)
					return s.err
				}
				s.failures++
				s.st.round++
				b.client.stats.retries.Add(1)
			} else if s.ctx.Err() != nil {
				s.err = b.fail(s.off, b.size, ctxFailure(s.ctx, s.last))
				return s.err
			}
		}
		// The first request takes the whole blob; a resumed one asks for
		// the rest only.
		bd, i, err := b.open(s.ctx, s.st, b.single(s.off, b.size, s.off > 0))
		if err != nil {
			s.last, s.fellBack = lastFailure(s.ctx, s.last, err), false
			continue
		}
		s.body, s.bodyIdx = bd, i
	}
	return nil
}

// Read implements io.Reader.
func (s *stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if err := s.connect(); err != nil {
			return 0, err
		}
		n, err := s.body.Read(p)
		s.off += int64(n)
		if n > 0 {
			s.failures = 0
		}
		if err == nil {
			return n, nil
		}
		s.body.Close()
		s.body = nil
		if err == io.EOF {
			s.err = io.EOF
			return n, io.EOF
		}
		s.last, s.fellBack = lastFailure(s.ctx, s.last, err), s.blob.mirrorFailed(s.ctx, s.st, s.bodyIdx, err)
		if n > 0 {
			return n, nil
		}
	}
}

// Close implements io.Closer. Reads after Close fail.
func (s *stream) Close() error {
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
	if s.err == nil || s.err == io.EOF {
		s.err = errClosed
	}
	return nil
}

// flightKey names the bytes [off, end) of a blob in a repository.
type flightKey struct {
	repo     string
	digest   v1.Hash
	off, end int64
}

// flight is a read that other reads of the same bytes wait for.
type flight struct {
	done    chan struct{} // closed when the fields below are set
	buf     []byte        // the leader's buffer; stable until followers copied
	n       int
	err     error
	gone    bool      // the leader's context ended
	dl      time.Time // the leader's deadline; zero if none
	readers sync.WaitGroup
	joined  int // followers so far; protected by Client.flightMu
}

// shared runs fetch into p unless a read of the same bytes is in flight,
// in which case it waits for that read and copies its bytes. The leader
// reads into its own p and returns only after every follower copied. A
// follower whose leader gave up because of the leader's own context (or
// deadline) while the follower's still allows more tries again.
func (c *Client) shared(ctx context.Context, key flightKey, p []byte, fetch func([]byte) (int, error)) (int, error) {
	for {
		c.flightMu.Lock()
		f := c.flights[key]
		if f == nil {
			f = &flight{done: make(chan struct{}), buf: p}
			c.flights[key] = f
			c.flightMu.Unlock()
			n, err := fetch(p)
			f.n, f.err, f.gone = n, err, ctx.Err() != nil
			f.dl, _ = ctx.Deadline()
			c.flightMu.Lock()
			delete(c.flights, key)
			c.flightMu.Unlock()
			close(f.done)
			f.readers.Wait()
			return n, err
		}
		f.readers.Add(1)
		f.joined++
		c.flightMu.Unlock()
		select {
		case <-f.done:
			n := copy(p, f.buf[:f.n])
			err := f.err
			f.readers.Done()
			if err != nil && ctx.Err() == nil && (f.gone || asFailure(err).pastDeadline && laterDeadline(ctx, f.dl)) {
				continue
			}
			if err == nil {
				c.stats.deduplicated.Add(1)
			}
			return n, err
		case <-ctx.Done():
			f.readers.Done()
			return 0, ctxFailure(ctx, nil)
		}
	}
}

// laterDeadline reports whether ctx allows more time than deadline dl.
func laterDeadline(ctx context.Context, dl time.Time) bool {
	if dl.IsZero() {
		return false
	}
	mine, ok := ctx.Deadline()
	return !ok || mine.After(dl)
}
