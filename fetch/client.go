package fetch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"
)

// Client fetches blobs from registries. It caches one authenticated HTTP
// client per repository. A Client is safe for concurrent use.
type Client struct {
	opts *options          // immutable after New
	base http.RoundTripper // opts.transport with the User-Agent set

	handshakes singleflight.Group // one authentication per repository at a time

	mu      sync.Mutex
	clients map[string]*http.Client // by repoKey; protected by mu

	stats counters
}

// counters are the live values behind Stats.
type counters struct {
	requests, bytes, retries, errors atomic.Int64
}

// Stats is a snapshot of a Client's counters since New.
type Stats struct {
	// Requests is the number of HTTP GETs sent for blob bytes, retries
	// included.
	Requests int64
	// Bytes is the number of response body bytes read from blob GETs,
	// including bytes skipped when a server ignored Range.
	Bytes int64
	// Retries is the number of attempts made after a failed one.
	Retries int64
	// Errors is the number of reads (ReadAt calls, Open calls and streams
	// from Open) that failed. Reaching the end of a blob is not a failure.
	Errors int64
}

// New returns a Client configured by opts.
func New(opts ...Option) (*Client, error) {
	o, err := makeOptions(opts...)
	if err != nil {
		return nil, err
	}
	base := o.transport
	if _, ok := base.(*transport.Wrapper); !ok {
		// A *transport.Wrapper is already authenticated and must stay as
		// it is; anything else gets our User-Agent.
		base = transport.NewUserAgent(base, o.userAgent)
	}
	return &Client{opts: o, base: base, clients: make(map[string]*http.Client)}, nil
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	return Stats{
		Requests: c.stats.requests.Load(),
		Bytes:    c.stats.bytes.Load(),
		Retries:  c.stats.retries.Load(),
		Errors:   c.stats.errors.Load(),
	}
}

// Blob returns random access to the blob desc in repo. It authenticates
// (once per repository, with pull scope) but sends no request for the blob
// itself; the size comes from desc.
func (c *Client) Blob(ctx context.Context, repo name.Repository, desc v1.Descriptor) (*RemoteBlob, error) {
	if _, err := v1.NewHash(desc.Digest.String()); err != nil {
		return nil, fmt.Errorf("fetch blob: %w", err)
	}
	if desc.Size < 0 {
		return nil, fmt.Errorf("fetch %s: negative size %d", desc.Digest, desc.Size)
	}
	hc, err := c.httpClient(ctx, repo)
	if err != nil {
		e := newError(desc.Digest, 0, 0, err)
		if e.Err == nil {
			e.Err = fmt.Errorf("authenticate to %s", repo)
		} else {
			e.Err = fmt.Errorf("authenticate to %s: %w", repo, e.Err)
		}
		return nil, e
	}
	return &RemoteBlob{
		client: c,
		http:   hc,
		url:    blobURL(repo, desc.Digest),
		digest: desc.Digest,
		size:   desc.Size,
	}, nil
}

// blobURL is where the registry serves the blob d of repo.
func blobURL(repo name.Repository, d v1.Hash) string {
	return fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Registry.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), d)
}

// repoKey tells repositories apart, including one reached over plain HTTP.
func repoKey(repo name.Repository) string {
	return repo.Registry.Scheme() + "://" + repo.Name()
}

// httpClient returns the authenticated client for repo, doing the
// handshake if no one has yet. The handshake is shared by concurrent
// callers and is not bound to ctx (whose caller may leave early), only to
// its own per-attempt timeouts and retry limit; a failed handshake is not
// cached.
func (c *Client) httpClient(ctx context.Context, repo name.Repository) (*http.Client, error) {
	key := repoKey(repo)
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
		rt, err := c.authenticate(hctx, repo)
		if err != nil {
			return nil, err
		}
		hc = &http.Client{Transport: rt}
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
		return nil, &failure{err: ctx.Err()}
	}
}

// authenticate resolves the credentials for repo and performs the registry
// handshake, retrying temporary failures.
func (c *Client) authenticate(ctx context.Context, repo name.Repository) (http.RoundTripper, error) {
	auth := c.opts.auth
	if auth == nil {
		a, err := authn.Resolve(ctx, c.opts.keychain, repo)
		if err != nil {
			return nil, fmt.Errorf("resolve credentials: %w", err)
		}
		if a == nil {
			return nil, errors.New("resolve credentials: keychain returned nil")
		}
		auth = a
	}
	scopes := []string{repo.Scope(transport.PullScope)}
	var last error
	failures := 0
	for {
		if last != nil {
			if err := c.wait(ctx, failures, last); err != nil {
				return nil, err
			}
			failures++
		}
		actx, cancel := context.WithTimeoutCause(ctx, c.opts.requestTimeout, errAttemptTimeout)
		rt, err := transport.NewWithContext(actx, repo.Registry, auth, c.base, scopes)
		if err == nil {
			cancel()
			return rt, nil
		}
		last = transportFailure(ctx, actx, c.opts.requestTimeout, err)
		cancel()
	}
}
