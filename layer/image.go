package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/lazyroot/lazyroot/fetch"
)

// Image is a resolved image: where it came from and its layers, base first.
//
// A registry image (Resolve of a registry reference) has a Ref and reads
// its layers with HTTP range requests. A local image (an OCI layout, a
// docker save tarball, or layer files: see Resolve and ResolveFiles) has
// no Ref and reads its layers in place from files it holds open until
// Close.
type Image struct {
	// Ref is the reference as resolved, with defaults filled in; nil for
	// a local image.
	Ref name.Reference
	// Digest is the digest of the image manifest (not of an index). For a
	// docker save tarball without a manifest of its own it is the digest
	// of the manifest synthesized from the archive; for ResolveFiles it is
	// zero.
	Digest v1.Hash
	// Manifest and Config are the image's manifest and config file; never
	// nil (synthesized for local sources that have none).
	Manifest *v1.Manifest
	Config   *v1.ConfigFile
	// Layers are the image's layers, base first.
	Layers  []*Layer
	fetcher *fetch.Client // nil for a local image
	local   *localImage   // nil for a registry image
	// descriptor describes the image manifest, the subject of artifacts
	// that refer to the image.
	descriptor v1.Descriptor
	// remoteOpts reach the image's registry with its credentials and
	// transport, for the manifest-level calls go-containerregistry makes.
	remoteOpts []remote.Option
	// puller made the resolving calls; reusing it spares later lookups
	// (index and profile artifacts) a new handshake.
	puller *remote.Puller
}

// FetchStats counts the requests and blob bytes sent to the registry for
// this image's layers; zero for a local image.
func (im *Image) FetchStats() fetch.Stats {
	if im.fetcher == nil {
		return fetch.Stats{Hosts: map[string]fetch.HostStats{}}
	}
	return im.fetcher.Stats()
}

// Size is the sum of the layer blob sizes, as the manifest gives them.
func (im *Image) Size() int64 {
	var n int64
	for _, l := range im.Layers {
		n += l.Descriptor.Size
	}
	return n
}

// Layer is one layer of an Image and the blob that holds it.
type Layer struct {
	// Descriptor is the layer's entry in the manifest.
	Descriptor v1.Descriptor
	// DiffID is the digest of the uncompressed tar, from the image config;
	// zero if the config does not say.
	DiffID v1.Hash
	blob   blob
}

// FetchStats counts the requests and bytes sent for this layer's blob; for
// a layer of a local image, the reads of its file and the bytes read.
func (l *Layer) FetchStats() fetch.BlobStats { return l.blob.Stats() }

// blob is a layer's bytes as its manifest names them: random access for
// the index's chunks and spans, a stream to build an index.
type blob interface {
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	Open(ctx context.Context) (io.ReadCloser, error)
	Size() int64
	Stats() fetch.BlobStats
}

var (
	_ blob = (*fetch.RemoteBlob)(nil)
	_ blob = (*fileSection)(nil)
)

// Option configures Resolve.
type Option func(*options) error

type options struct {
	platform  v1.Platform
	insecure  []string
	auth      authn.Authenticator
	keychain  authn.Keychain
	transport http.RoundTripper
	userAgent string
	hostsDir  string
	fetchOpts []fetch.Option
	store     *Store
}

// WithPlatform picks the image for platform from a multi-arch index; the
// default is the host's.
func WithPlatform(p v1.Platform) Option {
	return func(o *options) error { o.platform = p; return nil }
}

// WithInsecureRegistries allows plain HTTP to these hosts (HOST or
// HOST:PORT). Loopback registries are always allowed it.
func WithInsecureRegistries(hosts ...string) Option {
	return func(o *options) error { o.insecure = append(o.insecure, hosts...); return nil }
}

// WithAuth uses a for every registry instead of the keychain.
func WithAuth(a authn.Authenticator) Option {
	return func(o *options) error { o.auth = a; return nil }
}

// WithKeychain resolves credentials per registry (default: Docker's config
// file and credential helpers).
func WithKeychain(k authn.Keychain) Option {
	return func(o *options) error { o.keychain = k; return nil }
}

