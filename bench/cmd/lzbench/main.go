// Command lzbench is lazyroot's benchmark (make bench). As root:
//
//	lzbench [run] [--cache DIR] [--lazyroot BIN] [--rtt 20ms] [--rate 200mbit] [--out FILE]
//
// builds the images from the Debian roots scripts/bench-images.sh made,
// serves them behind an emulated network and prints the table.
//
//	lzbench serve [same flags]
//
// sets up the same images, registry and network, prints the references and
// waits for a signal: for trying one thing by hand. It is also
// its own helpers: "lzbench proxy" (the delaying proxy, run in the
// namespace) and "lzbench pull" (the full-pull baseline).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lazyroot/lazyroot/bench"
	"github.com/spf13/pflag"
)

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = run(args)
	case "proxy":
		err = proxy(args)
	case "pull":
		err = pull(args)
	case "serve":
		err = serve(args)
	default:
		err = fmt.Errorf("unknown command %q: want run, serve, proxy or pull", cmd)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lzbench %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

// ParseRate reads "200mbit", "1gbit", "500kbit" or plain bits per second.
func parseRate(s string) (int64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}} {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = v, u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		return 0, fmt.Errorf("bad rate %q", s)
	}
	return int64(f * float64(mult)), nil
}

func run(args []string) error {
	fs := pflag.NewFlagSet("run", pflag.ExitOnError)
	setup := setupFlags(fs, "the lazyroot binary to measure")
	workloads := fs.StringSlice("workloads", nil, "workloads to run (default all: python3, gcc, ls-lR-usr, read-all, seq-read-1GiB)")
	out := fs.String("out", "", "write the markdown report here too (default CACHE/results/latest.md)")
	_ = fs.Parse(args)
	cfg, err := setup()
	if err != nil {
		return err
	}
	cfg.Workloads = *workloads
	if *out == "" {
		*out = filepath.Join(cfg.Cache, "results", "latest.md")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	h := bench.New(cfg)
	defer h.Close()
	if err := h.Setup(ctx); err != nil {
		return err
	}
	results := h.Run(ctx)
	h.Close()

	var b strings.Builder
	fmt.Fprintf(&b, "Run %s on %s (%d cores), lazyroot %s; network: %v round trip, %s (tc tbf + delaying proxy in a network namespace); registry: Debian docker-registry %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), kernel(), numCPU(), gitRev(cfg.Lazyroot), cfg.RTT, fs.Lookup("rate").Value.String(), "2.8")
	b.WriteString("Images (compressed, as pushed):")
	for _, img := range bench.Images {
		for _, f := range cfg.Formats {
			if n := h.ImageBytes()[img.Name+"/"+f]; n > 0 {
				fmt.Fprintf(&b, " %s/%s %.0f MiB;", img.Name, f, float64(n)/(1<<20))
			}
		}
	}
	b.WriteString("\n\n")
	b.WriteString(bench.Table(results))
	b.WriteString("\n")
	b.WriteString(bench.TargetTable(bench.Targets(results, cfg.Formats)))
	report := b.String()
	fmt.Println(report)
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(results, "", "  ")
	_ = os.WriteFile(strings.TrimSuffix(*out, ".md")+".json", js, 0o644)
	fmt.Fprintf(os.Stderr, "bench: report in %s\n", *out)
	for _, r := range results {
		if r.Err != "" {
			return fmt.Errorf("some scenarios failed")
		}
	}
	return nil
}

// serve sets up what run measures against and keeps it up until a signal.
func serve(args []string) error {
	fs := pflag.NewFlagSet("serve", pflag.ExitOnError)
	setup := setupFlags(fs, "the lazyroot binary (used to push the gzip images' indexes)")
	_ = fs.Parse(args)
	cfg, err := setup()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	h := bench.New(cfg)
	defer h.Close()
	if err := h.Setup(ctx); err != nil {
		return err
	}
	for _, img := range bench.Images {
		for _, f := range cfg.Formats {
			fmt.Printf("%s/bench/%s:%s\n", h.ProxyAddr(), img.Name, f)
		}
	}
	fmt.Printf("ready: mount with --insecure-registry %s; counters at %s\n", h.ProxyAddr(), h.StatsURL())
	<-ctx.Done()
	return nil
}

// setupFlags defines on fs the flags that say what to set up (run and
// serve share them) and returns the function that, once fs is parsed,
// turns them into a Config.
func setupFlags(fs *pflag.FlagSet, lazyrootUsage string) func() (bench.Config, error) {
	cache := fs.String("cache", envOr("BENCH_CACHE", "/var/cache/lazyroot-bench"), "where roots, layers, blobs, registry storage and results live ($BENCH_CACHE)")
	lazyroot := fs.String("lazyroot", "bin/lazyroot", lazyrootUsage)
	rtt := fs.Duration("rtt", 20*time.Millisecond, "emulated round-trip time")
	rate := fs.String("rate", "200mbit", "emulated link rate")
	formats := fs.StringSlice("formats", []string{"estargz", "gzip"}, "layer formats lazyroot mounts")
	return func() (bench.Config, error) {
		rateBits, err := parseRate(*rate)
		if err != nil {
			return bench.Config{}, err
		}
		self, err := os.Executable()
		if err != nil {
			return bench.Config{}, err
		}
		lr, err := filepath.Abs(*lazyroot)
		if err != nil {
			return bench.Config{}, err
		}
		return bench.Config{Cache: *cache, Lazyroot: lr, Self: self, RTT: *rtt, RateBits: rateBits,
			Formats: *formats, Net: bench.DefaultNetwork()}, nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "linux"
	}
	return "Linux " + strings.TrimSpace(string(b))
}

func numCPU() int {
	n := 0
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "processor") {
			n++
		}
	}
	return n
}

