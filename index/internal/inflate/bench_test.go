package inflate

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkInflate decodes a real gzip blob held in memory: the one the
// index benchmarks cache (run them first), or $LAZYROOT_BENCH_GZIP.
func BenchmarkInflate(b *testing.B) {
	path := os.Getenv("LAZYROOT_BENCH_GZIP")
	if path == "" {
		path = filepath.Join(os.TempDir(), "lazyroot-bench", "usr.tar.gz")
	}
	blob, err := os.ReadFile(path)
	if err != nil {
		b.Skipf("no benchmark blob: %v", err)
	}
	var z Reader
	var n int64
	for b.Loop() {
		z.Reset(bytes.NewReader(blob), Options{})
		if n, err = z.WriteTo(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(n)
}
