package layer

import (
	"net"
	"net/http"
	"strings"
)

// schemeGuard keeps plain HTTP to the registries allowed it: loopback hosts
// and those named insecure. Any other http:// request is sent as https://.
// (go-containerregistry picks plain HTTP for private addresses on its own.)
type schemeGuard struct {
	next     http.RoundTripper
	insecure map[string]bool
}

func newSchemeGuard(next http.RoundTripper, insecure []string) http.RoundTripper {
	g := &schemeGuard{next: next, insecure: map[string]bool{}}
	for _, h := range insecure {
		g.insecure[h] = true
	}
	return g
}

func (g *schemeGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.allowsHTTP(req.URL.Host) {
		req = req.Clone(req.Context())
		req.URL.Scheme = "https"
	}
	return g.next.RoundTrip(req)
}

func (g *schemeGuard) allowsHTTP(hostport string) bool {
	if g.insecure[hostport] {
		return true
	}
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if g.insecure[host] {
		return true
	}
	return isLoopback(host)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