// gitRev names the commit of the checkout bin was built in (bin is
// CHECKOUT/bin/NAME), and says so if tracked files had uncommitted changes.
func gitRev(bin string) string {
	dir := filepath.Dir(filepath.Dir(bin))
	out, err := exec.Command("git", "-C", dir, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "(unknown commit)"
	}
	rev := "at " + strings.TrimSpace(string(out))
	changes, err := exec.Command("git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output()
	switch {
	case err != nil:
		rev += " (whether the tree had uncommitted work is unknown)"
	case strings.TrimSpace(string(changes)) != "":
		rev += " (plus uncommitted work in the tree)"
	}
	return rev
}

func proxy(args []string) error {
	fs := pflag.NewFlagSet("proxy", pflag.ExitOnError)
	listen := fs.String("listen", "", "address to serve the delayed registry on")
	stats := fs.String("stats", "", "address to serve /stats on, undelayed")
	upstream := fs.String("upstream", "", "registry URL")
	delay := fs.Duration("delay", 10*time.Millisecond, "one-way delay")
	logRequests := fs.Bool("log-requests", false, "log every request served to stderr")
	_ = fs.Parse(args)
	u, err := url.Parse(*upstream)
	if err != nil || *listen == "" || *stats == "" {
		return fmt.Errorf("need --listen, --stats and --upstream")
	}
	p := bench.NewProxy(u, *delay)
	if *logRequests {
		p.LogRequests(log.New(os.Stderr, "", 0).Printf)
	}
	sl, err := net.Listen("tcp", *stats)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/stats", p.StatsHandler())
	go func() { _ = http.Serve(sl, mux) }()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, os.Interrupt)
		<-ch
		l.Close()
	}()
	return p.Serve(l)
}

func pull(args []string) error {
	fs := pflag.NewFlagSet("pull", pflag.ExitOnError)
	reg := fs.String("registry", "", "registry base URL")
	repo := fs.String("repo", "", "repository")
	tag := fs.String("tag", "latest", "tag")
	dir := fs.String("dir", "", "directory to extract into")
	jobs := fs.Int("jobs", 3, "layers fetched at once (Docker's default is 3)")
	_ = fs.Parse(args)
	if _, err := bench.Pull(context.Background(), *reg, *repo, *tag, *dir, *jobs); err != nil {
		return err
	}
	// The harness takes the puller's peak memory from this line, not from
	// its rusage: Linux starts a child's maxrss from the peak of the
	// memory its exec replaced, which for a child started with vfork, as
	// Go starts them, is the harness's own.
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	peak := bench.ParseVmHWM(string(status))
	if peak <= 0 {
		return fmt.Errorf("no VmHWM in /proc/self/status")
	}
	fmt.Printf("%s %d\n", bench.PeakRSSLine, peak)
	return nil
}
