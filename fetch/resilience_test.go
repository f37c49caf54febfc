package fetch

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRegistryDownThenBack: while the registry drops every connection, a
// read fails within its deadline (plus a little), with an *Error; once the
// registry is back, the same Client and blob read again.
func TestRegistryDownThenBack(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	outage := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if down.Load() {
				resetFault(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	env := newEnv(t, envConfig{mw: outage})
	c := env.client(t, WithRetries(1000), WithRequestTimeout(time.Second))
	b := env.remoteBlob(t, c)
	p := make([]byte, 4096)
	if _, err := b.ReadAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}

	down.Store(true)
	const deadline = 700 * time.Millisecond
	for _, off := range []int64{0, 8192} { // deduplicated or not, same bound
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		start := time.Now()
		_, err := b.ReadAt(ctx, p, off)
		elapsed := time.Since(start)
		cancel()
		t.Logf("down: %v after %s", err, elapsed)
		var fe *Error
		if !errors.As(err, &fe) || !fe.Temporary {
			t.Fatalf("err = %v, want a temporary *Error", err)
		}
		if elapsed > deadline+time.Second {
			t.Fatalf("read took %s with a %s deadline", elapsed, deadline)
		}
	}
	if s := c.Stats(); s.Retries < 2 || s.Errors != 2 {
		t.Errorf("Stats = %+v, want retries and 2 errors", s)
	}

	down.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.ReadAt(ctx, p, 8192); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if !bytes.Equal(p, env.blob[8192:8192+len(p)]) {
		t.Fatal("bytes differ from the layer")
	}
}

// TestDeadlineMidAttempt: when the deadline ends an attempt (here: one
// that stalls after a 503), the error is a temporary *Error that wraps
// the context's error and names the failure before it.
func TestDeadlineMidAttempt(t *testing.T) {
	t.Parallel()
	for _, open := range []bool{false, true} {
		t.Run(map[bool]string{false: "ReadAt", true: "Open"}[open], func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, envConfig{mw: chain(
				faultFirst(1, statusFault(http.StatusServiceUnavailable)),
				faultAll(stallFault),
			)})
			c := env.client(t, WithRetries(5))
			b := env.remoteBlob(t, c)
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			var err error
			if open {
				_, err = b.Open(ctx)
			} else {
				_, err = b.ReadAt(ctx, make([]byte, 100), 0)
			}
			t.Logf("err: %v", err)
			var fe *Error
			if !errors.As(err, &fe) || !fe.Temporary {
				t.Fatalf("err = %v, want a temporary *Error", err)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err = %v, want DeadlineExceeded", err)
			}
			if !strings.Contains(err.Error(), "503") {
				t.Errorf("err = %v, want one naming the 503 before the deadline", err)
			}
			if n := env.blobGets.Load(); n != 2 {
				t.Errorf("%d blob GETs, want 2", n)
			}
		})
	}
}
