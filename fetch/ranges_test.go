package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

// serveContent answers blob GETs with net/http's ServeContent over the
// blob: single ranges, multipart/byteranges for several.
func serveContent(blob []byte) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}
}

// onMulti applies f to blob GETs that ask for several ranges; the others
// pass.
func onMulti(f fault) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) && strings.Contains(r.Header.Get("Range"), ",") {
				f(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// askedSpans parses a Range header "bytes=a-b,c-d" as fetch sends it.
func askedSpans(t testing.TB, h string) []span {
	v, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		t.Errorf("Range %q", h)
		return nil
	}
	var out []span
	for _, r := range strings.Split(v, ",") {
		a, z, _ := strings.Cut(r, "-")
		off, err1 := strconv.ParseInt(a, 10, 64)
		last, err2 := strconv.ParseInt(z, 10, 64)
		if err1 != nil || err2 != nil {
			t.Errorf("Range %q", h)
			return nil
		}
		out = append(out, span{off, last + 1})
	}
	return out
}

// testPart is one part of a multipart/byteranges answer a test server
// writes.
type testPart struct {
	off, end int64  // the blob bytes sent
	cr       string // Content-Range claimed; "" for the true one
	junk     bool   // send 0xEE bytes instead of the blob's
	drop     int    // leave out the last drop bytes
	extra    int    // add extra bytes after the payload
	pad      int    // add a header of pad bytes
	abort    bool   // drop the connection after abortAt payload bytes
	abortAt  int
}

// partsFault answers a blob GET with the multipart/byteranges body that
// parts makes from the ranges asked for.
func partsFault(t testing.TB, blob []byte, parts func(asked []span) []testPart) fault {
	return func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		mw := multipart.NewWriter(w)
		w.Header().Set("Content-Type", "multipart/byteranges; boundary="+mw.Boundary())
		w.WriteHeader(http.StatusPartialContent)
		for _, p := range parts(askedSpans(t, r.Header.Get("Range"))) {
			cr := p.cr
			if cr == "" {
				cr = fmt.Sprintf("bytes %d-%d/%d", p.off, p.end-1, len(blob))
			}
			h := textproto.MIMEHeader{"Content-Range": {cr}, "Content-Type": {"application/octet-stream"}}
			if p.pad > 0 {
				h.Set("X-Padding", strings.Repeat("x", p.pad))
			}
			pw, err := mw.CreatePart(h)
			if err != nil {
				return
			}
			payload := slices.Clone(blob[p.off : p.end-int64(p.drop)])
			if p.junk {
				for i := range payload {
					payload[i] = 0xEE
				}
			}
			payload = append(payload, bytes.Repeat([]byte{0xEE}, p.extra)...)
			if p.abort {
				pw.Write(payload[:p.abortAt])
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}
			if _, err := pw.Write(payload); err != nil {
				return
			}
		}
		mw.Close()
	}
}

// makeRanges returns ranges with buffers for the given [off, end) pairs.
func makeRanges(spans ...span) []Range {
	rs := make([]Range, len(spans))
	for i, s := range spans {
		rs[i] = Range{Off: s.off, Buf: make([]byte, s.end-s.off)}
	}
	return rs
}

// checkBytes fails unless every range holds the blob's bytes.
func checkBytes(t testing.TB, blob []byte, rs []Range) {
	t.Helper()
	for i, r := range rs {
		if !bytes.Equal(r.Buf, blob[r.Off:r.end()]) {
			t.Errorf("range %d [%d,%d): bytes differ from the layer", i, r.Off, r.end())
		}
	}
}

// rangeHeaders returns the Range headers rec saw.
func rangeHeaders(rec *recorder) []string {
	var out []string
	for _, h := range rec.headers() {
		out = append(out, h.Get("Range"))
	}
	return out
}

// spansOf returns the byte ranges of rs as a Range header would name them
// after merging adjacent ones.
func spansOf(rs []Range) string {
	var parts []string
	for _, s := range runs(rs) {
		parts = append(parts, fmt.Sprintf("%d-%d", s.off, s.end-1))
	}
	return "bytes=" + strings.Join(parts, ",")
}

// scattered returns n ranges of size bytes spread over a blob of total
// bytes, each starting at a multiple of size.
func scattered(n int, size, total int64, seed uint64) []Range {
	r := rand.New(rand.NewPCG(seed, 2))
	slots := r.Perm(int(total / size))[:n]
	slices.Sort(slots)
	var spans []span
	for _, s := range slots {
		spans = append(spans, span{int64(s) * size, int64(s+1) * size})
	}
	return makeRanges(spans...)
}

