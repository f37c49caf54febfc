package layer_test

import (
	"archive/tar"
	"context"
	"fmt"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// BenchmarkSmallFileRead measures what reading one small file costs a
// node that holds the layer's index but nothing of its bytes: the bytes
// and requests the registry serves, reported per read and as a share of
// the layer and of a mean compressed span (the goal: about one).
func BenchmarkSmallFileRead(b *testing.B) {
	for _, f := range []testutil.Format{testutil.GzipCmd9, testutil.ZstdFrames, testutil.Uncompressed, testutil.EStargz} {
		b.Run(string(f), func(b *testing.B) {
			reg := testutil.NewRegistry(b)
			ents := []testutil.Entry{{Name: "data", Type: tar.TypeDir}}
			for i := range 6 {
				ents = append(ents, testutil.Entry{Name: fmt.Sprintf("data/big%02d.txt", i), Content: textBytes(uint64(i), 4<<20)})
				ents = append(ents, testutil.Entry{Name: fmt.Sprintf("data/small%02d.conf", i), Content: []byte("setting = on\n")})
			}
			l, ann := testutil.Layer(b, testutil.Tar(b, ents), f)
			ref := reg.Push(b, "bench:v1", testutil.Image(b, []v1.Layer{l}, []map[string]string{ann}))
			img, err := layer.Resolve(context.Background(), ref)
			if err != nil {
				b.Fatal(err)
			}
			root := b.TempDir()
			st, _ := layer.NewStore(root)
			stack, err := layer.Open(context.Background(), img, st, newCache(b), layer.StackOptions{})
			if err != nil {
				b.Fatal(err)
			}
			spans := len(stack.Layers()[0].Index.Spans)
			stack.Close()
			size := img.Layers[0].Descriptor.Size
			reg.Reset()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// A fresh cache each time: a cold read of one small file.
				stack, err := layer.Open(context.Background(), img, st, newCache(b), layer.StackOptions{})
				if err != nil {
					b.Fatal(err)
				}
				tree, err := index.Merge(stack.Indexes())
				if err != nil {
					b.Fatal(err)
				}
				n, _ := tree.Lookup(fmt.Sprintf("data/small%02d.conf", i%6))
				buf := make([]byte, n.Size)
				if _, err := stack.ReadAt(context.Background(), n, buf, 0); err != nil && string(buf) != "setting = on\n" {
					b.Fatal(err)
				}
				stack.Close()
			}
			b.StopTimer()
			fetched, requests := int64(0), 0
			for _, r := range reg.Requests() {
				if r.Blob == img.Layers[0].Descriptor.Digest.String() {
					fetched += r.Bytes
					requests++
				}
			}
			per := float64(fetched) / float64(b.N)
			b.ReportMetric(per, "fetched-B/read")
			b.ReportMetric(float64(requests)/float64(b.N), "requests/read")
			b.ReportMetric(100*per/float64(size), "%layer/read")
			if spans > 0 {
				// Against the mean compressed span of this layer.
				b.ReportMetric(per*float64(spans)/float64(size), "spans/read")
			}
		})
	}
}
