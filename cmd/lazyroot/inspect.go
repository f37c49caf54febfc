package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/dustin/go-humanize"

	"github.com/lazyroot/lazyroot/layer"
)

// indexSourceHelp explains --index-source wherever it is offered.
const indexSourceHelp = "layer indexes to trust for layers without a TOC: any (stored, then registry, then build), " +
	"local (only indexes built on this node), registry (stored or registry, never stream a layer), build (always build anew)"

func runInspect(ctx context.Context, stdout io.Writer, args []string) error {
	var rf registryFlags
	fset := newFlagSet(stdout, "inspect")
	root := fset.String("root", defaultRoot, "state directory whose stored indexes to consult")
	source := fset.String("index-source", "any", indexSourceHelp)
	rf.register(fset)
	if err := parseArgs(fset, args, 1, 1); err != nil {
		return err
	}
	opts, err := rf.options()
	if err != nil {
		return err
	}
	src, err := layer.ParseIndexSource(*source)
	if err != nil {
		return fmt.Errorf("%w: --index-source: %v", errUsage, err)
	}
	ctx, cancel := context.WithTimeout(ctx, rf.resolveTimeout)
	defer cancel()
	st, err := layer.NewStore(*root)
	if err != nil {
		return err
	}
	img, err := layer.Resolve(ctx, fset.Arg(0), append(opts, layer.WithStore(st))...)
	if err != nil {
		return err
	}
	defer img.Close()
	fmt.Fprintf(stdout, "image:    %s\ndigest:   %s\nplatform: %s/%s\nsize:     %s in %d layers\n\n",
		img.Name(), img.Digest, img.Config.OS, img.Config.Architecture, humanize.IBytes(uint64(img.Size())), len(img.Layers))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tDIGEST\tMEDIA TYPE\tSIZE\tFORMAT\tINDEX FROM\tINDEX SIZE\tENTRIES\tREAD")
	var notes []string
	for i, r := range layer.Describe(ctx, img, st, src) {
		d := r.Layer.Descriptor
		entries, size := "-", "-"
		if r.Entries > 0 {
			entries = fmt.Sprint(r.Entries)
		}
		if r.IndexSize > 0 {
			size = humanize.IBytes(uint64(r.IndexSize))
		}
		if r.WindowsSize > 0 {
			size += " + " + humanize.IBytes(uint64(r.WindowsSize)) + " windows"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i, d.Digest.String()[:19], d.MediaType,
			humanize.IBytes(uint64(d.Size)), r.Format, r.Source, size, entries, r.Read)
		if r.Err != nil {
			notes = append(notes, fmt.Sprintf("layer %d: %s", i, oneLine(r.Err)))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(stdout, n)
	}
	return nil
}
