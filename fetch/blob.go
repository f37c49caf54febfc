package fetch

import (
	"context"
	"errors"
	"io"
	"net/http"

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
// requests. It is safe for concurrent use.
type RemoteBlob struct {
	client *Client
	http   *http.Client // authenticated for the blob's repository
	url    string
	digest v1.Hash
	size   int64
}

// Size returns the blob size from its descriptor.
func (b *RemoteBlob) Size() int64 { return b.size }

// Digest returns the blob digest from its descriptor.
func (b *RemoteBlob) Digest() v1.Hash { return b.digest }

// ReadAt reads len(p) bytes at off with one Range request, retried on
// temporary failures; a retry asks only for the bytes still missing. Reads
// past the end are clamped to Size and return io.EOF; off >= Size returns
// io.EOF without a request. The bytes are not verified.
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
	var (
		got      int64
		last     error
		failures int // consecutive failed attempts without progress
	)
	for got < want {
		if last != nil {
			if err := b.client.wait(ctx, failures, last); err != nil {
				return int(got), b.fail(off+got, end, err)
			}
			failures++
			b.client.stats.retries.Add(1)
		}
		n, err := b.readOnce(ctx, p[got:want], off+got)
		got += int64(n)
		if err != nil {
			if n > 0 {
				failures = 0
			}
			last = err
		}
	}
	if want < int64(len(p)) {
		return int(want), io.EOF
	}
	return int(want), nil
}

// readOnce is one attempt to fill p with the bytes at off.
func (b *RemoteBlob) readOnce(ctx context.Context, p []byte, off int64) (int, error) {
	bd, err := b.send(ctx, off, off+int64(len(p)), true)
	if err != nil {
		return 0, err
	}
	defer bd.Close()
	return io.ReadFull(bd, p)
}

// Open streams the whole blob, starting with one GET without Range. If the
// connection breaks part way, the stream resumes with a Range request for
// the rest, within the retry limit. The caller verifies the digest. ctx
// governs the whole stream; Close releases it.
func (b *RemoteBlob) Open(ctx context.Context) (io.ReadCloser, error) {
	s := &stream{blob: b, ctx: ctx}
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
	off      int64 // bytes delivered so far
	body     *body // current response positioned at off; nil between attempts
	last     error // failure of the previous attempt; nil if it did not fail
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
			if err := b.client.wait(s.ctx, s.failures, s.last); err != nil {
				s.err = b.fail(s.off, b.size, err)
				return s.err
			}
			s.failures++
			b.client.stats.retries.Add(1)
		}
		// The first request takes the whole blob; a resumed one asks for
		// the rest only.
		bd, err := b.send(s.ctx, s.off, b.size, s.off > 0)
		if err != nil {
			s.last = err
			continue
		}
		s.body = bd
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
		s.last = err
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
