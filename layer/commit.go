package layer

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// CommitCreatedBy is the created_by of the history entry Commit adds.
const CommitCreatedBy = "lazyroot commit"

// Commit pushes to tag a new image: base with one more layer on top, made
// from the uncompressed layer tar at layerTar (as fs.WriteUpperTar writes
// it), and returns the new manifest's digest.
//
// The tar is checked to be one and gzip-compressed into a temporary file
// next to it (streamed, never held in memory; removed on return), which
// also gives the layer's digest and diff ID. The layer gets the media type
// matching base's manifest (Docker or OCI), a history entry created_by
// CommitCreatedBy, and the config's created time is set to now. Every other
// part of base (its layers, config, manifest media type) is kept as it is.
//
// base must come from Resolve of a registry reference: its manifest and
// layers are read from its registry with its credentials. Base layers
// already in tag's repository are not uploaded again, and ones in another
// repository of the same registry are mounted from there where the
// registry allows it; only the new layer and the config are always sent.
//
// tag is a reference with a tag (not a digest), parsed as ParseReference
// does with the options' insecure registries; loopback registries may use
// plain HTTP. Of opts, those naming registries, credentials and transport
// apply (WithInsecureRegistries, WithAuth, WithKeychain, WithTransport);
// the rest are ignored. Errors are wrapped "commit TAG: ...".
func Commit(ctx context.Context, base *Image, layerTar, tag string, opts ...Option) (v1.Hash, error) {
	fail := func(err error) (v1.Hash, error) {
		return v1.Hash{}, fmt.Errorf("commit %s: %w", tag, err)
	}
	if base == nil || base.Ref == nil { // a local image (oci:, docker-archive:, files) has no Ref
		return fail(errors.New("the base image is not from a registry: commit needs an image resolved from a registry"))
	}
	o, err := makeOptions(opts)
	if err != nil {
		return fail(err)
	}
	target, err := ParseReference(tag, o.insecure)
	if err != nil {
		return fail(err)
	}
	if _, ok := target.(name.Digest); ok {
		return fail(errors.New("the new image needs a tag, not a digest"))
	}
	auth := o.auth
	if auth == nil {
		if auth, err = authn.Resolve(ctx, o.keychain, target.Context()); err != nil {
			return fail(fmt.Errorf("credentials: %w", err))
		}
	}

	// The base first: a registry that is down fails the commit before
	// the layer is compressed.
	baseRef := base.Ref.Context().Digest(base.Digest.String())
	baseImg, err := remote.Image(baseRef, base.remoteOptions(ctx)...)
	if err != nil {
		return fail(fmt.Errorf("base %s: %w", baseRef, registryError(err)))
	}
	mediaType := types.OCILayer
	if mt, err := baseImg.MediaType(); err == nil && mt == types.DockerManifestSchema2 {
		mediaType = types.DockerLayer
	}
	layer, err := compressLayer(ctx, layerTar, mediaType)
	if err != nil {
		return fail(err)
	}
	defer layer.remove()

	now := v1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	img, err := mutate.Append(baseImg, mutate.Addendum{
		Layer:     layer.v1Layer,
		MediaType: mediaType,
		History:   v1.History{Created: now, CreatedBy: CommitCreatedBy},
	})
	if err != nil {
		return fail(err)
	}
	if img, err = mutate.CreatedAt(img, now); err != nil {
		return fail(err)
	}
	digest, err := img.Digest()
	if err != nil {
		return fail(fmt.Errorf("base %s: %w", baseRef, registryError(err)))
	}
	err = remote.Write(target, img,
		remote.WithAuth(auth),
		remote.WithTransport(newSchemeGuard(o.transport, o.insecure, nil)),
		remote.WithUserAgent(o.userAgent),
		remote.WithContext(ctx),
	)
	if err != nil {
		return fail(fmt.Errorf("push: %w", registryError(err)))
	}
	return digest, nil
}

// compressedLayer is a layer gzip-compressed into a temporary file.
type compressedLayer struct {
	path    string
	v1Layer v1.Layer
}

func (c *compressedLayer) remove() { os.Remove(c.path) }

// compressLayer checks that the file layerTar is a tar archive and
// compresses it with gzip into a temporary file in the same directory,
// computing the digests of both streams on the way.
func compressLayer(ctx context.Context, layerTar string, mediaType types.MediaType) (*compressedLayer, error) {
	in, err := os.Open(layerTar)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	} else if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return nil, fmt.Errorf("layer %s: not a tar archive (an empty or special file)", layerTar)
	}
	out, err := os.CreateTemp(filepath.Dir(layerTar), "."+filepath.Base(layerTar)+".*.gz")
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(out.Name())
		}
	}()

	diffID, digest := v1.Hash{Algorithm: "sha256"}, v1.Hash{Algorithm: "sha256"}
	diffHash, err := v1.Hasher(diffID.Algorithm)
	if err != nil {
		return nil, err
	}
	blobHash, _ := v1.Hasher(digest.Algorithm)
	blob := &countingWriter{w: io.MultiWriter(out, blobHash)}
	zw, err := gzip.NewWriterLevel(blob, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	// The tar reader reads the file through the compressor, so checking
	// and compressing are one pass.
	src := io.TeeReader(ctxReader{ctx, in}, io.MultiWriter(zw, diffHash))
	if err := checkTar(src); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("layer %s: not a tar archive: %w", layerTar, err)
	}
	if _, err := io.Copy(io.Discard, src); err != nil { // what follows the end of the archive
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("layer %s: %w", layerTar, err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("layer: compress: %w", err)
	}
	if err := out.Sync(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	if err := out.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	diffID.Hex = hexSum(diffHash)
	digest.Hex = hexSum(blobHash)
	l, err := partial.CompressedToLayer(&gzipFileLayer{
		path:      out.Name(),
		digest:    digest,
		diffID:    diffID,
		size:      blob.n,
		mediaType: mediaType,
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	ok = true
	return &compressedLayer{path: out.Name(), v1Layer: l}, nil
}

// checkTar reads a tar archive to its end.
func checkTar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return err
		}
	}
}

func hexSum(h hash.Hash) string { return fmt.Sprintf("%x", h.Sum(nil)) }

// gzipFileLayer is a gzip layer blob in a file whose digests are known.
type gzipFileLayer struct {
	path      string
	digest    v1.Hash
	diffID    v1.Hash
	size      int64
	mediaType types.MediaType
}

var (
	_ partial.CompressedLayer = (*gzipFileLayer)(nil)
	_ partial.WithDiffID      = (*gzipFileLayer)(nil)
)

func (l *gzipFileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *gzipFileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *gzipFileLayer) Size() (int64, error)                { return l.size, nil }
func (l *gzipFileLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *gzipFileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ctxReader stops reading when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
