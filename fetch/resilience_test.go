package fetch

import (
	"bytes"
	"context"
	"errors"
	"net/http"
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
