package bench

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"
)

// fakeClock stands still and records what the proxy waited for, so the
// test counts delays instead of timing them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	waited []time.Time
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) SleepUntil(t time.Time) {
	c.mu.Lock()
	c.waited = append(c.waited, t)
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
		switch w.Sub(clk.now) {
		case delay:
			oneWay++
		case 3 * delay:
			handshake++
		default:
			t.Errorf("waited until now+%v, want +%v or +%v", w.Sub(clk.now), delay, 3*delay)
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
