package layer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
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
	// referrers, if set, is the listing of the image's referrers started
	// while it was resolved (WithReferrers).
	referrers *referrersListing
	// mirrored: mirrors serve the image, so its registry may be down and
	// a listing of its referrers is bounded by lookupTimeout.
	mirrored bool
	// endTails ends the tail reads started early (WithEarlyTOC); nil when
	// none were.
	endTails func()
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
	// tail, if set, is the read of the blob's end where its TOC lies,
	// started while the image was resolved (WithEarlyTOC).
	tail atomic.Pointer[tailRead]
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
	referrers bool
	earlyTOC  *Store
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
// st's root (see ResolveFiles), so an unchanged file is not hashed again,
// and keeps the configs of images resolved from registries, so a later
// resolve of an image takes its config from there, a round trip sooner.
// Without it such files are hashed, and configs fetched, on every resolve.
func WithStore(st *Store) Option {
	return func(o *options) error { o.store = st; return nil }
}

// WithFetchOptions passes options on to the blob fetcher.
func WithFetchOptions(opts ...fetch.Option) Option {
	return func(o *options) error { o.fetchOpts = append(o.fetchOpts, opts...); return nil }
}

// WithReferrers starts listing the image's referrers (its index and
// profile artifacts) as soon as its manifest is known, while the rest is
// resolved; FindIndexes and FindProfile on the image then use that
// listing rather than list again. For a caller about to look them up:
// the listing costs a request (two on registries without the referrers
// API), made at the same time as the config's.
func WithReferrers() Option {
	return func(o *options) error { o.referrers = true; return nil }
}

