package bench

import (
	"fmt"
	"strings"
	"time"
)

// Mode is how a workload's image is made available.
type Mode string

const (
	// Baseline fetches every layer, extracts them in order, then runs the
	// command in a chroot: what a pull-based runtime does.
	Baseline Mode = "full pull"
	// Cold is lazyroot with an empty --root (no cache, no stored index).
	Cold Mode = "lazy cold"
	// Warm is lazyroot with the --root of a run just before it: its disk
	// cache and stored indexes, and a new tree.
	Warm Mode = "lazy warm"
	// Kept is Warm with the image's tree kept mounted from the Warm run
	// (--keep-lower): the next job on a node that ran the image within
	// the keep time, with the kernel's caches of the tree still warm.
	Kept Mode = "lazy warm, kept tree"
	// Profiled is lazyroot with an empty --root, mounting an image whose
	// access profile an earlier run of the workload (with another --root,
	// standing in for another node) recorded and published: the cold start
	// of every node after the first in a cluster.
	Profiled Mode = "lazy cold, profiled"
)

// Workload is a command run in an image's root.
type Workload struct {
	Name  string   // short, for the table
	Image string   // which benchmark image (python, gcc, large, bigfile)
	Cmd   []string // run with chroot in the root
	// Profile says whether to measure the Profiled mode too (start-up
	// workloads, for which an access profile is meant).
	Profile bool
}

// Scenario is one cell of the benchmark: a workload, a mode and the layer
// format the lazy modes mount (the baseline always pulls plain gzip).
type Scenario struct {
	Workload Workload
	Mode     Mode
	Format   string
}

// String names the scenario in logs.
func (s Scenario) String() string {
	if s.Mode == Baseline {
		return fmt.Sprintf("%s/%s", s.Workload.Name, s.Mode)
	}
	return fmt.Sprintf("%s/%s/%s", s.Workload.Name, s.Mode, s.Format)
}

// Result is what one scenario measured. Durations are from the scenario's
// start (before the pull or the mount).
type Result struct {
	Scenario    Scenario
	FirstOutput time.Duration // to the first byte the command wrote
	Total       time.Duration // to the command's exit (unmount not counted)
	Prepare     time.Duration // the pull and extraction, or the mount
	Command     time.Duration // the command alone
	Requests    int64         // HTTP requests the registry served
	Bytes       int64         // response body bytes the registry served
	CPU         time.Duration // user+system: puller or lazyroot, and the job
	PeakRSS     int64         // bytes: VmHWM of the puller or the lazyroot server
	ImageBytes  int64         // compressed size of the image mounted or pulled
	OutputBytes int64         // what the command wrote to stdout
	Err         string        // why it failed, if it did
}

// ratio formats a/b as "0.12x", or "-" when b is zero.
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// baselineOf finds the baseline result of a workload.
func baselineOf(results []Result, workload string) (Result, bool) {
	for _, r := range results {
		if r.Scenario.Workload.Name == workload && r.Scenario.Mode == Baseline && r.Err == "" {
			return r, true
		}
	}
	return Result{}, false
}

