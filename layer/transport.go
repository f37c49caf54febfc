package layer

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// schemeGuard keeps plain HTTP to the registries allowed it: loopback hosts
// and those named insecure. Any other http:// request is sent as https://.
// (go-containerregistry picks plain HTTP for private addresses on its own.)
// With pings set, it also answers registry pings through them (see
// pingRace); with ahead set, the manifest request sent ahead of the
// handshake answers the request it stood in for (see manifestAhead).
type schemeGuard struct {
	next     http.RoundTripper
	insecure map[string]bool
	pings    *pingRace
	ahead    *manifestAhead
}

// newSchemeGuard returns next behind a schemeGuard for the insecure hosts;
// pings, if not nil, is shared by every guard of one image's transports.
func newSchemeGuard(next http.RoundTripper, insecure []string, pings *pingRace) *schemeGuard {
	g := &schemeGuard{next: next, insecure: map[string]bool{}, pings: pings}
	for _, h := range insecure {
		g.insecure[h] = true
	}
	return g
}

func (g *schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.allowsHTTP(req.URL.Host) {
		req = req.Clone(req.Context())
		req.URL.Scheme = "https"
	}
	if g.pings == nil {
		return g.next.RoundTrip(req)
	}
	if isPing(req) {
		return g.pings.roundTrip(g.next, req, g.allowsHTTP(req.URL.Host))
	}
	if g.ahead != nil {
		if resp, ok := g.ahead.answer(req); ok {
			return resp, nil
		}
	}
	resp, err := g.next.RoundTrip(req)
	if req.Context().Err() == nil && (err != nil || staleAnswerStatus(resp.StatusCode)) {
		g.pings.distrust(req.URL.Host)
	}
	return resp, err
}

// staleAnswerStatus says whether a registry's status may come of a kept
// ping answer gone stale: a request without the credentials the registry
// now asks for, or in plain HTTP to a port that now speaks TLS.
func staleAnswerStatus(status int) bool {
	return status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusBadRequest
}

func (g *schemeGuard) allowsHTTP(hostport string) bool {
	if g.insecure[hostport] {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if g.insecure[host] {
		return true
	}
	return isLoopback(host)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// isPing says whether req is a registry ping: GET /v2/, the first request
// of every handshake.
func isPing(req *http.Request) bool {
	return req.Method == http.MethodGet && req.URL.Path == "/v2/" && req.URL.RawQuery == ""
}

// pingMemory is how long a ping's outcome answers later pings of its host
// in memory; a pingBook answers them for longer (pingBookAge).
const pingMemory = time.Minute

// pingTimeout bounds a race.
const pingTimeout = 30 * time.Second

// maxPingBody bounds the body of a ping's answer kept for later pings.
const maxPingBody = 64 << 10

// pingBook keeps hosts' ping outcomes from one mount to the next (the
// Store's pings/), so that a mount of a known registry sends no ping.
type pingBook interface {
	// loadPing returns host's outcome if one is kept and fresh, else nil.
	loadPing(host string) *pingOutcome
	// savePing keeps o, a registry's answer, as host's outcome.
	savePing(host string, o *pingOutcome)
	// forgetPing drops host's outcome.
	forgetPing(host string)
}

// pingRace shortens the handshake with a registry, which
// go-containerregistry begins with a ping (GET /v2/) whose answer says
// how to authenticate. For a host allowed plain HTTP it asks
// https://HOST/v2/ first and http://HOST/v2/ once that failed (or after
// 300 ms): for a plain-HTTP registry one connection and round trip after
// another, for the manifest client and the blob client alike (25 ms of a
// 0.21 s cold mount on the bench's network). Here the first https ping of
// such a host sends both pings at once; a host not allowed plain HTTP is
// pinged over https alone.
//
// A registry's answer (200 or 401) to the https ping, or an https failure
// other than by a caller's context together with the registry's answer to
// the http ping, is the host's outcome: it answers the pings of the host
// that follow, the failure the https pings and the http answer the http
// ones, for pingMemory and, through the book if there is one, in the
// mounts that follow for pingBookAge (a failure only when the server
// answered in plain HTTP, not one that may pass). Any other outcome is
// not remembered, and the next ping goes out again. Pings of one host at
// the same time share one race, which runs apart from their contexts,
// bounded by pingTimeout.
//
// A kept outcome can be stale (the registry began asking for credentials,
// or moved to TLS): a request to the host that then fails, or is answered
// 400, 401 or 403, drops the host's outcome from the book, and a
// resolution that failed after pings were answered from the book is tried
// again without them (see forgetBooked and Resolve).
type pingRace struct {
	group singleflight.Group
	book  pingBook // nil: outcomes are kept in memory only
	mu    sync.Mutex
	// raced are the outcomes of recent races, by host (guarded by mu).
	raced map[string]*pingOutcome
	// booked are the hosts whose pings the book answered (guarded by mu).
	booked map[string]bool
}

// pingOutcome is how a host's pings ended.
type pingOutcome struct {
	at       time.Time
	httpsErr error       // nil: https answered
	secure   *pingAnswer // without httpsErr, the https answer if a registry's (200 or 401)
	plain    *pingAnswer // with httpsErr, the http ping's registry answer
	fromBook bool        // read from the book
}

// pingAnswer is a ping's response, read.
type pingAnswer struct {
	status int
	header http.Header
	body   []byte
}

// newPingRace returns a race whose outcomes book, if not nil, keeps.
func newPingRace(book pingBook) *pingRace {
	return &pingRace{book: book, raced: map[string]*pingOutcome{}, booked: map[string]bool{}}
}

// roundTrip answers the ping req, sent through next; plainAllowed says
// whether req's host may be asked over plain HTTP.
func (p *pingRace) roundTrip(next http.RoundTripper, req *http.Request, plainAllowed bool) (*http.Response, error) {
	host := req.URL.Host
	if o := p.recent(host); o != nil {
		switch {
		case o.httpsErr == nil && o.secure != nil && req.URL.Scheme == "https":
			p.used(host, o)
			return o.secure.response(req), nil
		case o.httpsErr == nil:
			return next.RoundTrip(req) // it speaks TLS: no race
		case !plainAllowed:
			// learnt while the host was allowed plain HTTP: ask again
		case req.URL.Scheme == "http":
			p.used(host, o)
			return o.plain.response(req), nil
		default:
			p.used(host, o)
			return nil, o.httpsErr
		}
	}
	if req.URL.Scheme != "https" {
		return next.RoundTrip(req)
	}
	ch := p.group.DoChan(host, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(req.Context()), pingTimeout)
		defer cancel()
		return p.race(next, req.WithContext(ctx), plainAllowed)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*pingAnswer).response(req), nil
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
}

// race sends req and, if withPlain, its http twin at once, and returns
// req's answer, remembering how it ended.
func (p *pingRace) race(next http.RoundTripper, req *http.Request, withPlain bool) (*pingAnswer, error) {
	var plain chan *pingAnswer
	if withPlain {
		plain = make(chan *pingAnswer, 1)
		twin := req.Clone(req.Context())
		twin.URL.Scheme = "http"
		go func() {
			a, err := readPing(next, twin)
			if err != nil || !a.fromRegistry() {
				a = nil
			}
			plain <- a
		}()
	}
	a, err := readPing(next, req)
	o := &pingOutcome{httpsErr: err}
	switch {
	case err == nil && a.fromRegistry():
		o.secure = a
	case err == nil:
	case plain == nil:
		return nil, err
	default:
		o.plain = <-plain
		if o.plain == nil || req.Context().Err() != nil {
			return nil, err // nothing to go by: the next ping races again
		}
	}
	o.at = time.Now()
	p.mu.Lock()
	p.raced[req.URL.Host] = o
	p.mu.Unlock()
	if p.book != nil && (o.secure != nil || o.plain != nil && speaksNoTLS(err)) {
		p.book.savePing(req.URL.Host, o)
	}
	return a, err
}

// speaksNoTLS says whether err, an https request's failure, shows the
// server answered in plain HTTP: then, and not for a failure that may pass
// (a reset, a timeout), the book may keep the host as plain HTTP.
func speaksNoTLS(err error) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh) || errors.Is(err, http.ErrSchemeMismatch)
}

