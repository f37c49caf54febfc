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

// query is what one attempt asks an endpoint for, and how the answer is
// checked.
type query struct {
	// rng is the Range header; "" asks for the whole blob.
	rng string
	// multi: rng names several ranges. Such a query is not sent to an
	// endpoint whose host is known not to serve them (see
	// Client.noMultiRange), and an endpoint that refuses it fails with
	// errMultiRange, which is no failure of the endpoint.
	multi bool
	// accept checks the answer from endpoint e (the last endpoint when
	// last) and positions bd at the first byte asked for.
	accept func(resp *http.Response, bd *body, e *endpoint, last bool) error
}

// single is the query for [off, end): with a closed Range when ranged,
// else for the whole blob (then off must be 0 and end the size).
func (b *RemoteBlob) single(off, end int64, ranged bool) *query {
	q := &query{accept: func(resp *http.Response, bd *body, _ *endpoint, last bool) error {
		return b.accept(resp, bd, off, end, ranged, last)
	}}
	if ranged {
		q.rng = fmt.Sprintf("bytes=%d-%d", off, end-1)
	}
	return q
}

// sendTo makes one attempt at q on endpoint e. It returns a body that
// yields the bytes q's accept positioned it at, or a *failure.
//
// When the registry redirected this blob before, the storage URL it gave is
// reused while fresh; if that request fails in any way (an error status,
// a redirect, no answer, a bad answer), the URL is dropped and the
// registry is asked again at once, once per read (st). A refused
// multi-range request (errMultiRange) is not such a failure: the URL is
// kept. Redirects are followed here, not by net/http: requests to another
// host than e carry no credentials nor hosts.toml headers and go through
// the base transport, without e's TLS, proxy or dial settings; the storage
// URL is remembered.
// A 401 from e leads to one new handshake and a new request.
//
// Only the last endpoint (the registry itself) may answer a partial range
// with the whole blob: its leading bytes are then skipped. A mirror that
// does so fails the attempt without its body being read.
func (b *RemoteBlob) sendTo(ctx context.Context, st *tries, e *endpoint, q *query, last bool) (*body, error) {
	c := b.client
	blobURL := e.blobURL(b.repo, b.digest)
	if loc, ok := c.cachedLocation(blobURL); ok {
		bd, err := b.request(ctx, e, c.storage, loc.url, false, q, last)
		if err == nil {
			return bd, nil
		}
		if ctx.Err() != nil || refused(err) {
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
		resp, bd, err := b.roundTrip(ctx, e, client, target, toEndpoint, q.rng)
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
		if err := q.accept(resp, bd, e, last); err != nil {
			bd.reject(err)
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
func (b *RemoteBlob) request(ctx context.Context, e *endpoint, client *http.Client, target *url.URL, toEndpoint bool, q *query, last bool) (*body, error) {
	resp, bd, err := b.roundTrip(ctx, e, client, target, toEndpoint, q.rng)
	if err != nil {
		return nil, err
	}
	if err := q.accept(resp, bd, e, last); err != nil {
		bd.reject(err)
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

// roundTrip sends one GET to target with client, with Range rng unless it
// is "", once a slot for the target host is free. The returned body holds the slot and
// the attempt's context until it is closed: the attempt is canceled when
// no response, or no body bytes, arrive for the request timeout. Headers
// from hosts.toml go only to the endpoint's own host.
func (b *RemoteBlob) roundTrip(ctx context.Context, e *endpoint, client *http.Client, target *url.URL, toEndpoint bool, rng string) (*http.Response, *body, error) {
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
	if rng != "" {
		req.Header.Set("Range", rng)
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
	a, z, err := parseContentRange(v, size)
	if err != nil {
		return err
	}
	if a != off || z != end {
		return fmt.Errorf("content-range %q, but asked for bytes %d-%d", v, off, end-1)
	}
	return nil
}

// parseContentRange reads a Content-Range header value ("bytes
// a-b/total") sent for a blob of size bytes and returns the range it
// names, [a, b+1). The range must lie within the blob, and total must be
// size or "*".
func parseContentRange(v string, size int64) (off, end int64, err error) {
	if v == "" {
		return 0, 0, errors.New("partial content without content-range")
	}
	bad := fmt.Errorf("bad content-range %q", v)
	unit, rest, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return 0, 0, bad
	}
	rng, total, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return 0, 0, bad
	}
	first, last, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, bad
	}
	a, err1 := strconv.ParseInt(first, 10, 64)
	z, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || a < 0 || z < a {
		return 0, 0, bad
	}
	if total != "*" {
		t, err := strconv.ParseInt(total, 10, 64)
		if err != nil {
			return 0, 0, bad
		}
		if t != size {
			return 0, 0, fmt.Errorf("content-range %q, but the blob has %d bytes", v, size)
		}
	}
	if z >= size {
		return 0, 0, fmt.Errorf("content-range %q past the end of the blob (%d bytes)", v, size)
	}
	return a, z + 1, nil
}

// body is a checked response body. It yields exactly remaining bytes, then
// io.EOF; a body that ends early fails with a temporary *failure. Every
// byte read counts in the Client's, the host's and the blob's Bytes and
// restarts the attempt timer. Close frees the host slot.
//
// A framed body (multipart/byteranges) is read differently: see
// readFramed.
type body struct {
	rc        io.ReadCloser // nil until the response arrives
	remaining int64

	// framed: a multipart body, whose length is only known to its
	// parser. Then remaining is unused, Read counts no bytes (the parts'
	// payloads are counted with add) and fails once read runs more than
	// slack bytes ahead of paid, the bytes put where they were asked for.
	framed           bool
	slack, read, pay int64

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

// reject closes a body whose answer was not accepted because of err. It
// counts a failure against the host, unless err is a refused multi-range
// request.
func (r *body) reject(err error) {
	if !refused(err) {
		r.failed()
	}
	r.Close()
}

// Read implements io.Reader.
func (r *body) Read(p []byte) (int, error) {
	if r.framed {
		return r.readFramed(p)
	}
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

// readFramed reads a framed body. Its end (io.EOF) is passed on for the
// multipart parser to judge. Reading more than slack bytes beyond those
// paid for (part headers, boundaries, bytes not asked for, and what the
// parser buffers) fails with errOverlong, so neither a long answer nor a
// long part header is read without bound.
func (r *body) readFramed(p []byte) (int, error) {
	room := r.slack - (r.read - r.pay)
	if room <= 0 {
		r.failed()
		return 0, &failure{err: fmt.Errorf("%w: more than %d bytes besides those asked for", errOverlong, r.slack)}
	}
	if int64(len(p)) > room {
		p = p[:room]
	}
	n, err := r.rc.Read(p)
	if n > 0 {
		r.read += int64(n)
		r.timer.Reset(r.timeout)
	}
	switch {
	case err == nil || err == io.EOF:
		return n, err
	case errors.Is(err, io.ErrUnexpectedEOF) && r.ctx.Err() == nil && context.Cause(r.actx) == nil:
		r.failed()
		return n, &failure{temporary: true, err: errors.New("body truncated")}
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