// WithEarlyTOC reads, as soon as the image manifest is known, the end of
// each eStargz and zstd:chunked layer blob, where its footer and TOC lie
// (index.TailReadSize), unless st holds an index of the layer: Open then
// finds it at hand rather than asking for it after the config. For a
// caller about to open the image; the reads are bounded by
// earlyTOCTimeout and end with a failed Resolve.
func WithEarlyTOC(st *Store) Option {
	return func(o *options) error { o.earlyTOC = st; return nil }
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
// transport for manifest and config requests to reg itself when
// hosts.toml gives the registry CA, client certificate, proxy or dial
// settings (a clone of the base with them, so a registry behind a private
// CA resolves), else nil: the blob reads' own transport will do.
func (o *options) withHosts(reg name.Registry) ([]string, []fetch.Option, http.RoundTripper, error) {
	insecure, fetchOpts := slices.Clone(o.insecure), slices.Clone(o.fetchOpts)
	if o.hostsDir == "" {
		return insecure, fetchOpts, nil, nil
	}
	endpoints, err := fetch.LoadHosts(o.hostsDir, reg)
	if err != nil {
		return nil, nil, nil, err
	}
	var origin http.RoundTripper
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
//
// When the hosts directory (WithHostsDir) names a mirror of the registry
// that may serve the reference, the manifests and the config are fetched
// containerd's way, as the layers are: a tag from the endpoints that may
// resolve, the rest by digest from those that may pull, mirrors first,
// each checked against its digest (fetch.Client.Manifest); the registry
// need not answer. Otherwise go-containerregistry asks the registry.
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
	var book pingBook
	if o.store != nil {
		book = o.store
	}
	pings := newPingRace(book)
	im, err := resolveRemote(ctx, r, o, pings)
	if err != nil && ctx.Err() == nil && staleBookMayExplain(err) && pings.forgetBooked() {
		// Pings answered from the book may have misled the handshake (the
		// registry's way to authenticate changed, say): again, pinging.
		again, err2 := resolveRemote(ctx, r, o, newPingRace(book))
		if err2 == nil || ctx.Err() == nil {
			return again, err2
		}
		// Out of time on the second try: the first one's error says more.
	}
	return im, err
}

// staleBookMayExplain says whether a resolution's failure may come of a
// kept ping answer gone stale: not when the registry answered that the
// image is not there, nor when the network timed out.
func staleBookMayExplain(err error) bool {
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return false
	}
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

// resolveRemote is Resolve of the registry image r, whose handshakes pings
// answers.
func resolveRemote(ctx context.Context, r name.Reference, o *options, pings *pingRace) (_ *Image, err error) {
	insecure, fetchOpts, origin, err := o.withHosts(r.Context().Registry)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: registry hosts: %w", r, err)
	}
	auth := o.auth
	if auth == nil {
		if auth, err = authn.Resolve(ctx, o.keychain, r.Context()); err != nil {
			return nil, fmt.Errorf("resolve %s: credentials: %w", r, err)
		}
	}
	// The guard wraps every transport fetch builds, mirrors' own included,
	// and answers the pings of all of them through pings. Explicit
	// credentials are for the image's registry only; otherwise mirrors on
	// other hosts find theirs in the keychain.
	fopts := []fetch.Option{
		fetch.WithAuth(auth),
		fetch.WithTransport(o.transport),
		fetch.WithTransportWrapper(func(rt http.RoundTripper) http.RoundTripper { return newSchemeGuard(rt, insecure, pings) }),
	}
	if o.auth == nil && o.keychain != nil {
		fopts = append(fopts, fetch.WithKeychain(o.keychain))
	}
	fc, err := fetch.New(append(fopts, fetchOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	if origin == nil {
		// The manifest-level calls share the blob reads' connections.
		origin = fc.SharedTransport()
	}
	// go-containerregistry would also use plain HTTP for private
	// addresses; the guard allows it only where the user said so.
	transport := newSchemeGuard(origin, insecure, pings)
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
	mirrored, err := fc.HasMirrors(r.Context(), mirrorCaps(r))
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	puller, err := remote.NewPuller(pullerOptions(remoteOpts, transport, mirrored)...)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	var (
		early    *referrersListing
		tails    map[v1.Hash]*tailRead
		endTails = func() {}
	)
	defer func() {
		if err != nil {
			endTails()
			if early != nil {
				early.end()
			}
		}
	}()
	manifestKnown := func(d v1.Hash, m *v1.Manifest) {
		if o.referrers {
			early = listReferrersEarly(ctx, fc, r.Context(), d, mirrored)
		}
		if o.earlyTOC != nil {
			// Open reads them right after Resolve: they outlive ctx.
			tctx, end := context.WithTimeout(context.WithoutCancel(ctx), earlyTOCTimeout)
			endTails = end
			tails = readTails(ctx, tctx, end, fc, r.Context(), m, o.earlyTOC)
		}
	}
	var im *Image
	if mirrored {
		im, err = resolveThroughHosts(ctx, fc, r, o.platform, o.store, manifestKnown)
	} else {
		if host := r.Context().RegistryStr(); auth == authn.Anonymous && pings.recent(host) == nil {
			// A handshake with a ping lies ahead, and the manifest will
			// be asked for without credentials if the registry wants
			// none: it is asked for beside the ping.
			actx, endAhead := context.WithCancel(ctx)
			defer endAhead()
			transport.ahead = startManifestAhead(actx, origin, manifestAheadURLs(r, transport.allowsHTTP(host)))
		}
		im, err = resolveFromRegistry(ctx, r, remoteOpts, puller, o.platform, o.store, manifestKnown)
	}
	if err != nil {
		return nil, err
	}
	im.referrers, im.mirrored, im.endTails = early, mirrored, endTails
	im.Ref, im.remoteOpts, im.puller = r, remoteOpts, puller
	im.fetcher = fc
	diffIDs := im.Config.RootFS.DiffIDs
	for i, d := range im.Manifest.Layers {
		l := &Layer{Descriptor: d}
		if len(diffIDs) == len(im.Manifest.Layers) {
			l.DiffID = diffIDs[i]
		}
		if t := tails[d.Digest]; t != nil && waitReady(ctx, t) && t.blob != nil && t.blob.Size() == d.Size {
			l.blob = t.blob
			l.tail.Store(t)
		} else if l.blob, err = fc.Blob(ctx, r.Context(), d); err != nil {
			return nil, fmt.Errorf("resolve %s: layer %s: %w", r, d.Digest, err)
		}
		im.Layers = append(im.Layers, l)
	}
	return im, nil
}

// pullerOptions are the options of the puller that resolves an image and
// makes its later lookups: remoteOpts, over transport. When mirrors serve
// the image its registry may be down, and the lookups (index and profile
// artifacts, optional, for which the registry alone is asked) must then
// fail soon rather than hang: each answer is bounded by lookupTimeout,
// and nothing is retried.
func pullerOptions(remoteOpts []remote.Option, transport http.RoundTripper, mirrored bool) []remote.Option {
	if !mirrored {
		return remoteOpts
	}
	return append(slices.Clip(remoteOpts),
		remote.WithTransport(&headerTimeout{next: transport, d: lookupTimeout}),
		remote.WithRetryPredicate(func(error) bool { return false }))
}

// resolveFromRegistry fetches the manifest and config of r from its
// registry alone, with go-containerregistry and puller, whose handshake
// later lookups reuse.
func resolveFromRegistry(ctx context.Context, r name.Reference, remoteOpts []remote.Option, puller *remote.Puller, platform v1.Platform, st *Store, manifestKnown func(v1.Hash, *v1.Manifest)) (*Image, error) {
	desc, err := remote.Get(r, append(slices.Clip(remoteOpts), remote.Reuse(puller), remote.WithContext(ctx), remote.WithPlatform(platform))...)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, registryError(err))
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("resolve %s for %s: %w", r, platform, registryError(err))
	}
	im := &Image{}
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
	manifestKnown(im.Digest, im.Manifest)
	raw, err := configBytes(st, im.Manifest.Config, img.RawConfigFile)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: config: %w", r, registryError(err))
	}
	if im.Config, err = v1.ParseConfigFile(bytes.NewReader(raw)); err != nil {
		return nil, fmt.Errorf("resolve %s: config %s: %w", r, im.Manifest.Config.Digest, err)
	}
	return im, nil
}

