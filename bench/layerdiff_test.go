package bench

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

func write(t *testing.T, root, rel, content string, mtime time.Time) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func tarNames(t *testing.T, b []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	sort.Strings(names)
	return names
}

// tree lists a directory as path -> kind and content, for comparisons.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.IsDir():
			out[rel] = "dir"
		case d.Type()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			out[rel] = "link:" + l
		default:
			b, _ := os.ReadFile(p)
			out[rel] = "file:" + string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestDiffWhiteoutsAndChanges(t *testing.T) {
	lower, upper := t.TempDir(), t.TempDir()
	old, later := time.Unix(1_600_000_000, 0), time.Unix(1_700_000_000, 0)
	for _, root := range []string{lower, upper} {
		write(t, root, "etc/same", "same", old)
		write(t, root, "etc/touched", "v1", old)
	}
	write(t, lower, "etc/grown", "v1", old)
	write(t, upper, "etc/grown", "version 2", old)
	write(t, upper, "etc/touched", "v2", later) // same size, newer mtime
	write(t, lower, "etc/removed", "x", old)
	write(t, lower, "var/cache/gone/a", "a", old)
	write(t, lower, "var/cache/gone/sub/b", "b", old)
	write(t, lower, "opt/file-becomes-dir", "f", old)
	write(t, upper, "opt/file-becomes-dir/inner", "i", old)
	write(t, upper, "usr/bin/new", "new", old)
	if err := os.Symlink("same", filepath.Join(lower, "etc/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("grown", filepath.Join(upper, "etc/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(upper, "usr/bin/new"), filepath.Join(upper, "usr/bin/new-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(upper, "var/cache"), 0o755); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	st, err := Diff(&buf, lower, upper)
	if err != nil {
		t.Fatal(err)
	}
	names := tarNames(t, buf.Bytes())
	has := map[string]bool{}
	for _, n := range names {
		has[n] = true
	}
	for _, want := range []string{"etc/.wh.removed", "var/cache/.wh.gone", "etc/grown", "etc/touched", "etc/link",
		"opt/file-becomes-dir/", "opt/file-becomes-dir/inner", "usr/bin/new", "usr/bin/new-link"} {
		if !has[want] {
			t.Errorf("layer lacks %s; has %v", want, names)
		}
	}
	for _, unwanted := range []string{"etc/same", "var/cache/gone/a", "var/cache/gone/sub/.wh.b", "var/cache/gone/.wh.a"} {
		if has[unwanted] {
			t.Errorf("layer has %s", unwanted)
		}
	}
	if st.Whiteouts != 2 {
		t.Errorf("%d whiteouts, want 2 (one per removed path, not per file in a removed dir)", st.Whiteouts)
	}

	// Extracting the base then the diff gives upper.
	var base bytes.Buffer
	if _, err := Diff(&base, "", lower); err != nil {
		t.Fatal(err)
	}
	got := t.TempDir()
	if err := Extract(bytes.NewReader(base.Bytes()), got); err != nil {
		t.Fatal(err)
	}
	if err := Extract(bytes.NewReader(buf.Bytes()), got); err != nil {
		t.Fatal(err)
	}
	want, have := tree(t, upper), tree(t, got)
	for k, v := range want {
		if have[k] != v {
			t.Errorf("%s: got %q, want %q", k, have[k], v)
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			t.Errorf("extracted tree has %s, upper does not", k)
		}
	}
	a, _ := os.Stat(filepath.Join(got, "usr/bin/new"))
	b, _ := os.Stat(filepath.Join(got, "usr/bin/new-link"))
	if !os.SameFile(a, b) {
		t.Error("hardlink not kept")
	}
}

func TestExtractOpaqueDir(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "d/old", "o", time.Unix(1, 0))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "d/new", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1},
		{Name: "d/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("n"))
		}
	}
	tw.Close()
	if err := Extract(&buf, dir); err != nil {
		t.Fatal(err)
	}
	got := tree(t, dir)
	if _, ok := got["d/old"]; ok || got["d/new"] != "file:n" {
		t.Fatalf("opaque dir not applied: %v", got)
	}
}
