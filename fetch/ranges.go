package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"

	"golang.org/x/sync/errgroup"
)

const (
	// maxRangesPerRequest bounds the ranges named in one Range header
	// (after adjacent ones are merged); more go out in further requests.
	// Servers limit them too (Apache's MaxRanges is 200).
	maxRangesPerRequest = 64
	// A multipart answer may hold, besides the bytes asked for, part
	// headers, boundaries and bytes between ranges a server merged:
	// framedSlack plus partSlack per range asked for. framedSlack also
	// covers what the multipart parser reads ahead (4 KiB).
	framedSlack = 8 << 10
	partSlack   = 1 << 10
)

// ErrInvalidRange means [RemoteBlob.ReadRanges] was given ranges it does
// not read: empty, outside the blob, out of order or overlapping. Nothing
// is sent, and a retry cannot help.
var ErrInvalidRange = errors.New("invalid range")

var (
	// errMultiRange is the cause when an endpoint does not serve a
	// multi-range request as asked: it refused it (400, 416), ignored it
	// (200), served one range of several, or sent an answer fetch does not
	// take. It is no failure of the endpoint: the ranges are read one run
	// at a time instead.
	errMultiRange = errors.New("multi-range request not served")
	// errOverlong is the cause when a multipart answer holds more than it
	// may besides the bytes asked for.
	errOverlong = errors.New("answer too long")
)

// wholeBodySlack is how many bytes beyond twice those asked for a
// multi-range request may read of a whole blob sent instead (a 200): past
// that, the answer is dropped unread and the ranges asked for one by one.
const wholeBodySlack = 1 << 20

// refused reports whether err is a multi-range request not served.
func refused(err error) bool { return errors.Is(err, errMultiRange) }

// refusal is the failure of a multi-range request that the endpoint with
// the given status did not serve as asked, for the reason why (may be nil).
func refusal(status int, why error) *failure {
	if why == nil {
		return &failure{status: status, err: errMultiRange}
	}
	return &failure{status: status, err: fmt.Errorf("%w: %w", errMultiRange, why)}
}

// Range is the bytes [Off, Off+len(Buf)) of a blob, to be read into Buf.
type Range struct {
	// Off is the offset in the blob of the first byte.
	Off int64
	// Buf receives the bytes; its length says how many.
	Buf []byte
}

// end returns the offset just past the range.
func (r Range) end() int64 { return r.Off + int64(len(r.Buf)) }

// ReadRanges fills the Buf of every range in rs with the bytes of the
// blob at its Off. The ranges must be non-empty, within the blob, sorted
// by Off and must not overlap; else ReadRanges fails with
// [ErrInvalidRange] and sends nothing. No ranges is no request.
//
// One range is read as by ReadAt. Several go out in one GET with a
// multi-range header (adjacent ranges merged, at most 64 per request) to
// the first endpoint, mirrors first, as ReadAt's do. The answer may be a
// multipart/byteranges body whose parts, in any order, may each hold
// several of the ranges (a server may merge them); every part's
// Content-Range is checked against what was asked before its bytes are
// taken. Bytes that did not arrive (a broken or cut answer, parts left
// out) are asked for again, and only they, with retries as for ReadAt.
//
// An endpoint host that refuses multi-range requests (400, 416), ignores
// them (200: a mirror's answer is dropped at once, the registry's bytes
// are taken from its stream) or serves one range of several is
// remembered by the Client; from then on, and for what is still missing,
// ranges for that host are read one run of adjacent ranges per request,
// several at a time: a range on its own through ReadAt, shared with
// concurrent reads of the same bytes. A multipart answer fetch does not
// take (a part it did not ask for, of the wrong length, malformed, or too
// long) is handled the same way.
//
// ReadRanges returns nil when every Buf is filled, else an [*Error] for
// bytes it could not read; the Bufs then hold unspecified bytes. The
// bytes are not verified. Like ReadAt, it is safe for concurrent use.
func (b *RemoteBlob) ReadRanges(ctx context.Context, rs []Range) error {
	if err := b.checkRanges(rs); err != nil {
		return err
	}
	switch len(rs) {
	case 0:
		return nil
	case 1:
		_, err := b.ReadAt(ctx, rs[0].Buf, rs[0].Off)
		return err
	}
	if err := ctx.Err(); err != nil {
		return b.fail(rs[0].Off, rs[len(rs)-1].end(), err)
	}
	bs := batches(rs)
	var err error
	if len(bs) == 1 {
		err = b.readBatch(ctx, rs)
	} else {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(b.client.opts.maxConns)
		for _, batch := range bs {
			g.Go(func() error { return b.readBatch(gctx, batch) })
		}
		err = g.Wait()
	}
	if err != nil {
		b.client.stats.errors.Add(1)
		return err
	}
	return nil
}

