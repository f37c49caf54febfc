package fetch

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BenchmarkThroughput compares reading a blob over loopback in 1 MiB
// ranges (through ReadAt, by several readers at once) with one plain GET
// of the whole blob copied to io.Discard. The blob is
// $LAZYROOT_BENCH_BLOB_MIB MiB of random bytes (default 256).
//
//	go test -run '^$' -bench Throughput -benchtime 5x ./fetch/
func BenchmarkThroughput(b *testing.B) {
	mib := 256
	if v, err := strconv.Atoi(os.Getenv("LAZYROOT_BENCH_BLOB_MIB")); err == nil && v > 0 {
		mib = v
	}
	size := int64(mib) << 20
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	layer := static.NewLayer(data, types.DockerLayer)
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref, err := name.ParseReference(srv.Listener.Addr().String() + "/bench/blob:latest")
	if err != nil {
		b.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		b.Fatal(err)
	}
	d, err := layer.Digest()
	if err != nil {
		b.Fatal(err)
	}
	desc := v1.Descriptor{Digest: d, Size: size}
	url := fmt.Sprintf("%s/v2/bench/blob/blobs/%s", srv.URL, d)

	b.Run("GET", func(b *testing.B) {
		hc := &http.Client{Transport: &http.Transport{}}
		b.SetBytes(size)
		for b.Loop() {
			resp, err := hc.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != size {
				b.Fatalf("GET: %d bytes, %v", n, err)
			}
		}
	})
	for _, readers := range []int{1, 4, 8} {
		b.Run(fmt.Sprintf("ReadAt-1MiB-%dreaders", readers), func(b *testing.B) {
			c, err := New(WithHostsDir(""))
			if err != nil {
				b.Fatal(err)
			}
			blob, err := c.Blob(context.Background(), ref.Context(), desc)
			if err != nil {
				b.Fatal(err)
			}
			const chunk = 1 << 20
			b.SetBytes(size)
			for b.Loop() {
				var next atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, readers)
				for range readers {
					wg.Go(func() {
						p := make([]byte, chunk)
						for {
							off := next.Add(chunk) - chunk
							if off >= size {
								return
							}
							if _, err := blob.ReadAt(context.Background(), p, off); err != nil && err != io.EOF {
								errs <- err
								return
							}
						}
					})
				}
				wg.Wait()
				close(errs)
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
			if s := c.Stats(); s.Bytes != size*int64(b.N) {
				b.Fatalf("Stats.Bytes = %d, want %d", s.Bytes, size*int64(b.N))
			}
		})
	}
}