// WithTransport sets the base HTTP transport.
func WithTransport(t http.RoundTripper) Option {
	return func(o *options) error {
		if t == nil {
			return errors.New("nil transport")
		}
		o.transport = t
		return nil
	}
}

// WithHostsDir reads registry mirrors from dir, containerd's layout
// (dir/HOST/hosts.toml); "" turns mirrors off. Plain-HTTP mirrors named
// there may be reached over HTTP. The default is no mirrors.
func WithHostsDir(dir string) Option {
	return func(o *options) error { o.hostsDir = dir; return nil }
}

// WithStore lets local sources remember the digests they compute under
// st's root (see ResolveFiles), so an unchanged file is not hashed again.
// Without it such files are hashed on every resolve.
func WithStore(st *Store) Option {
	return func(o *options) error { o.store = st; return nil }
}

// WithFetchOptions passes options on to the blob fetcher.
func WithFetchOptions(opts ...fetch.Option) Option {
	return func(o *options) error { o.fetchOpts = append(o.fetchOpts, opts...); return nil }
}

func makeOptions(opts []Option) (*options, error) {
	o := &options{
		platform:  v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		keychain:  authn.DefaultKeychain,
		transport: http.DefaultTransport.(*http.Transport).Clone(),
		userAgent: "lazyroot",
	}
	if runtime.GOARCH == "arm" {
		o.platform.Variant = "v7"
	}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// withHosts returns the hosts that may be reached over plain HTTP, the
// fetch options for reg, adding the mirrors of o.hostsDir (an http://
// mirror there was put there by the node's administrator), and the
// transport for manifest and config requests to reg itself: the base,
// with the CA, client certificate, proxy and dial settings hosts.toml
// gives the registry, so a registry behind a private CA resolves.
func (o *options) withHosts(reg name.Registry) ([]string, []fetch.Option, http.RoundTripper, error) {
	insecure, fetchOpts := slices.Clone(o.insecure), slices.Clone(o.fetchOpts)
	if o.hostsDir == "" {
		return insecure, fetchOpts, o.transport, nil
	}
	endpoints, err := fetch.LoadHosts(o.hostsDir, reg)
	if err != nil {
		return nil, nil, nil, err
	}
	origin := o.transport
	for _, e := range endpoints {
		if e.URL.Scheme == "http" {
			insecure = append(insecure, e.URL.Host)
		}
		if e.Mirror || !e.OwnSettings() || e.URL.Host != reg.RegistryStr() {
			continue
		}
		base, ok := o.transport.(*http.Transport)
		if !ok {
			return nil, nil, nil, fmt.Errorf("hosts.toml gives %s TLS, proxy or dial settings, which need the base transport to be an *http.Transport, not %T", reg, o.transport)
		}
		t, err := e.Transport(base)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", reg, err)
		}
		origin = t
	}
	return insecure, append([]fetch.Option{fetch.WithHostsDir(o.hostsDir)}, fetchOpts...), origin, nil
}

// ParseReference parses [REGISTRY/]IMAGE[:TAG|@DIGEST] with docker.io,
// library/ and latest defaults. Registries listed insecure may use HTTP.
func ParseReference(s string, insecure []string) (name.Reference, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w", s, err)
	}
	host := ref.Context().RegistryStr()
	for _, h := range insecure {
		if h == host || strings.Split(host, ":")[0] == h {
			return name.ParseReference(s, name.Insecure)
		}
	}
	return ref, nil
}

