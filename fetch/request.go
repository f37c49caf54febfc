package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// maxRedirects bounds the redirect hops of one attempt.
const maxRedirects = 10

// errRangeIgnored is the cause when a mirror answers a Range request with
// the whole blob.
var errRangeIgnored = errors.New("range ignored: the whole blob was offered")

// sendTo makes one attempt at the bytes [off, end) of the blob on endpoint
// e: with a closed Range when ranged, else for the whole blob (then off
// must be 0 and end the size). It returns a body that yields exactly
// end-off bytes and then io.EOF, or a *failure.
//
// When the registry redirected this blob before, the storage URL it gave is
// reused while fresh; if that request fails in any way (an error status,
// a redirect, no answer, a bad answer), the URL is dropped and the
// registry is asked again at once, once per read (st). Redirects are
// followed here, not by net/http: requests to another host than e carry
// no credentials nor hosts.toml headers and go through the base transport,
// without e's TLS, proxy or dial settings; the storage URL is remembered.
// A 401 from e leads to one new handshake and a new request.
//
// Only the last endpoint (the registry itself) may answer a partial range
// with the whole blob: its leading bytes are then skipped. A mirror that
// does so fails the attempt without its body being read.
func (b *RemoteBlob) sendTo(ctx context.Context, st *tries, e *endpoint, off, end int64, ranged, last bool) (*body, error) {
	c := b.client
	blobURL := e.blobURL(b.repo, b.digest)
	if loc, ok := c.cachedLocation(blobURL); ok {
		bd, err := b.request(ctx, e, c.storage, loc.url, false, off, end, ranged, last)
		if err == nil {
			return bd, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		c.dropLocation(blobURL, loc)
		if st.reresolved {
			return nil, err
		}
		// Expired, revoked, moved or unwell: the registry may know
		// better; ask it right away.
		st.reresolved = true
		c.stats.reresolves.Add(1)
	}

	hc, err := c.authClient(ctx, e, b.repo)
	if err != nil {
		return nil, err
	}
	start, err := url.Parse(blobURL)
	if err != nil {
		return nil, &failure{err: err}
	}
	var (
		target   = start
		client   = hc
		reauthed = false
		hops     = 0
	)
	for {
		toEndpoint := client == hc
		resp, bd, err := b.roundTrip(ctx, e, client, target, toEndpoint, off, end, ranged)
		if err != nil {
			return nil, err
		}
		switch code := resp.StatusCode; {
		case isRedirect(code) && resp.Header.Get("Location") != "":
			loc, err := resp.Location()
			bd.Close()
			if err != nil {
				bd.failed()
				return nil, &failure{status: code, err: fmt.Errorf("bad redirect: %w", err)}
			}
			if hops++; hops > maxRedirects {
				bd.failed()
				return nil, &failure{status: code, err: fmt.Errorf("more than %d redirects", maxRedirects)}
			}
			if strings.EqualFold(loc.Host, e.host) {
				client = hc
			} else {
				client = c.storage
			}
			target = loc
			continue
		case code == http.StatusUnauthorized && toEndpoint && !reauthed:
			// The token (or the session behind it) may have expired:
			// shake hands again, once.
			bd.Close()
			reauthed = true
			c.stats.reauth.Add(1)
			c.forgetClient(e, b.repo, hc)
			if hc, err = c.authClient(ctx, e, b.repo); err != nil {
				return nil, err
			}
			target, client, hops = start, hc, 0
			continue
		}
		if err := b.accept(resp, bd, off, end, ranged, last); err != nil {
			bd.failed()
			bd.Close()
			return nil, err
		}
		if client == c.storage {
			c.keepLocation(blobURL, target)
		}
		return bd, nil
	}
}

// request sends one GET to target and checks the answer; it follows no
// redirect.
func (b *RemoteBlob) request(ctx context.Context, e *endpoint, client *http.Client, target *url.URL, toEndpoint bool, off, end int64, ranged, last bool) (*body, error) {
	resp, bd, err := b.roundTrip(ctx, e, client, target, toEndpoint, off, end, ranged)
	if err != nil {
		return nil, err
	}
	if err := b.accept(resp, bd, off, end, ranged, last); err != nil {
		bd.failed()
		bd.Close()
		return nil, err
	}
	return bd, nil
}

// isRedirect reports the statuses fetch follows with Location.
func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// roundTrip sends one GET for [off, end) to target with client, once a
// slot for the target host is free. The returned body holds the slot and
// the attempt's context until it is closed: the attempt is canceled when
// no response, or no body bytes, arrive for the request timeout. Headers
// from hosts.toml go only to the endpoint's own host.
func (b *RemoteBlob) roundTrip(ctx context.Context, e *endpoint, client *http.Client, target *url.URL, toEndpoint bool, off, end int64, ranged bool) (*http.Response, *body, error) {
	c := b.client
	release, err := c.limits.acquire(ctx, target.Host)
	if err != nil {
		return nil, nil, err
	}
	host := c.hostCounter(target.Host)
	timeout := c.opts.requestTimeout
	actx, cancel := context.WithCancelCause(ctx)
	bd := &body{
		ctx:     ctx,
		actx:    actx,
		cancel:  cancel,
		timeout: timeout,
		timer:   time.AfterFunc(timeout, func() { cancel(errAttemptTimeout) }),
		counts:  [3]*atomic.Int64{&c.stats.bytes, &host.bytes, &b.counters.bytes},
		fails:   &host.failures,
		release: release,
	}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, target.String(), nil)
	if err != nil {
		bd.Close()
		return nil, nil, &failure{err: err}
	}
	if toEndpoint {
		for k, vs := range e.Header {
			req.Header[k] = append([]string(nil), vs...)
		}
	}
	// Ask for the bytes as stored: no transparent decompression, so lengths
	// and ranges refer to the blob itself.
	req.Header.Set("Accept-Encoding", "identity")
	if ranged {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
	}
	c.stats.requests.Add(1)
	host.requests.Add(1)
	b.counters.requests.Add(1)
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			bd.failed()
		}
		bd.Close()
		return nil, nil, transportFailure(ctx, actx, timeout, err)
	}
	bd.rc = resp.Body
	return resp, bd, nil
}

