package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lazyroot/lazyroot/internal/testutil"
)

func TestMirrorFromHostsDir(t *testing.T) {
	requireRoot(t)
	origin, mirror := testutil.NewRegistry(t), testutil.NewRegistry(t)
	ref, layers := pushBusyboxImage(t, origin, "mir:v1")
	_, mirrored := pushBusyboxImage(t, mirror, "mir:v1") // a pull-through mirror holding the same image
	for i := range layers {
		if digestOf(t, layers[i]) != digestOf(t, mirrored[i]) {
			t.Fatal("test layers are not reproducible: the mirror holds other blobs")
		}
	}
	hosts := t.TempDir()
	if err := os.Mkdir(filepath.Join(hosts, origin.Host), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\"]\n", "http://"+origin.Host, "http://"+mirror.Host)
	if err := os.WriteFile(filepath.Join(hosts, origin.Host, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	// Layer GETs answered. The mirror may pull, not resolve: the tag is
	// resolved by the origin, the config may come from either.
	isLayer := map[string]bool{}
	for _, l := range layers {
		isLayer[digestOf(t, l)] = true
	}
	blobGETs := func(r *testutil.Registry) (n int) {
		for _, q := range r.Requests() {
			if isLayer[q.Blob] && q.Method == http.MethodGet && q.Status/100 == 2 {
				n++
			}
		}
		return n
	}
	mountAndRead := func(hosts, ref string) {
		t.Helper()
		root, dir := t.TempDir(), mountDir(t)
		if _, errOut, code := lazyroot(t, "mount", "--root", root, "--hosts-dir", hosts, ref, dir); code != 0 {
			t.Fatalf("mount: code %d: %s", code, errOut)
		}
		defer lazyroot(t, "umount", "--root", root, dir)
		for _, name := range []string{"etc/motd", "bin/busybox"} {
			if _, err := os.ReadFile(filepath.Join(dir, name)); err != nil {
				t.Fatalf("read %s: %v", name, err)
			}
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "etc/motd")); string(b) != "hello from the gzip layer\n" {
			t.Errorf("etc/motd reads %q", b)
		}
	}

	origin.Reset()
	mountAndRead(hosts, ref)
	if o, m := blobGETs(origin), blobGETs(mirror); o != 0 || m == 0 {
		t.Errorf("healthy mirror: %d blob GETs at the origin, %d at the mirror; want none and some", o, m)
	}

	// The mirror fails: blobs come from the origin.
	mirror.Wrap(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/blobs/") {
				http.Error(w, "mirror broken", http.StatusBadGateway)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	origin.Reset()
	mountAndRead(hosts, ref)
	if o := blobGETs(origin); o == 0 {
		t.Error("with the mirror failing, the origin served no blob")
	}

	// The origin is down (nothing listens at its address): a mirror that
	// may resolve serves the manifest and config as well as the layers.
	mirror.Wrap(nil)
	mirror.Reset()
	down := testutil.UnreachableAddr(t)
	downHosts := t.TempDir()
	if err := os.Mkdir(filepath.Join(downHosts, down), 0o755); err != nil {
		t.Fatal(err)
	}
	toml = fmt.Sprintf("[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+mirror.Host)
	if err := os.WriteFile(filepath.Join(downHosts, down, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	mountAndRead(downHosts, strings.Replace(ref, origin.Host, down, 1))
	manifestGETs := 0
	for _, q := range mirror.Requests() {
		if q.Method == http.MethodGet && strings.Contains(q.Path, "/manifests/") && q.Status == http.StatusOK {
			manifestGETs++
		}
	}
	if manifestGETs == 0 || blobGETs(mirror) == 0 {
		t.Errorf("origin down: the mirror served %d manifests and %d layer blobs", manifestGETs, blobGETs(mirror))
	}

	if _, errOut, code := lazyroot(t, "mount", "--max-conns-per-host", "0", ref, mountDir(t)); code != 2 || !strings.Contains(errOut, "--max-conns-per-host") {
		t.Errorf("--max-conns-per-host 0: code %d: %s", code, errOut)
	}
}