// TestReadRanges: a server that serves multipart/byteranges gets one
// request for several ranges (at most 64 after merging adjacent ones);
// a run of adjacent ranges goes as one single range.
func TestReadRanges(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 256<<10)
	n := int64(len(layer.blob))
	tests := []struct {
		name      string
		rs        []Range
		wantReqs  int
		wantMulti bool // the first request names several ranges
	}{
		{name: "start and end", rs: makeRanges(span{0, 100}, span{n - 100, n}), wantReqs: 1, wantMulti: true},
		{name: "first and last byte", rs: makeRanges(span{0, 1}, span{n - 1, n}), wantReqs: 1, wantMulti: true},
		{name: "adjacent and apart", rs: makeRanges(span{1000, 2000}, span{2000, 3000}, span{3000, 3001}, span{9000, 10000}), wantReqs: 1, wantMulti: true},
		{name: "all adjacent", rs: makeRanges(span{10, 20}, span{20, 5000}, span{5000, 5001}), wantReqs: 1},
		{name: "one range", rs: makeRanges(span{123, 4567}), wantReqs: 1},
		{name: "whole blob in two", rs: makeRanges(span{0, n / 2}, span{n / 2, n}), wantReqs: 1},
		{name: "16 scattered", rs: scattered(16, 4096, n, 1), wantReqs: 1, wantMulti: true},
		{name: "100 scattered", rs: scattered(100, 1024, n, 2), wantReqs: 2, wantMulti: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			env := newEnv(t, envConfig{layer: &layer, mw: chain(recordBlobGets(rec), faultAll(serveContent(layer.blob)))})
			c := env.client(t)
			b := env.remoteBlob(t, c)
			if err := b.ReadRanges(context.Background(), tt.rs); err != nil {
				t.Fatal(err)
			}
			checkBytes(t, layer.blob, tt.rs)
			hs := rangeHeaders(rec)
			if len(hs) != tt.wantReqs {
				t.Fatalf("%d blob GETs (%q), want %d", len(hs), hs, tt.wantReqs)
			}
			if multi := strings.Contains(hs[0], ","); multi != tt.wantMulti {
				t.Errorf("Range %q, want multi-range: %v", hs[0], tt.wantMulti)
			}
			if tt.wantReqs == 1 && hs[0] != spansOf(tt.rs) {
				t.Errorf("Range %q, want %q", hs[0], spansOf(tt.rs))
			}
			s := c.Stats()
			h := s.Hosts[hostOf(env)]
			if s.Requests != int64(tt.wantReqs) || s.Bytes != total(tt.rs) || s.Retries != 0 || s.Errors != 0 || h.Failures != 0 || h.NoMultiRange {
				t.Errorf("Stats = %+v, want %d requests, %d bytes, nothing else", s, tt.wantReqs, total(tt.rs))
			}
			if bs := b.Stats(); bs.Requests != int64(tt.wantReqs) || bs.Bytes != total(tt.rs) {
				t.Errorf("blob Stats = %+v", bs)
			}
		})
	}
}

