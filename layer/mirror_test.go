package layer_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/lazyroot/lazyroot/internal/testutil"
	"github.com/lazyroot/lazyroot/layer"
)

// writeMirrorHosts writes dir/host/hosts.toml naming mirror with caps.
func writeMirrorHosts(t *testing.T, dir, host, mirror, caps string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("[host.%q]\n  capabilities = %s\n", "http://"+mirror, caps)
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
}

// serverOnlyHosts returns a hosts directory whose hosts.toml for host
// names its server alone, no mirror.
func serverOnlyHosts(t *testing.T, host string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n", "http://"+host)
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// silentHost is a loopback address that accepts connections and never
// answers, until the test ends.
func silentHost(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn // protected by mu
	)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// TestResolveThroughMirrorWithOriginDown: the origin does not answer at
// all; a mirror holding the image serves the tag, the index, the
// platform's manifest, the config and the layers.
func TestResolveThroughMirrorWithOriginDown(t *testing.T) {
	mirror := testutil.NewRegistry(t)
	_, amd := pushOne(t, mirror, "tmp:amd", "amd64", testutil.EStargz)
	_, arm := pushOne(t, mirror, "tmp:arm", "arm64", testutil.Gzip)
	mirror.PushIndex(t, "multi:latest", map[string]v1.Image{"linux/amd64": amd, "linux/arm64": arm})
	pushOne(t, mirror, "single:v1", "single", testutil.Gzip)
	origin := testutil.UnreachableAddr(t)
	hosts := t.TempDir()
	writeMirrorHosts(t, hosts, origin, mirror.Host, `["pull", "resolve"]`)
	armDigest, err := arm.Digest()
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		ref, platform, want string
	}{
		{origin + "/multi:latest", "linux/amd64", "amd64"},
		{origin + "/multi:latest", "linux/arm64", "arm64"},
		{origin + "/multi@" + armDigest.String(), "linux/amd64", "arm64"}, // a manifest named by digest is taken as it is
		{origin + "/single:v1", "linux/amd64", "single"},
	} {
		t.Run(tc.ref+" "+tc.platform, func(t *testing.T) {
			mirror.Reset()
			p, _ := v1.ParsePlatform(tc.platform)
			start := time.Now()
			img, err := layer.Resolve(context.Background(), tc.ref, layer.WithPlatform(*p), layer.WithHostsDir(hosts))
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Resolve took %s", d)
			}
			st, err := layer.NewStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := readFile(t, img, st, "etc/which"); got != tc.want {
				t.Errorf("read %q, want %q", got, tc.want)
			}
			var manifestGets int
			for _, q := range mirror.Requests() {
				if q.Method == http.MethodGet && strings.Contains(q.Path, "/manifests/") {
					manifestGets++
				}
			}
			if manifestGets == 0 {
				t.Error("the mirror served no manifest")
			}
		})
	}

	// The index has no image for the platform: the error says which it has.
	p, _ := v1.ParsePlatform("linux/s390x")
	_, err = layer.Resolve(context.Background(), origin+"/multi:latest", layer.WithPlatform(*p), layer.WithHostsDir(hosts))
	if err == nil || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("s390x: err = %v, want one naming the platforms there are", err)
	}
	t.Logf("s390x: %v", err)
	// A pull-only mirror may not resolve the tag: the origin must.
	pullOnly := t.TempDir()
	writeMirrorHosts(t, pullOnly, origin, mirror.Host, `["pull"]`)
	_, err = layer.Resolve(context.Background(), origin+"/single:v1", layer.WithHostsDir(pullOnly))
	if err == nil || !strings.Contains(err.Error(), origin) {
		t.Errorf("pull-only mirror, tag: err = %v, want the origin's failure", err)
	}
	t.Logf("pull-only mirror, tag: %v", err)
}

// TestMirrorWithSilentOrigin: the origin accepts connections and never
// answers. Resolve needs nothing from it, and opening a gzip layer, which
// asks the origin for an index artifact, gives up on it soon and builds
// the index from the mirror's blob.
func TestMirrorWithSilentOrigin(t *testing.T) {
	t.Parallel()
	mirror := testutil.NewRegistry(t)
	pushOne(t, mirror, "single:v1", "silent", testutil.Gzip)
	origin := silentHost(t)
	hosts := t.TempDir()
	writeMirrorHosts(t, hosts, origin, mirror.Host, `["pull", "resolve"]`)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	img, err := layer.Resolve(ctx, origin+"/single:v1", layer.WithHostsDir(hosts))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Resolve took %s", d)
	}
	st, err := layer.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stack, err := layer.Open(ctx, img, st, newCache(t), layer.StackOptions{})
	if err != nil {
		t.Fatalf("open after %s: %v", time.Since(start), err)
	}
	stack.Close()
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("open took %s", d)
	}
	t.Logf("resolved and opened in %s", time.Since(start))
	if got, _ := readFile(t, img, st, "etc/which"); got != "silent" {
		t.Errorf("read %q", got)
	}
}

