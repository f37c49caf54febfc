package fetch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"
)

// Lock order: Client.flightMu and Client.mu are never held together, and
// hostLimits.mu is a leaf. No lock is held across a network call.

// Client fetches blobs from registries and their mirrors. It keeps one
// authenticated HTTP client per endpoint and repository, the storage URLs
// registries redirected blobs to, which mirrors misbehaved lately, which
// hosts do not serve multi-range requests, the reads in flight and the
// counters. A Client is safe for concurrent use;
// sharing one among all the images of a node makes its per-host limit and
// its deduplication node-wide.
type Client struct {
	opts    *options          // immutable after New
	base    http.RoundTripper // opts.transport, wrapped, with the User-Agent set
	pre     *predialer        // dials opts.transport's connections; nil unless it is an *http.Transport
	storage *http.Client      // base, for redirect targets on other hosts than the endpoint's

	handshakes singleflight.Group // one authentication per endpoint and repository at a time
	limits     hostLimits

	mu         sync.Mutex
	clients    map[string]*http.Client      // authenticated, by authKey; protected by mu
	transports map[string]http.RoundTripper // for endpoints with TLS or proxy settings, by their settings; protected by mu
	locations  map[string]location          // storage URLs by blob URL; protected by mu
	penalties  map[string]time.Time         // skip until, by endpoint key or endpoint key and digest; protected by mu
	hosts      map[string]*hostCounters     // protected by mu
	blobs      map[v1.Hash]*blobCounters    // protected by mu
	asked      map[string]*atomic.Bool      // foreign hosts that asked for credentials; protected by mu
	singleOnly map[string]bool              // endpoint hosts, lowercased, that do not serve multi-range requests; protected by mu

	flightMu sync.Mutex
	flights  map[flightKey]*flight // protected by flightMu

	stats counters
}

// counters are the live values behind Stats.
type counters struct {
	requests, bytes, retries, errors            atomic.Int64
	deduplicated, fallbacks, reauth, reresolves atomic.Int64
}

// hostCounters are the live values behind HostStats.
type hostCounters struct {
	requests, bytes, failures atomic.Int64
}

// blobCounters are the live values behind BlobStats.
type blobCounters struct {
	requests, bytes atomic.Int64
}

// Stats is a snapshot of a Client's counters since New.
type Stats struct {
	// Requests is the number of HTTP GETs sent for blob bytes, retries,
	// fallbacks and redirect hops included. A multi-range request is one.
	Requests int64
	// Bytes is the number of response body bytes read from blob GETs,
	// including bytes skipped when a server ignored Range. Of a multipart
	// answer only the parts' payloads count, not their headers and
	// boundaries.
	Bytes int64
	// Retries is the number of attempts made after a failed one (after a
	// pause), a failed handshake counting as an attempt. Moving on from a
	// failed mirror is a fallback, not a retry.
	Retries int64
	// Errors is the number of reads (ReadAt, ReadRanges and Open calls,
	// and streams from Open) that failed. Reaching the end of a blob is
	// not a failure.
	Errors int64
	// Deduplicated is the number of ReadAt calls, and single-range reads
	// of ReadRanges, answered by another call's request for the same
	// bytes.
	Deduplicated int64
	// Fallbacks is the number of times a mirror failed and the next
	// endpoint was tried.
	Fallbacks int64
	// Reauthentications is the number of handshakes redone because a
	// registry answered 401.
	Reauthentications int64
	// Reresolves is the number of times a request to a reused storage URL
	// failed and the registry was asked again at once (at most once per
	// read).
	Reresolves int64
	// Hosts breaks Requests and Bytes down by the host that served them
	// (registry, mirror or storage), as host[:port]. It also lists the
	// endpoint hosts found not to serve multi-range requests.
	Hosts map[string]HostStats
}

// HostStats counts the blob requests to one host.
type HostStats struct {
	// Requests and Bytes are as in Stats.
	Requests, Bytes int64
	// Failures counts requests that failed: no response, an error status
	// or a broken body. A refused multi-range request is no failure.
	Failures int64
	// NoMultiRange reports that the host, as an endpoint, did not serve a
	// multi-range request: reads through it ask for single ranges.
	NoMultiRange bool
}

