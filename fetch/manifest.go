package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Manifests and small blobs, the containerd way.
//
// A tag is resolved by the endpoints with the resolve capability, a
// digest (a manifest, or a blob such as an image config) fetched by those
// with pull, mirrors in hosts.toml order and the server (the registry, or
// its override) last; the server is always asked, whatever its
// capabilities say. What is fetched by digest is checked against the
// digest before it is returned: a mirror that serves other bytes has
// failed, like one that does not answer, and the next endpoint is asked.
// A failing mirror passes the request on at once and, unless it only
// lacked the document (404), is skipped by blob reads for a while, as
// after a failed blob read; the server is retried after a pause, as blob
// reads are. Each attempt is bounded by the request
// timeout, handshakes and the per-host limit are the blob reads', and
// nothing here counts in Stats, which is about blob reads.

// MaxManifestSize bounds the manifests and indexes [Client.Manifest]
// reads (4 MiB); real ones are a few KiB.
const MaxManifestSize = 4 << 20

// ErrDigestMismatch means an endpoint served bytes whose digest (or size)
// is not the one asked for.
var ErrDigestMismatch = errors.New("digest mismatch")

// Manifest is an image manifest or index as an endpoint served it.
type Manifest struct {
	// Bytes is the document as served.
	Bytes []byte
	// MediaType is the document's own mediaType, else the Content-Type
	// the endpoint gave; "" when neither says.
	MediaType types.MediaType
	// Digest is the sha256 of Bytes (or, when fetched by digest, of the
	// digest's algorithm), checked against the reference when it is one.
	Digest v1.Hash
	// Host is the endpoint that served it, as host[:port].
	Host string
}

// HasMirrors reports whether the hosts configuration of repo's registry
// names a mirror with any of caps. Without one, Manifest and BlobBytes
// would ask the server alone.
func (c *Client) HasMirrors(repo name.Repository, caps Capabilities) (bool, error) {
	cfg, err := LoadHosts(c.opts.hostsDir, repo.Registry)
	if err != nil {
		return false, fmt.Errorf("hosts configuration for %s: %w", repo.RegistryStr(), err)
	}
	for _, e := range cfg {
		if e.Mirror && e.Capabilities&caps != 0 {
			return true, nil
		}
	}
	return false, nil
}

// Manifest fetches the manifest (or index) reference of repo, a tag or a
// digest, asking for the media types accept. A tag is resolved by the
// endpoints with the resolve capability, a digest by those with pull,
// mirrors first; bytes fetched by digest are verified. The error, when
// every endpoint failed, names the reference and each endpoint's failure;
// it matches ErrNotFound or ErrUnauthorized when the server's failure
// does.
func (c *Client) Manifest(ctx context.Context, repo name.Repository, reference string, accept []string) (*Manifest, error) {
	q := &docQuery{
		repo:   repo,
		what:   "manifest " + repo.Name(),
		limit:  MaxManifestSize,
		size:   -1,
		accept: strings.Join(accept, ", "),
	}
	want := CapResolve
	if d, err := v1.NewHash(reference); err == nil {
		q.want, want = d, CapPull
		q.what += "@" + reference
	} else {
		q.what += ":" + reference
	}
	eps, err := c.endpointsFor(repo, want)
	if err != nil {
		return nil, fmt.Errorf("%s: hosts configuration: %w", q.what, err)
	}
	q.url = func(e *endpoint) string { return e.manifestURL(repo, reference) }
	return c.getDoc(ctx, eps, q)
}

// errNoReferrersAPI means a registry does not serve the OCI referrers API:
// it answered 404, 400 or 406, or with something other than an OCI index.
var errNoReferrersAPI = errors.New("no referrers API")

// emptyIndex is the listing of a subject nothing refers to.
var emptyIndex = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)

