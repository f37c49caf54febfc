package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Blob is a compressed layer on disk, ready to push.
type Blob struct {
	Path        string
	Annotations map[string]string
}

// CompressLayer compresses the layer tar at tarPath as format ("gzip" or
// "estargz") into dir, once: an existing result is reused.
func CompressLayer(ctx context.Context, tarPath, format, dir string) (Blob, error) {
	base := filepath.Join(dir, filepath.Base(tarPath)+"."+format+".gz")
	tocFile := base + ".toc"
	if _, err := os.Stat(base); err == nil {
		b := Blob{Path: base}
		if format == "estargz" {
			toc, err := os.ReadFile(tocFile)
			if err != nil {
				return Blob{}, err
			}
			b.Annotations = map[string]string{estargz.TOCJSONDigestAnnotation: string(toc)}
		}
		return b, nil
	}
	tmp := base + ".tmp"
	defer os.Remove(tmp)
	var ann map[string]string
	switch format {
	case "gzip":
		// pigz where there is one (as install-deps provides), like the
		// compressors image builders use.
		in, err := os.Open(tarPath)
		if err != nil {
			return Blob{}, err
		}
		defer in.Close()
		out, err := os.Create(tmp)
		if err != nil {
			return Blob{}, err
		}
		prog := "pigz"
		if _, err := exec.LookPath(prog); err != nil {
			prog = "gzip"
		}
		cmd := exec.CommandContext(ctx, prog, "-6", "-n", "-c")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, os.Stderr
		err = cmd.Run()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return Blob{}, fmt.Errorf("%s %s: %w", prog, tarPath, err)
		}
	case "estargz":
		in, err := os.Open(tarPath)
		if err != nil {
			return Blob{}, err
		}
		defer in.Close()
		fi, err := in.Stat()
		if err != nil {
			return Blob{}, err
		}
		blob, err := estargz.Build(io.NewSectionReader(in, 0, fi.Size()), estargz.WithParallelism(runtime.NumCPU()))
		if err != nil {
			return Blob{}, fmt.Errorf("estargz %s: %w", tarPath, err)
		}
		out, err := os.Create(tmp)
		if err != nil {
			blob.Close()
			return Blob{}, err
		}
		_, err = io.Copy(out, blob)
		blob.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return Blob{}, err
		}
		toc := blob.TOCDigest().String()
		if err := os.WriteFile(tocFile, []byte(toc), 0o644); err != nil {
			return Blob{}, err
		}
		ann = map[string]string{estargz.TOCJSONDigestAnnotation: toc}
	default:
		return Blob{}, fmt.Errorf("unknown format %q", format)
	}
	if err := os.Rename(tmp, base); err != nil {
		return Blob{}, err
	}
	return Blob{Path: base, Annotations: ann}, nil
}

// PushImage pushes blobs (base first) as one image to ref, unless ref
// already exists. It returns the image's compressed size (the layers).
func PushImage(ctx context.Context, ref string, blobs []Blob, opts ...name.Option) (int64, error) {
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return 0, err
	}
	var size int64
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, b := range blobs {
		l, err := tarball.LayerFromFile(b.Path, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return 0, err
		}
		fi, err := os.Stat(b.Path)
		if err != nil {
			return 0, err
		}
		size += fi.Size()
		if img, err = mutate.Append(img, mutate.Addendum{Layer: l, Annotations: b.Annotations}); err != nil {
			return 0, err
		}
	}
	if _, err := remote.Head(r, remote.WithContext(ctx)); err == nil {
		return size, nil // pushed by an earlier run
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return 0, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Cmd = []string{"/bin/sh"}
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return 0, err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithJobs(4)); err != nil {
		return 0, fmt.Errorf("push %s: %w", ref, err)
	}
	return size, nil
}
