package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

func TestReadAt(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := env.client(t)
	b := env.remoteBlob(t, c)
	if got := env.blobGets.Load(); got != 0 {
		t.Fatalf("Blob sent %d blob requests, want 0", got)
	}
	n := int64(len(env.blob))
	if b.Size() != n {
		t.Fatalf("Size = %d, want %d", b.Size(), n)
	}
	if b.Digest() != env.desc.Digest {
		t.Fatalf("Digest = %s, want %s", b.Digest(), env.desc.Digest)
	}

	tests := []struct {
		name    string
		off     int64
		len     int64
		wantN   int64
		wantEOF bool
		wantReq bool // a request reaches the registry
	}{
		{name: "start", off: 0, len: 100, wantN: 100, wantReq: true},
		{name: "middle", off: n / 2, len: 1000, wantN: 1000, wantReq: true},
		{name: "last byte", off: n - 1, len: 1, wantN: 1, wantReq: true},
		{name: "across end", off: n - 10, len: 100, wantN: 10, wantEOF: true, wantReq: true},
		{name: "at end", off: n, len: 10, wantN: 0, wantEOF: true},
		{name: "past end", off: n + 100, len: 10, wantN: 0, wantEOF: true},
		{name: "whole blob", off: 0, len: n, wantN: n, wantReq: true},
		{name: "whole blob and more", off: 0, len: n + 5, wantN: n, wantEOF: true, wantReq: true},
		{name: "empty buffer", off: 5, len: 0, wantN: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, stats := env.blobGets.Load(), c.Stats()
			p := make([]byte, tt.len)
			got, err := b.ReadAt(context.Background(), p, tt.off)
			if int64(got) != tt.wantN {
				t.Errorf("n = %d, want %d", got, tt.wantN)
			}
			switch {
			case tt.wantEOF && err != io.EOF:
				t.Errorf("err = %v, want io.EOF", err)
			case !tt.wantEOF && err != nil:
				t.Errorf("err = %v, want nil", err)
			}
			if tt.wantN > 0 && !bytes.Equal(p[:got], env.blob[tt.off:tt.off+tt.wantN]) {
				t.Errorf("bytes at %d differ from the layer", tt.off)
			}
			if reqs := env.blobGets.Load() - before; (reqs > 0) != tt.wantReq {
				t.Errorf("%d blob requests, want request: %v", reqs, tt.wantReq)
			}
			if d := c.Stats().Bytes - stats.Bytes; d != tt.wantN {
				t.Errorf("Stats.Bytes grew by %d, want %d", d, tt.wantN)
			}
		})
	}

	t.Run("negative offset", func(t *testing.T) {
		_, err := b.ReadAt(context.Background(), make([]byte, 1), -1)
		var fe *Error
		if !errors.As(err, &fe) || fe.Temporary {
			t.Fatalf("err = %v, want a permanent *Error", err)
		}
	})
	if s := c.Stats(); s.Retries != 0 || s.Requests != env.blobGets.Load() {
		t.Errorf("Stats = %+v, server saw %d blob GETs", s, env.blobGets.Load())
	}
}

func TestReadAtConcurrent(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := env.client(t)
	b := env.remoteBlob(t, c)
	n := b.Size()

	const workers, reads = 16, 20
	var want atomic.Int64
	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range reads {
				off := r.Int64N(n)
				p := make([]byte, 1+r.Int64N(64<<10))
				got, err := b.ReadAt(context.Background(), p, off)
				if err != nil && err != io.EOF {
					return err
				}
				if !bytes.Equal(p[:got], env.blob[off:off+int64(got)]) {
					return errors.New("bytes differ from the layer")
				}
				want.Add(int64(got))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	s := c.Stats()
	if s.Requests != workers*reads || s.Bytes != want.Load() || s.Errors != 0 {
		t.Errorf("Stats = %+v, want %d requests and %d bytes", s, workers*reads, want.Load())
	}
}

func TestOpen(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := env.client(t)
	b := env.remoteBlob(t, c)

	rc, err := b.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, env.blob) {
		t.Fatalf("Open gave %d bytes that differ from the %d-byte layer", len(got), len(env.blob))
	}
	sum := sha256.Sum256(got)
	if h := (v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}); h != b.Digest() {
		t.Fatalf("digest %s, want %s", h, b.Digest())
	}
	if s := c.Stats(); s.Requests != 1 || s.Bytes != b.Size() {
		t.Errorf("Stats = %+v, want 1 request and %d bytes", s, b.Size())
	}
	if _, err := rc.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Errorf("Read after Close: err = %v, want a failure", err)
	}
}