// configBytes returns the image config desc names: from st when it holds
// it, else from fetch, which verifies it against desc, and then kept in st
// (a config that could not be kept is fetched again next time).
func configBytes(st *Store, desc v1.Descriptor, fetch func() ([]byte, error)) ([]byte, error) {
	if desc.Size <= 0 || desc.Size > maxConfigSize {
		return nil, fmt.Errorf("config %s: size %d out of bounds", desc.Digest, desc.Size)
	}
	if st != nil {
		if raw, ok := st.LoadConfig(desc); ok {
			return raw, nil
		}
	}
	raw, err := fetch()
	if err != nil {
		return nil, err
	}
	if st != nil {
		st.SaveConfig(desc, raw)
	}
	return raw, nil
}

// mirrorCaps are the capabilities a mirror needs to serve any part of
// resolving r: resolve for a tag, and pull for what is then fetched by
// digest (the platform's manifest, the config).
func mirrorCaps(r name.Reference) fetch.Capabilities {
	if _, ok := r.(name.Digest); ok {
		return fetch.CapPull
	}
	return fetch.CapPull | fetch.CapResolve
}

// manifestTypes are the media types asked for when resolving through
// mirrors: OCI and Docker images and indexes.
func manifestTypes() []string {
	return []string{
		string(types.OCIManifestSchema1), string(types.OCIImageIndex),
		string(types.DockerManifestSchema2), string(types.DockerManifestList),
	}
}

