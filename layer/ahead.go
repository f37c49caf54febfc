package layer

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// manifestAccept is the Accept header go-containerregistry's remote.Get
// sends for a manifest. A request sent ahead answers only a request with
// this very header: were the library to ask differently, nothing is
// answered ahead, and nothing is wrong.
var manifestAccept = strings.Join([]string{
	string(types.DockerManifestSchema1),
	string(types.DockerManifestSchema1Signed),
	string(types.DockerManifestSchema2),
	string(types.OCIManifestSchema1),
	string(types.DockerManifestList),
	string(types.OCIImageIndex),
}, ",")

// maxManifestAhead bounds the body of a manifest asked for ahead; a larger
// one is asked for again.
const maxManifestAhead = 4 << 20

// manifestAhead is a manifest request sent beside a registry's first ping.
// go-containerregistry asks for a manifest only once the ping has said how
// to authenticate, a round trip later; most registries that serve images
// to clusters need no credentials. Here the request goes out at once,
// without credentials; if the ping then says none are needed, the
// library's own request (the same URL, the same Accept header, and no
// Authorization) is answered with it. Otherwise (a registry that asks for
// credentials, an answer other than 200, a failure) it is dropped, and the
// library's request goes to the registry as ever: one request more, no
// time lost.
type manifestAhead struct {
	ctx   context.Context       // the resolution's: once it ends, nothing is answered
	calls map[string]*aheadCall // by URL; fixed once started
}

// aheadCall is one request sent ahead.
type aheadCall struct {
	done   chan struct{}
	taken  atomic.Bool
	answer *pingAnswer // set before done is closed, if err is nil
	err    error
}

// startManifestAhead sends a manifest request through next to each of
// urls (one per scheme the handshake may settle on), within ctx.
func startManifestAhead(ctx context.Context, next http.RoundTripper, urls []string) *manifestAhead {
	m := &manifestAhead{ctx: ctx, calls: map[string]*aheadCall{}}
	for _, u := range urls {
		c := &aheadCall{done: make(chan struct{})}
		m.calls[u] = c
		go func() {
			defer close(c.done)
			c.answer, c.err = getAhead(ctx, next, u)
		}()
	}
	return m
}

// manifestAheadURLs are the URLs of r's manifest a request ahead goes to:
// https, and http where the guard allows it. None for Docker Hub, which
// asks every client for a token.
func manifestAheadURLs(r name.Reference, plainAllowed bool) []string {
	reg := r.Context().Registry
	if reg.RegistryStr() == name.DefaultRegistry {
		return nil
	}
	path := fmt.Sprintf("%s/v2/%s/manifests/%s", reg.RegistryStr(), r.Context().RepositoryStr(), r.Identifier())
	urls := []string{"https://" + path}
	if plainAllowed {
		urls = append(urls, "http://"+path)
	}
	return urls
}

func getAhead(ctx context.Context, next http.RoundTripper, url string) (*pingAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Read, so that the connection is kept for the requests after.
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxPingBody))
		return &pingAnswer{status: resp.StatusCode}, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestAhead+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxManifestAhead {
		return nil, fmt.Errorf("manifest %s: over %d bytes", url, maxManifestAhead)
	}
	return &pingAnswer{status: resp.StatusCode, header: resp.Header.Clone(), body: body}, nil
}

// answer returns the response to req of the request sent ahead for it, if
// there is one that fits: req asks the same of the same URL without
// credentials, the registry answered 200, and the resolution it was sent
// for goes on. Each is used once.
func (m *manifestAhead) answer(req *http.Request) (*http.Response, bool) {
	if m.ctx.Err() != nil || req.Method != http.MethodGet || req.Header.Get("Authorization") != "" || req.Header.Get("Accept") != manifestAccept {
		return nil, false
	}
	c := m.calls[req.URL.String()]
	if c == nil || !c.taken.CompareAndSwap(false, true) {
		return nil, false
	}
	select {
	case <-c.done:
	case <-req.Context().Done():
		return nil, false
	}
	if c.err != nil || c.answer.status != http.StatusOK {
		return nil, false
	}
	return c.answer.response(req), true
}