// TestResolveRequestsWithoutMirrors: without a mirror, Resolve sends the
// registry what it always did (a ping, the manifest and the config; the
// ping's answer serves go-containerregistry's handshake and the blob
// client's, the registry being plain HTTP; besides the pings with which
// the blob client opens connections for the first reads, in the
// background), with or without a hosts directory.
func TestResolveRequestsWithoutMirrors(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, img := pushOne(t, reg, "plain:v1", "plain", testutil.Gzip)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"GET /v2/plain/blobs/" + m.Config.Digest.String(),
		"GET /v2/plain/manifests/v1",
	}
	serverOnly := serverOnlyHosts(t, reg.Host)
	for _, opts := range [][]layer.Option{nil, {layer.WithHostsDir(serverOnly)}} {
		reg.Reset()
		if _, err := layer.Resolve(context.Background(), ref, opts...); err != nil {
			t.Fatal(err)
		}
		var got []string
		pings := 0
		for _, q := range reg.Requests() {
			if q.Method == http.MethodGet && q.Path == "/v2/" {
				pings++
				continue
			}
			got = append(got, q.Method+" "+q.Path)
		}
		slices.Sort(got) // the blob client's ping runs alongside
		if !slices.Equal(got, want) || pings < 1 {
			t.Errorf("%d options: requests %q and %d pings, want %q and at least 1", len(opts), got, pings, want)
		}
	}
}

// TestResolveTakesTheConfigFromTheStore: with a store, a second resolve of
// an image asks the registry for its manifest only, its config coming from
// the store, directly or through hosts.toml; a stored config that no
// longer matches its digest is fetched again.
func TestResolveTakesTheConfigFromTheStore(t *testing.T) {
	reg := testutil.NewRegistry(t)
	ref, img := pushOne(t, reg, "plain:v1", "plain", testutil.Gzip)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	configGet := "GET /v2/plain/blobs/" + m.Config.Digest.String()
	serverOnly := serverOnlyHosts(t, reg.Host)
	requests := func() []string {
		var got []string
		for _, q := range reg.Requests() {
			if q.Path != "/v2/" {
				got = append(got, q.Method+" "+q.Path)
			}
		}
		slices.Sort(got)
		return got
	}
	for _, hosts := range []string{"", serverOnly} {
		root := t.TempDir()
		st, err := layer.NewStore(root)
		if err != nil {
			t.Fatal(err)
		}
		opts := []layer.Option{layer.WithStore(st), layer.WithHostsDir(hosts)}
		resolve := func() *layer.Image {
			t.Helper()
			reg.Reset()
			im, err := layer.Resolve(context.Background(), ref, opts...)
			if err != nil {
				t.Fatal(err)
			}
			return im
		}
		first := resolve()
		if got := requests(); !slices.Contains(got, configGet) {
			t.Errorf("hosts %q: first resolve: requests %q, want the config's among them", hosts, got)
		}
		second := resolve()
		if got, want := requests(), []string{"GET /v2/plain/manifests/v1"}; !slices.Equal(got, want) {
			t.Errorf("hosts %q: second resolve: requests %q, want %q", hosts, got, want)
		}
		if !reflect.DeepEqual(first.Config, second.Config) {
			t.Errorf("hosts %q: the stored config reads %+v, the registry's %+v", hosts, second.Config, first.Config)
		}
		stored := filepath.Join(root, "configs", m.Config.Digest.Algorithm+"-"+m.Config.Digest.Hex+".json")
		raw, err := os.ReadFile(stored)
		if err != nil {
			t.Fatal(err)
		}
		raw[len(raw)/2] ^= 1
		if err := os.WriteFile(stored, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		third := resolve()
		if got := requests(); !slices.Contains(got, configGet) || !reflect.DeepEqual(third.Config, first.Config) {
			t.Errorf("hosts %q: after damage: requests %q, config %+v; want the config fetched again", hosts, got, third.Config)
		}
	}
}
