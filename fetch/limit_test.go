package fetch

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReadAtDeduplicates(t *testing.T) {
	t.Parallel()
	env := newEnv(t, envConfig{mw: faultAll(delayFault(300 * time.Millisecond))})
	c := env.client(t)
	b := env.remoteBlob(t, c)

	const readers = 16
	off, size := int64(12345), 50000
	var g errgroup.Group
	start := make(chan struct{})
	for range readers {
		g.Go(func() error {
			<-start
			p := make([]byte, size)
			if _, err := b.ReadAt(context.Background(), p, off); err != nil {
				return err
			}
			if !bytes.Equal(p, env.blob[off:off+int64(size)]) {
				return errors.New("bytes differ from the layer")
			}
			return nil
		})
	}
	close(start)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := env.blobGets.Load(); n != 1 {
		t.Errorf("%d blob GETs for %d concurrent reads of the same bytes, want 1", n, readers)
	}
	if s := c.Stats(); s.Requests != 1 || s.Deduplicated != readers-1 || s.Bytes != int64(size) {
		t.Errorf("Stats = %+v, want 1 request, %d deduplicated, %d bytes", s, readers-1, size)
	}
	if s := b.Stats(); s.Requests != 1 || s.Bytes != int64(size) {
		t.Errorf("blob Stats = %+v", s)
	}

	// Different bytes are not shared.
	var g2 errgroup.Group
	for i := range 4 {
		g2.Go(func() error {
			_, err := b.ReadAt(context.Background(), make([]byte, 100), int64(i)*100)
			return err
		})
	}
	if err := g2.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := env.blobGets.Load(); n != 5 {
		t.Errorf("%d blob GETs, want 5", n)
	}
}

// TestDeduplicatedLeaderLeaves: when the read that holds the request is
// canceled, the reads waiting for it carry on with a request of their own.
func TestDeduplicatedLeaderLeaves(t *testing.T) {
	t.Parallel()
	// The leader's request gets no answer until the leader leaves, and
	// the request that replaces it none until the other followers joined
	// it, however slowly each of them runs.
	release := make(chan struct{})
	hold := faultAll(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		next.ServeHTTP(w, r)
	})
	env := newEnv(t, envConfig{mw: chain(faultFirst(1, stallFault), hold)})
	c := env.client(t)
	b := env.remoteBlob(t, c)
	off, size := int64(100), 1000

	lctx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := b.ReadAt(lctx, make([]byte, size), off)
		leaderErr <- err
	}()
	waitFor(t, "the leader's request", func() bool { return env.blobGets.Load() == 1 })

	var g errgroup.Group
	for range 3 {
		g.Go(func() error {
			p := make([]byte, size)
			if _, err := b.ReadAt(context.Background(), p, off); err != nil {
				return err
			}
			if !bytes.Equal(p, env.blob[off:off+int64(size)]) {
				return errors.New("bytes differ from the layer")
			}
			return nil
		})
	}
	joined := func(n int) func() bool {
		return func() bool {
			c.flightMu.Lock()
			defer c.flightMu.Unlock()
			for _, f := range c.flights {
				return f.joined == n
			}
			return false
		}
	}
	waitFor(t, "followers", joined(3))
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: err = %v, want context.Canceled", err)
	}
	// One follower leads now; the other two wait for its request.
	waitFor(t, "the new leader's request", func() bool { return env.blobGets.Load() == 2 })
	waitFor(t, "followers of the new leader", joined(2))
	close(release)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := env.blobGets.Load(); n != 2 {
		t.Errorf("%d blob GETs, want 2", n)
	}
}

func TestMaxConnsPerHost(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int64
	// The server counts requests in a held phase before it answers; the
	// client holds its slot from before sending until the body is read,
	// so no more than the limit can overlap here.
	track := faultAll(func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		n := inFlight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		inFlight.Add(-1)
		next.ServeHTTP(w, r)
	})
	env := newEnv(t, envConfig{mw: track})
	for _, limit := range []int{2, 5} {
		peak.Store(0)
		c := env.client(t, WithMaxConnsPerHost(limit))
		b := env.remoteBlob(t, c)
		var g errgroup.Group
		for i := range 12 {
			g.Go(func() error {
				_, err := b.ReadAt(context.Background(), make([]byte, 1000), int64(i)*1000)
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		if p := peak.Load(); p != int64(limit) {
			t.Errorf("limit %d: %d requests in flight at most, want exactly the limit", limit, p)
		}
	}
}

// TestWaitForSlotHonoursContext: a read waiting for a connection slot
// gives up when its context ends, without sending anything.
func TestWaitForSlotHonoursContext(t *testing.T) {
	t.Parallel()
	env := newEnv(t, envConfig{mw: faultFirst(1, stallFault)})
	c := env.client(t, WithMaxConnsPerHost(1))
	b := env.remoteBlob(t, c)

	hctx, release := context.WithCancel(context.Background())
	defer release()
	go b.ReadAt(hctx, make([]byte, 10), 0) // stalls, holding the only slot
	waitFor(t, "the stalled request", func() bool { return env.blobGets.Load() == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.ReadAt(ctx, make([]byte, 10), 5000)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("gave up after %s", d)
	}
	if n := env.blobGets.Load(); n != 1 {
		t.Errorf("%d blob GETs, want only the stalled one", n)
	}
	release()
	// The slot comes back once the stalled read ends.
	if _, err := b.ReadAt(context.Background(), make([]byte, 10), 5000); err != nil {
		t.Fatal(err)
	}
}
