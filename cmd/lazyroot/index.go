package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/layer"
)

// runIndex dispatches "lazyroot index SUBCOMMAND".
func runIndex(ctx context.Context, stdout io.Writer, args []string) error {
	if len(args) > 0 && args[0] == "push" {
		return runIndexPush(ctx, stdout, args[1:])
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("%w: unknown index subcommand %q: want push (see 'lazyroot index --help')", errUsage, args[0])
	}
	fset := newFlagSet(stdout, "index")
	if err := parseArgs(fset, args, 0, 0); err != nil {
		return err
	}
	return fmt.Errorf("%w: index needs a subcommand: push (see 'lazyroot index --help')", errUsage)
}

func runIndexPush(ctx context.Context, stdout io.Writer, args []string) error {
	var rf registryFlags
	fset := newFlagSet(stdout, "index")
	root := fset.String("root", defaultRoot, "state directory: indexes are stored here too")
	source := fset.String("index-source", "local", "indexes to push: local (stored ones built on this node, else build), build (always build anew), any (also take registry ones; only indexes built here are pushed)")
	fset.Usage = func() {
		fmt.Fprintf(stdout, "Usage: lazyroot index push [OPTIONS] IMAGE\n\n"+
			"Build the indexes of IMAGE's plain gzip, zstd and uncompressed layers (streaming each once)\n"+
			"and push them to IMAGE's repository as an artifact referring to the image, so other\n"+
			"nodes mount it without streaming a layer. Needs push rights.\n\nOptions:\n")
		fset.PrintDefaults()
	}
	span := fset.String("span-size", "256KiB", "distance between seek points of the indexes built (plain gzip and zstd layers)")
	rf.register(fset)
	if err := parseArgs(fset, args, 1, 1); err != nil {
		return err
	}
	spanSize, err := parseSpanSize(*span)
	if err != nil {
		return err
	}
	opts, err := rf.options()
	if err != nil {
		return err
	}
	src, err := layer.ParseIndexSource(*source)
	if err != nil || src == layer.IndexRegistry {
		return fmt.Errorf("%w: --index-source %q: want local, build or any", errUsage, *source)
	}
	rctx, cancel := context.WithTimeout(ctx, rf.resolveTimeout)
	img, err := layer.Resolve(rctx, fset.Arg(0), opts...)
	cancel()
	if err != nil {
		return err
	}
	defer img.Close()
	if img.Local() {
		return fmt.Errorf("%s: %w", img.Name(), layer.ErrLocalImage)
	}
	st, err := layer.NewStore(*root)
	if err != nil {
		return err
	}
	c, err := cache.New(cache.Options{MemoryBytes: 1 << 20})
	if err != nil {
		return err
	}
	defer c.Close()
	logger := log.New(os.Stderr, "lazyroot: ", 0)
	stack, err := layer.Open(ctx, img, st, c, layer.StackOptions{IndexSource: src, Logf: logger.Printf, SpanSize: spanSize})
	if err != nil {
		return fmt.Errorf("%s: %w", img.Name(), err)
	}
	defer stack.Close()
	d, n, err := layer.Publish(ctx, img, stack.Layers())
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tDIGEST\tFORMAT\tINDEX FROM\tSHARED")
	for i, l := range stack.Layers() {
		shared := "no: "
		switch {
		case layer.Publishable(l):
			shared = "yes"
			if err != nil {
				shared = "push failed"
			}
		case l.Origin == layer.FromRegistry:
			shared += "taken from the registry"
		case l.Origin == layer.FromTOC || l.Index.Format.HasTOC():
			shared += "the layer carries its own TOC"
		default:
			shared += "not seekable, nodes stream it"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i, l.Layer.Descriptor.Digest.String()[:19], l.Index.Format, l.Origin, shared)
	}
	tw.Flush()
	if err != nil {
		return fmt.Errorf("push indexes of %s: %w", img.Name(), err)
	}
	if n == 0 {
		fmt.Fprintf(stdout, "nothing to push: no layer of %s needs a shared index\n", img.Name())
		return nil
	}
	fmt.Fprintf(stdout, "pushed %d layer indexes for %s@%s as %s\n", n, img.Ref.Context(), img.Digest, d)
	return nil
}

// parseSpanSize checks a --span-size value.
func parseSpanSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n < 64<<10 || n > index.MaxSpanSize/2 {
		return 0, fmt.Errorf("%w: --span-size %q: want a size from 64KiB to %s", errUsage, s, humanize.IBytes(index.MaxSpanSize/2))
	}
	return int64(n), nil
}
