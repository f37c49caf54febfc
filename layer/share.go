package layer

// Sharing layer indexes through the registry.
//
// A node that had to build a layer's index (by streaming the whole blob)
// pushes it back to the image's repository as an OCI artifact whose subject
// is the image manifest, so other nodes find it with the referrers API
// instead of streaming the layer again:
//
//	image manifest  ◄── subject ──  artifact manifest (artifactType IndexArtifactType)
//	                                  config: the OCI empty descriptor ("{}")
//	                                  layers: one blob per indexed layer,
//	                                          mediaType IndexMediaType,
//	                                          annotated AnnotationLayer: <layer digest>
//
// Listing (fetch.Client.Referrers) asks the OCI 1.1 referrers API (GET
// /v2/<name>/referrers/<digest>) and, at the same time, the referrers tag
// schema: the OCI index tagged sha256-<hex of the subject digest>, used
// when the registry does not answer the API with an OCI index (404, 400,
// 406, or another content type). A mount lists once, while it resolves
// the image (WithReferrers), for its index and profile lookups. Pushing uses remote.Pusher.Put, which
// after the manifest PUT probes the referrers API itself and, when that does
// not answer 200, adds the artifact to the fallback tag's index (creating
// it when absent). So a registry with the API (go-containerregistry's with
// WithReferrersSupport, Distribution 3, most hosted registries) keeps the
// list itself, and one without it (Distribution 2.8, Debian's
// docker-registry) gets the tag.
//
// Concurrency: the fallback tag update is a read-modify-write without
// conditional requests (go-containerregistry v0.22.1's commitSubjectReferrers
// has a TODO about it). Two nodes pushing artifacts for one image at the same
// moment to a registry without the referrers API may both read the old tag,
// and the later PUT then drops the other artifact from the list (in a test
// with two truly simultaneous pushers this happened about a third of the
// time). The dropped artifact stays in the registry but is not found. The
// last writer's artifact is always listed, and nodes that start one image
// together index the same layers, so the usual cost is nothing; at worst a
// later node rebuilds some layer's index and pushes it again. It never
// yields wrong data. With the referrers API the registry keeps the list and
// there is no such race. Deleting an artifact does not remove it from the
// fallback tag either; FindIndexes skips listed manifests the registry no
// longer has.
//
// Trust: FindIndexes checks that every blob it returns has the size and
// digest its artifact's descriptor gives, and that the artifact names this
// image as its subject (when the listing names the blobs, it reads the
// artifacts' manifests beside them, and checks both there). It does not decode the indexes: an index pushed by
// anyone with push access to the repository is only as good as its content,
// which index.Decode validates and the per-chunk digests of a Stack check.
// FindProfile reads the newest profile's blob by the digest the listing
// annotates it with (AnnotationProfileBlob), sparing the round trip to its
// manifest: the listing is what names the manifests' digests too, and a
// profile only orders prefetch, never what a file reads.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/lazyroot/lazyroot/fetch"
	"github.com/lazyroot/lazyroot/index"
)

const (
	// IndexArtifactType is the artifactType of the artifact that carries an
	// image's layer indexes; its subject is the image manifest.
	IndexArtifactType = "application/vnd.lazyroot.index.v1"
	// IndexMediaType is the media type of one layer's encoded index (the
	// bytes index.Encode writes) inside that artifact.
	IndexMediaType = "application/vnd.lazyroot.layer.index.v1"
	// WindowsMediaType is the media type of the windows blob of a gzip
	// seek index (see index.Index.Windows) inside that artifact, where it
	// sits beside its index, annotated like it. Nodes read it in ranges,
	// a window at a time, by the digest the index gives.
	WindowsMediaType = "application/vnd.lazyroot.layer.index.windows.v1"
	// AnnotationLayer annotates each index blob with the digest of the layer
	// it indexes.
	AnnotationLayer = "dev.lazyroot.layer.digest"
	// AnnotationCreated is the OCI annotation with the time the artifact was
	// pushed (RFC 3339, UTC); FindIndexes prefers the newest artifact.
	AnnotationCreated = "org.opencontainers.image.created"
	// AnnotationIndexBlobs annotates an index artifact with its index
	// blobs, a JSON array of {"layer", "digest", "size"}: a referrers
	// listing carries it, so that FindIndexes can fetch the blobs while
	// it reads the artifact's manifest, not after. It adds about 175
	// bytes per layer to the artifact's entry in every listing, whose
	// whole is bounded by fetch.MaxManifestSize (4 MiB).
	AnnotationIndexBlobs = "dev.lazyroot.index.blobs"
)

