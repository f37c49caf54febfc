package fetch

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

const (
	baseBackoff   = 50 * time.Millisecond
	maxBackoff    = 2 * time.Second
	maxRetryAfter = 30 * time.Second // longest Retry-After honoured
	maxDetail     = 4 << 10          // bytes of an error body read for its message
)

// errAttemptTimeout is the cause of an attempt context canceled by the
// request timeout (as opposed to the caller's context).
var errAttemptTimeout = errors.New("attempt timed out")

// backoff returns the pause before the retry that follows the given number
// of consecutive failures (0 for the first): exponential from baseBackoff,
// capped at maxBackoff, with the upper half jittered.
func backoff(failures int) time.Duration {
	d := maxBackoff
	if failures < 16 {
		d = min(baseBackoff<<failures, maxBackoff)
	}
	return d/2 + rand.N(d/2+1)
}

// wait decides whether the attempt that failed with last, after failures
// earlier consecutive failures, may be retried, and if so sleeps first. It
// returns nil when the caller should try again, else the error to give up
// with. It never sleeps past the deadline of ctx.
func (c *Client) wait(ctx context.Context, failures int, last error) error {
	if ctx.Err() != nil {
		return ctxFailure(ctx, last)
	}
	f := asFailure(last)
	if !f.temporary || failures >= c.opts.retries {
		return f
	}
	delay := backoff(failures)
	if f.retryAfter > 0 {
		delay = min(f.retryAfter, maxRetryAfter)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < delay {
		err := fmt.Errorf("giving up: retry in %s would pass the deadline", delay.Round(time.Millisecond))
		if f.err != nil {
			err = fmt.Errorf("%w: %w", err, f.err)
		}
		return &failure{status: f.status, temporary: true, pastDeadline: true, err: err}
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctxFailure(ctx, last)
	case <-t.C:
		return nil
	}
}

// ctxFailure is the error for a context that ended, keeping last, the
// real failure of an earlier attempt, if any: the result wraps the
// context's error, names last and is temporary when last was. A last
// that is itself such an error is returned as it is.
func ctxFailure(ctx context.Context, last error) *failure {
	if last != nil {
		if f := asFailure(last); f.ended {
			return f
		}
	}
	err := ctx.Err()
	if err == nil {
		err = context.Canceled // not expected: callers check ctx first
	}
	if last == nil {
		return &failure{ended: true, err: err}
	}
	return &failure{
		ended:     true,
		after:     last,
		temporary: asFailure(last).temporary,
		err:       fmt.Errorf("%w (last failure: %v)", err, last),
	}
}

// lastFailure is what a retry loop keeps after an attempt failed with err:
// err itself, unless the attempt failed only because ctx ended, in which
// case the real failure before it, prev, is kept in the result.
func lastFailure(ctx context.Context, prev, err error) error {
	if f := asFailure(err); !f.ended || f.after != nil || prev == nil {
		return err
	}
	return ctxFailure(ctx, prev)
}

// transportFailure classifies err from an HTTP round trip or body read made
// with actx, a child of the caller's ctx.
func transportFailure(ctx, actx context.Context, timeout time.Duration, err error) *failure {
	if ctx.Err() != nil {
		return ctxFailure(ctx, nil)
	}
	if errors.Is(context.Cause(actx), errAttemptTimeout) {
		return &failure{temporary: true, err: fmt.Errorf("%w: nothing received for %s", errAttemptTimeout, timeout)}
	}
	var f *failure
	if errors.As(err, &f) {
		return f
	}
	var te *transport.Error
	if errors.As(err, &te) {
		// From the handshake or a token refresh, not from the blob URL:
		// a 404 here does not mean the blob is missing.
		if te.StatusCode == http.StatusNotFound {
			return &failure{status: te.StatusCode, err: te}
		}
		f := statusFailure(te.StatusCode, nil, nil)
		f.err = joinCause(f.err, te)
		return f
	}
	err = redactURL(err)
	if permanent(err) {
		return &failure{err: err}
	}
	return &failure{temporary: true, err: err}
}

// permanent reports transport errors that no retry can fix.
func permanent(err error) bool {
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verification     *tls.CertificateVerificationError
	)
	return errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verification)
}

// redactURL drops the query of the URL in a *url.Error: after a redirect it
// is often a signed storage URL that must not end up in logs.
func redactURL(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil {
		return fmt.Errorf("%s: %w", strings.ToLower(ue.Op), ue.Err)
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return fmt.Errorf("%s %s: %w", strings.ToLower(ue.Op), u.Redacted(), ue.Err)
}

// joinCause wraps cause with a sentinel; either may be nil.
func joinCause(sentinel, cause error) error {
	switch {
	case sentinel == nil:
		return cause
	case cause == nil:
		return sentinel
	}
	return fmt.Errorf("%w: %w", sentinel, cause)
}

// statusFailure classifies an HTTP error status. header, if not nil,
// supplies Retry-After; detail is the registry's own message, if any.
func statusFailure(status int, header http.Header, detail error) *failure {
	f := &failure{status: status, err: detail}
	switch {
	case status == http.StatusNotFound:
		f.err = joinCause(ErrNotFound, detail)
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		f.err = joinCause(ErrUnauthorized, detail)
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable:
		f.temporary = true
		if header != nil {
			f.retryAfter = parseRetryAfter(header.Get("Retry-After"), time.Now())
		}
	case status == http.StatusRequestTimeout:
		f.temporary = true
	case status >= 500 && status != http.StatusNotImplemented && status != http.StatusHTTPVersionNotSupported:
		f.temporary = true
	}
	return f
}

// parseRetryAfter reads a Retry-After value in seconds or as an HTTP date.
// It returns 0 when there is nothing usable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		if s > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, maxRetryAfter)
		}
	}
	return 0
}

// registryErrors is the error body the distribution spec defines.
type registryErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// errorDetail turns the start of an error response body into a short
// message: the registry's error codes when it sent them, else the text.
// It returns nil when the body says nothing useful.
func errorDetail(body []byte) error {
	var re registryErrors
	if json.Unmarshal(body, &re) == nil && len(re.Errors) > 0 {
		parts := make([]string, 0, len(re.Errors))
		for _, e := range re.Errors {
			parts = append(parts, strings.TrimSpace(e.Code+": "+e.Message))
		}
		return errors.New(clean(strings.Join(parts, "; ")))
	}
	s := strings.TrimSpace(string(body))
	if s == "" || strings.HasPrefix(s, "<") || !utf8.ValidString(s) {
		return nil
	}
	return errors.New(clean(s))
}

// clean keeps a message to one short printable line.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
	if len(s) > 200 {
		s = s[:200]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}
