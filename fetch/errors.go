package fetch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrNotFound means the registry answered 404: it does not have the blob
// (or the repository). It is never retried.
var ErrNotFound = errors.New("blob not found")

// ErrUnauthorized means the registry refused the credentials (401 or 403)
// after authentication. It is never retried.
var ErrUnauthorized = errors.New("unauthorized")

// Error describes a failed fetch and whether a retry may help.
type Error struct {
	// Digest is the blob being read.
	Digest v1.Hash
	// Off and End are the byte range [Off, End) that could not be read.
	// Both are zero when the failure was not about bytes (authentication).
	Off, End int64
	// Status is the HTTP status of the last attempt, or 0 when there was
	// no response (connection error, timeout, canceled context).
	Status int
	// Temporary reports whether trying again later may succeed.
	Temporary bool
	// Err is the cause; it may be nil when Status says everything.
	Err error
}

// Error returns a message like "fetch sha256:abc [0,100): 503 Service Unavailable".
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fetch %s", e.Digest)
	if e.End > e.Off {
		fmt.Fprintf(&b, " [%d,%d)", e.Off, e.End)
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, ": %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause, so errors.Is finds ErrNotFound, ErrUnauthorized
// and context errors.
func (e *Error) Unwrap() error { return e.Err }

// failure is the outcome of one failed attempt, or of a run of attempts.
// It becomes an *Error, with the digest and range, before leaving the
// package.
type failure struct {
	status     int           // HTTP status, 0 without a response
	temporary  bool          // another attempt may succeed
	retryAfter time.Duration // server asked to wait this long first
	err        error         // cause; may be nil when status says it all
	// pastDeadline: given up early because the next retry would end
	// after the context's deadline.
	pastDeadline bool
	// ended: the caller's context ended; err wraps its error. after is
	// the real failure before that, if any, named in err.
	ended bool
	after error
}

func (f *failure) Error() string {
	switch {
	case f.status != 0 && f.err != nil:
		return fmt.Sprintf("%d %s: %v", f.status, http.StatusText(f.status), f.err)
	case f.status != 0:
		return fmt.Sprintf("%d %s", f.status, http.StatusText(f.status))
	case f.err != nil:
		return f.err.Error()
	default:
		return "unknown failure"
	}
}

func (f *failure) Unwrap() error { return f.err }

// asFailure returns err as a *failure, treating foreign errors as final.
func asFailure(err error) *failure {
	var f *failure
	if errors.As(err, &f) {
		return f
	}
	return &failure{err: err}
}

// newError wraps err with the blob digest and the range [off, end).
func newError(d v1.Hash, off, end int64, err error) *Error {
	f := asFailure(err)
	return &Error{Digest: d, Off: off, End: end, Status: f.status, Temporary: f.temporary, Err: f.err}
}