// accept checks resp against the request for [off, end) and positions bd
// at off. last says whether a whole-blob answer to a partial range may be
// used.
func (b *RemoteBlob) accept(resp *http.Response, bd *body, off, end int64, ranged, last bool) error {
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
		partial := ranged && (off > 0 || end < b.size)
		if partial && !last {
			// Most likely a pull-through cache that does not have the
			// blob yet: reading past the range would turn a small read
			// into a whole download. The caller moves on.
			return &failure{status: resp.StatusCode, temporary: true, err: errRangeIgnored}
		}
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
		return statusFailure(resp.StatusCode, resp.Header, bd.detail())
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
// byte read counts in the Client's, the host's and the blob's Bytes and
// restarts the attempt timer. Close frees the host slot.
type body struct {
	rc        io.ReadCloser // nil until the response arrives
	remaining int64

	ctx     context.Context // the caller's
	actx    context.Context // the attempt's, a child of ctx
	cancel  context.CancelCauseFunc
	timer   *time.Timer // cancels actx with errAttemptTimeout
	timeout time.Duration
	counts  [3]*atomic.Int64 // bytes: total, host, blob
	fails   *atomic.Int64    // the host's failures
	release func()           // frees the host slot
	failed1 bool             // a failure was counted against the host
}

func (r *body) add(n int) {
	for _, c := range r.counts {
		c.Add(int64(n))
	}
}

// failed counts one failure against the host, once per body.
func (r *body) failed() {
	if !r.failed1 {
		r.failed1 = true
		r.fails.Add(1)
	}
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
		r.add(n)
		r.timer.Reset(r.timeout)
	}
	switch {
	case r.remaining == 0:
		// Every byte is here; whatever happened after them does not matter.
		return n, io.EOF
	case err == nil:
		return n, nil
	case (err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF)) && r.ctx.Err() == nil && context.Cause(r.actx) == nil:
		r.failed()
		return n, &failure{temporary: true, err: fmt.Errorf("body truncated: %d bytes missing", r.remaining)}
	default:
		if r.ctx.Err() == nil {
			r.failed()
		}
		return n, transportFailure(r.ctx, r.actx, r.timeout, err)
	}
}

// detail reads the start of an error body for its message.
func (r *body) detail() error {
	p, _ := io.ReadAll(io.LimitReader(r.rc, maxDetail))
	r.add(len(p))
	return errorDetail(p)
}

// Close ends the attempt and frees the host slot.
func (r *body) Close() error {
	r.timer.Stop()
	if r.rc != nil {
		r.rc.Close()
	}
	r.cancel(context.Canceled)
	r.release()
	return nil
}
