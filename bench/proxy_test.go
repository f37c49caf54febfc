package bench

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock stands still (unless advanced) and records what the proxy
// waited for, so the test counts delays instead of timing them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	waited []time.Duration // how far ahead of the clock each SleepUntil was asked
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) SleepUntil(t time.Time) {
	c.mu.Lock()
	c.waited = append(c.waited, t.Sub(c.now))
	c.mu.Unlock()
}

func TestProxyDelaysAndCounts(t *testing.T) {
	body := bytes.Repeat([]byte("lazyroot"), 100_000) // 800 kB
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(body)
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	const delay = 10 * time.Millisecond
	p := NewProxy(u, delay)
	clk := &fakeClock{now: time.Unix(1000, 0)}
	p.clock = clk
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(l) }()
	client := &http.Client{Transport: &http.Transport{}}
	for i := 0; i < 3; i++ {
		resp, err := client.Get("http://" + l.Addr().String() + "/v2/blob")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("request %d: %d bytes, err %v", i, len(got), err)
		}
		clk.advance(3 * delay) // the next request comes after the handshake
	}
	resp, err := client.Get("http://" + l.Addr().String() + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()
	l.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	st := p.Stats()
	if st.Requests != 4 {
		t.Errorf("requests = %d, want 4", st.Requests)
	}
	if min := int64(3 * len(body)); st.BodyBytes < min || st.BodyBytes > min+100 {
		t.Errorf("body bytes = %d, want %d plus the 404's body", st.BodyBytes, min)
	}
	if st.WireBytes <= st.BodyBytes {
		t.Errorf("wire bytes %d should exceed body bytes %d (headers)", st.WireBytes, st.BodyBytes)
	}
	clk.mu.Lock()
	defer clk.mu.Unlock()
	oneWay, handshake := 0, 0
	for _, w := range clk.waited {
		switch w {
		case delay:
			oneWay++
		case 3 * delay:
			handshake++
		default:
			t.Errorf("waited until now+%v, want +%v or +%v", w, delay, 3*delay)
		}
	}
	// One connection (keep-alive): its first request bytes pay the
	// handshake, everything else one way.
	if handshake != 1 {
		t.Errorf("%d handshake waits, want 1 (one connection)", handshake)
	}
	if oneWay < 4 {
		t.Errorf("%d one-way waits, want every response and request delayed", oneWay)
	}
}

func TestProxyStatsSub(t *testing.T) {
	a := ProxyStats{Requests: 10, BodyBytes: 1000, WireBytes: 1200}
	b := ProxyStats{Requests: 4, BodyBytes: 300, WireBytes: 400}
	if got := a.Sub(b); got != (ProxyStats{6, 700, 800}) {
		t.Fatalf("Sub = %+v", got)
	}
}

// TestProxyHandshakeCountsFromAccept: the first bytes of a connection pay
// the handshake's round trip only if they come within it; a connection
// made ahead of its first request pays one way then, as over real TCP.
func TestProxyHandshakeCountsFromAccept(t *testing.T) {
	const delay = 10 * time.Millisecond
	for _, tc := range []struct {
		name  string
		later time.Duration // from accept to the first bytes
		want  time.Duration // their wait, from when they came
	}{
		{"at once", 0, 3 * delay},
		{"within the handshake", delay, 2 * delay},
		{"after it", 5 * delay, delay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fakeClock{now: time.Unix(1000, 0)}
			client, server := net.Pipe()
			defer client.Close()
			var wire atomic.Int64
			d := newDelayConn(server, delay, clk, &wire)
			defer d.Close()
			clk.advance(tc.later)
			go client.Write([]byte("GET / HTTP/1.1\r\n"))
			buf := make([]byte, 64)
			if _, err := d.Read(buf); err != nil {
				t.Fatal(err)
			}
			clk.mu.Lock()
			defer clk.mu.Unlock()
			if len(clk.waited) == 0 || clk.waited[0] != tc.want {
				t.Errorf("waited %v, want %v", clk.waited, tc.want)
			}
		})
	}
}