// TestReadRangesSingleRangeServers: go-containerregistry's registry
// answers a multi-range request with its first range; other servers
// refuse such requests (400, 416) or ignore Range (200). The bytes come
// all the same, the host is remembered, and later reads ask for single
// ranges only, one per run of adjacent ranges.
func TestReadRangesSingleRangeServers(t *testing.T) {
	t.Parallel()
	// Five ranges in four runs, the last one at the end of the blob.
	toEnd := func(n int64) []Range {
		return makeRanges(span{10, 1000}, span{5000, 6000}, span{6000, 7000}, span{20000, 30000}, span{n - 10, n})
	}
	notToEnd := func(n int64) []Range { return toEnd(n)[:4] }
	tests := []struct {
		name string
		mw   middleware
		rs   func(n int64) []Range
		// wantGets: the blob GETs of the first read, given its runs
		wantGets func(runs int) int
		// wantBytes: Stats.Bytes after the first read; nil for the
		// bytes asked for
		wantBytes func(rs []Range) int64
	}{
		{name: "registry", rs: toEnd, wantGets: func(runs int) int { return runs }},
		{name: "400", mw: onMulti(statusFault(http.StatusBadRequest)), rs: toEnd, wantGets: func(runs int) int { return 1 + runs }},
		{
			name: "416", mw: onMulti(statusFault(http.StatusRequestedRangeNotSatisfiable, "Content-Range", "bytes */1")),
			rs: toEnd, wantGets: func(runs int) int { return 1 + runs },
		},
		{
			// The bytes are taken from the stream, which is read up to
			// the last byte asked for and no further.
			name: "range ignored", mw: onMulti(ignoreRangeFault), rs: toEnd, wantGets: func(int) int { return 1 },
			wantBytes: func(rs []Range) int64 { return rs[len(rs)-1].end() },
		},
		{
			name: "range ignored, not to the end", mw: onMulti(ignoreRangeFault), rs: notToEnd, wantGets: func(int) int { return 1 },
			wantBytes: func(rs []Range) int64 { return rs[len(rs)-1].end() },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			mw := recordBlobGets(rec)
			if tt.mw != nil {
				mw = chain(mw, tt.mw)
			}
			env := newEnv(t, envConfig{mw: mw})
			c := env.client(t)
			b := env.remoteBlob(t, c)
			first := tt.rs(b.Size())
			if err := b.ReadRanges(context.Background(), first); err != nil {
				t.Fatal(err)
			}
			checkBytes(t, env.blob, first)
			hs := rangeHeaders(rec)
			t.Logf("first read: %q", hs)
			if want := tt.wantGets(len(runs(first))); len(hs) != want {
				t.Errorf("%d blob GETs, want %d", len(hs), want)
			}
			if len(hs) == 0 || hs[0] != spansOf(first) {
				t.Fatalf("Range headers %q, want %q first", hs, spansOf(first))
			}
			for _, h := range hs[1:] {
				if strings.Contains(h, ",") {
					t.Errorf("fallback Range %q names several ranges", h)
				}
			}
			s := c.Stats()
			h := s.Hosts[hostOf(env)]
			if !h.NoMultiRange {
				t.Errorf("host stats %+v, want NoMultiRange", h)
			}
			// A refusal is no failure of the blob or of the host.
			if s.Errors != 0 || s.Retries != 0 || s.Fallbacks != 0 || h.Failures != 0 || s.Requests != int64(len(hs)) {
				t.Errorf("Stats = %+v, want no error, retry or failure", s)
			}
			wantBytes := total(first)
			if tt.wantBytes != nil {
				wantBytes = tt.wantBytes(first)
			}
			if s.Bytes != wantBytes {
				t.Errorf("Stats.Bytes = %d, want %d", s.Bytes, wantBytes)
			}

			again := toEnd(b.Size())
			if err := b.ReadRanges(context.Background(), again); err != nil {
				t.Fatal(err)
			}
			checkBytes(t, env.blob, again)
			later := rangeHeaders(rec)[len(hs):]
			if len(later) != len(runs(again)) {
				t.Errorf("second read: %d blob GETs (%q), want %d", len(later), later, len(runs(again)))
			}
			for _, h := range later {
				if strings.Contains(h, ",") {
					t.Errorf("second read sent Range %q", h)
				}
			}
		})
	}
}

// TestReadRangesWholeBlobFarAhead: the registry answers a multi-range
// request with the whole blob (as storage that ignores multi-range
// requests does) while the ranges lie megabytes into it: the answer is
// dropped unread and the ranges asked for one by one.
func TestReadRangesWholeBlobFarAhead(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 4<<20)
	rec := &recorder{}
	env := newEnv(t, envConfig{layer: &layer, mw: chain(recordBlobGets(rec), onMulti(ignoreRangeFault))})
	c := env.client(t)
	b := env.remoteBlob(t, c)
	rs := makeRanges(span{3 << 20, 3<<20 + 1000}, span{7 << 19, 7<<19 + 1000})
	if err := b.ReadRanges(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, layer.blob, rs)
	hs := rangeHeaders(rec)
	if len(hs) != 3 || hs[0] != spansOf(rs) || strings.Contains(hs[1], ",") || strings.Contains(hs[2], ",") {
		t.Errorf("Range headers %q, want the multi-range one, then one per range", hs)
	}
	s := c.Stats()
	if h := s.Hosts[hostOf(env)]; !h.NoMultiRange || s.Bytes != total(rs) {
		t.Errorf("host stats %+v, Bytes %d: want NoMultiRange and only the %d bytes asked for read", h, s.Bytes, total(rs))
	}
}