// Table renders results as a markdown table, each value with its ratio to
// the baseline of the same workload in the same run.
func Table(results []Result) string {
	var b strings.Builder
	b.WriteString("| workload | mode | format | first output | total | command alone | registry bytes | requests | CPU | peak RSS |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		s := r.Scenario
		format := s.Format
		if r.Err != "" {
			fmt.Fprintf(&b, "| %s | %s | %s | failed: %s | | | | | | |\n", s.Workload.Name, s.Mode, format, strings.ReplaceAll(firstLine(r.Err), "|", "/"))
			continue
		}
		base, ok := baselineOf(results, s.Workload.Name)
		cell := func(v string, a, bv float64) string {
			if !ok || s.Mode == Baseline {
				return v
			}
			return fmt.Sprintf("%s (%s)", v, ratio(a, bv))
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			s.Workload.Name, s.Mode, format,
			cell(secs(r.FirstOutput), r.FirstOutput.Seconds(), base.FirstOutput.Seconds()),
			cell(secs(r.Total), r.Total.Seconds(), base.Total.Seconds()),
			cell(secs(r.Command), r.Command.Seconds(), base.Command.Seconds()),
			cell(mib(r.Bytes), float64(r.Bytes), float64(base.Bytes)),
			cell(fmt.Sprint(r.Requests), float64(r.Requests), float64(base.Requests)),
			cell(secs(r.CPU), r.CPU.Seconds(), base.CPU.Seconds()),
			cell(mib(r.PeakRSS), float64(r.PeakRSS), float64(base.PeakRSS)))
	}
	return b.String()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

// Target is one of issue 6's goals checked against a run.
type Target struct {
	Goal     string
	Format   string
	Measured string
	Met      bool
	Missing  bool // the run had no result to check it against
}

// find returns the successful result of workload in mode and format.
func find(results []Result, workload string, mode Mode, format string) (Result, bool) {
	for _, r := range results {
		s := r.Scenario
		if s.Workload.Name == workload && s.Mode == mode && (mode == Baseline || s.Format == format) && r.Err == "" {
			return r, true
		}
	}
	return Result{}, false
}

// Targets checks issue 6's targets, for each lazy format, as ratios within
// the run:
//   - python3 cold, without and with a published profile: total <= 15% of
//     the full pull; bytes <= 10% of the compressed image;
//   - read every file cold: total <= 1.2x the full pull;
//   - 1 GiB sequential read warm: throughput >= 80% of the extracted local
//     copy's (command alone);
//   - ls -lR /usr warm: command alone <= 1.5x on the extracted copy, with
//     the tree kept from the run before (Kept) and with a new one (Warm).
func Targets(results []Result, formats []string) []Target {
	var out []Target
	for _, f := range formats {
		add := func(goal, workload string, mode Mode, check func(r, base Result) (string, bool)) {
			r, ok1 := find(results, workload, mode, f)
			base, ok2 := find(results, workload, Baseline, "")
			if !ok1 || !ok2 {
				out = append(out, Target{Goal: goal, Format: f, Missing: true, Measured: "not measured"})
				return
			}
			m, met := check(r, base)
			out = append(out, Target{Goal: goal, Format: f, Measured: m, Met: met})
		}
		for _, m := range []struct {
			mode  Mode
			label string
		}{{Cold, "python3 cold"}, {Profiled, "python3 cold, profiled"}} {
			add(m.label+": total <= 0.15x full pull", "python3", m.mode, func(r, b Result) (string, bool) {
				x := r.Total.Seconds() / b.Total.Seconds()
				return fmt.Sprintf("%.3fx", x), x <= 0.15
			})
			add(m.label+": bytes <= 10% of compressed image", "python3", m.mode, func(r, _ Result) (string, bool) {
				if r.ImageBytes == 0 {
					return "-", false
				}
				x := float64(r.Bytes) / float64(r.ImageBytes)
				return fmt.Sprintf("%.1f%% of %s", 100*x, mib(r.ImageBytes)), x <= 0.10
			})
		}
		add("read every file cold: total <= 1.2x full pull", "read-all", Cold, func(r, b Result) (string, bool) {
			x := r.Total.Seconds() / b.Total.Seconds()
			return fmt.Sprintf("%.2fx", x), x <= 1.2
		})
		add("1 GiB sequential read warm: >= 80% of local-disk throughput", "seq-read-1GiB", Warm, func(r, b Result) (string, bool) {
			x := b.Command.Seconds() / r.Command.Seconds()
			return fmt.Sprintf("%.0f%%", 100*x), x >= 0.8
		})
		for _, m := range []struct {
			mode  Mode
			label string
		}{{Kept, "ls -lR /usr warm, tree kept"}, {Warm, "ls -lR /usr warm, new tree"}} {
			add(m.label+": <= 1.5x extracted baseline", "ls-lR-usr", m.mode, func(r, b Result) (string, bool) {
				x := r.Command.Seconds() / b.Command.Seconds()
				return fmt.Sprintf("%.2fx", x), x <= 1.5
			})
		}
	}
	return out
}

// TargetTable renders targets as markdown.
func TargetTable(ts []Target) string {
	var b strings.Builder
	b.WriteString("| target | format | measured | met |\n|---|---|---|---|\n")
	for _, t := range ts {
		met := "no"
		switch {
		case t.Missing:
			met = "not measured"
		case t.Met:
			met = "yes"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Goal, t.Format, t.Measured, met)
	}
	return b.String()
}
