package index

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func prefetchTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"a", "b", "c", "d"} {
		body := bytes.Repeat([]byte(name), 5000)
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTOCKeepsPrefetchLandmark(t *testing.T) {
	raw := prefetchTar(t)
	for _, tc := range []struct {
		name       string
		prioritize []string
		want       []string // the entries before the landmark
	}{
		{"none", nil, nil},
		{"two", []string{"c", "a"}, []string{"c", "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []estargz.Option{estargz.WithChunkSize(3000)}
			if tc.prioritize != nil {
				opts = append(opts, estargz.WithPrioritizedFiles(tc.prioritize))
			}
			b, err := estargz.Build(io.NewSectionReader(bytes.NewReader(raw), 0, int64(len(raw))), opts...)
			if err != nil {
				t.Fatal(err)
			}
			blob, err := io.ReadAll(b)
			b.Close()
			if err != nil {
				t.Fatal(err)
			}
			x, err := ReadTOC(bytes.NewReader(blob), int64(len(blob)), digestString(sha256Sum(blob)), FormatEStargz, TOCDigests{JSON: b.TOCDigest().String()})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range x.Entries[:x.Prefetch] {
				got = append(got, e.Name)
			}
			if len(got) != len(tc.want) || (len(got) > 0 && (got[0] != tc.want[0] || got[1] != tc.want[1])) {
				t.Fatalf("prefetch entries %q, want %q", got, tc.want)
			}
			var enc bytes.Buffer
			if err := x.Encode(&enc); err != nil {
				t.Fatal(err)
			}
			y, err := Decode(&enc)
			if err != nil {
				t.Fatal(err)
			}
			if y.Prefetch != x.Prefetch {
				t.Errorf("decoded Prefetch %d, encoded %d", y.Prefetch, x.Prefetch)
			}
			x.Prefetch = len(x.Entries) + 1
			if err := x.Validate(); err == nil {
				t.Error("an index with more prefetch entries than entries validated")
			}
		})
	}
}