// TestReadRangesAnswers: answers in multipart/byteranges that are right
// but not laid out as asked, answers that break off or lack parts (what is
// missing is asked for again, and only that), and answers fetch does not
// take bytes from (the ranges are then read one by one and the host is
// remembered).
func TestReadRangesAnswers(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 16<<10)
	// Every blob GET is answered by the faults below, from these bytes.
	// None is a CR: a multipart parser holds back a CR at the end of
	// what it received, which would make where a cut answer ends vary.
	blob := make([]byte, 256<<10)
	for i := range blob {
		blob[i] = byte('a' + i%26)
	}
	desc := v1.Descriptor{Digest: layer.desc.Digest, Size: int64(len(blob))}
	n := int64(len(blob))
	// The ranges read: two adjacent ones, then two apart.
	read := func() []Range {
		return makeRanges(span{100, 200}, span{200, 300}, span{350, 1350}, span{50000, 60000})
	}
	// asIs sends the asked spans, each in its own part, changed by f.
	asIs := func(f func(i int, p *testPart)) func([]span) []testPart {
		return func(asked []span) []testPart {
			var ps []testPart
			for i, s := range asked {
				p := testPart{off: s.off, end: s.end}
				if f != nil {
					f(i, &p)
				}
				ps = append(ps, p)
			}
			return ps
		}
	}
	tests := []struct {
		name  string
		parts func(asked []span) []testPart
		// wantLater: the Range headers after the first, which is the
		// multi-range request for all of read().
		wantLater   []string
		wantNoMulti bool // the host is remembered
		wantRetries int64
		wantFailure bool // counted against the host
	}{
		{name: "as asked", parts: asIs(nil)},
		{name: "reversed", parts: func(asked []span) []testPart {
			ps := asIs(nil)(asked)
			slices.Reverse(ps)
			return ps
		}},
		{name: "merged across a gap", parts: func(asked []span) []testPart {
			return []testPart{{off: asked[0].off, end: asked[1].end}, {off: asked[2].off, end: asked[2].end}}
		}},
		{name: "one range in two parts", parts: func(asked []span) []testPart {
			s := asked[2]
			return []testPart{{off: asked[0].off, end: asked[0].end}, {off: asked[1].off, end: asked[1].end}, {off: s.off, end: s.off + 3}, {off: s.off + 3, end: s.end}}
		}},
		{name: "part twice", parts: func(asked []span) []testPart {
			ps := asIs(nil)(asked)
			return append(ps, ps[1])
		}},
		{
			name: "part left out", parts: func(asked []span) []testPart { return asIs(nil)(asked[:2]) },
			wantLater: []string{"bytes=50000-59999"}, wantRetries: 1, wantFailure: true,
		},
		{
			name: "broken off", parts: asIs(func(i int, p *testPart) {
				if i == 1 {
					p.abort, p.abortAt = true, 400
				}
			}),
			wantLater: []string{"bytes=750-1349,50000-59999"}, wantRetries: 1, wantFailure: true,
		},
		{
			// Every byte came; the answer broke off before its end.
			name: "broken off after the last byte", parts: asIs(func(i int, p *testPart) {
				if i == 2 {
					p.abort, p.abortAt = true, int(p.end-p.off)
				}
			}),
			wantFailure: true,
		},
		{
			name: "part not asked for", parts: asIs(func(i int, p *testPart) {
				if i == 1 {
					p.cr = fmt.Sprintf("bytes %d-%d/%d", p.off+1, p.end, n)
				}
			}),
			wantLater: []string{"bytes=350-1349", "bytes=50000-59999"}, wantNoMulti: true, wantFailure: true,
		},
		{
			name: "part before the ranges", parts: func(asked []span) []testPart {
				return append([]testPart{{off: 0, end: 10}}, asIs(nil)(asked)...)
			},
			wantLater: []string{"bytes=100-299", "bytes=350-1349", "bytes=50000-59999"}, wantNoMulti: true, wantFailure: true,
		},
		{
			name: "wrong size", parts: asIs(func(i int, p *testPart) {
				if i == 0 {
					p.cr = fmt.Sprintf("bytes %d-%d/%d", p.off, p.end-1, n+1)
				}
			}),
			wantLater: []string{"bytes=100-299", "bytes=350-1349", "bytes=50000-59999"}, wantNoMulti: true, wantFailure: true,
		},
		{
			name: "part too short", parts: asIs(func(i int, p *testPart) {
				if i == 1 {
					p.drop = 10
				}
			}),
			wantLater: []string{"bytes=350-1349", "bytes=50000-59999"}, wantNoMulti: true, wantFailure: true,
		},
		{
			name: "part too long", parts: asIs(func(i int, p *testPart) {
				if i == 1 {
					p.extra = 10
				}
			}),
			wantLater: []string{"bytes=350-1349", "bytes=50000-59999"}, wantNoMulti: true, wantFailure: true,
		},
		{
			name: "huge part header", parts: asIs(func(i int, p *testPart) {
				if i == 1 {
					p.pad = 64 << 10
				}
			}),
			wantLater: []string{"bytes=350-1349", "bytes=50000-59999"}, wantNoMulti: true, wantFailure: true,
		},
		{
			name: "gap too large", parts: func(asked []span) []testPart {
				return []testPart{{off: asked[0].off, end: asked[2].end}}
			},
			wantLater: []string{"bytes=100-299", "bytes=350-1349", "bytes=50000-59999"}, wantNoMulti: true, wantFailure: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			env := newEnv(t, envConfig{layer: &layer, mw: chain(
				recordBlobGets(rec),
				faultFirst(1, partsFault(t, blob, tt.parts)),
				faultAll(serveContent(blob)),
			)})
			c := env.client(t)
			b, err := c.Blob(context.Background(), env.repo, desc)
			if err != nil {
				t.Fatal(err)
			}
			rs := read()
			if err := b.ReadRanges(context.Background(), rs); err != nil {
				t.Fatal(err)
			}
			checkBytes(t, blob, rs)
			hs := rangeHeaders(rec)
			if len(hs) == 0 || hs[0] != spansOf(rs) {
				t.Fatalf("Range headers %q, want %q first", hs, spansOf(rs))
			}
			later := hs[1:]
			slices.Sort(later) // single ranges go out in parallel
			if !slices.Equal(later, tt.wantLater) {
				t.Errorf("later Range headers %q, want %q", later, tt.wantLater)
			}
			s := c.Stats()
			h := s.Hosts[hostOf(env)]
			if h.NoMultiRange != tt.wantNoMulti {
				t.Errorf("NoMultiRange = %v, want %v", h.NoMultiRange, tt.wantNoMulti)
			}
			// A bad or broken answer is a failure of the host.
			if (h.Failures == 1) != tt.wantFailure || h.Failures > 1 {
				t.Errorf("host Failures = %d, want a failure: %v", h.Failures, tt.wantFailure)
			}
			if s.Retries != tt.wantRetries || s.Errors != 0 {
				t.Errorf("Stats = %+v, want %d retries and no error", s, tt.wantRetries)
			}
		})
	}
}

