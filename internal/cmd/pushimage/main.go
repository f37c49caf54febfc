// Command pushimage packs a directory into a one-layer image and pushes it
// to a registry, as eStargz, zstd:chunked, gzip or an uncompressed tar. The
// demo and the benchmark scripts use it to make images without a container
// engine.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"github.com/spf13/pflag"
)

func main() {
	format := pflag.String("format", "estargz", "layer format: estargz, zstd:chunked, gzip, zstd or tar")
	dir := pflag.String("dir", "", "directory to pack as the image's root")
	pflag.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: pushimage --dir ROOTFS [--format F] REGISTRY/REPO:TAG")
		pflag.PrintDefaults()
	}
	pflag.Parse()
	if pflag.NArg() != 1 || *dir == "" {
		pflag.Usage()
		os.Exit(2)
	}
	if err := run(context.Background(), *dir, *format, pflag.Arg(0)); err != nil {
		fmt.Fprintf(os.Stderr, "pushimage: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, format, ref string) error {
	tarball, err := packDir(dir)
	if err != nil {
		return err
	}
	l, ann, err := makeLayer(tarball, format)
	if err != nil {
		return err
	}
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{Layer: l, Annotations: ann})
	if err != nil {
		return err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Cmd = []string{"/bin/sh"}
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return err
	}
	size, _ := l.Size()
	fmt.Printf("pushed %s: one %s layer of %d bytes (%d bytes uncompressed)\n", r, format, size, len(tarball))
	return nil
}

// packDir tars dir with owners and modes as they are on disk.
func packDir(dir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uname, hdr.Gname = "", ""
		hdr.Format = tar.FormatPAX
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if first, seen := links[key]; seen {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[key] = hdr.Name
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func makeLayer(tb []byte, format string) (v1.Layer, map[string]string, error) {
	opener := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tb)), nil }
	switch format {
	case "estargz", "zstd:chunked":
		var opts []estargz.Option
		mt := types.OCILayer
		ann := map[string]string{}
		if format == "zstd:chunked" {
			zc := &zstdchunked.Compressor{CompressionLevel: zstd.SpeedDefault, Metadata: ann}
			opts = append(opts, estargz.WithCompression(zstdCompression{zc, new(zstdchunked.Decompressor)}))
			mt = types.OCILayerZStd
		}
		blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(tb), 0, int64(len(tb))), opts...)
		if err != nil {
			return nil, nil, err
		}
		defer blob.Close()
		b, err := io.ReadAll(blob)
		if err != nil {
			return nil, nil, err
		}
		ann[estargz.TOCJSONDigestAnnotation] = blob.TOCDigest().String()
		return static.NewLayer(b, mt), ann, nil
	case "gzip":
		l, err := tarball.LayerFromOpener(opener, tarball.WithMediaType(types.OCILayer))
		return l, nil, err
	case "zstd":
		l, err := tarball.LayerFromOpener(opener, tarball.WithCompression("zstd"), tarball.WithMediaType(types.OCILayerZStd))
		return l, nil, err
	case "tar":
		return static.NewLayer(tb, types.OCIUncompressedLayer), nil, nil
	}
	return nil, nil, fmt.Errorf("unknown format %q", format)
}

// zstdCompression pairs the zstd:chunked compressor and decompressor, as
// estargz.Build wants both.
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}
