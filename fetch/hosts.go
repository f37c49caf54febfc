package fetch

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// DefaultHostsDir is where [New] looks for per-registry hosts.toml files
// unless [WithHostsDir] says otherwise; it is containerd's default.
const DefaultHostsDir = "/etc/containerd/certs.d"

// Capabilities are the operations a registry endpoint may be trusted with,
// as hosts.toml lists them.
type Capabilities uint8

const (
	// CapPull: the endpoint may serve blobs (and manifests by digest).
	CapPull Capabilities = 1 << iota
	// CapResolve: the endpoint may turn tags into digests.
	CapResolve
	// CapPush: the endpoint accepts uploads.
	CapPush

	capAll = CapPull | CapResolve | CapPush
)

// Has reports whether c includes every capability in want.
func (c Capabilities) Has(want Capabilities) bool { return c&want == want }

// String lists the capabilities like hosts.toml does ("pull,resolve").
func (c Capabilities) String() string {
	var parts []string
	for _, x := range []struct {
		c Capabilities
		s string
	}{{CapPull, "pull"}, {CapResolve, "resolve"}, {CapPush, "push"}} {
		if c.Has(x.c) {
			parts = append(parts, x.s)
		}
	}
	return strings.Join(parts, ",")
}

// Endpoint is one place a registry's content can be read from: a mirror
// from a [host."..."] section of hosts.toml, or the registry itself (the
// file's server, by default the registry host).
type Endpoint struct {
	// URL is the API root: scheme://host[:port]/v2, or the path given in
	// hosts.toml as it is when override_path is set. It has no query.
	URL *url.URL
	// Capabilities says what the endpoint may be used for; pull for blobs.
	Capabilities Capabilities
	// Mirror is true for [host] entries, false for the server.
	Mirror bool
	// SkipVerify turns off TLS certificate verification.
	SkipVerify bool
	// CAs are PEM files of extra trusted roots (besides the system's).
	CAs []string
	// ClientCerts are client certificate and key files; the key is ""
	// when the certificate file holds both.
	ClientCerts [][2]string
	// Header is sent with every request to the endpoint.
	Header http.Header
	// Proxy, if not nil, is used instead of the proxy environment.
	Proxy *url.URL
	// DialTimeout, if positive, bounds connecting to the endpoint.
	DialTimeout time.Duration

	defaultServer bool // the registry itself, as name.Registry reaches it
}

// OwnSettings reports whether requests to e need settings of their
// own rather than the Client's base transport.
func (e *Endpoint) OwnSettings() bool {
	return e.SkipVerify || len(e.CAs) > 0 || len(e.ClientCerts) > 0 || e.Proxy != nil || e.DialTimeout > 0
}

// LoadHosts returns the endpoints for blobs and manifests of reg as
// configured under dir, containerd's way: the first directory that exists
// of dir/HOST_PORT_ (for a HOST:PORT registry), dir/HOST[:PORT] and
// dir/_default holds a hosts.toml (or, without one, Docker-style *.crt
// CAs and *.cert/*.key client certificates for the registry itself).
// Docker Hub's directory is docker.io. Mirrors come first in file order;
// the server comes last. Without any configuration, or when dir is "",
// the result is the registry alone.
func LoadHosts(dir string, reg name.Registry) ([]Endpoint, error) {
	server := defaultServer(reg)
	if dir == "" {
		return []Endpoint{server}, nil
	}
	hostDir, err := findHostDir(dir, reg.RegistryStr())
	if err != nil || hostDir == "" {
		return []Endpoint{server}, err
	}
	file := filepath.Join(hostDir, "hosts.toml")
	src, err := readHostsFile(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := addDockerCerts(&server, hostDir); err != nil {
			return nil, err
		}
		return []Endpoint{server}, nil
	case err != nil:
		return nil, err
	}
	eps, err := parseHosts(string(src), hostDir, server)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return eps, nil
}

// maxHostsFile bounds the size of a hosts.toml; real ones are a few
// hundred bytes.
const maxHostsFile = 1 << 20

// readHostsFile reads file, up to maxHostsFile bytes.
func readHostsFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, maxHostsFile+1))
	if err != nil {
		return nil, err
	}
	if len(src) > maxHostsFile {
		return nil, fmt.Errorf("%s: larger than %d bytes (1 MiB)", file, maxHostsFile)
	}
	return src, nil
}

// defaultServer is the registry itself, reached the way go-containerregistry
// reaches it (plain HTTP only for insecure or local registries).
func defaultServer(reg name.Registry) Endpoint {
	return Endpoint{
		URL:           &url.URL{Scheme: reg.Scheme(), Host: reg.RegistryStr(), Path: "/v2"},
		Capabilities:  capAll,
		defaultServer: true,
	}
}

