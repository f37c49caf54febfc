package bench

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ProxyStats is what a Proxy has served since it started or was last
// reset: requests, response body bytes, and bytes written on the wire
// (headers included).
type ProxyStats struct {
	Requests  int64 `json:"requests"`
	BodyBytes int64 `json:"bodyBytes"`
	WireBytes int64 `json:"wireBytes"`
}

// Sub returns s - o, for the traffic between two snapshots.
func (s ProxyStats) Sub(o ProxyStats) ProxyStats {
	return ProxyStats{s.Requests - o.Requests, s.BodyBytes - o.BodyBytes, s.WireBytes - o.WireBytes}
}

// Proxy is an HTTP reverse proxy to a registry that delays every byte by
// Delay in each direction (so a round trip costs 2*Delay, plus one more
// round trip for a new connection's handshake) and counts what it serves.
// It stands in for tc netem where the kernel has none.
type Proxy struct {
	upstream *url.URL
	delay    time.Duration
	clock    clock
	rp       *httputil.ReverseProxy
	logf     func(format string, args ...any) // nil: no request log

	requests  atomic.Int64
	bodyBytes atomic.Int64
	wireBytes atomic.Int64
}

// NewProxy returns a proxy to upstream adding oneWay of delay to each
// direction.
func NewProxy(upstream *url.URL, oneWay time.Duration) *Proxy {
	p := &Proxy{upstream: upstream, delay: oneWay, clock: realClock{}}
	p.rp = httputil.NewSingleHostReverseProxy(upstream)
	p.rp.FlushInterval = -1 // pass bytes on as they come, as a network would
	p.rp.Transport = &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	p.rp.ErrorLog = nil
	return p
}

// LogRequests makes the proxy log each request it served: when it came,
// what it asked for, the body bytes and the time taken (delays
// included only as far as this side sees them).
func (p *Proxy) LogRequests(logf func(format string, args ...any)) { p.logf = logf }

// Stats returns the counters.
func (p *Proxy) Stats() ProxyStats {
	return ProxyStats{p.requests.Load(), p.bodyBytes.Load(), p.wireBytes.Load()}
}

// ServeHTTP counts the request and passes it on.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.requests.Add(1)
	if p.logf == nil {
		p.rp.ServeHTTP(&countingWriter{ResponseWriter: w, n: &p.bodyBytes}, r)
		return
	}
	var n atomic.Int64
	cw := &countingWriter{ResponseWriter: w, n: &p.bodyBytes, req: &n}
	start := time.Now()
	p.rp.ServeHTTP(cw, r)
	// The client's address tells its connections apart.
	p.logf("%s %s %s %s range=%q: %d bytes in %v", start.Format("15:04:05.000"), r.RemoteAddr, r.Method, r.URL.Path,
		r.Header.Get("Range"), n.Load(), time.Since(start).Round(time.Millisecond))
}

// Serve serves the proxy on l, delaying every accepted connection, until l
// is closed.
func (p *Proxy) Serve(l net.Listener) error {
	srv := &http.Server{Handler: p, ReadHeaderTimeout: time.Minute}
	err := srv.Serve(&delayListener{Listener: l, p: p})
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// StatsHandler answers GET with the counters as JSON, without delay.
func (p *Proxy) StatsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p.Stats())
	})
}