// TestReadRangesBadPartNeverCopied: the bytes of a part that claims bytes
// not asked for never reach a buffer; when single ranges fail too, the
// read fails with the single range's error.
func TestReadRangesBadPartNeverCopied(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	n := int64(len(layer.blob))
	bad := partsFault(t, layer.blob, func(asked []span) []testPart {
		return []testPart{
			{off: asked[0].off, end: asked[0].end},
			{off: asked[1].off, end: asked[1].end, junk: true, cr: fmt.Sprintf("bytes %d-%d/%d", asked[1].off+1, asked[1].end, n)},
		}
	})
	env := newEnv(t, envConfig{layer: &layer, mw: chain(
		onMulti(bad),
		faultAll(statusFault(http.StatusServiceUnavailable)),
	)})
	c := env.client(t, WithRetries(1))
	b := env.remoteBlob(t, c)
	rs := makeRanges(span{0, 1000}, span{2000, 3000})
	for i := range rs[1].Buf {
		rs[1].Buf[i] = 0x5A
	}
	err := b.ReadRanges(context.Background(), rs)
	t.Logf("ReadRanges: %v", err)
	var fe *Error
	if !errors.As(err, &fe) || fe.Status != http.StatusServiceUnavailable || fe.Off != 2000 || fe.End != 3000 || !fe.Temporary {
		t.Fatalf("err = %v, want a temporary 503 *Error for [2000,3000)", err)
	}
	checkBytes(t, layer.blob, rs[:1])
	if !bytes.Equal(rs[1].Buf, bytes.Repeat([]byte{0x5A}, 1000)) {
		t.Error("the bad part's bytes reached the buffer")
	}
	if s := c.Stats(); s.Errors != 1 || !s.Hosts[hostOf(env)].NoMultiRange {
		t.Errorf("Stats = %+v, want 1 error and the host remembered", s)
	}
}

