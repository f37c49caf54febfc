package index

import (
	"archive/tar"
	"bufio"
	"bytes"
	stdgzip "compress/gzip"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	kgzip "github.com/klauspost/compress/gzip"

	"github.com/lazyroot/lazyroot/index/internal/inflate"
)

// benchTarSize is about how much real file content the benchmark tar holds.
const benchTarSize = 200 << 20

// benchBlob returns the path of a gzip -6 blob of a tar of real files from
// /usr/share and /usr/bin, and the tar's size, building and caching both
// under os.TempDir()/lazyroot-bench on first use. It skips the benchmark
// without the gzip command.
//
// $LAZYROOT_BENCH_GZIP names another gzip blob to use instead.
func benchBlob(b *testing.B) (string, int64) {
	b.Helper()
	gz, err := exec.LookPath("gzip")
	if err != nil {
		b.Skipf("no gzip command: %v", err)
	}
	if path := os.Getenv("LAZYROOT_BENCH_GZIP"); path != "" {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		n, err := inflate.NewReader(f, inflate.Options{}).WriteTo(io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		return path, n
	}
	dir := filepath.Join(os.TempDir(), "lazyroot-bench")
	tarPath := filepath.Join(dir, "usr.tar")
	blobPath := filepath.Join(dir, "usr.tar.gz")
	if st, err := os.Stat(tarPath); err == nil {
		if _, err := os.Stat(blobPath); err == nil {
			return blobPath, st.Size()
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	tmp := tarPath + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		b.Fatal(err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	var total int64
	for _, root := range []string{"/usr/share", "/usr/bin"} {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || total >= benchTarSize {
				return nil // unreadable parts are skipped
			}
			info, err := d.Info()
			if err != nil || !(info.Mode().IsRegular() || info.IsDir()) {
				return nil
			}
			hdr, err := tar.FileInfoHeader(info, "")
			if err != nil {
				return nil
			}
			hdr.Name = path[1:]
			if info.IsDir() {
				return tw.WriteHeader(hdr)
			}
			data, err := os.ReadFile(path)
			if err != nil || int64(len(data)) != hdr.Size {
				return nil
			}
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			total += int64(len(data))
			_, err = tw.Write(data)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	in, err := os.Open(tmp)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(blobPath + ".tmp")
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(gz, "-6", "-n", "-c")
	cmd.Stdin, cmd.Stdout = in, out
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
	out.Close()
	if err := os.Rename(blobPath+".tmp", blobPath); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, tarPath); err != nil {
		b.Fatal(err)
	}
	st, err := os.Stat(tarPath)
	if err != nil {
		b.Fatal(err)
	}
	return blobPath, st.Size()
}

// openBench opens the blob, buffered for decoders that read it a byte at a
// time (BuildGzip reads large blocks and needs no buffer).
func openBench(b *testing.B, path string, buffered bool) (*os.File, io.Reader) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	if !buffered {
		return f, f
	}
	return f, bufio.NewReaderSize(f, 1<<20)
}

// BenchmarkBuildGzip indexes the benchmark blob, and decodes it with the
// gzip command, klauspost/compress and compress/gzip for comparison. Every
// sub-benchmark counts uncompressed tar bytes.
func BenchmarkBuildGzip(b *testing.B) {
	path, tarSize := benchBlob(b)
	b.Run("BuildGzip", func(b *testing.B) {
		b.SetBytes(tarSize)
		var x *Index
		for b.Loop() {
			f, r := openBench(b, path, false)
			var err error
			x, err = BuildGzip(r, "sha256:bench", SeekOptions{})
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
		var enc bytes.Buffer
		if err := x.Encode(&enc); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(100*float64(enc.Len())/float64(tarSize), "index-%")
		b.ReportMetric(100*float64(len(x.BuiltWindows()))/float64(tarSize), "windows-%")
		b.ReportMetric(float64(len(x.Spans)), "spans")
	})
	b.Run("gzip-d", func(b *testing.B) {
		gz, err := exec.LookPath("gzip")
		if err != nil {
			b.Skip(err)
		}
		b.SetBytes(tarSize)
		for b.Loop() {
			cmd := exec.Command(gz, "-dc", path)
			null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			cmd.Stdout = null
			err = cmd.Run()
			null.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("inflate", func(b *testing.B) { // BuildGzip's decoder alone
		b.SetBytes(tarSize)
		for b.Loop() {
			f, r := openBench(b, path, false)
			_, err := inflate.NewReader(r, inflate.Options{}).WriteTo(io.Discard)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, dec := range []struct {
		name string
		open func(io.Reader) (io.Reader, error)
	}{
		{"klauspost", func(r io.Reader) (io.Reader, error) { return kgzip.NewReader(r) }},
		{"stdlib", func(r io.Reader) (io.Reader, error) { return stdgzip.NewReader(r) }},
	} {
		b.Run(dec.name, func(b *testing.B) {
			b.SetBytes(tarSize)
			for b.Loop() {
				f, r := openBench(b, path, true)
				zr, err := dec.open(r)
				if err == nil {
					_, err = io.Copy(io.Discard, zr)
				}
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

var benchIndex struct {
	once sync.Once
	x    *Index
	blob []byte
	err  error
}

// BenchmarkDecodeGzipSpan decodes the spans of the benchmark blob one after
// another, as reads of a mounted layer do.
func BenchmarkDecodeGzipSpan(b *testing.B) {
	path, _ := benchBlob(b)
	benchIndex.once.Do(func() {
		benchIndex.blob, benchIndex.err = os.ReadFile(path)
		if benchIndex.err == nil {
			benchIndex.x, benchIndex.err = BuildGzip(bytes.NewReader(benchIndex.blob), "sha256:bench", SeekOptions{})
		}
	})
	if benchIndex.err != nil {
		b.Fatal(benchIndex.err)
	}
	x, blob := benchIndex.x, benchIndex.blob
	dst := make([]byte, MaxSpanSize)
	windows := make([][]byte, len(x.Spans))
	for i := range windows {
		windows[i] = builtWindow(b, x, i)
	}
	b.SetBytes(x.TarSize / int64(len(x.Spans))) // spans are about the same size
	i := 0
	for b.Loop() {
		n := i % len(x.Spans)
		out, in := x.SpanRanges(n)
		d := dst[:out.End-out.Start]
		if err := decodeGzipSpan(&x.Spans[n], windows[n], blob[in.Start:in.End], d); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