// listedIndexBlob is one index blob as AnnotationIndexBlobs names it.
type listedIndexBlob struct {
	Layer  string `json:"layer"`
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

const (
	// MaxIndexBlobSize bounds one encoded index pushed or fetched.
	MaxIndexBlobSize = 256 << 20
	// maxArtifactManifestSize bounds an artifact manifest FindIndexes reads.
	maxArtifactManifestSize = 4 << 20
	// maxArtifacts bounds the artifacts FindIndexes reads for one image.
	maxArtifacts = 64
	// shareJobs bounds the blob uploads and downloads in flight.
	shareJobs = 4
)

// emptyJSON is the OCI empty config blob, "{}".
var emptyJSON = []byte("{}")

// PushIndexes pushes to img's repository an artifact whose subject is img's
// manifest and whose layers are the encoded indexes, one per layer digest of
// img (base first), each annotated with AnnotationLayer and followed by its
// windows blob (WindowsMediaType) if windows holds one for that layer; an
// index that names a windows blob must be given that blob. Its config is the
// OCI empty descriptor and its artifactType IndexArtifactType; it carries
// AnnotationCreated and AnnotationIndexBlobs. The artifact is pushed by
// digest, which it returns; no tag is set besides the referrers fallback
// tag go-containerregistry maintains on registries without the referrers
// API (see the top of this file for the race that update has).
//
// img must come from Resolve of a registry reference: a local image fails
// with ErrLocalImage. Every key of encoded must be the digest of one
// of img's layers, and no index may exceed MaxIndexBlobSize.
func PushIndexes(ctx context.Context, img *Image, encoded, windows map[v1.Hash][]byte) (v1.Hash, error) {
	if img.Local() {
		return v1.Hash{}, fmt.Errorf("push indexes: %w", localError(img))
	}
	fail := func(err error) (v1.Hash, error) {
		return v1.Hash{}, fmt.Errorf("push indexes of %s: %w", img.Name(), err)
	}
	subject, err := img.subject()
	if err != nil {
		return fail(err)
	}
	if len(encoded) == 0 {
		return fail(errors.New("no index to push"))
	}
	inImage := map[v1.Hash]bool{}
	for _, l := range img.Layers {
		inImage[l.Descriptor.Digest] = true
	}
	for d, b := range encoded {
		if !inImage[d] {
			return fail(fmt.Errorf("%s is not a layer of the image", d))
		}
		if len(b) == 0 || len(b) > MaxIndexBlobSize {
			return fail(fmt.Errorf("index of layer %s: %d bytes", d, len(b)))
		}
	}
	for d, b := range windows {
		if _, ok := encoded[d]; !ok || len(b) == 0 {
			return fail(fmt.Errorf("windows of layer %s (%d bytes) without its index", d, len(b)))
		}
	}
	for d, b := range encoded {
		// An index that names a windows blob goes with that blob: without
		// it, other nodes could not read the layer.
		x, err := index.Decode(bytes.NewReader(b))
		if err != nil || x.Windows == nil || x.Layer != d.String() {
			continue // not this function's to judge: readers check indexes
		}
		w := windows[d]
		sum := sha256.Sum256(w)
		if int64(len(w)) != x.Windows.Size || "sha256:"+hex.EncodeToString(sum[:]) != x.Windows.Digest {
			return fail(fmt.Errorf("index of layer %s names windows %s of %d bytes, given %d bytes with another digest", d, x.Windows.Digest, x.Windows.Size, len(w)))
		}
	}
	blobs := []v1.Layer{static.NewLayer(emptyJSON, types.OCIEmptyJSON)}
	var (
		layers []v1.Descriptor
		listed []listedIndexBlob
	)
	for _, l := range img.Layers { // base first; an image may repeat a layer
		d := l.Descriptor.Digest
		b, ok := encoded[d]
		if !ok || !inImage[d] {
			continue
		}
		inImage[d] = false
		parts := []v1.Layer{static.NewLayer(b, IndexMediaType)}
		if w, ok := windows[d]; ok {
			parts = append(parts, static.NewLayer(w, WindowsMediaType))
		}
		for _, blob := range parts {
			desc, err := descriptorOf(blob)
			if err != nil {
				return fail(err)
			}
			desc.Annotations = map[string]string{AnnotationLayer: d.String()}
			layers = append(layers, desc)
			blobs = append(blobs, blob)
			if desc.MediaType == IndexMediaType {
				listed = append(listed, listedIndexBlob{Layer: d.String(), Digest: desc.Digest.String(), Size: desc.Size})
			}
		}
	}
	named, err := json.Marshal(listed)
	if err != nil {
		return fail(err)
	}
	h, err := pushArtifact(ctx, img, subject, IndexArtifactType, blobs[0], blobs[1:], layers, map[string]string{AnnotationIndexBlobs: string(named)})
	if err != nil {
		return fail(err)
	}
	return h, nil
}

// FindIndexes lists the artifacts that refer to img's manifest with
// artifactType IndexArtifactType and returns, for each layer digest in want
// that one of them holds, the encoded index. It returns an empty map and no
// error when there is none: no referrers, or a registry without the referrers
// API and no fallback tag.
//
// When several artifacts hold one layer, the one with the newest
// AnnotationCreated wins, as the listing gives it (when it gives it for
// every artifact; else as each manifest does; artifacts without it lose;
// ties go to the one listed last): see walkReferrers. When the listing
// gives every index artifact's AnnotationIndexBlobs, the blobs are
// fetched as it names them while the manifests of the artifacts they come
// from are read, in the same round trip; unless each of those still
// exists, names img as its subject and lists those blobs, the manifests
// are walked after all (keeping the blobs fetched). Else at most 64
// artifacts are read. Artifacts listed but gone from the registry, not of
// this artifactType, not naming img as their subject, or with a manifest
// over 4 MiB are skipped, as are index blobs over MaxIndexBlobSize.
//
// Every blob is fetched by digest from img's repository and checked against
// its descriptor: a blob of another size or digest fails the call with an
// error wrapping ErrDigest. Registry errors (access denied, 5xx) fail it too,
// wrapped with the image's name. On error the map is nil. A local image
// fails with ErrLocalImage.
func FindIndexes(ctx context.Context, img *Image, want []v1.Hash) (map[v1.Hash][]byte, error) {
	if img.Local() {
		return nil, fmt.Errorf("find indexes: %w", localError(img))
	}
	found := map[v1.Hash][]byte{}
	fail := func(err error) (map[v1.Hash][]byte, error) {
		return nil, fmt.Errorf("find indexes of %s: %w", img.Name(), registryError(err))
	}
	if _, err := img.subject(); err != nil {
		return fail(err)
	}
	if len(want) == 0 {
		return found, nil
	}
	puller, err := img.newPuller(ctx)
	if err != nil {
		return fail(err)
	}
	wanted := map[v1.Hash]bool{}
	for _, d := range want {
		wanted[d] = true
	}
	// Some registries (go-containerregistry's own) list the config media
	// type as the artifactType; the manifest says for sure.
	listed := []string{IndexArtifactType, "", string(types.OCIEmptyJSON)}
	list, err := listReferrers(ctx, img)
	if err != nil {
		return fail(err)
	}
	// The listing names the blobs (AnnotationIndexBlobs), or the
	// artifacts' manifests do.
	chosen, from, named := listedIndexBlobs(list, listed, wanted)
	var have map[v1.Hash][]byte // blobs fetched, by digest
	if named {
		got, fetched, confirmed, err := fetchIndexBlobs(ctx, puller, img, chosen, from, nil)
		if err != nil {
			return fail(err)
		}
		if confirmed {
			return got, nil
		}
		// A fallback tag may list an artifact deleted since (its blobs
		// may linger, but it was withdrawn), or one that does not say
		// what the listing does: read the manifests, keeping the blobs.
		named, have = false, fetched
	}
	if !named {
		chosen = map[v1.Hash]v1.Descriptor{}
		err = walkReferrers(ctx, puller, img, list, listed, IndexArtifactType, func(m *v1.Manifest) bool {
			for _, b := range m.Layers {
				l, err := v1.NewHash(b.Annotations[AnnotationLayer])
				if err != nil || !wanted[l] || b.MediaType != IndexMediaType || b.Size <= 0 || b.Size > MaxIndexBlobSize {
					continue
				}
				if _, ok := chosen[l]; !ok {
					chosen[l] = b
				}
			}
			return len(chosen) < len(wanted)
		})
		if err != nil {
			return fail(err)
		}
	}

	got, _, _, err := fetchIndexBlobs(ctx, puller, img, chosen, nil, have)
	if err != nil {
		return fail(err)
	}
	return got, nil
}

// fetchIndexBlobs fetches the index blobs chosen names, by layer, checking
// each against its descriptor (or takes it from have, by digest); a blob
// not found is left out. It returns them by layer and by digest.
// Meanwhile it reads the manifests of the artifacts in from, whose blobs
// the listing named (listedIndexBlobs), and reports confirmed only if
// each names img as its subject and lists those blobs for those layers.
func fetchIndexBlobs(ctx context.Context, puller *remote.Puller, img *Image, chosen map[v1.Hash]v1.Descriptor, from map[v1.Hash][]listedIndexBlob, have map[v1.Hash][]byte) (found, byDigest map[v1.Hash][]byte, confirmed bool, err error) {
	found, byDigest = map[v1.Hash][]byte{}, map[v1.Hash][]byte{}
	var (
		mu          sync.Mutex
		unconfirmed atomic.Bool
	)
	repo := img.Ref.Context()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(shareJobs)
	for a, blobs := range from {
		g.Go(func() error {
			desc, err := puller.Get(gctx, repo.Digest(a.String()))
			if isNotFound(err) {
				unconfirmed.Store(true)
				return nil
			} else if err != nil {
				return fmt.Errorf("artifact %s: %w", a, err)
			}
			if !artifactLists(desc.Manifest, img, blobs) {
				unconfirmed.Store(true)
			}
			return nil
		})
	}
	for l, b := range chosen {
		g.Go(func() error {
			p, ok := have[b.Digest]
			if !ok {
				var err error
				p, err = fetchIndexBlob(gctx, puller, img, b)
				if isNotFound(err) {
					return nil
				} else if err != nil {
					return fmt.Errorf("index of layer %s: %w", l, err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			found[l], byDigest[b.Digest] = p, p
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, false, err
	}
	return found, byDigest, !unconfirmed.Load(), nil
}

// artifactLists reports whether raw is an index artifact's manifest that
// names img as its subject and lists each of blobs, as an index of its
// layer.
func artifactLists(raw []byte, img *Image, blobs []listedIndexBlob) bool {
	if len(raw) > maxArtifactManifestSize {
		return false
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil || m.ArtifactType != IndexArtifactType || m.Subject == nil || m.Subject.Digest != img.Digest {
		return false
	}
	for _, b := range blobs {
		if !slices.ContainsFunc(m.Layers, func(d v1.Descriptor) bool {
			return d.MediaType == IndexMediaType && d.Digest.String() == b.Digest && d.Size == b.Size && d.Annotations[AnnotationLayer] == b.Layer
		}) {
			return false
		}
	}
	return true
}

// listedIndexBlobs returns, for the layers in wanted, the index blobs the
// listing names in the index artifacts' AnnotationIndexBlobs, the newest
// artifact's for a layer several hold, and for each artifact it took
// blobs from, those blobs. Only entries walkReferrers would read are
// looked at (an artifactType among listed, a manifest's media type, a
// bounded size). It reports false, for FindIndexes to read the manifests
// instead, unless each of those that is, or may be, an index artifact (a
// registry may list the config's media type as the artifactType) gives
// its creation time and its blobs.
func listedIndexBlobs(list *v1.IndexManifest, listed []string, wanted map[v1.Hash]bool) (map[v1.Hash]v1.Descriptor, map[v1.Hash][]listedIndexBlob, bool) {
	type listedArtifact struct {
		digest  v1.Hash
		created time.Time
		blobs   []listedIndexBlob
	}
	var arts []listedArtifact
	for _, d := range list.Manifests {
		if !slices.Contains(listed, d.ArtifactType) ||
			(d.MediaType != types.OCIManifestSchema1 && d.MediaType != "") || d.Size > maxArtifactManifestSize {
			continue
		}
		named, has := d.Annotations[AnnotationIndexBlobs]
		if !has {
			return nil, nil, false // an older pusher's, or not ours: read it
		}
		a := listedArtifact{digest: d.Digest}
		if a.created = createdAt(d.Annotations); a.created.IsZero() || json.Unmarshal([]byte(named), &a.blobs) != nil {
			return nil, nil, false
		}
		arts = append(arts, a)
	}
	// Newest first; among equals, the one listed last.
	slices.Reverse(arts)
	slices.SortStableFunc(arts, func(a, b listedArtifact) int { return b.created.Compare(a.created) })
	chosen := map[v1.Hash]v1.Descriptor{}
	from := map[v1.Hash][]listedIndexBlob{}
	for _, a := range arts {
		for _, b := range a.blobs {
			l, err := v1.NewHash(b.Layer)
			if err != nil || !wanted[l] || b.Size <= 0 || b.Size > MaxIndexBlobSize {
				continue
			}
			h, err := v1.NewHash(b.Digest)
			if err != nil {
				continue
			}
			if _, ok := chosen[l]; !ok {
				chosen[l] = v1.Descriptor{MediaType: IndexMediaType, Digest: h, Size: b.Size}
				from[a.digest] = append(from[a.digest], b)
			}
		}
	}
	return chosen, from, true
}

// listReferrers lists the artifacts that refer to img: the listing taken
// when img was resolved (WithReferrers), else a new one.
func listReferrers(ctx context.Context, img *Image) (*v1.IndexManifest, error) {
	if l := img.referrers; l != nil {
		select {
		case <-l.done:
			return l.list, l.err
		case <-ctx.Done():
			return nil, fmt.Errorf("list referrers: %w", ctx.Err())
		}
	}
	return fetchReferrers(ctx, img.fetcher, img.Ref.Context(), img.Digest, img.mirrored)
}

// fetchReferrers lists the artifacts in repo that refer to subject (see
// fetch.Client.Referrers: one round trip, with or without the referrers
// API). When mirrors serve the image (mirrored), its registry may be down:
// the listing then gives up after lookupTimeout.
func fetchReferrers(ctx context.Context, fc *fetch.Client, repo name.Repository, subject v1.Hash, mirrored bool) (*v1.IndexManifest, error) {
	if mirrored {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, lookupTimeout)
		defer cancel()
	}
	m, err := fc.Referrers(ctx, repo, subject)
	if err != nil {
		return nil, fmt.Errorf("list referrers: %w", err)
	}
	list, err := v1.ParseIndexManifest(bytes.NewReader(m.Bytes))
	if err != nil {
		return nil, fmt.Errorf("list referrers: %w", err)
	}
	return list, nil
}

// referrersListing is a listing of an image's referrers, taken once; its
// fields are set before done is closed.
type referrersListing struct {
	done chan struct{}
	list *v1.IndexManifest
	err  error
	// end cuts the listing short.
	end context.CancelFunc
}

// earlyListingTimeout bounds a listing started while resolving, which
// outlives the resolve's context.
const earlyListingTimeout = 30 * time.Second

// listReferrersEarly starts listing the referrers of subject in repo,
// bounded by earlyListingTimeout whatever becomes of ctx, and returns the
// listing to be.
func listReferrersEarly(ctx context.Context, fc *fetch.Client, repo name.Repository, subject v1.Hash, mirrored bool) *referrersListing {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), earlyListingTimeout)
	l := &referrersListing{done: make(chan struct{}), end: cancel}
	go func() {
		defer close(l.done)
		defer cancel()
		l.list, l.err = fetchReferrers(lctx, fc, repo, subject, mirrored)
	}()
	return l
}

// walkReferrers passes to use the manifest of each artifact of list (the
// artifacts that refer to img) that is of artifactType and names img as
// its subject, newest first, until use returns false. Only listed
// artifacts whose listed artifactType is one of listed are read: at most
// maxArtifacts manifests, shareJobs at a time, skipping those gone (a
// stale fallback tag lists them) or too large.
//
// Newest is by AnnotationCreated, those without it last, ties to the
// later listed. When the listing gives every candidate's creation time,
// manifests are read newest first and the walk stops with use; otherwise
// all are read and ordered by their own annotation.
func walkReferrers(ctx context.Context, puller *remote.Puller, img *Image, list *v1.IndexManifest, listed []string, artifactType string, use func(m *v1.Manifest) bool) error {
	repo := img.Ref.Context()
	type artifact struct {
		digest   v1.Hash
		pos      int
		created  time.Time
		manifest *v1.Manifest
	}
	newestFirst := func(a, b artifact) int {
		if c := b.created.Compare(a.created); c != 0 {
			return c
		}
		return b.pos - a.pos
	}
	var candidates []artifact
	dated := true
	for i, d := range list.Manifests {
		if !slices.Contains(listed, d.ArtifactType) ||
			(d.MediaType != types.OCIManifestSchema1 && d.MediaType != "") || d.Size > maxArtifactManifestSize {
			continue
		}
		a := artifact{digest: d.Digest, pos: i, created: createdAt(d.Annotations)}
		dated = dated && !a.created.IsZero()
		candidates = append(candidates, a)
	}
	slices.SortStableFunc(candidates, newestFirst)
	candidates = candidates[:min(len(candidates), maxArtifacts)]
	var undated []artifact
	for len(candidates) > 0 {
		// A window's manifests are read together: the newest usable
		// artifact usually comes in the first, in one round trip.
		window := candidates[:min(len(candidates), shareJobs)]
		candidates = candidates[len(window):]
		g, gctx := errgroup.WithContext(ctx)
		for i := range window {
			a := &window[i]
			g.Go(func() error {
				desc, err := puller.Get(gctx, repo.Digest(a.digest.String()))
				if isNotFound(err) {
					return nil
				} else if err != nil {
					return fmt.Errorf("artifact %s: %w", a.digest, err)
				}
				if len(desc.Manifest) > maxArtifactManifestSize {
					return nil
				}
				m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
				if err != nil || m.ArtifactType != artifactType || m.Subject == nil || m.Subject.Digest != img.Digest {
					return nil
				}
				a.manifest = m
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		for _, a := range window {
			switch {
			case a.manifest == nil:
			case !dated:
				a.created = createdAt(a.manifest.Annotations)
				undated = append(undated, a)
			case !use(a.manifest):
				return nil
			}
		}
	}
	slices.SortStableFunc(undated, newestFirst)
	for _, a := range undated {
		if !use(a.manifest) {
			return nil
		}
	}
	return nil
}

// fetchIndexBlob reads the blob d describes from img's repository and checks
// its size and digest.
func fetchIndexBlob(ctx context.Context, puller *remote.Puller, img *Image, d v1.Descriptor) ([]byte, error) {
	l, err := puller.Layer(ctx, img.Ref.Context().Digest(d.Digest.String()))
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	// Read at most d.Size bytes and check them here. go-containerregistry
	// checks the digest too when the body ends, but with an error of an
	// internal type; a body of the right length is judged by our check.
	p, err := io.ReadAll(io.LimitReader(rc, d.Size))
	if int64(len(p)) != d.Size {
		var ne net.Error
		if err != nil && (errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne) || ctx.Err() != nil) {
			return nil, fmt.Errorf("blob %s: %w", d.Digest, err) // cut off, not short
		}
		return nil, fmt.Errorf("blob %s: %w: %d bytes, want %d", d.Digest, ErrDigest, len(p), d.Size)
	}
	h, err := v1.Hasher(d.Digest.Algorithm)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	h.Write(p)
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Digest.Hex {
		return nil, fmt.Errorf("blob %s: %w: got %s:%s", d.Digest, ErrDigest, d.Digest.Algorithm, got)
	}
	return p, nil
}

// subject is the descriptor of img's manifest, as an artifact's subject.
func (im *Image) subject() (v1.Descriptor, error) {
	d := im.descriptor
	if d.Digest == (v1.Hash{}) || d.Digest != im.Digest || d.Size <= 0 || d.MediaType == "" {
		return v1.Descriptor{}, errors.New("image has no manifest descriptor (not from Resolve)")
	}
	return v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest}, nil
}

// remoteOptions are the image's registry options bound to ctx.
func (im *Image) remoteOptions(ctx context.Context) []remote.Option {
	return append(slices.Clip(im.remoteOpts), remote.WithContext(ctx))
}

// newPuller returns the puller that resolved the image, whose handshake
// with the registry is done, or a new one.
func (im *Image) newPuller(ctx context.Context) (*remote.Puller, error) {
	if im.puller != nil {
		return im.puller, nil
	}
	return remote.NewPuller(im.remoteOptions(ctx)...)
}

// pushArtifact pushes to img's repository an OCI artifact of artifactType
// whose subject is subject: the config blob, the blobs described by descs,
// and the manifest, which it sends with Put (unlike Push, always sent, so
// the referrers fallback tag is updated even when an identical artifact
// was pushed before). It returns the manifest's digest; errors are not
// wrapped with the artifact's kind.
func pushArtifact(ctx context.Context, img *Image, subject v1.Descriptor, artifactType string, config v1.Layer, blobs []v1.Layer, descs []v1.Descriptor, annotations map[string]string) (v1.Hash, error) {
	configDesc, err := descriptorOf(config)
	if err != nil {
		return v1.Hash{}, err
	}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  artifactType,
		Config:        configDesc,
		Layers:        descs,
		Subject:       &subject,
		Annotations:   map[string]string{AnnotationCreated: time.Now().UTC().Format(time.RFC3339Nano)},
	}
	maps.Copy(m.Annotations, annotations)
	raw, err := json.Marshal(m)
	if err != nil {
		return v1.Hash{}, err
	}
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Hash{}, err
	}
	repo := img.Ref.Context()
	pusher, err := remote.NewPusher(img.remoteOptions(ctx)...)
	if err != nil {
		return v1.Hash{}, err
	}
	// The first upload, alone, sets up the pusher's connection to the
	// repository (ping, token) with ctx rather than a group context that
	// ends with the group.
	if err := pusher.Upload(ctx, repo, config); err != nil {
		return v1.Hash{}, registryError(err)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(shareJobs)
	for _, b := range blobs {
		g.Go(func() error { return pusher.Upload(gctx, repo, b) })
	}
	if err := g.Wait(); err != nil {
		return v1.Hash{}, registryError(err)
	}
	if err := pusher.Put(ctx, repo.Digest(h.String()), rawManifest(raw)); err != nil {
		return v1.Hash{}, registryError(err)
	}
	return h, nil
}

// descriptorOf describes blob (digest, size and media type).
func descriptorOf(blob v1.Layer) (v1.Descriptor, error) {
	d, err := blob.Digest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	n, err := blob.Size()
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := blob.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Size: n, Digest: d}, nil
}

// createdAt parses AnnotationCreated; zero if absent or malformed.
func createdAt(annotations map[string]string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, annotations[AnnotationCreated])
	if err != nil {
		return time.Time{}
	}
	return t
}

// isNotFound reports a registry's 404.
func isNotFound(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound || errors.Is(err, fetch.ErrNotFound)
}

// rawManifest is an OCI image manifest's bytes, as remote.Put takes them.
type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

var _ remote.Taggable = rawManifest(nil)

// Access profiles (see profile.go) are shared the same way, as a sibling
// artifact referring to the image: artifactType ProfileArtifactType, a
// config of media type profileConfigMediaType (so that registries that
// report the config media type as a referrer's artifactType, as
// go-containerregistry's does, keep it apart from index artifacts) holding
// "{}", and one layer, the profile's JSON, of media type ProfileMediaType.
const (
	// ProfileArtifactType is the artifactType of an access profile artifact.
	ProfileArtifactType = "application/vnd.lazyroot.profile.v1"
	// ProfileMediaType is the media type of the profile JSON in it.
	ProfileMediaType = "application/vnd.lazyroot.profile.v1+json"
	// AnnotationProfileBlob and AnnotationProfileSize annotate a profile
	// artifact with the digest and size of its profile blob.
	AnnotationProfileBlob = "dev.lazyroot.profile.digest"
	AnnotationProfileSize = "dev.lazyroot.profile.size"
	// profileConfigMediaType is its config's media type.
	profileConfigMediaType = "application/vnd.lazyroot.profile.config.v1+json"
	// MaxProfileBlobSize bounds one encoded profile pushed or fetched.
	MaxProfileBlobSize = 16 << 20
)

// PushProfile pushes p to img's repository as an artifact whose subject is
// img's manifest, and returns its digest. Like PushIndexes it sets no tag
// besides the referrers fallback tag, and a local image fails with
// ErrLocalImage.
func PushProfile(ctx context.Context, img *Image, p *Profile) (v1.Hash, error) {
	if img.Local() {
		return v1.Hash{}, fmt.Errorf("push profile: %w", localError(img))
	}
	fail := func(err error) (v1.Hash, error) {
		return v1.Hash{}, fmt.Errorf("push profile of %s: %w", img.Name(), err)
	}
	subject, err := img.subject()
	if err != nil {
		return fail(err)
	}
	if p.Image != img.Digest.String() {
		return fail(fmt.Errorf("the profile is of %s", p.Image))
	}
	if err := p.Validate(); err != nil {
		return fail(err)
	}
	var buf bytes.Buffer
	if err := p.Encode(&buf); err != nil {
		return fail(err)
	}
	if buf.Len() > MaxProfileBlobSize {
		return fail(fmt.Errorf("%d bytes, at most %d", buf.Len(), MaxProfileBlobSize))
	}
	cfg := static.NewLayer(emptyJSON, profileConfigMediaType)
	blob := static.NewLayer(buf.Bytes(), ProfileMediaType)
	desc, err := descriptorOf(blob)
	if err != nil {
		return fail(err)
	}
	// The listing of referrers shows these: FindProfile reads the blob
	// without reading the manifest first.
	named := map[string]string{AnnotationProfileBlob: desc.Digest.String(), AnnotationProfileSize: strconv.FormatInt(desc.Size, 10)}
	h, err := pushArtifact(ctx, img, subject, ProfileArtifactType, cfg, []v1.Layer{blob}, []v1.Descriptor{desc}, named)
	if err != nil {
		return fail(err)
	}
	return h, nil
}

// FindProfile returns the newest access profile artifact referring to
// img (by AnnotationCreated, as FindIndexes chooses), checked against its
// descriptor and validated; nil and no error when there is none. It reads
// at most maxArtifacts listed artifacts and skips those gone, of another
// type or subject, or too large. When the listing names the newest
// profile's blob, that blob is read without its manifest: a profile whose
// manifest was deleted but is still listed (a stale fallback tag) is used
// while its blob lasts. A local image fails with ErrLocalImage.
func FindProfile(ctx context.Context, img *Image) (*Profile, error) {
	if img.Local() {
		return nil, fmt.Errorf("find profile: %w", localError(img))
	}
	fail := func(err error) (*Profile, error) {
		return nil, fmt.Errorf("find profile of %s: %w", img.Name(), registryError(err))
	}
	if _, err := img.subject(); err != nil {
		return fail(err)
	}
	puller, err := img.newPuller(ctx)
	if err != nil {
		return fail(err)
	}
	list, err := listReferrers(ctx, img)
	if err != nil {
		return fail(err)
	}
	// The newest profile, when its listing names its blob, is read at once.
	if d, ok := newestProfileBlob(list); ok {
		p, err := fetchProfile(ctx, puller, img, d)
		if err == nil || !isNotFound(err) {
			return p, err
		}
	}
	var best *v1.Descriptor
	listed := []string{ProfileArtifactType, profileConfigMediaType, ""}
	err = walkReferrers(ctx, puller, img, list, listed, ProfileArtifactType, func(m *v1.Manifest) bool {
		if len(m.Layers) != 1 || m.Layers[0].MediaType != ProfileMediaType || m.Layers[0].Size <= 0 || m.Layers[0].Size > MaxProfileBlobSize {
			return true
		}
		best = &m.Layers[0]
		return false
	})
	if err != nil {
		return fail(err)
	}
	if best == nil {
		return nil, nil
	}
	p, err := fetchProfile(ctx, puller, img, *best)
	if isNotFound(err) {
		return nil, nil
	}
	return p, err
}

// newestProfileBlob returns the profile blob of the newest profile
// artifact in list, as the annotations its pusher set name it, if the
// listing gives every profile artifact's creation time.
func newestProfileBlob(list *v1.IndexManifest) (v1.Descriptor, bool) {
	var newest *v1.Descriptor
	var newestCreated time.Time
	for i, d := range list.Manifests {
		// Some registries list the config media type as the artifactType.
		if d.ArtifactType != ProfileArtifactType && d.ArtifactType != profileConfigMediaType ||
			(d.MediaType != types.OCIManifestSchema1 && d.MediaType != "") || d.Size > maxArtifactManifestSize {
			continue
		}
		created := createdAt(d.Annotations)
		if created.IsZero() {
			return v1.Descriptor{}, false
		}
		if newest == nil || !created.Before(newestCreated) {
			newest, newestCreated = &list.Manifests[i], created
		}
	}
	if newest == nil {
		return v1.Descriptor{}, false
	}
	h, err := v1.NewHash(newest.Annotations[AnnotationProfileBlob])
	size, serr := strconv.ParseInt(newest.Annotations[AnnotationProfileSize], 10, 64)
	if err != nil || serr != nil || size <= 0 || size > MaxProfileBlobSize {
		return v1.Descriptor{}, false
	}
	return v1.Descriptor{MediaType: ProfileMediaType, Digest: h, Size: size}, true
}

// fetchProfile reads the profile blob d describes, checks it against d and
// decodes it: a profile of another image than img is malformed.
func fetchProfile(ctx context.Context, puller *remote.Puller, img *Image, d v1.Descriptor) (*Profile, error) {
	fail := func(err error) (*Profile, error) {
		return nil, fmt.Errorf("find profile of %s: %w", img.Name(), registryError(err))
	}
	b, err := fetchIndexBlob(ctx, puller, img, d)
	if err != nil {
		if isNotFound(err) {
			return nil, err
		}
		return fail(fmt.Errorf("profile blob: %w", err))
	}
	p, err := DecodeProfile(bytes.NewReader(b))
	if err != nil {
		return fail(err)
	}
	if p.Image != img.Digest.String() {
		return fail(fmt.Errorf("%w: the profile is of %s", index.ErrMalformed, p.Image))
	}
	return p, nil
}

// ProfileLookup is a FindProfile started ahead of need, so that the
// registry round trips overlap other work (indexing the layers, say).
type ProfileLookup struct {
	done chan struct{}
	prof *Profile // set before done is closed
	err  error    // set before done is closed
}

// LookupProfile starts looking up img's access profile in its registry,
// unless st already holds one for img or img is local: then it returns
// nil, for there is nothing to wait for. The lookup ends with ctx.
func LookupProfile(ctx context.Context, img *Image, st *Store) *ProfileLookup {
	if img.Local() || img.Digest.Hex == "" {
		return nil
	}
	if st != nil {
		for _, prov := range []Provenance{BuiltHere, FetchedFromRegistry} {
			if _, err := os.Stat(st.profilePath(img.Digest, prov)); err == nil {
				return nil
			}
		}
	}
	l := &ProfileLookup{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.prof, l.err = FindProfile(ctx, img)
	}()
	return l
}

// Wait returns what the lookup found (nil and no error for no profile),
// waiting for it as long as ctx allows.
func (l *ProfileLookup) Wait(ctx context.Context) (*Profile, error) {
	select {
	case <-l.done:
		return l.prof, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// finished reports whether the lookup has ended.
func (l *ProfileLookup) finished() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}