// recent returns host's outcome, if it came within pingMemory or the book
// holds a fresh one.
func (p *pingRace) recent(host string) *pingOutcome {
	p.mu.Lock()
	o := p.raced[host]
	p.mu.Unlock()
	if o != nil && time.Since(o.at) <= pingMemory {
		return o
	}
	if p.book == nil {
		return nil
	}
	return p.book.loadPing(host)
}

// used notes that o answered a ping of host.
func (p *pingRace) used(host string, o *pingOutcome) {
	if !o.fromBook {
		return
	}
	p.mu.Lock()
	p.booked[host] = true
	p.mu.Unlock()
}

// distrust drops host's outcome from the book if the book answered its
// pings: a request to host failed.
func (p *pingRace) distrust(host string) {
	p.mu.Lock()
	booked := p.booked[host]
	p.mu.Unlock()
	if booked {
		p.book.forgetPing(host)
	}
}

// forgetBooked drops from the book the outcomes that answered pings, and
// says whether there were any: a resolution that failed may then be tried
// again, with a new pingRace.
func (p *pingRace) forgetBooked() bool {
	p.mu.Lock()
	hosts := p.booked
	p.booked = map[string]bool{}
	p.mu.Unlock()
	for h := range hosts {
		p.book.forgetPing(h)
	}
	return len(hosts) > 0
}

// readPing sends req through next and reads its answer.
func readPing(next http.RoundTripper, req *http.Request) (*pingAnswer, error) {
	resp, err := next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPingBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxPingBody {
		return nil, fmt.Errorf("ping %s: answer over %d bytes", req.URL.Redacted(), maxPingBody)
	}
	return &pingAnswer{status: resp.StatusCode, header: resp.Header.Clone(), body: body}, nil
}

// fromRegistry says whether a is a registry's answer to a ping: 200, or
// 401 and how to authenticate.
func (a *pingAnswer) fromRegistry() bool {
	return a.status == http.StatusOK || a.status == http.StatusUnauthorized
}

// response is a as the response to req.
func (a *pingAnswer) response(req *http.Request) *http.Response {
	return &http.Response{
		Status:     fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)),
		StatusCode: a.status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: a.header.Clone(), Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body)),
		Request: req,
	}
}