// checkRanges checks the ranges given to ReadRanges.
func (b *RemoteBlob) checkRanges(rs []Range) error {
	for i, r := range rs {
		n := int64(len(r.Buf))
		var err error
		switch {
		case n == 0:
			err = fmt.Errorf("range %d at %d is empty", i, r.Off)
		case r.Off < 0:
			err = fmt.Errorf("range %d starts at negative offset %d", i, r.Off)
		case r.Off > b.size-n:
			err = fmt.Errorf("range %d (%d bytes at %d) ends past the end of the blob (%d bytes)", i, n, r.Off, b.size)
		case i > 0 && r.Off < rs[i-1].Off:
			err = fmt.Errorf("range %d at %d comes before range %d at %d: ranges must be sorted", i, r.Off, i-1, rs[i-1].Off)
		case i > 0 && r.Off < rs[i-1].end():
			err = fmt.Errorf("range %d [%d,%d) overlaps range %d [%d,%d)", i, r.Off, r.end(), i-1, rs[i-1].Off, rs[i-1].end())
		}
		if err != nil {
			return b.fail(0, 0, fmt.Errorf("%w: %w", ErrInvalidRange, err))
		}
	}
	return nil
}

// readBatch reads rs, at most maxRangesPerRequest runs, with multi-range
// requests and, if an endpoint does not serve them, one run at a time.
// It returns nil or an *Error.
func (b *RemoteBlob) readBatch(ctx context.Context, rs []Range) error {
	left, err := b.scatter(ctx, rs)
	if err != nil {
		return newError(b.digest, left[0].Off, left[len(left)-1].end(), err)
	}
	return b.readEach(ctx, left)
}

// readEach reads rs one run of adjacent ranges per request, several runs
// at once (the per-host limit bounds the connections): a range on its
// own through readAt, so that concurrent reads of the same bytes share a
// request, a longer run with one single-range request. It returns nil or
// an *Error for the first run that failed.
func (b *RemoteBlob) readEach(ctx context.Context, rs []Range) error {
	if len(rs) == 0 {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.client.opts.maxConns)
	for _, run := range splitRuns(rs) {
		g.Go(func() error {
			if len(run) == 1 {
				r := run[0]
				if n, err := b.readAt(gctx, r.Buf, r.Off); err != nil {
					return newError(b.digest, r.Off+int64(n), r.end(), err)
				}
				return nil
			}
			left, err := b.scatter(gctx, run)
			if err == nil && len(left) > 0 {
				err = errors.New("single-range request not served") // not expected: only multi-range requests stop early
			}
			if err != nil {
				return newError(b.digest, left[0].Off, left[len(left)-1].end(), err)
			}
			return nil
		})
	}
	return g.Wait()
}

// span is the bytes [off, end) of a blob.
type span struct{ off, end int64 }

// layout is how a body accepted for ranges holds the blob's bytes.
type layout struct {
	boundary string // multipart/byteranges: each part says what it holds
	off, end int64  // else: the body holds the bytes [off, end)
}

// scatter reads rs with requests for all of them at once, retried on
// temporary failures (asking only for what is still missing), and returns
// what it did not read: nothing, or, with a nil error, the ranges left
// when an endpoint did not serve a multi-range request (the host is then
// remembered), or, with a *failure, the ranges left when it gave up. A
// single run of adjacent ranges is asked for with a single range.
func (b *RemoteBlob) scatter(ctx context.Context, rs []Range) ([]Range, error) {
	left := rs
	err := b.retry(ctx, func(st *tries) (int, bool, error) {
		spans := runs(left)
		var lay layout
		q := b.rangesQuery(spans, &lay)
		bd, i, err := b.open(ctx, st, q)
		if err != nil {
			if refused(err) {
				return i, false, nil // left for readEach
			}
			return -1, false, err
		}
		before := total(left)
		left, err = b.take(bd, lay, spans, left)
		bd.Close()
		progress := total(left) < before
		switch {
		case len(left) == 0:
			return i, progress, nil // whatever went wrong after the last byte
		case refused(err):
			b.client.noteNoMultiRange(b.endpoints[i].host)
			return i, progress, nil
		case err != nil:
			return i, progress, err
		case len(left) > 0 && q.multi && lay.boundary == "":
			// One range of several: like go-containerregistry's
			// registry, which reads only the first.
			b.client.noteNoMultiRange(b.endpoints[i].host)
			return i, progress, nil
		case len(left) > 0:
			bd.failed()
			return i, progress, &failure{temporary: true, err: fmt.Errorf("the answer lacked %d of the bytes asked for", total(left))}
		}
		return i, progress, nil
	})
	return left, err
}