// Referrers returns the OCI index listing the manifests in repo that refer
// to subject: the one the registry's referrers API serves, or, from a
// registry without that API, the one tagged by the referrers tag schema
// (sha256-<hex>). Both are asked for at once, so either way the listing
// costs one round trip, and of the registry's server alone: mirrors keep
// no referrers. No API and no tag means nothing refers to subject yet: an
// empty index.
func (c *Client) Referrers(ctx context.Context, repo name.Repository, subject v1.Hash) (*Manifest, error) {
	what := "referrers of " + repo.Name() + "@" + subject.String()
	eps, err := c.endpointsFor(repo, CapPull)
	if err != nil {
		return nil, fmt.Errorf("%s: hosts configuration: %w", what, err)
	}
	server := eps[len(eps)-1:]
	index := string(types.OCIImageIndex)
	tagCtx, endTag := context.WithCancel(ctx)
	defer endTag()
	type answer struct {
		m   *Manifest
		err error
	}
	byTag := make(chan answer, 1)
	go func() {
		tag := strings.Replace(subject.String(), ":", "-", 1)
		m, err := c.getDoc(tagCtx, server, &docQuery{
			repo: repo, what: "referrers tag " + repo.Name() + ":" + tag, limit: MaxManifestSize, size: -1, accept: index,
			url: func(e *endpoint) string { return e.manifestURL(repo, tag) },
		})
		byTag <- answer{m, err}
	}()
	m, err := c.getDoc(ctx, server, &docQuery{
		repo: repo, what: what, limit: MaxManifestSize, size: -1, accept: index,
		url: func(e *endpoint) string {
			u := *e.URL
			u.Path = joinPath(u.Path, repo.RepositoryStr(), "referrers", subject.String())
			return u.String()
		},
	})
	var se *statusError
	switch {
	case errors.As(err, &se) && (se.code == http.StatusNotFound || se.code == http.StatusBadRequest || se.code == http.StatusNotAcceptable):
		err = errNoReferrersAPI
	case err == nil && m.MediaType != types.OCIImageIndex:
		err = errNoReferrersAPI
	}
	if !errors.Is(err, errNoReferrersAPI) {
		return m, err
	}
	a := <-byTag
	switch {
	case errors.Is(a.err, ErrNotFound):
		return &Manifest{Bytes: emptyIndex, MediaType: types.OCIImageIndex, Digest: digestOf(emptyIndex), Host: server[0].host}, nil
	case a.err != nil:
		return nil, a.err
	case a.m.MediaType != types.OCIImageIndex:
		return nil, fmt.Errorf("%s: the referrers tag is a %q, not an OCI index", what, a.m.MediaType)
	}
	return a.m, nil
}

// digestOf is the sha256 digest of p.
func digestOf(p []byte) v1.Hash {
	sum := sha256.Sum256(p)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// BlobBytes fetches the whole blob desc of repo, a small one such as an
// image config, from the endpoints with the pull capability, mirrors
// first, and returns its bytes once their size and digest match desc.
// It reads at most desc.Size bytes: the caller bounds that.
func (c *Client) BlobBytes(ctx context.Context, repo name.Repository, desc v1.Descriptor) ([]byte, error) {
	what := "blob " + repo.Name() + "@" + desc.Digest.String()
	if _, err := v1.NewHash(desc.Digest.String()); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("%s: negative size %d", what, desc.Size)
	}
	eps, err := c.endpointsFor(repo, CapPull)
	if err != nil {
		return nil, fmt.Errorf("%s: hosts configuration: %w", what, err)
	}
	q := &docQuery{
		repo:  repo,
		what:  what,
		want:  desc.Digest,
		limit: desc.Size,
		size:  desc.Size,
		url:   func(e *endpoint) string { return e.blobURL(repo, desc.Digest) },
	}
	m, err := c.getDoc(ctx, eps, q)
	if err != nil {
		return nil, err
	}
	return m.Bytes, nil
}

