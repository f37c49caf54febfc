package testutil

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func pushedLayer(t *testing.T) (*Registry, string, v1.Hash, int64) {
	t.Helper()
	r := NewRegistry(t)
	l, ann := Layer(t, Tar(t, sampleEntries()), Gzip)
	ref := r.Push(t, "app:latest", Image(t, []v1.Layer{l}, []map[string]string{ann}))
	if want := r.Host + "/app:latest"; ref != want {
		t.Fatalf("reference %q, want %q", ref, want)
	}
	if !strings.HasPrefix(r.Host, "127.0.0.1:") {
		t.Errorf("host %q", r.Host)
	}
	d, _ := l.Digest()
	size, _ := l.Size()
	return r, ref, d, size
}

func get(t *testing.T, url, rng string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func TestRegistryCounts(t *testing.T) {
	r, ref, d, size := pushedLayer(t)
	if len(r.Requests()) == 0 {
		t.Fatal("push recorded no requests")
	}
	r.Reset()
	if n := len(r.Requests()); n != 0 || r.BlobBytes() != 0 {
		t.Fatalf("after Reset: %d requests, %d blob bytes", n, r.BlobBytes())
	}

	// Pulling the image reads the manifest, the config and the layer.
	img, err := remote.Image(must(name.ParseReference(ref)))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, must(img.Layers())[0].Compressed)
	must(img.ConfigFile())
	cfgSize := must(img.Manifest()).Config.Size
	if got, want := r.BlobBytes(), size+cfgSize; got != want {
		t.Errorf("blob bytes after pull %d, want layer %d + config %d", got, size, cfgSize)
	}

	r.Reset()
	blobURL := fmt.Sprintf("%s/v2/app/blobs/%s", r.URL(), d)
	if code, body := get(t, blobURL, "bytes=10-19"); code != http.StatusPartialContent || len(body) != 10 {
		t.Errorf("range GET: %d, %d bytes", code, len(body))
	}
	if code, body := get(t, blobURL, ""); code != http.StatusOK || int64(len(body)) != size {
		t.Errorf("GET: %d, %d bytes", code, len(body))
	}
	if code, _ := get(t, r.URL()+"/v2/app/manifests/latest", ""); code != http.StatusOK {
		t.Errorf("manifest GET: %d", code)
	}
	if code, _ := get(t, r.URL()+"/v2/app/blobs/sha256:"+strings.Repeat("0", 64), ""); code != http.StatusNotFound {
		t.Errorf("unknown blob GET: %d", code)
	}
	if got, want := r.BlobBytes(), 10+size; got != want {
		t.Errorf("blob bytes %d, want %d", got, want)
	}
	reqs := r.Requests()
	if len(reqs) != 4 {
		t.Fatalf("requests %+v, want 4", reqs)
	}
	want := Request{Method: "GET", Path: "/v2/app/blobs/" + d.String(), Range: "bytes=10-19", Status: 206, Bytes: 10, Blob: d.String()}
	if reqs[0] != want {
		t.Errorf("request 0 = %+v, want %+v", reqs[0], want)
	}
	if reqs[1].Range != "" || reqs[1].Status != 200 || reqs[1].Bytes != size || reqs[1].Blob != d.String() {
		t.Errorf("request 1 = %+v", reqs[1])
	}
	if reqs[2].Blob != "" || reqs[2].Path != "/v2/app/manifests/latest" || reqs[2].Bytes == 0 {
		t.Errorf("request 2 = %+v", reqs[2])
	}
	if reqs[3].Status != 404 || reqs[3].Bytes == 0 {
		t.Errorf("request 3 = %+v", reqs[3])
	}
}

func TestRegistryConcurrentRanges(t *testing.T) {
	r, _, d, _ := pushedLayer(t)
	r.Reset()
	blobURL := fmt.Sprintf("%s/v2/app/blobs/%s", r.URL(), d)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, blobURL, nil)
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", i*100, i*100+99))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = r.Requests() // snapshots race with writes
		})
	}
	wg.Wait()
	if got := r.BlobBytes(); got != 1600 {
		t.Errorf("blob bytes %d, want 1600", got)
	}
	if n := len(r.Requests()); n != 16 {
		t.Errorf("%d requests, want 16", n)
	}
}