// findHostDir returns the configuration directory for host, or "".
func findHostDir(dir, host string) (string, error) {
	var names []string
	if ns := namespace(host); ns != host {
		names = append(names, ns)
	}
	if h, port, err := net.SplitHostPort(host); err == nil {
		names = append(names, h+"_"+port+"_")
	}
	names = append(names, host, "_default")
	for _, n := range names {
		d := filepath.Join(dir, n)
		st, err := os.Stat(d)
		switch {
		case err == nil && st.IsDir():
			return d, nil
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return "", err
		}
	}
	return "", nil
}

// namespace is the name containerd gives a registry host: docker.io for
// Docker Hub, else the host itself.
func namespace(host string) string {
	switch host {
	case name.DefaultRegistry, "registry-1.docker.io", "docker.io":
		return "docker.io"
	}
	return host
}

// addDockerCerts adds dir's *.crt files as CAs and *.cert/*.key pairs as
// client certificates to e.
func addDockerCerts(e *Endpoint, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		n := ent.Name()
		switch {
		case strings.HasSuffix(n, ".crt"):
			e.CAs = append(e.CAs, filepath.Join(dir, n))
		case strings.HasSuffix(n, ".cert"):
			key := filepath.Join(dir, strings.TrimSuffix(n, ".cert")+".key")
			if _, err := os.Stat(key); err != nil {
				return fmt.Errorf("client certificate %s without key: %w", n, err)
			}
			e.ClientCerts = append(e.ClientCerts, [2]string{filepath.Join(dir, n), key})
		}
	}
	return nil
}

// hostSettings collects the fields of one endpoint while reading a file.
type hostSettings struct {
	ep           Endpoint
	rawURL       string // as written
	overridePath bool
	capsSet      bool
}

// parseHosts interprets a hosts.toml. Relative paths are relative to dir.
// server is the endpoint used when the file names none.
func parseHosts(src, dir string, server Endpoint) ([]Endpoint, error) {
	entries, err := parseTOML(src)
	if err != nil {
		return nil, err
	}
	top := &hostSettings{ep: server}
	var (
		hosts  []*hostSettings
		byName = map[string]*hostSettings{}
	)
	hostFor := func(raw string) *hostSettings {
		h := byName[raw]
		if h == nil {
			h = &hostSettings{rawURL: raw, ep: Endpoint{Mirror: true}}
			byName[raw] = h
			hosts = append(hosts, h)
		}
		return h
	}
	for _, e := range entries {
		k := e.key
		var (
			h     *hostSettings
			field []string
		)
		switch {
		case k[0] == "host" && len(k) >= 2:
			h, field = hostFor(k[1]), k[2:]
		case k[0] == "host":
			return nil, fmt.Errorf("line %d: [host] needs a URL: [host.\"https://...\"]", e.line)
		default:
			h, field = top, k
		}
		if e.val == nil || len(field) == 0 {
			continue // a table header
		}
		if err := h.set(field, e.val, dir); err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", e.line, strings.Join(k, "."), err)
		}
	}
	eps := make([]Endpoint, 0, len(hosts)+1)
	for _, h := range append(hosts, top) {
		if h.rawURL != "" {
			u, err := endpointURL(h.rawURL, h.overridePath)
			if err != nil {
				return nil, err
			}
			h.ep.URL = u
			h.ep.defaultServer = false
		} else if h.overridePath {
			return nil, errors.New("override_path needs a server")
		}
		if !h.capsSet {
			h.ep.Capabilities = capAll
		}
		eps = append(eps, h.ep)
	}
	return eps, nil
}