// BlobStats counts the requests made for one blob.
type BlobStats struct {
	// Requests and Bytes are as in Stats.
	Requests, Bytes int64
}

// New returns a Client configured by opts.
func New(opts ...Option) (*Client, error) {
	o, err := makeOptions(opts...)
	if err != nil {
		return nil, err
	}
	c := &Client{
		opts:       o,
		clients:    make(map[string]*http.Client),
		transports: make(map[string]http.RoundTripper),
		locations:  make(map[string]location),
		penalties:  make(map[string]time.Time),
		hosts:      make(map[string]*hostCounters),
		blobs:      make(map[v1.Hash]*blobCounters),
		asked:      make(map[string]*atomic.Bool),
		singleOnly: make(map[string]bool),
		flights:    make(map[flightKey]*flight),
	}
	if t, ok := o.transport.(*http.Transport); ok {
		// A clone: it keeps an idle connection for each request allowed
		// in flight per host, and its dials go through the predialer.
		t, c.pre = withPredialer(t)
		t.MaxIdleConnsPerHost = max(t.MaxIdleConnsPerHost, o.maxConns)
		o.transport = t
	}
	if c.base, err = c.finish(o.transport); err != nil {
		return nil, fmt.Errorf("fetch options: %w", err)
	}
	c.storage = &http.Client{Transport: c.base, CheckRedirect: noRedirects}
	c.limits.init(o.maxConns)
	return c, nil
}