// TestReadRangesKeepsFailing: a server that breaks off every answer makes
// the read fail, after the retries, with a temporary error for the bytes
// still missing.
func TestReadRangesKeepsFailing(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	cut := partsFault(t, layer.blob, func(asked []span) []testPart {
		return []testPart{{off: asked[0].off, end: asked[0].end, abort: true}}
	})
	env := newEnv(t, envConfig{layer: &layer, mw: faultAll(cut)})
	c := env.client(t, WithRetries(2))
	b := env.remoteBlob(t, c)
	rs := makeRanges(span{100, 1000}, span{2000, 3000})
	err := b.ReadRanges(context.Background(), rs)
	t.Logf("ReadRanges: %v", err)
	var fe *Error
	if !errors.As(err, &fe) || !fe.Temporary || fe.Off != 100 || fe.End != 3000 {
		t.Fatalf("err = %v, want a temporary *Error for [100,3000)", err)
	}
	if s := c.Stats(); s.Requests != 3 || s.Retries != 2 || s.Errors != 1 || s.Hosts[hostOf(env)].NoMultiRange {
		t.Errorf("Stats = %+v, want 3 requests, 2 retries, 1 error, multi-range still on", s)
	}
}

// TestReadRangesMirror: a mirror that answers a multi-range request with
// the whole blob (a cold pull-through cache) is dropped at once, its body
// unread; the origin serves the ranges. The mirror is remembered.
func TestReadRangesMirror(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 256<<10)
	originRec, mirrorRec := &recorder{}, &recorder{}
	origin := newEnv(t, envConfig{layer: &layer, mw: chain(recordBlobGets(originRec), faultAll(serveContent(layer.blob)))})
	mirror := newEnv(t, envConfig{layer: &layer, mw: chain(recordBlobGets(mirrorRec), faultAll(ignoreRangeFault))})
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.\"http://%s\"]\n", hostOf(mirror)))
	c := origin.client(t, WithHostsDir(dir))
	b := origin.remoteBlob(t, c)
	rs := makeRanges(span{100, 200}, span{100000, 110000})
	if err := b.ReadRanges(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, layer.blob, rs)
	s := c.Stats()
	mh, oh := s.Hosts[hostOf(mirror)], s.Hosts[hostOf(origin)]
	if mh.Requests != 1 || mh.Bytes != 0 || !mh.NoMultiRange {
		t.Errorf("mirror host stats %+v, want 1 request, no bytes read, NoMultiRange", mh)
	}
	if oh.Requests != 1 || oh.Bytes != total(rs) || oh.NoMultiRange {
		t.Errorf("origin host stats %+v, want 1 request for %d bytes", oh, total(rs))
	}
	if s.Fallbacks != 1 || s.Retries != 0 || s.Errors != 0 {
		t.Errorf("Stats = %+v, want 1 fallback", s)
	}
	if hs := rangeHeaders(originRec); len(hs) != 1 || hs[0] != spansOf(rs) {
		t.Errorf("origin saw Range %q, want %q", hs, spansOf(rs))
	}
}

// TestReadRangesMirrorSingleOnly: once a mirror is known to serve single
// ranges only, ranges are read from it one by one; the origin, which
// serves multi-range requests, is not asked instead.
func TestReadRangesMirrorSingleOnly(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer, mw: faultAll(serveContent(layer.blob))})
	mirrorRec := &recorder{}
	mirror := newEnv(t, envConfig{layer: &layer, mw: recordBlobGets(mirrorRec)}) // the registry: first range only
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.\"http://%s\"]\n", hostOf(mirror)))
	c := origin.client(t, WithHostsDir(dir))
	b := origin.remoteBlob(t, c)
	for range 2 {
		rs := makeRanges(span{0, 10}, span{100, 200}, span{1000, 2000})
		if err := b.ReadRanges(context.Background(), rs); err != nil {
			t.Fatal(err)
		}
		checkBytes(t, layer.blob, rs)
	}
	hs := rangeHeaders(mirrorRec)
	if len(hs) != 6 || strings.Count(strings.Join(hs, " "), ",") != 2 {
		t.Errorf("mirror saw %q, want one multi-range request, then single ranges", hs)
	}
	if g := origin.blobGets.Load(); g != 0 {
		t.Errorf("origin saw %d blob GETs", g)
	}
	if s := c.Stats(); !s.Hosts[hostOf(mirror)].NoMultiRange || s.Fallbacks != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