// resolveThroughHosts fetches the manifest and config of r as containerd
// does with a hosts.toml: the tag from the endpoints that may resolve it,
// all else by digest from those that may pull, mirrors first, each
// document checked against its digest (see fetch.Client.Manifest). An
// index is followed to platform's image as for an OCI layout.
func resolveThroughHosts(ctx context.Context, fc *fetch.Client, r name.Reference, platform v1.Platform, st *Store, manifestKnown func(v1.Hash, *v1.Manifest)) (*Image, error) {
	repo := r.Context()
	top, err := fc.Manifest(ctx, repo, r.Identifier(), manifestTypes())
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	d := v1.Descriptor{MediaType: top.MediaType, Size: int64(len(top.Bytes)), Digest: top.Digest}
	raw := top.Bytes
	switch isIndex, isImage := kind(d, raw); {
	case isIndex:
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("resolve %s: index %s: %w", r, d.Digest, err)
		}
		lr := &layoutReader{src: &registryManifests{ctx: ctx, fc: fc, repo: repo}, where: r.String(), platform: platform}
		if d, raw, err = lr.byPlatform(ctx, idx.Manifests, 1); err != nil {
			return nil, fmt.Errorf("resolve %s: %w", r, err)
		}
	case !isImage:
		return nil, fmt.Errorf("resolve %s: manifest %s: media type %q is neither an image nor an index", r, d.Digest, d.MediaType)
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("resolve %s: manifest %s: %w", r, d.Digest, err)
	}
	if m.Config.Size <= 0 || m.Config.Size > maxConfigSize {
		return nil, fmt.Errorf("resolve %s: config %s: size %d out of bounds", r, m.Config.Digest, m.Config.Size)
	}
	manifestKnown(d.Digest, m)
	rawConfig, err := configBytes(st, m.Config, func() ([]byte, error) { return fc.BlobBytes(ctx, repo, m.Config) })
	if err != nil {
		return nil, fmt.Errorf("resolve %s: config: %w", r, err)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("resolve %s: config %s: %w", r, m.Config.Digest, err)
	}
	return imageOf(d, m, cf), nil
}

// imageOf is the Image of manifest m, which d describes, and config cf,
// without its layers.
func imageOf(d v1.Descriptor, m *v1.Manifest, cf *v1.ConfigFile) *Image {
	im := &Image{
		Digest:     d.Digest,
		Manifest:   m,
		Config:     cf,
		descriptor: v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest},
	}
	if im.descriptor.MediaType == "" {
		im.descriptor.MediaType = m.MediaType
	}
	return im
}

// registryManifests gives an index's manifests by digest, through the
// endpoints fc fetches them from, to a layoutReader, for one call of
// resolveThroughHosts (whose ctx it keeps). It has no layer sections.
type registryManifests struct {
	ctx  context.Context
	fc   *fetch.Client
	repo name.Repository
}

var _ blobSource = (*registryManifests)(nil)

func (s *registryManifests) read(d v1.Hash, limit int64) ([]byte, error) {
	m, err := s.fc.Manifest(s.ctx, s.repo, d.String(), manifestTypes())
	if err != nil {
		return nil, err
	}
	if int64(len(m.Bytes)) > limit {
		return nil, fmt.Errorf("manifest %s: more than %d bytes", d, limit)
	}
	return m.Bytes, nil
}

func (s *registryManifests) section(d v1.Hash) (*fileSection, error) {
	return nil, fmt.Errorf("blob %s: not a local file", d)
}

// lookupTimeout bounds the wait for each answer of the registry to the
// lookups made for an image that mirrors serve (see pullerOptions).
const lookupTimeout = 5 * time.Second

// headerTimeout fails a request whose response headers take longer than d
// to arrive.
type headerTimeout struct {
	next http.RoundTripper
	d    time.Duration
}

var _ http.RoundTripper = (*headerTimeout)(nil)

// RoundTrip implements http.RoundTripper.
func (h *headerTimeout) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	timer := time.AfterFunc(h.d, cancel)
	resp, err := h.next.RoundTrip(req.WithContext(ctx))
	if !timer.Stop() && req.Context().Err() == nil {
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		return nil, fmt.Errorf("%s %s: no answer in %s", req.Method, req.URL.Redacted(), h.d)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelOnClose ends a request's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
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
	if errors.Is(err, fetch.ErrUnauthorized) {
		return fmt.Errorf("access denied (check credentials): %w", err)
	}
	return err
}
