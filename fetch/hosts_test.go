package fetch

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestParseTOML(t *testing.T) {
	src := `# comment
server = "https://registry.example" # trailing comment
top_bool = true
n = 1_000

[host."https://mirror.example/v2/x"]
  capabilities = ["pull",
    "resolve", # a comment inside an array
  ]
  'literal' = 'C:\path'
  client = [["a.crt", "a.key"], ["b.pem", ""]]
  [host."https://mirror.example/v2/x".header]
    x-one = "esc\t\"q\" \u00e9"
host.other.capabilities = []
`
	got, err := parseTOML(src)
	if err != nil {
		t.Fatal(err)
	}
	want := []tomlEntry{
		{key: []string{"server"}, val: "https://registry.example", line: 2},
		{key: []string{"top_bool"}, val: true, line: 3},
		{key: []string{"n"}, val: int64(1000), line: 4},
		{key: []string{"host", "https://mirror.example/v2/x"}, line: 6},
		{key: []string{"host", "https://mirror.example/v2/x", "capabilities"}, val: []any{"pull", "resolve"}, line: 7},
		{key: []string{"host", "https://mirror.example/v2/x", "literal"}, val: `C:\path`, line: 10},
		{key: []string{"host", "https://mirror.example/v2/x", "client"}, val: []any{[]any{"a.crt", "a.key"}, []any{"b.pem", ""}}, line: 11},
		{key: []string{"host", "https://mirror.example/v2/x", "header"}, line: 12},
		{key: []string{"host", "https://mirror.example/v2/x", "header", "x-one"}, val: "esc\t\"q\" é", line: 13},
		{key: []string{"host", "https://mirror.example/v2/x", "header", "host", "other", "capabilities"}, val: []any{}, line: 14},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%#v\nwant\n%#v", got, want)
	}

	bad := []struct{ src, msg string }{
		{`a = """x"""`, "line 1: multi-line"},
		{"a = 1\nb = 1.5", "line 2: unsupported value"},
		{"a = 1979-05-27", "line 1: unsupported value"},
		{`a = {x = 1}`, "inline tables"},
		{"[[host]]", "arrays of tables"},
		{"a = 1\na = 2", "line 2: key a defined twice"},
		{"[t]\n[t]", "line 2: table t defined twice"},
		{`a = "x`, "unterminated"},
		{`a = "\q"`, "bad escape"},
		{"a = 1 b", "unexpected"},
		{"a", "expected ="},
		{"a = ", "missing value"},
		{"a = [1 2]", "expected , or ]"},
		{"= 1", "expected a key"},
		{"a = yes", "unsupported value"},
	}
	for _, tt := range bad {
		_, err := parseTOML(tt.src)
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("parseTOML(%q) = %v, want an error with %q", tt.src, err, tt.msg)
		}
	}
}

func TestParseHosts(t *testing.T) {
	dir := "/etc/containerd/certs.d/docker.io"
	src := `
server = "https://docker.io"
ca = "root.pem"

[host."https://public-mirror.example.com"]
  capabilities = ["pull"]
[host."http://docker-mirror.internal:5000"]
  capabilities = ["pull", "resolve"]
  ca = ["docker-mirror.crt", "/abs/extra.pem"]
  skip_verify = true
  dial_timeout = "1s"
  proxy = "http://proxy.internal:3128"
  client = "/etc/certs/client.pem"
  [host."http://docker-mirror.internal:5000".header]
    x-custom = ["a", "b"]
[host."https://non-compliant.example/upstream"]
  override_path = true
[host."mirror-bak.example/us"]
`
	reg, _ := name.NewRegistry("index.docker.io")
	got, err := parseHosts(src, dir, defaultServer(reg))
	if err != nil {
		t.Fatal(err)
	}
	var urls, caps []string
	for _, e := range got {
		urls = append(urls, e.URL.String())
		caps = append(caps, e.Capabilities.String())
	}
	wantURLs := []string{
		"https://public-mirror.example.com/v2",
		"http://docker-mirror.internal:5000/v2",
		"https://non-compliant.example/upstream",
		"https://mirror-bak.example/us/v2",
		"https://registry-1.docker.io/v2",
	}
	wantCaps := []string{"pull", "pull,resolve", "pull,resolve,push", "pull,resolve,push", "pull,resolve,push"}
	if !reflect.DeepEqual(urls, wantURLs) || !reflect.DeepEqual(caps, wantCaps) {
		t.Errorf("endpoints %v %v, want %v %v", urls, caps, wantURLs, wantCaps)
	}
	m := got[1]
	if !m.Mirror || !m.SkipVerify || m.DialTimeout != time.Second || m.Proxy.String() != "http://proxy.internal:3128" ||
		!reflect.DeepEqual(m.CAs, []string{dir + "/docker-mirror.crt", "/abs/extra.pem"}) ||
		!reflect.DeepEqual(m.ClientCerts, [][2]string{{"/etc/certs/client.pem", ""}}) ||
		!reflect.DeepEqual(m.Header["X-Custom"], []string{"a", "b"}) {
		t.Errorf("mirror %+v", m)
	}
	if s := got[4]; s.Mirror || !reflect.DeepEqual(s.CAs, []string{dir + "/root.pem"}) || s.defaultServer {
		t.Errorf("server %+v", s)
	}

	for _, tt := range []struct{ src, msg string }{
		{`capabilities = ["pull", "fly"]`, `unknown capability "fly"`},
		{`[host."ftp://x"]`, "scheme must be http or https"},
		{`[host."https://x?y=1"]`, "want scheme://host"},
		{"skip_verify = \"yes\"", "want true or false"},
		{`dial_timeout = "soon"`, "dial_timeout"},
		{`proxy = "ftp://p"`, "proxy"},
		{`override_path = true`, "override_path needs a server"},
		{"[host]\nx = 1", "[host] needs a URL"},
	} {
		_, err := parseHosts(tt.src, dir, defaultServer(reg))
		if err == nil || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("parseHosts(%q) = %v, want an error with %q", tt.src, err, tt.msg)
		}
	}
}

