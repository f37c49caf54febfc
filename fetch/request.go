package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// send makes one GET for the bytes [off, end) of the blob: with a closed
// Range when ranged, else for the whole blob (then off must be 0 and end
// the size). It checks the answer and returns a body that yields exactly
// end-off bytes and then io.EOF, or a *failure.
//
// The attempt has its own context: it is canceled when no response, or no
// body bytes, arrive for the request timeout, and when the body is closed.
func (b *RemoteBlob) send(ctx context.Context, off, end int64, ranged bool) (*body, error) {
	c := b.client
	timeout := c.opts.requestTimeout
	actx, cancel := context.WithCancelCause(ctx)
	bd := &body{
		ctx:     ctx,
		actx:    actx,
		cancel:  cancel,
		timeout: timeout,
		timer:   time.AfterFunc(timeout, func() { cancel(errAttemptTimeout) }),
		bytes:   &c.stats.bytes,
	}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, b.url, nil)
	if err != nil {
		bd.Close()
		return nil, &failure{err: err}
	}
	// Ask for the bytes as stored: no transparent decompression, so lengths
	// and ranges refer to the blob itself.
	req.Header.Set("Accept-Encoding", "identity")
	if ranged {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
	}
	c.stats.requests.Add(1)
	resp, err := b.http.Do(req)
	if err != nil {
		bd.Close()
		return nil, transportFailure(ctx, actx, timeout, err)
	}
	bd.rc = resp.Body
	if err := b.accept(resp, bd, off, end); err != nil {
		bd.Close()
		return nil, err
	}
	return bd, nil
}

// accept checks resp against the request for [off, end) and positions bd
// at off.
func (b *RemoteBlob) accept(resp *http.Response, bd *body, off, end int64) error {
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := checkContentRange(resp.Header.Get("Content-Range"), off, end, b.size); err != nil {
			return &failure{status: resp.StatusCode, err: err}
		}
		if resp.ContentLength >= 0 && resp.ContentLength != end-off {
			return &failure{status: resp.StatusCode, err: fmt.Errorf("content-length %d for a range of %d bytes", resp.ContentLength, end-off)}
		}
		bd.remaining = end - off
		return nil
	case http.StatusOK:
		// The whole blob: either asked for, or the server ignored Range.
		if resp.ContentLength >= 0 && resp.ContentLength != b.size {
			return &failure{status: resp.StatusCode, err: fmt.Errorf("content-length %d, but the blob has %d bytes", resp.ContentLength, b.size)}
		}
		bd.remaining = end
		if off > 0 {
			if _, err := io.CopyN(io.Discard, bd, off); err != nil {
				return err
			}
		}
		return nil
	default:
		detail := readDetail(resp.Body, bd.bytes)
		return statusFailure(resp.StatusCode, resp.Header, detail)
	}
}

// checkContentRange checks that a Content-Range header value ("bytes
// a-b/total") names exactly [off, end) of a blob of size bytes.
func checkContentRange(v string, off, end, size int64) error {
	if v == "" {
		return errors.New("partial content without content-range")
	}
	bad := fmt.Errorf("bad content-range %q", v)
	unit, rest, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return bad
	}
	rng, total, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return bad
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return bad
	}
	a, err1 := strconv.ParseInt(first, 10, 64)
	z, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil {
		return bad
	}
	if a != off || z != end-1 {
		return fmt.Errorf("content-range %q, but asked for bytes %d-%d", v, off, end-1)
	}
	if total != "*" {
		t, err := strconv.ParseInt(total, 10, 64)
		if err != nil {
			return bad
		}
		if t != size {
			return fmt.Errorf("content-range %q, but the blob has %d bytes", v, size)
		}
	}
	return nil
}

// body is a checked response body. It yields exactly remaining bytes, then
// io.EOF; a body that ends early fails with a temporary *failure. Every
// byte read counts in the Client's Bytes and restarts the attempt timer.
type body struct {
	rc        io.ReadCloser // nil until the response arrives
	remaining int64

	ctx     context.Context // the caller's
	actx    context.Context // the attempt's, a child of ctx
	cancel  context.CancelCauseFunc
	timer   *time.Timer // cancels actx with errAttemptTimeout
	timeout time.Duration
	bytes   *atomic.Int64
}

// Read implements io.Reader.
func (r *body) Read(p []byte) (int, error) {
	if r.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.rc.Read(p)
	if n > 0 {
		r.remaining -= int64(n)
		r.bytes.Add(int64(n))
		r.timer.Reset(r.timeout)
	}
	switch {
	case r.remaining == 0:
		// Every byte is here; whatever happened after them does not matter.
		return n, io.EOF
	case err == nil:
		return n, nil
	case (err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF)) && r.ctx.Err() == nil && context.Cause(r.actx) == nil:
		return n, &failure{temporary: true, err: fmt.Errorf("body truncated: %d bytes missing", r.remaining)}
	default:
		return n, transportFailure(r.ctx, r.actx, r.timeout, err)
	}
}

// Close ends the attempt.
func (r *body) Close() error {
	r.timer.Stop()
	if r.rc != nil {
		r.rc.Close()
	}
	r.cancel(context.Canceled)
	return nil
}