func TestRegistryWrap(t *testing.T) {
	r, _, d, size := pushedLayer(t)
	r.Reset()
	var seen sync.Map
	r.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if _, failed := seen.LoadOrStore(req.URL.Path, true); !failed {
				http.Error(w, "try again", http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, req)
		})
	})
	blobURL := fmt.Sprintf("%s/v2/app/blobs/%s", r.URL(), d)
	if code, _ := get(t, blobURL, ""); code != http.StatusServiceUnavailable {
		t.Errorf("first GET: %d, want 503", code)
	}
	if got := r.BlobBytes(); got != 0 {
		t.Errorf("blob bytes after a 503: %d", got)
	}
	if code, _ := get(t, blobURL, ""); code != http.StatusOK {
		t.Errorf("second GET: %d, want 200", code)
	}
	r.Wrap(nil)
	seen.Clear()
	if code, _ := get(t, blobURL, ""); code != http.StatusOK {
		t.Errorf("GET after Wrap(nil): %d, want 200", code)
	}
	reqs := r.Requests()
	if len(reqs) != 3 || reqs[0].Status != 503 || reqs[0].Bytes == 0 || reqs[1].Status != 200 || reqs[2].Status != 200 {
		t.Errorf("requests %+v", reqs)
	}
	if got := r.BlobBytes(); got != 2*size {
		t.Errorf("blob bytes %d, want %d", got, 2*size)
	}
}

func TestPushIndex(t *testing.T) {
	r := NewRegistry(t)
	l, ann := Layer(t, Tar(t, sampleEntries()), ZstdChunked)
	amd := Image(t, []v1.Layer{l}, []map[string]string{ann})
	l2, _ := Layer(t, Tar(t, []Entry{{Name: "arm", Content: []byte("arm")}}), Gzip)
	arm := Image(t, []v1.Layer{l2}, nil)
	ref := r.PushIndex(t, "multi:v1", map[string]v1.Image{"linux/amd64": amd, "linux/arm64/v8": arm})
	if ref != r.Host+"/multi:v1" {
		t.Errorf("reference %q", ref)
	}
	idx, err := remote.Index(must(name.ParseReference(ref)))
	if err != nil {
		t.Fatal(err)
	}
	im := must(idx.IndexManifest())
	var plats []string
	for _, m := range im.Manifests {
		plats = append(plats, m.Platform.String())
	}
	if fmt.Sprint(plats) != "[linux/amd64 linux/arm64/v8]" {
		t.Errorf("platforms %v", plats)
	}
	if im.Manifests[0].Digest != must(amd.Digest()) {
		t.Errorf("amd64 digest %s, want %s", im.Manifests[0].Digest, must(amd.Digest()))
	}
	// The image pulled back carries the layer annotations.
	pulled, err := remote.Image(must(name.ParseReference(r.Host + "/multi@" + im.Manifests[0].Digest.String())))
	if err != nil {
		t.Fatal(err)
	}
	if got := must(pulled.Manifest()).Layers[0].Annotations; len(got) != len(ann) || got["containerd.io/snapshot/stargz/toc.digest"] == "" {
		t.Errorf("pulled annotations %v, want %v", got, ann)
	}
}

func TestRegistryReferrers(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		t.Run(fmt.Sprint(enabled), func(t *testing.T) {
			var opts []RegistryOption
			if enabled {
				opts = append(opts, WithReferrers())
			}
			r := NewRegistry(t, opts...)
			l, _ := Layer(t, Tar(t, sampleEntries()), Gzip)
			img := Image(t, []v1.Layer{l}, nil)
			r.Push(t, "app:latest", img)
			d := must(img.Digest())
			url := fmt.Sprintf("%s/v2/app/referrers/%s", r.URL(), d)
			code, body := get(t, url, "")
			if !enabled {
				if code != http.StatusNotFound {
					t.Errorf("referrers without support: %d, want 404", code)
				}
				return
			}
			if code != http.StatusOK {
				t.Fatalf("referrers: %d %s", code, body)
			}
			im, err := v1.ParseIndexManifest(strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			if im.MediaType != "application/vnd.oci.image.index.v1+json" || len(im.Manifests) != 0 {
				t.Errorf("referrers of an image without any: %+v", im)
			}
			reqs := r.Requests()
			if last := reqs[len(reqs)-1]; last.Path != "/v2/app/referrers/"+d.String() || last.Status != http.StatusOK {
				t.Errorf("recorded %+v", last)
			}
		})
	}
}

func TestStartDistribution(t *testing.T) {
	host := StartDistribution(t)
	if !strings.HasPrefix(host, "127.0.0.1:") {
		t.Errorf("host %q", host)
	}
	l, _ := Layer(t, Tar(t, sampleEntries()), Gzip)
	img := Image(t, []v1.Layer{l}, nil)
	ref := must(name.ParseReference(host+"/lazyroot/app:v1", name.Insecure))
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push: %v", err)
	}
	pulled, err := remote.Image(ref, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if got, want := must(pulled.Digest()), must(img.Digest()); got != want {
		t.Errorf("pulled %s, pushed %s", got, want)
	}
	// Distribution 2.8 has no referrers API.
	code, _ := get(t, fmt.Sprintf("http://%s/v2/lazyroot/app/referrers/%s", host, must(img.Digest())), "")
	if code != http.StatusNotFound {
		t.Errorf("referrers on distribution: %d, want 404", code)
	}
}

// must returns v, panicking on err; for calls that cannot fail in these tests.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
