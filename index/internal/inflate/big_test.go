package inflate

import (
	"bufio"
	"io"
	"os"
	"testing"
	"time"
)

// TestBigFile decodes the gzip file named by $INFLATE_BIG, for profiling.
func TestBigFile(t *testing.T) {
	name := os.Getenv("INFLATE_BIG")
	if name == "" {
		t.Skip("INFLATE_BIG not set")
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	z := NewReader(bufio.NewReaderSize(f, 1<<20), Options{})
	n, err := z.WriteTo(io.Discard)
	d := time.Since(start)
	t.Logf("%d bytes in %v: %.0f MB/s", n, d, float64(n)/d.Seconds()/1e6)
	if err != nil {
		t.Fatal(err)
	}
}
