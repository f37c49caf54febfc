package layer_test

import (
	"context"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// TestRegistryBehindPrivateCA: a registry whose certificate only the CA in
// its hosts.toml vouches for resolves and serves blobs with it, and is
// refused without it.
func TestRegistryBehindPrivateCA(t *testing.T) {
	srv := httptest.NewUnstartedServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")

	l, ann := testutil.Layer(t, testutil.Tar(t, []testutil.Entry{{Name: "etc/secret", Content: []byte("behind a private CA\n")}}), testutil.Gzip)
	img := testutil.Image(t, []v1.Layer{l}, []map[string]string{ann})
	ref, err := name.ParseReference(host + "/private/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(srv.Client().Transport)); err != nil {
		t.Fatal(err)
	}

	hosts := t.TempDir()
	dir := filepath.Join(hosts, host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	toml := "server = \"https://" + host + "\"\nca = \"ca.pem\"\n"
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	base := func() layer.Option { return layer.WithTransport(http.DefaultTransport.(*http.Transport).Clone()) }

	if _, err := layer.Resolve(ctx, ref.String(), base(), layer.WithHostsDir(t.TempDir())); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Errorf("resolve without the CA: %v, want a certificate error", err)
	}
	im, err := layer.Resolve(ctx, ref.String(), base(), layer.WithHostsDir(hosts))
	if err != nil {
		t.Fatalf("resolve with the CA from hosts.toml: %v", err)
	}
	defer im.Close()
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Options{MemoryBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stack, err := layer.Open(ctx, im, st, c, layer.StackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		t.Fatal(err)
	}
	n := tree.Root.Children["etc"].Children["secret"]
	buf := make([]byte, 64)
	k, err := stack.ReadAt(ctx, n, buf, 0)
	if (err != nil && err != io.EOF) || string(buf[:k]) != "behind a private CA\n" {
		t.Errorf("read %q, %v", buf[:k], err)
	}
}
