package fs_test

import (
	"archive/tar"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

// Directories are listed without OPENDIR (see noOpendir): a listing that
// takes many READDIRPLUS requests, read in small batches, from several
// readers at once, and read again, still gives every name once.
func TestLargeDirectoryListings(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	const n = 3000
	ents := []testutil.Entry{{Name: "many", Type: tar.TypeDir, Mode: 0o755}, {Name: "few", Type: tar.TypeDir, Mode: 0o755}}
	var want []string
	for i := range n {
		name := fmt.Sprintf("a-rather-long-file-name-to-fill-the-buffers-%05d", i)
		want = append(want, name)
		ents = append(ents, testutil.Entry{Name: "many/" + name, Content: []byte{byte(i)}})
	}
	ents = append(ents, testutil.Entry{Name: "few/one", Content: []byte("1")})
	l, a := testutil.Layer(t, testutil.Tar(t, ents), testutil.EStargz)
	ref := reg.Push(t, "dirs:latest", testutil.Image(t, []v1.Layer{l}, []map[string]string{a}))
	dir, _ := mountImage(t, ref)

	list := func(batch int) []string {
		f, err := os.Open(filepath.Join(dir, "many"))
		if err != nil {
			t.Error(err)
			return nil
		}
		defer f.Close()
		var names []string
		for {
			des, err := f.ReadDir(batch)
			for _, de := range des {
				names = append(names, de.Name())
			}
			if err != nil || len(des) == 0 {
				break
			}
		}
		slices.Sort(names)
		return names
	}
	var wg sync.WaitGroup
	results := make([][]string, 4)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = list(1 + 37*i)
		}()
	}
	wg.Wait()
	results = append(results, list(-1), list(7))
	for i, got := range results {
		if !slices.Equal(got, want) {
			t.Errorf("listing %d: %d names, want %d (first %v)", i, len(got), len(want), got[:min(3, len(got))])
		}
	}
	if des, err := os.ReadDir(filepath.Join(dir, "few")); err != nil || len(des) != 1 || des[0].Name() != "one" {
		t.Errorf("few: %v, %v", des, err)
	}
	// Names listed are found and read.
	if b, err := os.ReadFile(filepath.Join(dir, "many", want[n-1])); err != nil || len(b) != 1 || b[0] != byte((n-1)%256) {
		t.Errorf("read %s: %v %v", want[n-1], b, err)
	}
}