// rangesQuery is the query for spans: a single range for one span, else a
// multi-range request. Its accept sets *lay for a body it accepts.
func (b *RemoteBlob) rangesQuery(spans []span, lay *layout) *query {
	if len(spans) == 1 {
		s := spans[0]
		q := b.single(s.off, s.end, true)
		accept := q.accept
		q.accept = func(resp *http.Response, bd *body, e *endpoint, last bool) error {
			if err := accept(resp, bd, e, last); err != nil {
				return err
			}
			*lay = layout{off: s.off, end: s.end}
			return nil
		}
		return q
	}
	var h strings.Builder
	h.WriteString("bytes=")
	for i, s := range spans {
		if i > 0 {
			h.WriteByte(',')
		}
		fmt.Fprintf(&h, "%d-%d", s.off, s.end-1)
	}
	return &query{rng: h.String(), multi: true, accept: func(resp *http.Response, bd *body, e *endpoint, last bool) error {
		err := b.acceptRanges(resp, bd, spans, last, lay)
		if refused(err) || resp.StatusCode == http.StatusOK {
			b.client.noteNoMultiRange(e.host)
		}
		return err
	}}
}

// acceptRanges checks resp against a multi-range request for spans and
// sets *lay. last says whether a whole-blob answer may be used: then its
// bytes before the first span are skipped, and it is read no further than
// the last span.
func (b *RemoteBlob) acceptRanges(resp *http.Response, bd *body, spans []span, last bool, lay *layout) error {
	switch code := resp.StatusCode; code {
	case http.StatusPartialContent:
		slack := framedSlack + int64(len(spans))*partSlack
		if mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil && mt == "multipart/byteranges" {
			if params["boundary"] == "" {
				return refusal(code, errors.New("multipart answer without boundary"))
			}
			bd.framed, bd.slack = true, slack
			*lay = layout{boundary: params["boundary"]}
			return nil
		}
		off, end, err := parseContentRange(resp.Header.Get("Content-Range"), b.size)
		if err == nil {
			err = checkPart(off, end, spans, slack)
		}
		if err == nil && resp.ContentLength >= 0 && resp.ContentLength != end-off {
			err = fmt.Errorf("content-length %d for a range of %d bytes", resp.ContentLength, end-off)
		}
		if err != nil {
			return refusal(code, err)
		}
		bd.remaining = end - off
		*lay = layout{off: off, end: end}
		return nil
	case http.StatusOK:
		off, end := spans[0].off, spans[len(spans)-1].end
		var asked int64
		for _, sp := range spans {
			asked += sp.end - sp.off
		}
		if end > 2*asked+wholeBodySlack {
			// The ranges lie far into the blob (or far apart): streaming
			// the blob from its start to take them costs more than asking
			// again for each.
			return refusal(code, fmt.Errorf("the whole blob was sent for %d bytes of ranges ending at %d", asked, end))
		}
		if err := b.accept(resp, bd, off, end, true, last); err != nil {
			return err
		}
		*lay = layout{off: off, end: end}
		return nil
	case http.StatusBadRequest, http.StatusRequestedRangeNotSatisfiable:
		return refusal(code, nil)
	default:
		return statusFailure(code, resp.Header, bd.detail())
	}
}

// checkPart checks that a part holding [off, end) begins and ends in
// spans, the ranges asked for, and holds at most maxGap bytes between
// them: a server may merge ranges separated by a small gap.
func checkPart(off, end int64, spans []span, maxGap int64) error {
	first, last := -1, -1
	var asked int64
	for i, s := range spans {
		if s.off <= off && off < s.end {
			first = i
		}
		if s.off < end && end <= s.end {
			last = i
		}
		asked += max(0, min(end, s.end)-max(off, s.off))
	}
	if first < 0 || last < 0 {
		return fmt.Errorf("bytes %d-%d were not asked for", off, end-1)
	}
	if gap := end - off - asked; gap > maxGap {
		return fmt.Errorf("bytes %d-%d hold %d bytes not asked for", off, end-1, gap)
	}
	return nil
}

// take reads the answer bd, laid out as lay, to a request for spans, into
// the ranges left, and returns those still missing. It fails with a
// refusal when the answer is not one to take bytes from.
func (b *RemoteBlob) take(bd *body, lay layout, spans []span, left []Range) ([]Range, error) {
	if lay.boundary == "" {
		x, err := fill(bd, lay.off, lay.end, left, nil)
		return cut(left, lay.off, x), err
	}
	mr := multipart.NewReader(bd, lay.boundary)
	for {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			return left, nil
		}
		if err != nil {
			return left, partsFailure(bd, err)
		}
		off, end, err := parseContentRange(part.Header.Get("Content-Range"), b.size)
		if err == nil {
			err = checkPart(off, end, spans, bd.slack)
		}
		if err != nil {
			bd.failed()
			return left, refusal(http.StatusPartialContent, fmt.Errorf("part: %w", err))
		}
		pb := &partBody{part: part, bd: bd}
		x, err := fill(pb, off, end, left, func(n int) { bd.pay += int64(n) })
		long := false
		if err == nil {
			// All its bytes are here: the part must end with them.
			var one [1]byte
			if n, rerr := io.ReadFull(pb, one[:]); n > 0 {
				long = true
			} else if !pb.ended {
				err = rerr
			}
		}
		if long || err != nil && pb.ended {
			// The part is not as long as its Content-Range says, so its
			// bytes may be anything: they are asked for again.
			bd.failed()
			return left, refusal(http.StatusPartialContent, fmt.Errorf("part with content-range %q is not %d bytes long", part.Header.Get("Content-Range"), end-off))
		}
		if err != nil {
			// The answer broke off: what came is kept.
			return cut(left, off, x), partsFailure(bd, err)
		}
		left = cut(left, off, end)
	}
}