// countingWriter counts the body bytes written, as they are written, into
// n (and req, if set).
type countingWriter struct {
	http.ResponseWriter
	n   *atomic.Int64
	req *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	if c.req != nil {
		c.req.Add(int64(n))
	}
	return n, err
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type delayListener struct {
	net.Listener
	p *Proxy
}

func (l *delayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newDelayConn(c, l.p.delay, l.p.clock, &l.p.wireBytes), nil
}

// clock is time, replaceable in tests so that they count instead of time.
type clock interface {
	Now() time.Time
	SleepUntil(t time.Time)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) SleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

// chunk is bytes in flight and the time they entered the emulated link.
type chunk struct {
	b   []byte
	at  time.Time
	err error
}

// delayConn delays both directions of a connection by delay, keeping the
// link pipelined: bytes are held until delay after they were sent, not
// serialized behind one another. Bytes received within a round trip of
// the connection's accept wait until that round trip is over, for the TCP
// handshake the real link would have cost: a client that connects ahead
// of its first request (as real TCP does its handshake at connect) does
// not pay it again then.
type delayConn struct {
	net.Conn
	delay    time.Duration
	clock    clock
	wire     *atomic.Int64
	accepted time.Time // when the connection was accepted

	in      chan chunk // filled by readLoop
	pending []byte     // the rest of the chunk Read is serving
	inErr   error      // sticky, after the reader's last chunk

	// Read deadlines are kept here, not passed to the connection: the
	// HTTP server aborts its background read with a deadline in the past,
	// which must not end readLoop (and with it a kept-alive connection).
	dlMu sync.Mutex
	dl   time.Time     // guarded by dlMu
	dlCh chan struct{} // closed when dl changes; guarded by dlMu

	out       chan chunk // drained by writeLoop
	writeDone chan struct{}
	outErr    atomic.Pointer[error]
	closeOnce sync.Once
	closeErr  error
}

func newDelayConn(c net.Conn, delay time.Duration, clk clock, wire *atomic.Int64) *delayConn {
	d := &delayConn{
		Conn: c, delay: delay, clock: clk, wire: wire, accepted: clk.Now(),
		in: make(chan chunk, 256), out: make(chan chunk, 256), writeDone: make(chan struct{}),
		dlCh: make(chan struct{}),
	}
	go d.readLoop()
	go d.writeLoop()
	return d
}

func (d *delayConn) readLoop() {
	handshaken := d.accepted.Add(2 * d.delay) // the handshake's round trip
	for {
		b := make([]byte, 32<<10)
		n, err := d.Conn.Read(b)
		at := d.clock.Now()
		if at.Before(handshaken) {
			at = handshaken
		}
		if n > 0 {
			d.in <- chunk{b: b[:n], at: at}
		}
		if err != nil {
			d.in <- chunk{at: at, err: err}
			close(d.in)
			return
		}
	}
}

// SetReadDeadline bounds Read without touching the connection.
func (d *delayConn) SetReadDeadline(t time.Time) error {
	d.dlMu.Lock()
	d.dl = t
	close(d.dlCh)
	d.dlCh = make(chan struct{})
	d.dlMu.Unlock()
	return nil
}

// SetDeadline sets the read deadline; writes are queued and never block.
func (d *delayConn) SetDeadline(t time.Time) error { return d.SetReadDeadline(t) }

// SetWriteDeadline is ignored: Write only queues.
func (d *delayConn) SetWriteDeadline(time.Time) error { return nil }

func (d *delayConn) Read(p []byte) (int, error) {
	for len(d.pending) == 0 {
		if d.inErr != nil {
			return 0, d.inErr
		}
		d.dlMu.Lock()
		dl, changed := d.dl, d.dlCh
		d.dlMu.Unlock()
		var expired <-chan time.Time
		if !dl.IsZero() {
			wait := time.Until(dl)
			if wait <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(wait)
			defer t.Stop()
			expired = t.C
		}
		select {
		case c, ok := <-d.in:
			if !ok {
				return 0, io.EOF
			}
			d.clock.SleepUntil(c.at.Add(d.delay))
			if c.err != nil {
				d.inErr = c.err
				return 0, c.err
			}
			d.pending = c.b
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		case <-changed:
		}
	}
	n := copy(p, d.pending)
	d.pending = d.pending[n:]
	return n, nil
}

func (d *delayConn) Write(p []byte) (int, error) {
	if e := d.outErr.Load(); e != nil {
		return 0, *e
	}
	b := make([]byte, len(p))
	copy(b, p)
	d.out <- chunk{b: b, at: d.clock.Now()}
	return len(p), nil
}

func (d *delayConn) writeLoop() {
	defer close(d.writeDone)
	for c := range d.out {
		if d.outErr.Load() != nil {
			continue // drain
		}
		d.clock.SleepUntil(c.at.Add(d.delay))
		n, err := d.Conn.Write(c.b)
		d.wire.Add(int64(n))
		if err != nil {
			d.outErr.Store(&err)
		}
	}
}

// Close delivers what was written, then closes the connection.
func (d *delayConn) Close() error {
	d.closeOnce.Do(func() {
		close(d.out)
		select {
		case <-d.writeDone:
		case <-time.After(10 * time.Second):
		}
		d.closeErr = d.Conn.Close()
		go func() { // let readLoop finish
			for range d.in {
			}
		}()
	})
	return d.closeErr
}