// TestReadRangesRedirect: multi-range requests follow redirects to
// storage, and go straight there once the storage URL is known. A
// storage host that refuses them leaves the URL in place; the registry
// (the endpoint) is remembered.
func TestReadRangesRedirect(t *testing.T) {
	t.Parallel()
	for _, refuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("refuse=%v", refuse), func(t *testing.T) {
			t.Parallel()
			layer := newTestLayer(t, 64<<10)
			storageRec := &recorder{}
			var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(layer.blob))
			})
			if refuse {
				h = onMulti(statusFault(http.StatusRequestedRangeNotSatisfiable))(h)
			}
			storage := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				storageRec.record(r)
				h.ServeHTTP(w, r)
			}))
			env := newEnv(t, envConfig{layer: &layer, mw: faultAll(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
				http.Redirect(w, r, storage.URL+r.URL.Path+"?sig=1", http.StatusTemporaryRedirect)
			})})
			c := env.client(t)
			b := env.remoteBlob(t, c)
			// A first read learns the storage URL.
			if _, err := b.ReadAt(context.Background(), make([]byte, 10), 0); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				rs := makeRanges(span{0, 10}, span{100, 200}, span{1000, 2000})
				if err := b.ReadRanges(context.Background(), rs); err != nil {
					t.Fatal(err)
				}
				checkBytes(t, layer.blob, rs)
			}
			if g := env.blobGets.Load(); g != 1 {
				t.Errorf("registry saw %d blob GETs, want 1", g)
			}
			multi := 0
			for _, r := range rangeHeaders(storageRec) {
				if strings.Contains(r, ",") {
					multi++
				}
			}
			s := c.Stats()
			wantMulti := 2
			if refuse {
				wantMulti = 1
			}
			if multi != wantMulti || s.Hosts[hostOf(env)].NoMultiRange != refuse || s.Reresolves != 0 || s.Errors != 0 {
				t.Errorf("storage saw %d multi-range requests (want %d); Stats = %+v", multi, wantMulti, s)
			}
		})
	}
}

