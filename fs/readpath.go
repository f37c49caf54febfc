package fs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// readResult is a fuse.ReadResult over bytes already in the request's
// buffer, as fuse.ReadResultData makes, but recycled: go-fuse calls Done
// once it has sent the bytes (or dropped the reply), and Done returns the
// result to readResults, so a read allocates no result.
type readResult struct {
	data []byte
}

var _ fuse.ReadResult = (*readResult)(nil)

// readResults holds readResults whose Done has been called.
var readResults = sync.Pool{New: func() any { return new(readResult) }}

// newReadResult returns a readResult over data, taken from readResults.
func newReadResult(data []byte) *readResult {
	r := readResults.Get().(*readResult)
	r.data = data
	return r
}

// Bytes returns the data; buf is not needed.
func (r *readResult) Bytes(buf []byte) ([]byte, fuse.Status) { return r.data, fuse.OK }

// Size is the length of the data.
func (r *readResult) Size() int { return len(r.data) }

// Done forgets the data (go-fuse's buffer, about to be reused) and
// recycles r.
func (r *readResult) Done() {
	r.data = nil
	readResults.Put(r)
}
