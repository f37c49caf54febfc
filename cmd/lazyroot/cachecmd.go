package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/lazyroot/lazyroot/cache"
)

// runCache dispatches "lazyroot cache SUBCOMMAND".
func runCache(ctx context.Context, stdout io.Writer, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "stats":
			return runCacheStats(stdout, args[1:])
		case "prune":
			return runCachePrune(stdout, args[1:])
		}
		if !strings.HasPrefix(args[0], "-") {
			return fmt.Errorf("%w: unknown cache subcommand %q: want stats or prune (see 'lazyroot cache --help')", errUsage, args[0])
		}
	}
	fset := newFlagSet(stdout, "cache")
	if err := parseArgs(fset, args, 0, 0); err != nil {
		return err
	}
	return fmt.Errorf("%w: cache needs a subcommand: stats or prune (see 'lazyroot cache --help')", errUsage)
}

// cacheFlagSet is a flag set for "cache SUB" with its own usage text.
func cacheFlagSet(stdout io.Writer, sub, summary string) (*pflag.FlagSet, *string) {
	fset := newFlagSet(stdout, "cache")
	root := fset.String("root", defaultRoot, "state directory whose chunk cache to use")
	fset.Usage = func() {
		fmt.Fprintf(stdout, "Usage: lazyroot cache %s [OPTIONS]\n\n%s\n\nOptions:\n", sub, summary)
		fset.PrintDefaults()
	}
	return fset, root
}

// openCacheDir opens the chunk cache under root; it fails with
// fs.ErrNotExist when there is none, rather than create one.
func openCacheDir(root string) (*cache.Disk, string, error) {
	dir := filepath.Join(root, "cache")
	if _, err := os.Stat(dir); err != nil {
		return nil, dir, err
	}
	d, err := cache.OpenDisk(dir, 0, nil)
	if err != nil {
		return nil, dir, fmt.Errorf("chunk cache %s: %w", dir, err)
	}
	return d, dir, nil
}

func runCacheStats(stdout io.Writer, args []string) error {
	fset, root := cacheFlagSet(stdout, "stats", "Show how much the node's chunk cache holds. Hits and misses per tier are\n"+
		"counted per mount: see 'lazyroot status'.")
	if err := parseArgs(fset, args, 0, 0); err != nil {
		return err
	}
	d, dir, err := openCacheDir(*root)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stdout, "cache:   %s\nholds:   nothing (no mount has used it yet)\n", dir)
		return nil
	} else if err != nil {
		return err
	}
	defer d.Close()
	n, entries, err := d.Usage()
	if err != nil {
		return fmt.Errorf("chunk cache %s: %w", dir, err)
	}
	fmt.Fprintf(stdout, "cache:   %s\nholds:   %s in %d chunks\n", dir, humanize.IBytes(uint64(n)), entries)
	return nil
}

func runCachePrune(stdout io.Writer, args []string) error {
	fset, root := cacheFlagSet(stdout, "prune", "Free space in the node's chunk cache: remove chunks not read for a while, or all\n"+
		"of them. Safe while mounts run: they fetch again what they need.")
	all := fset.Bool("all", false, "remove every chunk")
	older := fset.Duration("older-than", 0, "remove chunks not read for this long (e.g. 72h)")
	if err := parseArgs(fset, args, 0, 0); err != nil {
		return err
	}
	if *all == (*older > 0) {
		return fmt.Errorf("%w: cache prune takes exactly one of --all or --older-than DURATION", errUsage)
	}
	d, dir, err := openCacheDir(*root)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stdout, "nothing to prune: %s does not exist\n", dir)
		return nil
	} else if err != nil {
		return err
	}
	defer d.Close()
	age := *older
	if *all {
		age = 0
	}
	start := time.Now()
	n, entries, err := d.Prune(age)
	if err != nil {
		return fmt.Errorf("prune chunk cache %s: %w", dir, err)
	}
	fmt.Fprintf(stdout, "removed %d chunks, %s, in %s\n", entries, humanize.IBytes(uint64(n)), time.Since(start).Round(time.Millisecond))
	return nil
}