func TestEndpointURL(t *testing.T) {
	for _, tt := range []struct {
		raw      string
		override bool
		want     string
	}{
		{"https://m.example", false, "https://m.example/v2"},
		{"https://m.example/", false, "https://m.example/v2"},
		{"https://m.example/v2", false, "https://m.example/v2"},
		{"https://m.example/v2/", false, "https://m.example/v2"},
		{"https://m.example/some/path", false, "https://m.example/some/path/v2"},
		{"https://m.example/some/path", true, "https://m.example/some/path"},
		{"https://m.example", true, "https://m.example/"},
		{"m.example:5000", false, "https://m.example:5000/v2"},
		{"http://docker.io", false, "http://registry-1.docker.io/v2"},
	} {
		u, err := endpointURL(tt.raw, tt.override)
		if err != nil || u.String() != tt.want {
			t.Errorf("endpointURL(%q, %v) = %v, %v; want %s", tt.raw, tt.override, u, err, tt.want)
		}
	}
	repo, _ := name.NewRepository("registry.example/team/app")
	e := &endpoint{Endpoint: Endpoint{URL: mustURL(t, "https://m.example/v2")}, ns: "registry.example"}
	d := mustHash(t)
	if got, want := e.blobURL(repo, d), "https://m.example/v2/team/app/blobs/"+d.String()+"?ns=registry.example"; got != want {
		t.Errorf("blobURL = %s, want %s", got, want)
	}
	e = &endpoint{Endpoint: Endpoint{URL: mustURL(t, "https://m.example/")}}
	if got, want := e.blobURL(repo, d), "https://m.example/team/app/blobs/"+d.String(); got != want {
		t.Errorf("blobURL = %s, want %s", got, want)
	}
}

func TestLoadHostsDirectory(t *testing.T) {
	mirror := func(n string) string { return fmt.Sprintf("[host.\"https://%s\"]\n", n) }
	for _, tt := range []struct {
		name  string
		reg   string
		files map[string]string // directory -> hosts.toml ("" for a directory without one)
		want  string            // URL of the first endpoint
	}{
		{"nothing", "reg.example:5000", nil, "https://reg.example:5000/v2"},
		{"host and port", "reg.example:5000", map[string]string{"reg.example:5000": mirror("a"), "_default": mirror("d")}, "https://a/v2"},
		{"underscored first", "reg.example:5000", map[string]string{"reg.example_5000_": mirror("u"), "reg.example:5000": mirror("a")}, "https://u/v2"},
		{"default", "reg.example:5000", map[string]string{"reg.example": mirror("no port"), "_default": mirror("d")}, "https://d/v2"},
		{"docker hub", "index.docker.io", map[string]string{"docker.io": mirror("hub-mirror"), "_default": mirror("d")}, "https://hub-mirror/v2"},
		{"first directory wins", "reg.example", map[string]string{"reg.example": "", "_default": mirror("d")}, "https://reg.example/v2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for d, content := range tt.files {
				if content == "" {
					os.MkdirAll(filepath.Join(dir, d), 0o755)
					continue
				}
				writeHosts(t, dir, d, content)
			}
			reg, err := name.NewRegistry(tt.reg)
			if err != nil {
				t.Fatal(err)
			}
			eps, err := LoadHosts(dir, reg)
			if err != nil {
				t.Fatal(err)
			}
			if got := eps[0].URL.String(); got != tt.want {
				t.Errorf("first endpoint %s, want %s", got, tt.want)
			}
			if last := eps[len(eps)-1]; last.Mirror || last.URL.Host != reg.RegistryStr() {
				t.Errorf("last endpoint %+v, want the registry", last)
			}
		})
	}

	t.Run("docker certs", func(t *testing.T) {
		dir := t.TempDir()
		d := filepath.Join(dir, "reg.example")
		os.MkdirAll(d, 0o755)
		for _, f := range []string{"ca.crt", "client.cert", "client.key", "notes.txt"} {
			os.WriteFile(filepath.Join(d, f), nil, 0o644)
		}
		reg, _ := name.NewRegistry("reg.example")
		eps, err := LoadHosts(dir, reg)
		if err != nil {
			t.Fatal(err)
		}
		if len(eps) != 1 || !reflect.DeepEqual(eps[0].CAs, []string{d + "/ca.crt"}) ||
			!reflect.DeepEqual(eps[0].ClientCerts, [][2]string{{d + "/client.cert", d + "/client.key"}}) {
			t.Errorf("endpoints %+v", eps)
		}
	})
	t.Run("bad file", func(t *testing.T) {
		dir := t.TempDir()
		writeHosts(t, dir, "reg.example", "server = \n")
		reg, _ := name.NewRegistry("reg.example")
		if _, err := LoadHosts(dir, reg); err == nil || !strings.Contains(err.Error(), "hosts.toml") {
			t.Errorf("err = %v, want one naming the file", err)
		}
	})
}

