package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"time"

	"github.com/dustin/go-humanize"
)

func runStatus(ctx context.Context, stdout io.Writer, args []string) error {
	fset := newFlagSet(stdout, "status")
	root := fset.String("root", defaultRoot, "state directory of the mounts")
	asJSON := fset.Bool("json", false, "print the status of each mount as JSON")
	if err := parseArgs(fset, args, 0, 1); err != nil {
		return err
	}
	var recs []*mountRecord
	if fset.NArg() == 1 {
		dir, err := absDir(fset.Arg(0))
		if err != nil {
			return err
		}
		rec, err := readRecord(recordPath(*root, dir))
		if err != nil {
			return fmt.Errorf("%s is not a lazyroot mount under state root %s", dir, *root)
		}
		recs = append(recs, rec)
	} else {
		var err error
		if recs, err = listRecords(*root); err != nil {
			return err
		}
	}
	if fset.NArg() == 0 && !*asJSON {
		defer printIdleTrees(ctx, stdout, *root)
	}
	for _, rec := range recs {
		st, err := queryStatus(ctx, rec.Socket, rec.Dir)
		if err != nil {
			fmt.Fprintf(stdout, "%s: %s (server %d not answering: %v)\n", rec.Dir, rec.Image, rec.PID, err)
			continue
		}
		if *asJSON {
			b, _ := json.MarshalIndent(st, "", "  ")
			fmt.Fprintf(stdout, "%s\n", b)
			continue
		}
		pct := 0.0
		if st.ImageBytes > 0 {
			pct = 100 * float64(st.FetchedBytes) / float64(st.ImageBytes)
		}
		fmt.Fprintf(stdout, "%s: %s\n  digest %s, server pid %d\n  %d inodes, %s in files\n  fetched %s of %s image (%.1f%%) in %d requests\n"+
			"  cache: %d memory hits, %d disk hits, %d chunks fetched\n",
			st.Dir, st.Image, st.Digest, st.PID, st.Inodes, humanize.IBytes(uint64(st.FileBytes)),
			humanize.IBytes(uint64(st.FetchedBytes)), humanize.IBytes(uint64(st.ImageBytes)), pct, st.FetchRequests,
			st.CacheHits, st.DiskHits, st.CacheFills)
		if p := st.Prefetch; p != nil {
			fmt.Fprintf(stdout, "  prefetch %s: %s; %d priority files, %s of %s", p.Mode, p.State, p.PriorityFiles,
				humanize.IBytes(uint64(p.PriorityDoneBytes)), humanize.IBytes(uint64(p.PriorityBytes)))
			if p.LayerBytes > 0 {
				fmt.Fprintf(stdout, "; layers %s of %s", humanize.IBytes(uint64(p.LayerDoneBytes)), humanize.IBytes(uint64(p.LayerBytes)))
			}
			if p.ProfileSource != "" {
				fmt.Fprintf(stdout, "; profile from %s", p.ProfileSource)
			}
			if p.ELFFiles > 0 {
				fmt.Fprintf(stdout, "; %d files programs need, %s of %s", p.ELFFiles,
					humanize.IBytes(uint64(p.ELFDoneBytes)), humanize.IBytes(uint64(p.ELFBytes)))
			}
			if p.Errors > 0 {
				fmt.Fprintf(stdout, "; %d failed batches", p.Errors)
			}
			fmt.Fprintln(stdout)
		}
		if st.ProfileFiles > 0 {
			fmt.Fprintf(stdout, "  recording the access profile: %d files so far\n", st.ProfileFiles)
		}
		if st.SharedMounts > 0 {
			fmt.Fprintf(stdout, "  over a shared tree at %s (%d mounts of the image share it)\n", st.Lower, st.SharedMounts)
		}
		switch {
		case st.Upper == "":
			fmt.Fprintln(stdout, "  read-only")
		case st.TempUpper:
			fmt.Fprintf(stdout, "  writable: changes in %s/diff, deleted on umount\n", st.Upper)
		default:
			fmt.Fprintf(stdout, "  writable: changes in %s/diff, kept\n", st.Upper)
		}
		for _, h := range slices.Sorted(maps.Keys(st.Hosts)) {
			hs := st.Hosts[h]
			fmt.Fprintf(stdout, "  from %s: %s in %d requests", h, humanize.IBytes(uint64(hs.Bytes)), hs.Requests)
			if hs.Failures > 0 {
				fmt.Fprintf(stdout, ", %d failed", hs.Failures)
			}
			fmt.Fprintln(stdout)
		}
		for i, l := range st.Layers {
			fmt.Fprintf(stdout, "  layer %d %.19s %s (index: %s): fetched %s of %s in %d requests\n", i, l.Digest, l.Format, l.Origin,
				humanize.IBytes(uint64(l.FetchedBytes)), humanize.IBytes(uint64(l.Size)), l.FetchRequests)
		}
	}
	return nil
}

// printIdleTrees lists the shared trees kept mounted with no mount over
// them (--keep-lower).
func printIdleTrees(ctx context.Context, stdout io.Writer, root string) {
	socks, _ := filepath.Glob(filepath.Join(root, "lowers", "*.sock"))
	for _, sock := range socks {
		st, err := queryStatus(ctx, sock, "")
		if err != nil || st.SharedMounts > 0 {
			continue
		}
		fmt.Fprintf(stdout, "idle tree of %s at %s: no mounts, kept by --keep-lower\n  digest %s, server pid %d (SIGTERM ends it); fetched %s in %d requests\n",
			st.Image, st.Lower, st.Digest, st.PID, humanize.IBytes(uint64(st.FetchedBytes)), st.FetchRequests)
	}
}

func queryStatus(ctx context.Context, socket, dir string) (*mountStatus, error) {
	client := &http.Client{
		Timeout: 3 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lazyroot/status?dir="+url.QueryEscape(dir), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("server answered %s", resp.Status)
	}
	st := new(mountStatus)
	if err := json.NewDecoder(resp.Body).Decode(st); err != nil {
		return nil, err
	}
	return st, nil
}
