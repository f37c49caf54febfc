package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/gzip"
	"golang.org/x/sync/errgroup"
)

type manifest struct {
	Layers []struct {
		Digest string `json:"digest"`
		Size   int64  `json:"size"`
	} `json:"layers"`
}

// Pull does what a pull-based runtime does: it fetches the manifest of
// repo:tag from the registry at base (e.g. http://10.201.0.2:5000), then
// every layer blob (jobs at a time, to files under dir/.layers), then
// extracts them in order, base first, into dir with Extract. It returns
// the compressed bytes fetched.
func Pull(ctx context.Context, base, repo, tag, dir string, jobs int) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v2/%s/manifests/%s", base, repo, tag), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	var m manifest
	err = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("manifest %s:%s: %s %v", repo, tag, resp.Status, err)
	}
	tmp := filepath.Join(dir, ".layers")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	var total int64
	sizes := make([]int64, len(m.Layers))
	for i, l := range m.Layers {
		g.Go(func() error {
			n, err := fetchBlob(gctx, fmt.Sprintf("%s/v2/%s/blobs/%s", base, repo, l.Digest), filepath.Join(tmp, fmt.Sprint(i)))
			sizes[i] = n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	for i := range m.Layers {
		total += sizes[i]
		if err := extractGzipFile(filepath.Join(tmp, fmt.Sprint(i)), dir); err != nil {
			return total, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return total, nil
}

func fetchBlob(ctx context.Context, url, to string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(to)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

func extractGzipFile(p, dir string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	defer zr.Close()
	return Extract(zr, dir)
}