// TestMirrorTLS: an HTTPS mirror with its own CA (a path relative to the
// hosts.toml) or skip_verify serves; without either it fails
// verification and the origin serves.
func TestMirrorTLS(t *testing.T) {
	t.Parallel()
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer})
	mirror := newEnv(t, envConfig{layer: &layer, tls: true})
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mirror.srv.Certificate().Raw})

	for _, tt := range []struct {
		name       string
		settings   string
		fromMirror bool
	}{
		{"ca", `ca = "mirror.crt"`, true},
		{"skip_verify", `skip_verify = true`, true},
		{"unverified", ``, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.%q]\n  %s\n", mirror.srv.URL, tt.settings))
			if err := os.WriteFile(filepath.Join(dir, hostOf(origin), "mirror.crt"), certPEM, 0o644); err != nil {
				t.Fatal(err)
			}
			c := origin.client(t, WithHostsDir(dir))
			b := origin.remoteBlob(t, c)
			p := make([]byte, 1000)
			start := time.Now()
			if _, err := b.ReadAt(context.Background(), p, 10); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("read took %s", d)
			}
			if !bytes.Equal(p, layer.blob[10:1010]) {
				t.Fatal("bytes differ")
			}
			s := c.Stats()
			if got := s.Hosts[hostOf(mirror)].Bytes == int64(len(p)); got != tt.fromMirror {
				t.Errorf("Stats = %+v, want from mirror: %v", s, tt.fromMirror)
			}
		})
	}
}

func TestEndpointHeaders(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	layer := newTestLayer(t, 64<<10)
	origin := newEnv(t, envConfig{layer: &layer})
	mirror := newEnv(t, envConfig{layer: &layer, mw: recordBlobGets(rec)})
	dir := t.TempDir()
	writeHosts(t, dir, hostOf(origin), fmt.Sprintf("[host.\"http://%s\".header]\n  x-mirror-key = \"k1\"\n", hostOf(mirror)))
	c := origin.client(t, WithHostsDir(dir))
	b := origin.remoteBlob(t, c)
	if _, err := b.ReadAt(context.Background(), make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	hs := rec.headers()
	if len(hs) != 1 || hs[0].Get("X-Mirror-Key") != "k1" {
		t.Errorf("mirror saw %v", hs)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func mustHash(t *testing.T) v1.Hash {
	t.Helper()
	h, err := v1.NewHash("sha256:" + strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestHostsLimits: hosts.toml may not be huge nor nest arrays deeply.
func TestHostsLimits(t *testing.T) {
	nested := func(depth int) string {
		return "a = " + strings.Repeat("[", depth) + strings.Repeat("]", depth) + "\n"
	}
	if _, err := parseTOML(nested(maxArrayDepth)); err != nil {
		t.Errorf("arrays nested %d deep: %v", maxArrayDepth, err)
	}
	for _, depth := range []int{maxArrayDepth + 1, 1 << 20} {
		_, err := parseTOML(nested(depth))
		if err == nil || !strings.Contains(err.Error(), "line 1: arrays nested deeper than") {
			t.Errorf("arrays nested %d deep: err = %v, want one about the nesting", depth, err)
		}
	}

	reg, _ := name.NewRegistry("reg.example")
	for _, tt := range []struct {
		size    int
		wantErr bool
	}{{maxHostsFile, false}, {maxHostsFile + 1, true}} {
		dir := t.TempDir()
		// Comments only: valid TOML of any size.
		line := "# " + strings.Repeat("x", 61) + "\n"
		src := strings.Repeat(line, tt.size/len(line))
		src += strings.Repeat("#", tt.size-len(src))
		writeHosts(t, dir, "reg.example", src)
		_, err := LoadHosts(dir, reg)
		if (err != nil) != tt.wantErr {
			t.Fatalf("%d bytes: err = %v, want error %v", tt.size, err, tt.wantErr)
		}
		if err != nil && (!strings.Contains(err.Error(), filepath.Join(dir, "reg.example", "hosts.toml")) || !strings.Contains(err.Error(), "larger than")) {
			t.Errorf("%d bytes: err = %v, want one naming the file and its size limit", tt.size, err)
		}
	}
}
