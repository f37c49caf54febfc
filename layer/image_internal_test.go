package layer

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

func TestPlainHTTPMirrorsFromHostsDirAreAllowed(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "registry.example:5000")
	if err := os.Mkdir(host, 0o755); err != nil {
		t.Fatal(err)
	}
	toml := "server = \"https://registry.example:5000\"\n\n[host.\"http://10.1.2.3:5000\"]\n  capabilities = [\"pull\"]\n\n[host.\"https://mirror.example\"]\n  capabilities = [\"pull\"]\n"
	if err := os.WriteFile(filepath.Join(host, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, _ := name.NewRegistry("registry.example:5000")
	o, err := makeOptions([]Option{WithHostsDir(dir)})
	if err != nil {
		t.Fatal(err)
	}
	insecure, fetchOpts, _, err := o.withHosts(reg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(insecure, "10.1.2.3:5000") || slices.Contains(insecure, "mirror.example") || len(fetchOpts) == 0 {
		t.Errorf("insecure %v, %d fetch options", insecure, len(fetchOpts))
	}
	g := newSchemeGuard(nil, insecure, nil)
	if !g.allowsHTTP("10.1.2.3:5000") || g.allowsHTTP("registry.example:5000") {
		t.Error("the guard does not follow the hosts directory")
	}
	// A broken hosts.toml is an error that names it.
	os.WriteFile(filepath.Join(host, "hosts.toml"), []byte("[host.\"http://x\"\n"), 0o644)
	if _, _, _, err := o.withHosts(reg); err == nil {
		t.Error("a malformed hosts.toml was accepted")
	}
}