// set applies one field of a host (or of the top level).
func (h *hostSettings) set(field []string, v any, dir string) error {
	if field[0] == "header" {
		if len(field) != 2 {
			return errors.New("want header.NAME = VALUE")
		}
		vals, err := stringList(v, true)
		if err != nil {
			return err
		}
		if h.ep.Header == nil {
			h.ep.Header = http.Header{}
		}
		for _, s := range vals {
			if strings.ContainsAny(s, "\r\n") {
				return errors.New("line break in header value")
			}
			h.ep.Header.Add(field[1], s)
		}
		return nil
	}
	if len(field) != 1 {
		return nil // unknown nested field: ignored, like unknown fields
	}
	var err error
	switch field[0] {
	case "server":
		if h.ep.Mirror {
			return nil // meaningless inside a [host]; containerd ignores it too
		}
		h.rawURL, err = asString(v)
		if err == nil && h.rawURL == "" {
			err = errors.New("empty URL")
		}
	case "capabilities":
		var caps []string
		if caps, err = stringList(v, false); err != nil {
			return err
		}
		h.capsSet, h.ep.Capabilities = true, 0
		for _, c := range caps {
			switch c {
			case "pull":
				h.ep.Capabilities |= CapPull
			case "resolve":
				h.ep.Capabilities |= CapResolve
			case "push":
				h.ep.Capabilities |= CapPush
			default:
				return fmt.Errorf("unknown capability %q", c)
			}
		}
	case "ca":
		var files []string
		if files, err = stringList(v, true); err == nil {
			for _, f := range files {
				h.ep.CAs = append(h.ep.CAs, resolvePath(dir, f))
			}
		}
	case "client":
		err = h.setClient(v, dir)
	case "skip_verify":
		h.ep.SkipVerify, err = asBool(v)
	case "override_path":
		h.overridePath, err = asBool(v)
	case "dial_timeout":
		var s string
		if s, err = asString(v); err == nil {
			h.ep.DialTimeout, err = time.ParseDuration(s)
			if err == nil && h.ep.DialTimeout <= 0 {
				err = errors.New("must be positive")
			}
		}
	case "proxy":
		var s string
		if s, err = asString(v); err == nil {
			h.ep.Proxy, err = proxyURL(s)
		}
	}
	return err
}

// setClient reads client = "cert" | ["cert", ...] | [["cert", "key"], ...].
func (h *hostSettings) setClient(v any, dir string) error {
	if s, ok := v.(string); ok {
		h.ep.ClientCerts = append(h.ep.ClientCerts, [2]string{resolvePath(dir, s), ""})
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		return errors.New("want a path, a list of paths or a list of [cert, key] pairs")
	}
	for _, item := range list {
		switch x := item.(type) {
		case string:
			h.ep.ClientCerts = append(h.ep.ClientCerts, [2]string{resolvePath(dir, x), ""})
		case []any:
			pair, err := stringList(x, false)
			if err != nil || len(pair) < 1 || len(pair) > 2 {
				return errors.New("want [cert, key] pairs")
			}
			c := [2]string{resolvePath(dir, pair[0]), ""}
			if len(pair) == 2 && pair[1] != "" {
				c[1] = resolvePath(dir, pair[1])
			}
			h.ep.ClientCerts = append(h.ep.ClientCerts, c)
		default:
			return errors.New("want a path, a list of paths or a list of [cert, key] pairs")
		}
	}
	return nil
}

// endpointURL turns a hosts.toml server or host name into an API root.
func endpointURL(raw string, overridePath bool) (*url.URL, error) {
	s := raw
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("host %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("host %q: scheme must be http or https", raw)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("host %q: want scheme://host[:port][/path]", raw)
	}
	if u.Host == "docker.io" {
		u.Host = "registry-1.docker.io" // docker.io serves no registry API
	}
	p := u.Path
	switch {
	case p == "" || p == "/":
		if overridePath {
			p = "/"
		} else {
			p = "/v2"
		}
	default:
		p = path.Clean(p)
		if !overridePath && !strings.HasSuffix(p, "/v2") {
			p += "/v2"
		}
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host, Path: p}, nil
}

// proxyURL checks a hosts.toml proxy: scheme://host[:port] with a scheme
// net/http supports.
func proxyURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
	default:
		return nil, fmt.Errorf("proxy %q: scheme must be http, https, socks5 or socks5h", s)
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("proxy %q: want scheme://host[:port]", s)
	}
	return u, nil
}

// resolvePath makes a hosts.toml path absolute, relative to dir.
func resolvePath(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// asString reads a string value.
func asString(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", errors.New("want a string")
	}
	return s, nil
}

// asBool reads a boolean value.
func asBool(v any) (bool, error) {
	b, ok := v.(bool)
	if !ok {
		return false, errors.New("want true or false")
	}
	return b, nil
}

// stringList reads an array of strings, or a single string when one is
// allowed.
func stringList(v any, single bool) ([]string, error) {
	if s, ok := v.(string); ok && single {
		return []string{s}, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errors.New("want a list of strings")
	}
	out := make([]string, 0, len(list))
	for _, item := range list {
		s, ok := item.(string)
		if !ok {
			return nil, errors.New("want a list of strings")
		}
		out = append(out, s)
	}
	return out, nil
}

// sameRegistryHost reports whether endpoint host h is the registry host
// reg itself (Docker Hub answers to several names).
func sameRegistryHost(h, reg string) bool {
	return h == reg || namespace(h) == "docker.io" && namespace(reg) == "docker.io"
}