// partsFailure classifies err, met while reading a multipart answer.
func partsFailure(bd *body, err error) error {
	var f *failure
	switch {
	case errors.As(err, &f) && errors.Is(f, errOverlong):
		return refusal(http.StatusPartialContent, f.err)
	case f != nil:
		return f
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		bd.failed()
		return &failure{temporary: true, err: errors.New("multipart answer truncated")}
	default:
		bd.failed()
		return refusal(http.StatusPartialContent, err)
	}
}

// partBody reads the payload of a part, counting its bytes, and notes
// whether the part itself ended (as opposed to the answer under it).
type partBody struct {
	part  *multipart.Part
	bd    *body
	ended bool
}

func (p *partBody) Read(buf []byte) (int, error) {
	n, err := p.part.Read(buf)
	p.bd.add(n)
	if err == io.EOF {
		p.ended = true
	}
	return n, err
}

// fill reads the bytes [off, end) of the blob from r, copying those that
// ranges in left, sorted, ask for into their Bufs and reading past the
// others. paid, if not nil, is told how many bytes were copied. It returns
// how far it read: the bytes [off, x) came.
func fill(r io.Reader, off, end int64, left []Range, paid func(int)) (int64, error) {
	pos := off
	for _, p := range left {
		if p.Off >= end {
			break
		}
		lo, hi := max(p.Off, pos), min(p.end(), end)
		if lo >= hi {
			continue
		}
		if lo > pos {
			n, err := io.CopyN(io.Discard, r, lo-pos)
			pos += n
			if err != nil {
				return pos, err
			}
		}
		for dst := p.Buf[lo-p.Off : hi-p.Off]; len(dst) > 0; {
			n, err := r.Read(dst)
			pos += int64(n)
			dst = dst[n:]
			if paid != nil {
				paid(n)
			}
			if err == io.EOF && len(dst) > 0 {
				return pos, io.ErrUnexpectedEOF
			}
			if err != nil && err != io.EOF {
				return pos, err
			}
		}
	}
	if pos < end {
		n, err := io.CopyN(io.Discard, r, end-pos)
		pos += n
		if err != nil {
			return pos, err
		}
	}
	return pos, nil
}

// cut returns the ranges of rs, or the pieces of them, outside [off, end).
func cut(rs []Range, off, end int64) []Range {
	if off >= end {
		return rs
	}
	out := make([]Range, 0, len(rs)+1)
	for _, r := range rs {
		ro, re := r.Off, r.end()
		if re <= off || ro >= end {
			out = append(out, r)
			continue
		}
		if ro < off {
			out = append(out, Range{Off: ro, Buf: r.Buf[:off-ro]})
		}
		if re > end {
			out = append(out, Range{Off: end, Buf: r.Buf[end-ro:]})
		}
	}
	return out
}

// total returns the bytes rs hold.
func total(rs []Range) int64 {
	var n int64
	for _, r := range rs {
		n += int64(len(r.Buf))
	}
	return n
}

// runs merges adjacent ranges of rs, sorted, into spans.
func runs(rs []Range) []span {
	var out []span
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1].end == r.Off {
			out[n-1].end = r.end()
			continue
		}
		out = append(out, span{r.Off, r.end()})
	}
	return out
}

// splitRuns splits rs, sorted, into runs of adjacent ranges.
func splitRuns(rs []Range) [][]Range {
	var out [][]Range
	start := 0
	for i := 1; i <= len(rs); i++ {
		if i == len(rs) || rs[i].Off != rs[i-1].end() {
			out = append(out, rs[start:i])
			start = i
		}
	}
	return out
}

// batches splits rs, sorted, into groups of at most maxRangesPerRequest
// runs of adjacent ranges.
func batches(rs []Range) [][]Range {
	var out [][]Range
	start, n := 0, 0
	for i := range rs {
		if i == 0 || rs[i].Off != rs[i-1].end() {
			n++
		}
		if n > maxRangesPerRequest {
			out = append(out, rs[start:i])
			start, n = i, 1
		}
	}
	return append(out, rs[start:])
}