// Resolve finds the image ref names: it fetches the manifest (choosing the
// platform's manifest from an index) and the config. It fetches no layer.
//
// Two prefixes name local images instead, read in place (see Image.Close):
//
//   - oci:PATH[:TAG] is an OCI image layout directory; TAG picks the
//     manifest annotated org.opencontainers.image.ref.name=TAG, and
//     without it the layout must hold one image. Image indexes are
//     followed to the platform's image, as for a registry.
//   - docker-archive:PATH[:REF] is a docker save tarball; REF picks the
//     image tagged REF (as docker names it: "busybox" is
//     docker.io/library/busybox:latest), and without it the archive must
//     hold one image.
//
// PATH is the whole rest when a file of that name exists, else the part
// before the first colon whose prefix exists.
func Resolve(ctx context.Context, ref string, opts ...Option) (_ *Image, err error) {
	o, err := makeOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", ref, err)
	}
	if spec, ok := strings.CutPrefix(ref, "oci:"); ok {
		return resolveOCILayout(ctx, spec, o)
	}
	if spec, ok := strings.CutPrefix(ref, "docker-archive:"); ok {
		return resolveDockerArchive(ctx, spec, o)
	}
	r, err := ParseReference(ref, o.insecure)
	if err != nil {
		return nil, err
	}
	insecure, fetchOpts, origin, err := o.withHosts(r.Context().Registry)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: registry hosts: %w", r, err)
	}
	// go-containerregistry would also use plain HTTP for private
	// addresses; the guard allows it only where the user said so.
	transport := newSchemeGuard(origin, insecure)
	auth := o.auth
	if auth == nil {
		if auth, err = authn.Resolve(ctx, o.keychain, r.Context()); err != nil {
			return nil, fmt.Errorf("resolve %s: credentials: %w", r, err)
		}
	}
	// The guard wraps every transport fetch builds, mirrors' own included.
	// Explicit credentials are for the image's registry only; otherwise
	// mirrors on other hosts find theirs in the keychain.
	fopts := []fetch.Option{
		fetch.WithAuth(auth),
		fetch.WithTransport(o.transport),
		fetch.WithTransportWrapper(func(rt http.RoundTripper) http.RoundTripper { return newSchemeGuard(rt, insecure) }),
	}
	if o.auth == nil && o.keychain != nil {
		fopts = append(fopts, fetch.WithKeychain(o.keychain))
	}
	fc, err := fetch.New(append(fopts, fetchOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	// The blob reads' handshake overlaps the manifest's round trips; it has
	// ended when Resolve returns (cut short if Resolve fails).
	pctx, endPrepare := context.WithCancel(ctx)
	defer endPrepare()
	prepared := fc.Prepare(pctx, r.Context())
	defer func() {
		if err != nil {
			endPrepare()
		}
		prepared()
	}()
	remoteOpts := []remote.Option{
		remote.WithAuth(auth),
		remote.WithTransport(transport),
		remote.WithUserAgent(o.userAgent),
	}
	puller, err := remote.NewPuller(remoteOpts...)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	desc, err := remote.Get(r, append(slices.Clip(remoteOpts), remote.Reuse(puller), remote.WithContext(ctx), remote.WithPlatform(o.platform))...)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, registryError(err))
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("resolve %s for %s: %w", r, o.platform, registryError(err))
	}
	im := &Image{Ref: r, remoteOpts: remoteOpts, puller: puller}
	if im.Digest, err = img.Digest(); err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, registryError(err))
	}
	if d, err := partial.Descriptor(img); err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, registryError(err))
	} else {
		im.descriptor = *d
	}
	if im.Manifest, err = img.Manifest(); err != nil {
		return nil, fmt.Errorf("resolve %s: manifest: %w", r, registryError(err))
	}
	if im.Config, err = img.ConfigFile(); err != nil {
		return nil, fmt.Errorf("resolve %s: config: %w", r, registryError(err))
	}
	im.fetcher = fc
	diffIDs := im.Config.RootFS.DiffIDs
	for i, d := range im.Manifest.Layers {
		l := &Layer{Descriptor: d}
		if len(diffIDs) == len(im.Manifest.Layers) {
			l.DiffID = diffIDs[i]
		}
		if l.blob, err = fc.Blob(ctx, r.Context(), d); err != nil {
			return nil, fmt.Errorf("resolve %s: layer %s: %w", r, d.Digest, err)
		}
		im.Layers = append(im.Layers, l)
	}
	return im, nil
}

// registryError shortens go-containerregistry's errors to what a user needs.
func registryError(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("access denied (check credentials): %w", err)
		case http.StatusNotFound:
			return fmt.Errorf("not found: %w", err)
		}
	}
	return err
}