// withUserAgent wraps rt so requests carry our User-Agent. A
// *transport.Wrapper is already authenticated and stays as it is.
func (c *Client) withUserAgent(rt http.RoundTripper) http.RoundTripper {
	if _, ok := rt.(*transport.Wrapper); ok {
		return rt
	}
	return transport.NewUserAgent(rt, c.opts.userAgent)
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	s := Stats{
		Requests:          c.stats.requests.Load(),
		Bytes:             c.stats.bytes.Load(),
		Retries:           c.stats.retries.Load(),
		Errors:            c.stats.errors.Load(),
		Deduplicated:      c.stats.deduplicated.Load(),
		Fallbacks:         c.stats.fallbacks.Load(),
		Reauthentications: c.stats.reauth.Load(),
		Reresolves:        c.stats.reresolves.Load(),
		Hosts:             make(map[string]HostStats),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	listed := make(map[string]bool, len(c.hosts))
	for h, hc := range c.hosts {
		s.Hosts[h] = HostStats{
			Requests: hc.requests.Load(), Bytes: hc.bytes.Load(), Failures: hc.failures.Load(),
			NoMultiRange: c.singleOnly[strings.ToLower(h)],
		}
		listed[strings.ToLower(h)] = true
	}
	for h := range c.singleOnly {
		if !listed[h] {
			s.Hosts[h] = HostStats{NoMultiRange: true}
		}
	}
	return s
}

// noMultiRange reports whether endpoint host is known not to serve
// multi-range requests.
func (c *Client) noMultiRange(host string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.singleOnly[strings.ToLower(host)]
}

// noteNoMultiRange remembers, for as long as the Client lives, that
// endpoint host does not serve multi-range requests: reads through it ask
// for single ranges from now on.
func (c *Client) noteNoMultiRange(host string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.singleOnly[strings.ToLower(host)] = true
}

// hostCounter returns the counters of host, creating them.
func (c *Client) hostCounter(host string) *hostCounters {
	c.mu.Lock()
	defer c.mu.Unlock()
	hc := c.hosts[host]
	if hc == nil {
		hc = &hostCounters{}
		c.hosts[host] = hc
	}
	return hc
}

// blobCounter returns the counters of blob d, creating them.
func (c *Client) blobCounter(d v1.Hash) *blobCounters {
	c.mu.Lock()
	defer c.mu.Unlock()
	bc := c.blobs[d]
	if bc == nil {
		bc = &blobCounters{}
		c.blobs[d] = bc
	}
	return bc
}

// Blob returns random access to the blob desc in repo; the size comes from
// desc. It reads the registry's hosts configuration. When the registry
// itself is the only endpoint, Blob authenticates to it (once per
// repository, with pull scope, retrying temporary failures like a read)
// so that bad credentials show at once; with mirrors, each endpoint
// authenticates when first used. Blob sends no request for the blob
// itself.
func (c *Client) Blob(ctx context.Context, repo name.Repository, desc v1.Descriptor) (*RemoteBlob, error) {
	if _, err := v1.NewHash(desc.Digest.String()); err != nil {
		return nil, fmt.Errorf("fetch blob: %w", err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("fetch %s: negative size %d", desc.Digest, desc.Size)
	}
	eps, err := c.endpoints(repo)
	if err != nil {
		return nil, newError(desc.Digest, 0, 0, fmt.Errorf("hosts configuration for %s: %w", repo.RegistryStr(), err))
	}
	b := &RemoteBlob{
		client:    c,
		repo:      repo,
		endpoints: eps,
		digest:    desc.Digest,
		size:      desc.Size,
		counters:  c.blobCounter(desc.Digest),
		flightID:  repo.Registry.Scheme() + "://" + repo.Name(),
	}
	if len(eps) == 1 {
		if _, err := c.handshake(ctx, eps[0], repo); err != nil {
			e := newError(desc.Digest, 0, 0, err)
			if e.Err == nil {
				e.Err = fmt.Errorf("authenticate to %s", eps[0].reg)
			} else {
				e.Err = fmt.Errorf("authenticate to %s: %w", eps[0].reg, e.Err)
			}
			return nil, e
		}
	}
	return b, nil
}

// Prepare starts authenticating to repo's registry in the background, so
// that the first blob read need not wait for the handshake (and its new
// connection), and dials a few connections for the first reads ahead
// (predialedConns; not through a proxy); wait returns once the handshake
// attempt and those dials have ended, or ctx has. It does nothing
// with mirrors, which authenticate on first use, and reports nothing: a
// failed handshake is met again by Blob.
func (c *Client) Prepare(ctx context.Context, repo name.Repository) (wait func()) {
	eps, err := c.endpoints(repo)
	if err != nil || len(eps) != 1 {
		return func() {}
	}
	var wg sync.WaitGroup
	if e := eps[0]; c.pre != nil && e.Proxy == nil && direct(c.pre.transport, e.URL) {
		wg.Go(func() { c.pre.predial(ctx, e.URL, min(predialedConns, c.opts.maxConns)) })
	}
	wg.Go(func() {
		c.authClient(ctx, eps[0], repo) //nolint:errcheck // see above
	})
	return wg.Wait
}

// endpoint is an Endpoint made ready for requests.
type endpoint struct {
	Endpoint
	key       string            // the API root URL; names the endpoint in maps
	host      string            // URL.Host
	reg       name.Registry     // what the handshake talks to
	transport http.RoundTripper // unauthenticated, wrapped, with our User-Agent
	ns        string            // the ns query parameter for a foreign endpoint, else ""
	foreign   bool              // on another host than the registry's
	// exposed: reached over plain http:// on a host that is not loopback,
	// and not because the image reference said so. It gets no credentials.
	exposed bool
}

// endpoints returns the endpoints that serve blobs of repo, in the order
// to try them.
func (c *Client) endpoints(repo name.Repository) ([]*endpoint, error) {
	cfg, err := LoadHosts(c.opts.hostsDir, repo.Registry)
	if err != nil {
		return nil, err
	}
	var eps []*endpoint
	for _, e := range cfg {
		if !e.Capabilities.Has(CapPull) {
			continue
		}
		ep, err := c.prepare(e, repo.Registry)
		if err != nil {
			return nil, err
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		return nil, errors.New("no endpoint has the pull capability")
	}
	return eps, nil
}

// prepare makes e ready for requests to blobs of registry reg.
func (c *Client) prepare(e Endpoint, reg name.Registry) (*endpoint, error) {
	ep := &endpoint{Endpoint: e, key: e.URL.String(), host: e.URL.Host}
	if e.defaultServer {
		ep.reg = reg
	} else {
		opts := []name.Option{name.WeakValidation}
		if e.URL.Scheme == "http" {
			opts = append(opts, name.Insecure)
		}
		r, err := name.NewRegistry(e.URL.Host, opts...)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", e.URL.Redacted(), err)
		}
		ep.reg = r
		if !sameRegistryHost(e.URL.Host, reg.RegistryStr()) {
			ep.ns = namespace(reg.RegistryStr())
			ep.foreign = true
		}
	}
	ep.exposed = !e.defaultServer && e.URL.Scheme == "http" && !isLoopback(e.URL.Host)
	ep.transport = c.base
	if e.OwnSettings() {
		t, err := c.endpointTransport(&e)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", e.URL.Redacted(), err)
		}
		ep.transport = t
	}
	return ep, nil
}

// noRedirects makes an http.Client hand redirects back to fetch, which
// follows them itself.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// blobURL is where endpoint e serves the blob d of repo.
func (e *endpoint) blobURL(repo name.Repository, d v1.Hash) string {
	u := *e.URL
	u.Path = joinPath(u.Path, repo.RepositoryStr(), "blobs", d.String())
	if e.ns != "" {
		u.RawQuery = url.Values{"ns": {e.ns}}.Encode()
	}
	return u.String()
}

// joinPath appends parts to the URL path root, one slash between each.
func joinPath(root string, parts ...string) string {
	p := root
	for _, s := range parts {
		if len(p) == 0 || p[len(p)-1] != '/' {
			p += "/"
		}
		p += s
	}
	return p
}

// authKey names the authenticated client of e for repo.
func authKey(e *endpoint, repo name.Repository) string {
	return e.key + " " + repo.RepositoryStr()
}

// authClient returns the authenticated client of e for repo, doing the
// handshake if no one has yet. The handshake is one attempt, shared by
// concurrent callers; it is not bound to ctx (whose caller may leave
// early) but to the request timeout, and each caller waits for it only as
// long as its own ctx allows. A failed handshake is not cached: retrying
// it is the caller's business. The client does not follow redirects.
func (c *Client) authClient(ctx context.Context, e *endpoint, repo name.Repository) (*http.Client, error) {
	key := authKey(e, repo)
	c.mu.Lock()
	hc := c.clients[key]
	c.mu.Unlock()
	if hc != nil {
		return hc, nil
	}
	hctx := context.WithoutCancel(ctx)
	ch := c.handshakes.DoChan(key, func() (any, error) {
		c.mu.Lock()
		hc := c.clients[key]
		c.mu.Unlock()
		if hc != nil {
			return hc, nil
		}
		rt, err := c.authenticate(hctx, e, repo)
		if err != nil {
			return nil, err
		}
		hc = &http.Client{Transport: rt, CheckRedirect: noRedirects}
		c.mu.Lock()
		c.clients[key] = hc
		c.mu.Unlock()
		return hc, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*http.Client), nil
	case <-ctx.Done():
		return nil, ctxFailure(ctx, nil)
	}
}

// handshake returns the authenticated client of e for repo, retrying a
// failed handshake after a pause as a read would retry a request.
func (c *Client) handshake(ctx context.Context, e *endpoint, repo name.Repository) (*http.Client, error) {
	var last error
	for failures := 0; ; failures++ {
		hc, err := c.authClient(ctx, e, repo)
		if err == nil {
			return hc, nil
		}
		last = lastFailure(ctx, last, err)
		if err := c.wait(ctx, failures, last); err != nil {
			return nil, err
		}
		c.stats.retries.Add(1)
	}
}

// forgetClient drops the authenticated client hc of e for repo, unless
// someone replaced it already, so the next use does a new handshake.
func (c *Client) forgetClient(e *endpoint, repo name.Repository, hc *http.Client) {
	key := authKey(e, repo)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clients[key] == hc {
		delete(c.clients, key)
	}
}

// credentials returns the authenticator for endpoint e and repo. The
// registry's own host gets WithAuth's, else the keychain's for repo.
// Another host gets the keychain's for that host, or none; an exposed
// endpoint gets none.
func (c *Client) credentials(ctx context.Context, e *endpoint, repo name.Repository) (authn.Authenticator, error) {
	var res authn.Resource = repo
	switch {
	case e.exposed:
		return authn.Anonymous, nil
	case !e.foreign && c.opts.auth != nil:
		return c.opts.auth, nil
	case c.opts.keychain == nil:
		return authn.Anonymous, nil
	case e.foreign:
		res = e.reg // the endpoint's own credentials, if the keychain has any
	}
	a, err := authn.Resolve(ctx, c.opts.keychain, res)
	if err != nil {
		return nil, fmt.Errorf("resolve credentials for %s: %w", res.RegistryStr(), err)
	}
	if a == nil {
		return nil, fmt.Errorf("resolve credentials for %s: keychain returned nil", res.RegistryStr())
	}
	return a, nil
}

// authenticate resolves the credentials for e and makes one attempt at its
// handshake with pull scope for repo, bounded by the request timeout.
func (c *Client) authenticate(ctx context.Context, e *endpoint, repo name.Repository) (http.RoundTripper, error) {
	auth, err := c.credentials(ctx, e, repo)
	if err != nil {
		return nil, err
	}
	rt := e.transport
	if !e.defaultServer {
		// An endpoint from hosts.toml: credentials only when asked for,
		// and never in clear beyond this machine.
		asked, unsafe := c.challenged(e.host), &atomic.Bool{}
		auth = &challengedAuth{inner: auth, asked: asked, unsafe: unsafe}
		rt = &challengeSpy{next: plainGuard{next: rt}, host: e.host, asked: asked, unsafe: unsafe}
	}
	actx, cancel := context.WithTimeoutCause(ctx, c.opts.requestTimeout, errAttemptTimeout)
	defer cancel()
	art, err := transport.NewWithContext(actx, e.reg, auth, rt, []string{repo.Scope(transport.PullScope)})
	if err == nil {
		return art, nil
	}
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode != http.StatusUnauthorized && te.StatusCode != http.StatusForbidden &&
		!e.defaultServer && e.URL.Path != "/v2" {
		// An endpoint whose API root is not /v2 may have nothing to
		// answer a ping at /v2/; talk to it without a handshake.
		return e.transport, nil
	}
	return nil, transportFailure(ctx, actx, c.opts.requestTimeout, err)
}

// location is a storage URL a registry redirected a blob to.
type location struct {
	url     *url.URL
	expires time.Time
}

// maxLocations bounds the storage URLs kept; beyond it, expired ones go.
const maxLocations = 4096

// cachedLocation returns the storage URL for blob URL u, if one is fresh.
func (c *Client) cachedLocation(u string) (location, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.locations[u]
	if ok && !time.Now().Before(l.expires) {
		delete(c.locations, u)
		return location{}, false
	}
	return l, ok
}

// keepLocation remembers that blob URL u redirected to target.
func (c *Client) keepLocation(u string, target *url.URL) {
	if c.opts.redirectMaxAge <= 0 {
		return
	}
	now := time.Now()
	expires := now.Add(c.opts.redirectMaxAge)
	if t, ok := urlExpiry(target); ok {
		// Stop early enough that a request sent just before the end does
		// not arrive after it.
		t = t.Add(-signedURLMargin)
		if t.Before(expires) {
			expires = t
		}
	}
	if !now.Before(expires) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.locations) >= maxLocations {
		for k, l := range c.locations {
			if !now.Before(l.expires) {
				delete(c.locations, k)
			}
		}
		if len(c.locations) >= maxLocations {
			clear(c.locations)
		}
	}
	c.locations[u] = location{url: target, expires: expires}
}

