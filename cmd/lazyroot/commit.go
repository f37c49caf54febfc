package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/layer"
)

func runCommit(ctx context.Context, stdout io.Writer, args []string) error {
	var f registryFlags
	fset := newFlagSet(stdout, "commit")
	root := fset.String("root", defaultRoot, "state directory the mount was made with")
	tag := fset.String("tag", "", "push the new image as this reference, REGISTRY/REPO:TAG (required)")
	f.register(fset)
	if err := parseArgs(fset, args, 1, 1); err != nil {
		return err
	}
	if *tag == "" {
		return fmt.Errorf("%w: commit needs --tag REGISTRY/REPO:TAG", errUsage)
	}
	if _, err := layer.ParseReference(*tag, f.insecure); err != nil {
		return fmt.Errorf("%w: --tag: %v", errUsage, err)
	}
	dir, err := absDir(fset.Arg(0))
	if err != nil {
		return err
	}
	rec, err := readRecord(recordPath(*root, dir))
	if err != nil || !isLazyrootMount(dir) {
		return fmt.Errorf("%s is not a lazyroot mount under state root %s", dir, *root)
	}
	if rec.Upper == "" {
		return fmt.Errorf("%s is a read-only mount: it has no changes to commit", dir)
	}
	if rec.IDMapped {
		return fmt.Errorf("%s shows owners through --uid-map/--gid-map: its upper holds host ids, which a layer must not carry; commit a mount without id maps", dir)
	}
	if !strings.HasPrefix(rec.Digest, "sha256:") || strings.HasPrefix(rec.Image, "oci:") || strings.HasPrefix(rec.Image, "docker-archive:") || strings.HasPrefix(rec.Image, "layers:") {
		return fmt.Errorf("%s mounts %s, which is not from a registry: commit needs a registry image as its base", dir, rec.Image)
	}
	ref, err := layer.ParseReference(rec.Image, f.insecure)
	if err != nil {
		return fmt.Errorf("%s mounts %s, which is not from a registry: commit needs a registry image as its base", dir, rec.Image)
	}
	opts, err := f.options()
	if err != nil {
		return err
	}
	// The exact image mounted, even if its tag has moved since.
	baseRef := ref.Context().Digest(rec.Digest).String()
	rctx, cancel := context.WithTimeout(ctx, f.resolveTimeout)
	base, err := layer.Resolve(rctx, baseRef, opts...)
	cancel()
	if err != nil {
		return err
	}
	defer base.Close()
	if base.Digest.String() != rec.Digest {
		return fmt.Errorf("resolved %s to %s, not the mounted %s", baseRef, base.Digest, rec.Digest)
	}
	tmp, err := os.CreateTemp(filepath.Join(*root, "mounts"), "commit-*.tar")
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = fs.WriteUpperTar(ctx, tmp, filepath.Join(rec.Upper, "diff"), dir)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("commit %s: %w", dir, err)
	}
	d, err := layer.Commit(ctx, base, tmp.Name(), *tag, opts...)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s@%s\n", *tag, d)
	return nil
}