func TestReadRangesInvalid(t *testing.T) {
	t.Parallel()
	env := newEnv(t, envConfig{layer: ptr(newTestLayer(t, 16<<10))})
	c := env.client(t)
	b := env.remoteBlob(t, c)
	n := b.Size()
	tests := []struct {
		name string
		rs   []Range
		want string // in the message
	}{
		{"overlapping", makeRanges(span{0, 100}, span{50, 150}), "overlaps range 0"},
		{"unsorted", makeRanges(span{100, 200}, span{0, 50}), "must be sorted"},
		{"duplicate", makeRanges(span{100, 200}, span{100, 200}), "overlaps"},
		{"past the end", makeRanges(span{0, 10}, span{n - 5, n + 5}), "past the end"},
		{"one past the end", makeRanges(span{n, n + 1}), "past the end"},
		{"negative", []Range{{Off: -1, Buf: make([]byte, 10)}}, "negative"},
		{"empty", []Range{{Off: 0, Buf: make([]byte, 10)}, {Off: 20}}, "range 1 at 20 is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := b.ReadRanges(context.Background(), tt.rs)
			var fe *Error
			if !errors.Is(err, ErrInvalidRange) || !errors.As(err, &fe) || fe.Temporary || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want a permanent ErrInvalidRange naming %q", err, tt.want)
			}
		})
	}
	if err := b.ReadRanges(context.Background(), nil); err != nil {
		t.Errorf("no ranges: %v", err)
	}
	if g := env.blobGets.Load(); g != 0 {
		t.Errorf("%d blob GETs, want none", g)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.ReadRanges(ctx, makeRanges(span{0, 1}, span{5, 6})); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: err = %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestReadRangesConcurrent: many reads at once, against a server with
// multi-range support and against one without (found out while the reads
// run).
func TestReadRangesConcurrent(t *testing.T) {
	t.Parallel()
	for _, multi := range []bool{true, false} {
		t.Run(fmt.Sprintf("multi=%v", multi), func(t *testing.T) {
			t.Parallel()
			layer := newTestLayer(t, 256<<10)
			cfg := envConfig{layer: &layer}
			if multi {
				cfg.mw = faultAll(serveContent(layer.blob))
			}
			env := newEnv(t, cfg)
			c := env.client(t)
			b := env.remoteBlob(t, c)
			n := b.Size()
			var g errgroup.Group
			var want atomic.Int64
			for w := range 8 {
				g.Go(func() error {
					r := rand.New(rand.NewPCG(uint64(w), 3))
					for range 10 {
						var spans []span
						for off := r.Int64N(4096); off < n; {
							end := min(n, off+1+r.Int64N(8192))
							spans = append(spans, span{off, end})
							off = end + r.Int64N(n/4)
						}
						rs := makeRanges(spans...)
						if err := b.ReadRanges(context.Background(), rs); err != nil {
							return err
						}
						for _, rg := range rs {
							if !bytes.Equal(rg.Buf, layer.blob[rg.Off:rg.end()]) {
								return fmt.Errorf("bytes at %d differ", rg.Off)
							}
						}
						want.Add(total(rs))
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			s := c.Stats()
			if s.Errors != 0 || s.Hosts[hostOf(env)].NoMultiRange == multi {
				t.Errorf("Stats = %+v", s)
			}
			if multi && s.Bytes != want.Load() {
				t.Errorf("Stats.Bytes = %d, want %d", s.Bytes, want.Load())
			}
		})
	}
}

// TestRangeHelpers covers the pieces ReadRanges cuts its ranges into.
func TestRangeHelpers(t *testing.T) {
	buf := make([]byte, 30)
	rs := []Range{{Off: 0, Buf: buf[:10]}, {Off: 10, Buf: buf[10:20]}, {Off: 40, Buf: buf[20:30]}}
	if got, want := runs(rs), []span{{0, 20}, {40, 50}}; !slices.Equal(got, want) {
		t.Errorf("runs = %v, want %v", got, want)
	}
	if got := splitRuns(rs); len(got) != 2 || len(got[0]) != 2 || len(got[1]) != 1 {
		t.Errorf("splitRuns = %v", got)
	}
	left := cut(rs, 5, 45)
	if len(left) != 2 || left[0].Off != 0 || len(left[0].Buf) != 5 || left[1].Off != 45 || len(left[1].Buf) != 5 || &left[1].Buf[0] != &buf[25] {
		t.Errorf("cut = %+v", left)
	}
	var many []Range
	for i := range 130 {
		many = append(many, Range{Off: int64(i) * 20, Buf: buf[:10]})
	}
	if bs := batches(many); len(bs) != 3 || len(bs[0]) != maxRangesPerRequest || len(bs[2]) != 2 {
		t.Errorf("batches of 130: %d", len(bs))
	}
	tests := []struct {
		off, end int64
		ok       bool
	}{
		{0, 20, true}, {5, 15, true}, {0, 50, true}, {0, 21, false}, {19, 41, true}, {20, 40, false}, {39, 50, false}, {40, 51, false},
	}
	for _, tt := range tests {
		if err := checkPart(tt.off, tt.end, []span{{0, 20}, {40, 50}}, 20); (err == nil) != tt.ok {
			t.Errorf("checkPart(%d, %d) = %v, want ok %v", tt.off, tt.end, err, tt.ok)
		}
	}
}

// BenchmarkReadRanges compares reading 16 scattered 64 KiB ranges of a
// 16 MiB blob over loopback with one ReadRanges call (one multi-range
// request) and with 16 ReadAt calls, one after the other and all at once.
//
//	go test -run '^$' -bench ReadRanges ./fetch/
func BenchmarkReadRanges(b *testing.B) {
	const size, chunk, count = 16 << 20, 64 << 10, 16
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{2}).Read(data)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			return // the ping: 200, no authentication
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	env := &testEnv{srv: srv}
	c, err := New(WithHostsDir(""))
	if err != nil {
		b.Fatal(err)
	}
	blob := benchBlob(b, c, env, size)
	rs := scattered(count, chunk, size, 7)
	b.Run("ReadRanges", func(b *testing.B) {
		b.SetBytes(count * chunk)
		for b.Loop() {
			if err := blob.ReadRanges(context.Background(), rs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ReadAt-serial", func(b *testing.B) {
		b.SetBytes(count * chunk)
		for b.Loop() {
			for _, r := range rs {
				if _, err := blob.ReadAt(context.Background(), r.Buf, r.Off); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("ReadAt-parallel", func(b *testing.B) {
		b.SetBytes(count * chunk)
		for b.Loop() {
			var g errgroup.Group
			for _, r := range rs {
				g.Go(func() error {
					_, err := blob.ReadAt(context.Background(), r.Buf, r.Off)
					return err
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchBlob returns a blob of size bytes on env's server through c. The
// digest is made up: fetch does not verify bytes.
func benchBlob(b *testing.B, c *Client, env *testEnv, size int64) *RemoteBlob {
	b.Helper()
	repo, err := name.NewRepository(env.srv.Listener.Addr().String()+"/bench/blob", name.Insecure)
	if err != nil {
		b.Fatal(err)
	}
	desc := v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}, Size: size}
	blob, err := c.Blob(context.Background(), repo, desc)
	if err != nil {
		b.Fatal(err)
	}
	return blob
}