// dropLocation forgets the storage URL of blob URL u if it is still l.
func (c *Client) dropLocation(u string, l location) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.locations[u]; ok && cur.url == l.url {
		delete(c.locations, u)
	}
}

// penaltyKey names what a mirror failure is held against: the endpoint,
// or only the endpoint and blob when the mirror just lacks the blob.
func penaltyKey(e *endpoint, d v1.Hash, err error) string {
	if errors.Is(err, ErrNotFound) {
		return e.key + " " + d.String()
	}
	return e.key
}

// penalize makes reads skip mirror e (for blob d only, when it lacks d)
// for a while.
func (c *Client) penalize(e *endpoint, d v1.Hash, err error) {
	if c.opts.penalty <= 0 {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.penalties) >= maxLocations {
		for k, t := range c.penalties {
			if !now.Before(t) {
				delete(c.penalties, k)
			}
		}
	}
	c.penalties[penaltyKey(e, d, err)] = now.Add(c.opts.penalty)
}

// penalized reports whether reads of blob d should skip mirror e for now.
func (c *Client) penalized(e *endpoint, d v1.Hash) bool {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range [2]string{e.key, e.key + " " + d.String()} {
		if t, ok := c.penalties[k]; ok {
			if now.Before(t) {
				return true
			}
			delete(c.penalties, k)
		}
	}
	return false
}