// endpointsFor returns the endpoints of repo that may be asked for want,
// in the order to ask them: the mirrors with want, then the server.
func (c *Client) endpointsFor(repo name.Repository, want Capabilities) ([]*endpoint, error) {
	cfg, err := LoadHosts(c.opts.hostsDir, repo.Registry)
	if err != nil {
		return nil, err
	}
	var eps []*endpoint
	for _, e := range cfg {
		if e.Mirror && !e.Capabilities.Has(want) {
			continue
		}
		ep, err := c.prepare(e, repo.Registry)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 || eps[len(eps)-1].Mirror {
		return nil, errors.New("no server") // LoadHosts always ends with it
	}
	return eps, nil
}

// manifestURL is where endpoint e serves the manifest reference of repo.
func (e *endpoint) manifestURL(repo name.Repository, reference string) string {
	u := *e.URL
	u.Path = joinPath(u.Path, repo.RepositoryStr(), "manifests", reference)
	if e.ns != "" {
		u.RawQuery = url.Values{"ns": {e.ns}}.Encode()
	}
	return u.String()
}

// docQuery is a request for a whole small document: a manifest or a blob.
type docQuery struct {
	repo   name.Repository
	what   string                   // names the document in errors
	url    func(e *endpoint) string // where e serves it
	want   v1.Hash                  // the digest asked for; zero for a tag
	size   int64                    // the exact size expected; -1 if unknown
	limit  int64                    // the most bytes read
	accept string                   // the Accept header; "" for none
}

// getDoc asks the endpoints for q in turn: each mirror once, then the
// server, retried after a pause while its failure is temporary.
func (c *Client) getDoc(ctx context.Context, eps []*endpoint, q *docQuery) (*Manifest, error) {
	var failed []string
	for _, e := range eps[:len(eps)-1] {
		m, err := c.getFrom(ctx, e, q)
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil {
			return nil, q.fail(failed, e, ctxFailure(ctx, err))
		}
		failed = append(failed, fmt.Sprintf("from %s: %v", e.host, err))
		if !errors.Is(err, ErrNotFound) {
			c.penalize(e, q.want, err) // blob reads skip it for a while too
		}
	}
	server := eps[len(eps)-1]
	var last error
	for failures := 0; ; failures++ {
		m, err := c.getFrom(ctx, server, q)
		if err == nil {
			return m, nil
		}
		last = lastFailure(ctx, last, err)
		if err := c.wait(ctx, failures, last); err != nil {
			return nil, q.fail(failed, server, err)
		}
	}
}

// fail is the error for q when the endpoints failed as failed says, and
// e, the last one asked, with err.
func (q *docQuery) fail(failed []string, e *endpoint, err error) error {
	before := strings.Join(failed, "; ")
	if before != "" {
		before += "; "
	}
	return fmt.Errorf("%s: %sfrom %s: %w", q.what, before, e.host, err)
}

// getFrom makes one attempt at q on endpoint e. Redirects are followed
// here, to other hosts without credentials nor hosts.toml headers; a 401
// from e leads to one new handshake and a new request.
func (c *Client) getFrom(ctx context.Context, e *endpoint, q *docQuery) (*Manifest, error) {
	hc, err := c.authClient(ctx, e, q.repo)
	if err != nil {
		return nil, err
	}
	start, err := url.Parse(q.url(e))
	if err != nil {
		return nil, &failure{err: err}
	}
	target, client, reauthed, hops := start, hc, false, 0
	for {
		toEndpoint := client == hc
		a, err := c.docAttempt(ctx, e, client, target, toEndpoint, q.accept)
		if err != nil {
			return nil, err
		}
		resp := a.resp
		switch code := resp.StatusCode; {
		case isRedirect(code) && resp.Header.Get("Location") != "":
			loc, err := resp.Location()
			a.close()
			if err != nil {
				return nil, &failure{status: code, err: fmt.Errorf("bad redirect: %w", err)}
			}
			if hops++; hops > maxRedirects {
				return nil, &failure{status: code, err: fmt.Errorf("more than %d redirects", maxRedirects)}
			}
			client = c.storage
			if strings.EqualFold(loc.Host, e.host) {
				client = hc
			}
			target = loc
			continue
		case code == http.StatusUnauthorized && toEndpoint && !reauthed:
			a.close()
			reauthed = true
			c.forgetClient(e, q.repo, hc)
			if hc, err = c.authClient(ctx, e, q.repo); err != nil {
				return nil, err
			}
			target, client, hops = start, hc, 0
			continue
		}
		m, err := a.read(q, e)
		a.close()
		return m, err
	}
}

// docAttempt is one GET of a document, holding a slot for its host and
// the attempt's context, which the request timeout ends, until close.
type docAttempt struct {
	ctx, actx context.Context
	timeout   time.Duration
	resp      *http.Response
	cancel    context.CancelFunc
	release   func()
}

// docAttempt sends one GET to target with client, once a slot for the
// target host is free. Headers from hosts.toml go only to e's own host.
func (c *Client) docAttempt(ctx context.Context, e *endpoint, client *http.Client, target *url.URL, toEndpoint bool, accept string) (*docAttempt, error) {
	release, err := c.limits.acquire(ctx, target.Host)
	if err != nil {
		return nil, err
	}
	timeout := c.opts.requestTimeout
	actx, cancel := context.WithTimeoutCause(ctx, timeout, errAttemptTimeout)
	a := &docAttempt{ctx: ctx, actx: actx, timeout: timeout, cancel: cancel, release: release}
	req, err := http.NewRequestWithContext(actx, http.MethodGet, target.String(), nil)
	if err != nil {
		a.close()
		return nil, &failure{err: err}
	}
	if toEndpoint {
		for k, vs := range e.Header {
			req.Header[k] = append([]string(nil), vs...)
		}
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if a.resp, err = client.Do(req); err != nil {
		a.close()
		return nil, transportFailure(ctx, actx, timeout, err)
	}
	return a, nil
}

// close ends the attempt and frees the host slot.
func (a *docAttempt) close() {
	if a.resp != nil {
		a.resp.Body.Close()
	}
	a.cancel()
	a.release()
}

// read checks the answer of endpoint e to q and returns the document.
func (a *docAttempt) read(q *docQuery, e *endpoint) (*Manifest, error) {
	resp := a.resp
	if resp.StatusCode != http.StatusOK {
		p, _ := io.ReadAll(io.LimitReader(resp.Body, maxDetail))
		return nil, statusOf(resp, errorDetail(p))
	}
	if resp.ContentLength > q.limit {
		return nil, &failure{err: fmt.Errorf("content-length %d, more than the %d bytes allowed", resp.ContentLength, q.limit)}
	}
	p, err := io.ReadAll(io.LimitReader(resp.Body, q.limit+1))
	if err != nil {
		return nil, transportFailure(a.ctx, a.actx, a.timeout, err)
	}
	if int64(len(p)) > q.limit {
		return nil, &failure{err: fmt.Errorf("more than the %d bytes allowed", q.limit)}
	}
	d, err := q.check(p)
	if err != nil {
		return nil, &failure{err: err}
	}
	return &Manifest{Bytes: p, MediaType: mediaTypeOf(p, resp.Header), Digest: d, Host: e.host}, nil
}

// check returns the digest of p, checking it and the size against q's.
func (q *docQuery) check(p []byte) (v1.Hash, error) {
	if q.size >= 0 && int64(len(p)) != q.size {
		return v1.Hash{}, fmt.Errorf("%w: %d bytes, want %d", ErrDigestMismatch, len(p), q.size)
	}
	alg := "sha256"
	if q.want != (v1.Hash{}) {
		alg = q.want.Algorithm
	}
	h, err := v1.Hasher(alg)
	if err != nil {
		return v1.Hash{}, err
	}
	h.Write(p)
	d := v1.Hash{Algorithm: alg, Hex: hex.EncodeToString(h.Sum(nil))}
	if q.want != (v1.Hash{}) && d != q.want {
		return v1.Hash{}, fmt.Errorf("%w: the bytes served are %s", ErrDigestMismatch, d)
	}
	return d, nil
}

// mediaTypeOf is the media type of document p: its own mediaType field,
// else the Content-Type of its answer.
func mediaTypeOf(p []byte, h http.Header) types.MediaType {
	var doc struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if json.Unmarshal(p, &doc) == nil && doc.MediaType != "" {
		return doc.MediaType
	}
	mt, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil {
		return ""
	}
	return types.MediaType(mt)
}

// statusOf is the failure for an error status: temporary or not as
// statusFailure says, and matching ErrNotFound or ErrUnauthorized as its
// does, but worded for any document, not only blobs.
func statusOf(resp *http.Response, detail error) *failure {
	f := statusFailure(resp.StatusCode, resp.Header, detail)
	f.status, f.err = 0, &statusError{code: resp.StatusCode, detail: detail} // the message names the status
	return f
}

// statusError is an error status and the registry's message about it.
type statusError struct {
	code   int
	detail error // may be nil
}

func (e *statusError) Error() string {
	s := fmt.Sprintf("%d %s", e.code, http.StatusText(e.code))
	if e.detail != nil {
		s += ": " + e.detail.Error()
	}
	return s
}

// Is matches the sentinel that statusFailure gives the status.
func (e *statusError) Is(target error) bool {
	switch e.code {
	case http.StatusNotFound:
		return target == ErrNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		return target == ErrUnauthorized
	}
	return false
}

func (e *statusError) Unwrap() error { return e.detail }