func TestOpenResumes(t *testing.T) {
	rec := &recorder{}
	env := newEnv(t, envConfig{mw: chain(recordBlobGets(rec), faultFirst(1, truncateFault))})
	c := env.client(t)
	b := env.remoteBlob(t, c)

	rc, err := b.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, env.blob) {
		t.Fatalf("Open gave %d bytes that differ from the %d-byte layer", len(got), len(env.blob))
	}
	hs := rec.headers()
	if len(hs) != 2 {
		t.Fatalf("%d blob GETs, want 2", len(hs))
	}
	if r := hs[0].Get("Range"); r != "" {
		t.Errorf("first GET has Range %q, want none", r)
	}
	if r := hs[1].Get("Range"); r == "" {
		t.Errorf("resumed GET has no Range")
	}
	if s := c.Stats(); s.Retries != 1 || s.Errors != 0 {
		t.Errorf("Stats = %+v, want 1 retry and no errors", s)
	}
}

func TestNotFound(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := env.client(t)
	missing := v1.Descriptor{
		Digest: v1.Hash{Algorithm: "sha256", Hex: "0000000000000000000000000000000000000000000000000000000000000000"},
		Size:   100,
	}
	b, err := c.Blob(context.Background(), env.repo, missing)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		read func() error
	}{
		{"ReadAt", func() error {
			_, err := b.ReadAt(context.Background(), make([]byte, 10), 0)
			return err
		}},
		{"Open", func() error {
			_, err := b.Open(context.Background())
			return err
		}},
		{"ReadRanges", func() error {
			return b.ReadRanges(context.Background(), makeRanges(span{0, 10}, span{20, 30}))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := c.Stats()
			err := tt.read()
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("err = %v, want ErrNotFound", err)
			}
			var fe *Error
			if !errors.As(err, &fe) || fe.Status != http.StatusNotFound || fe.Temporary || fe.Digest != missing.Digest {
				t.Fatalf("err = %#v, want a permanent 404 *Error for %s", err, missing.Digest)
			}
			after := c.Stats()
			if after.Requests-before.Requests != 1 || after.Retries != before.Retries || after.Errors-before.Errors != 1 {
				t.Errorf("Stats went from %+v to %+v, want one request, no retry, one error", before, after)
			}
		})
	}
}

func TestBlobRejectsBadDescriptor(t *testing.T) {
	env := newEnv(t, envConfig{})
	c := env.client(t)
	tests := []struct {
		name string
		desc v1.Descriptor
	}{
		{"zero digest", v1.Descriptor{Size: 1}},
		{"negative size", v1.Descriptor{Digest: env.desc.Digest, Size: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Blob(context.Background(), env.repo, tt.desc); err == nil {
				t.Fatal("Blob accepted a bad descriptor")
			}
		})
	}
}

// TestPrepareDialsConnectionsForTheFirstReads: after Prepare, that many
// reads sent at once go over connections it dialed ahead: the transport
// dials nothing more for them.
func TestPrepareDialsConnectionsForTheFirstReads(t *testing.T) {
	all := make(chan struct{})
	var reads, inFlight atomic.Int64 // inFlight: how many reads the test sends at once
	env := newEnv(t, envConfig{front: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if isBlobGet(r) {
				if reads.Add(1) == inFlight.Load() {
					close(all)
				}
				// Held until all are in flight: each needs a connection.
				select {
				case <-all:
				case <-time.After(5 * time.Second):
				}
			}
			next.ServeHTTP(w, r)
		})
	}})
	var dials atomic.Int64
	base := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	c := env.client(t, WithTransport(base))
	c.Prepare(context.Background(), env.repo)()
	// The handshake took a connection dialed ahead (and over plain HTTP
	// may have spent another on trying HTTPS first): the rest wait.
	u, _ := url.Parse(env.srv.URL)
	c.pre.mu.Lock()
	ready := len(c.pre.ready[dialAddr(u)])
	c.pre.mu.Unlock()
	if ready < predialedConns-2 {
		t.Fatalf("%d connections ready after Prepare, want at least %d", ready, predialedConns-2)
	}
	before := dials.Load()
	b := env.remoteBlob(t, c)
	inFlight.Store(int64(ready))
	var g errgroup.Group
	for i := range ready {
		g.Go(func() error {
			p := make([]byte, 1000)
			_, err := b.ReadAt(context.Background(), p, int64(i)*1000)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if reads.Load() != int64(ready) {
		t.Fatalf("%d reads sent, want %d", reads.Load(), ready)
	}
	if n := dials.Load() - before; n != 0 {
		t.Errorf("%d reads at once dialed %d connections after Prepare (%d before)", ready, n, before)
	}
}
