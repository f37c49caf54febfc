package layer

import (
	"bytes"
	"context"
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
// With pings set, it also races the two pings of a host allowed plain
// HTTP (see pingRace).
type schemeGuard struct {
	next     http.RoundTripper
	insecure map[string]bool
	pings    *pingRace
}

// newSchemeGuard returns next behind a schemeGuard for the insecure hosts;
// pings, if not nil, is shared by every guard of one image's transports.
func newSchemeGuard(next http.RoundTripper, insecure []string, pings *pingRace) http.RoundTripper {
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
	if g.pings != nil && isPing(req) && g.allowsHTTP(req.URL.Host) {
		return g.pings.roundTrip(g.next, req)
	}
	return g.next.RoundTrip(req)
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

// pingMemory is how long a race's outcome answers later pings of its host.
const pingMemory = time.Minute

// pingTimeout bounds a race.
const pingTimeout = 30 * time.Second

// maxPingBody bounds the body of a ping's answer kept for later pings.
const maxPingBody = 64 << 10

// pingRace shortens the handshake with a registry host allowed plain
// HTTP. go-containerregistry's ping asks https://HOST/v2/ first and
// http://HOST/v2/ once that failed (or after 300 ms): for a plain-HTTP
// registry one connection and round trip after another, for the manifest
// client and the blob client alike (25 ms of a 0.21 s cold mount on the
// bench's network). Here the first https ping of such a host sends both
// pings at once. A successful https answer is returned (the host is then
// pinged as usual for pingMemory). When https fails other than by a
// caller's context and a registry gave the http answer (200 or 401), the
// failure answers the https pings, and the http answer the http pings,
// that follow for pingMemory; any other outcome is not remembered, and
// the next ping races again. Pings of one host at the same time share one
// race, which runs apart from their contexts, bounded by pingTimeout.
type pingRace struct {
	group singleflight.Group
	mu    sync.Mutex
	// raced are the outcomes of recent races, by host (guarded by mu).
	raced map[string]*pingOutcome
}

// pingOutcome is how a race ended.
type pingOutcome struct {
	at       time.Time
	httpsErr error       // nil: https answered
	plain    *pingAnswer // with httpsErr, the http ping's registry answer; nil if none
}

// pingAnswer is a ping's response, read.
type pingAnswer struct {
	status int
	header http.Header
	body   []byte
}

func newPingRace() *pingRace { return &pingRace{raced: map[string]*pingOutcome{}} }

// roundTrip answers the ping req, sent through next.
func (p *pingRace) roundTrip(next http.RoundTripper, req *http.Request) (*http.Response, error) {
	host := req.URL.Host
	o := p.recent(host)
	switch {
	case o != nil && o.httpsErr == nil:
		return next.RoundTrip(req) // it speaks TLS: no race
	case req.URL.Scheme == "http" && o != nil && o.plain != nil:
		return o.plain.response(req), nil
	case req.URL.Scheme != "https":
		return next.RoundTrip(req)
	case o != nil:
		return nil, o.httpsErr
	}
	ch := p.group.DoChan(host, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(req.Context()), pingTimeout)
		defer cancel()
		return p.race(next, req.WithContext(ctx))
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

// race sends req and its http twin at once, and returns req's answer,
// remembering how it ended (a failure with the twin's answer).
func (p *pingRace) race(next http.RoundTripper, req *http.Request) (*pingAnswer, error) {
	twin := req.Clone(req.Context())
	twin.URL.Scheme = "http"
	plain := make(chan *pingAnswer, 1)
	go func() {
		a, err := readPing(next, twin)
		if err != nil || (a.status != http.StatusOK && a.status != http.StatusUnauthorized) {
			a = nil
		}
		plain <- a
	}()
	a, err := readPing(next, req)
	o := &pingOutcome{httpsErr: err}
	if err != nil {
		o.plain = <-plain
		if o.plain == nil || req.Context().Err() != nil {
			return nil, err // nothing to go by: the next ping races again
		}
	}
	o.at = time.Now()
	p.mu.Lock()
	p.raced[req.URL.Host] = o
	p.mu.Unlock()
	return a, err
}

// recent returns how host's race ended, if that was within pingMemory.
func (p *pingRace) recent(host string) *pingOutcome {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.raced[host]
	if o == nil || time.Since(o.at) > pingMemory {
		return nil
	}
	return o
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

// response is a as the response to req.
func (a *pingAnswer) response(req *http.Request) *http.Response {
	return &http.Response{
		Status:     fmt.Sprintf("%d %s", a.status, http.StatusText(a.status)),
		StatusCode: a.status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: a.header.Clone(), Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body)),
		Request: req,
	}
}
