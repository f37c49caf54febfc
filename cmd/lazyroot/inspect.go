package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/dustin/go-humanize"

	"github.com/lazyroot/lazyroot/layer"
)

func runInspect(ctx context.Context, stdout io.Writer, args []string) error {
	var rf registryFlags
	fset := newFlagSet(stdout, "inspect")
	root := fset.String("root", defaultRoot, "state directory whose stored indexes to consult")
	rf.register(fset)
	if err := parseArgs(fset, args, 1, 1); err != nil {
		return err
	}
	opts, err := rf.options()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rf.resolveTimeout)
	defer cancel()
	img, err := layer.Resolve(ctx, fset.Arg(0), opts...)
	if err != nil {
		return err
	}
	st, err := layer.NewStore(*root)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "image:    %s\ndigest:   %s\nplatform: %s/%s\nsize:     %s in %d layers\n\n",
		img.Ref, img.Digest, img.Config.OS, img.Config.Architecture, humanize.IBytes(uint64(img.Size())), len(img.Layers))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tDIGEST\tMEDIA TYPE\tSIZE\tFORMAT\tREAD\tENTRIES")
	for i, r := range layer.Describe(ctx, img, st) {
		d := r.Layer.Descriptor
		entries := "-"
		if r.Entries > 0 {
			entries = fmt.Sprint(r.Entries)
		}
		how := r.How
		if r.Err != nil {
			how += ": " + oneLine(r.Err)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", i, d.Digest.String()[:19], d.MediaType, humanize.IBytes(uint64(d.Size)), r.Format, how, entries)
	}
	return tw.Flush()
}
