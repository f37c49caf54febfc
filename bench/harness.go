package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Config says how a Harness runs.
type Config struct {
	Cache     string        // roots, layers, blobs, registry storage, work dirs
	Lazyroot  string        // the built lazyroot binary
	Self      string        // this harness's binary, for the proxy and the puller
	RTT       time.Duration // emulated round trip
	RateBits  int64         // emulated rate, bits per second
	Formats   []string      // lazy layer formats: estargz, gzip
	Workloads []string      // names to run; empty: all
	Net       Network
	Log       io.Writer
}

// Image is a benchmark image: layers (names of roots, base first).
type Image struct {
	Name   string
	Layers []string
}

// Images are the benchmark's images. Each layer is the difference between
// its root and the root before it in the chain base, python, gcc, large;
// bigfile is one ~1 GiB file over base.
var Images = []Image{
	{"python", []string{"base", "python"}},
	{"gcc", []string{"base", "python", "gcc"}},
	{"large", []string{"base", "python", "gcc", "large"}},
	{"bigfile", []string{"base", "bigfile"}},
}

// parentRoot is the root each layer is the difference from.
var parentRoot = map[string]string{"base": "", "python": "base", "gcc": "python", "large": "gcc", "bigfile": ""}

// BigFile is where the bigfile layer puts its file.
const BigFile = "/opt/bench/big.bin"

// Workloads are issue 6's workloads, plus the 1 GiB sequential read.
var Workloads = []Workload{
	{Name: "python3", Image: "python", Cmd: []string{"python3", "-c", "print(1)"}, Profile: true},
	{Name: "gcc", Image: "gcc", Cmd: []string{"/bin/sh", "-c", "gcc -c /opt/bench/hello.c -o /tmp/hello.o && echo ok"}, Profile: true},
	{Name: "ls-lR-usr", Image: "large", Cmd: []string{"ls", "-lR", "/usr"}},
	{Name: "read-all", Image: "large", Cmd: []string{"/bin/sh", "-c", "find / -xdev -type f -print0 | xargs -0 sha256sum"}},
	{Name: "seq-read-1GiB", Image: "bigfile", Cmd: []string{"/bin/sh", "-c", "cat " + BigFile + " | wc -c"}},
}

// profiledRepo is the repository the Profiled mode mounts image from: a
// copy of its own, so that the profile published there is not found by
// the plain cold runs.
func profiledRepo(image string) string { return "bench/" + image + "-profiled" }

// Harness runs the benchmark.
type Harness struct {
	cfg        Config
	imageBytes map[string]int64 // image/format -> compressed size
	procs      []*exec.Cmd      // registry and proxy, stopped by Close
	// keptPID is the server a Warm run left keeping its tree for the
	// Kept run after it (0: none).
	keptPID int
}

// New returns a harness for cfg.
func New(cfg Config) *Harness {
	if cfg.Log == nil {
		cfg.Log = os.Stderr
	}
	return &Harness{cfg: cfg, imageBytes: map[string]int64{}}
}

func (h *Harness) logf(format string, args ...any) {
	fmt.Fprintf(h.cfg.Log, "bench: "+format+"\n", args...)
}

func (h *Harness) path(p ...string) string {
	return filepath.Join(append([]string{h.cfg.Cache}, p...)...)
}

// discard moves the tree at path into the run's trash, emptied as the run
// ends (emptyTrash), or removes it if it cannot. Deleting a tree of tens
// of thousands of files between scenarios skewed the next one: ext4
// without a journal (this machine's root) skips inodes freed within the
// last minute when it makes new ones, which made whatever ran next (a
// full pull's extraction, a metadata tree) create its files up to ten
// times slower.
func (h *Harness) discard(path string) {
	if _, err := os.Lstat(path); err != nil {
		return
	}
	trash := h.path("work", "trash")
	if err := os.MkdirAll(trash, 0o700); err == nil {
		if slot, err := os.MkdirTemp(trash, "t"); err == nil && os.Rename(path, filepath.Join(slot, "x")) == nil {
			return
		}
	}
	_ = os.RemoveAll(path)
}

// emptyTrash removes what discard set aside, this run's and any left by a
// run that ended early.
func (h *Harness) emptyTrash() {
	_ = os.RemoveAll(h.path("work", "trash"))
}

// registryAddr is the registry's own port (no delay), used to push before
// the link is shaped; proxyAddr is what every measured run uses.
// images returns the images the selected workloads use.
func (h *Harness) images() []Image {
	var out []Image
	for _, img := range Images {
		for _, w := range Workloads {
			if w.Image == img.Name && (len(h.cfg.Workloads) == 0 || contains(h.cfg.Workloads, w.Name)) {
				out = append(out, img)
				break
			}
		}
	}
	return out
}

// dropReferrers deletes the referrers tag of the image ref names (the tag
// under which registries without the referrers API list the artifacts
// that refer to an image), so that no profile or index published for it
// is found. Deleting an absent tag is no error.
func (h *Harness) dropReferrers(ctx context.Context, ref string) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	desc, err := remote.Head(r, remote.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("drop referrers of %s: %w", ref, err)
	}
	tag := r.Context().Tag(strings.Replace(desc.Digest.String(), ":", "-", 1))
	list, err := remote.Head(tag, remote.WithContext(ctx))
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return nil
	} else if err != nil {
		return fmt.Errorf("drop referrers of %s: %w", ref, err)
	}
	if err := remote.Delete(r.Context().Digest(list.Digest.String()), remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("drop referrers of %s: %w", ref, err)
	}
	h.logf("dropped the artifacts published for %s", ref)
	return nil
}

// profiled reports whether a workload to run on image measures the
// Profiled mode.
func (h *Harness) profiled(image string) bool {
	for _, w := range Workloads {
		if w.Image == image && w.Profile && (len(h.cfg.Workloads) == 0 || contains(h.cfg.Workloads, w.Name)) {
			return true
		}
	}
	return false
}

func (h *Harness) registryAddr() string { return h.cfg.Net.NSAddr + ":5001" }
func (h *Harness) proxyAddr() string    { return h.cfg.Net.NSAddr + ":5000" }
func (h *Harness) statsURL() string     { return "http://" + h.cfg.Net.NSAddr + ":5002/stats" }

// ProxyAddr is the host:port of the registry behind the emulated network.
func (h *Harness) ProxyAddr() string { return h.proxyAddr() }

// StatsURL is where the delaying proxy serves its request counters.
func (h *Harness) StatsURL() string { return h.statsURL() }

// Layers makes the layer tars from the roots (once; existing ones are
// kept) and returns their paths by name.
func (h *Harness) Layers(ctx context.Context) (map[string]string, error) {
	if err := os.MkdirAll(h.path("layers"), 0o755); err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, img := range h.images() {
		for _, l := range img.Layers {
			want[l] = true
		}
	}
	out := map[string]string{}
	for _, l := range []string{"base", "python", "gcc", "large", "bigfile"} {
		if !want[l] {
			continue
		}
		p := h.path("layers", l+".tar")
		out[l] = p
		if _, err := os.Stat(p); err == nil {
			continue
		}
		if l == "bigfile" {
			if err := h.makeBigRoot(); err != nil {
				return nil, err
			}
		}
		lower := ""
		if parent := parentRoot[l]; parent != "" {
			lower = h.path("roots", parent)
		}
		f, err := os.Create(p + ".tmp")
		if err != nil {
			return nil, err
		}
		w := bufio.NewWriterSize(f, 1<<20)
		st, err := Diff(w, lower, h.path("roots", l))
		if err == nil {
			err = w.Flush()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l, err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			return nil, err
		}
		h.logf("layer %s: %d entries, %d whiteouts, %s of files", l, st.Entries, st.Whiteouts, mib(st.Bytes))
	}
	return out, nil
}

// makeBigRoot makes roots/bigfile: one 1 GiB file of real binaries (the
// large root's files under /usr/lib, concatenated and repeated), so it
// compresses like an image's content does.
func (h *Harness) makeBigRoot() error {
	root := h.path("roots", "bigfile")
	if _, err := os.Stat(filepath.Join(root, BigFile)); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(BigFile)), 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(root, BigFile))
	if err != nil {
		return err
	}
	defer f.Close()
	const want = 1 << 30
	var n int64
	src := h.path("roots", "large", "usr", "lib")
	for n < want {
		before := n
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() || n >= want {
				return err
			}
			in, err := os.Open(p)
			if err != nil {
				return nil
			}
			defer in.Close()
			m, err := io.Copy(f, io.LimitReader(in, want-n))
			n += m
			return err
		})
		if err != nil {
			return err
		}
		if n == before {
			return fmt.Errorf("no files under %s", src)
		}
	}
	return f.Close()
}

// Setup builds what the run needs and brings up the emulated network:
// layers, compressed blobs, the namespace, the registry (with every image
// pushed and the gzip images' indexes pushed, before shaping), the proxy,
// then tc. Close undoes it.
func (h *Harness) Setup(ctx context.Context) error {
	layers, err := h.Layers(ctx)
	if err != nil {
		return err
	}
	blobs := map[string]Blob{}
	if err := os.MkdirAll(h.path("blobs"), 0o755); err != nil {
		return err
	}
	for _, format := range h.cfg.Formats {
		for l, p := range layers {
			b, err := CompressLayer(ctx, p, format, h.path("blobs"))
			if err != nil {
				return err
			}
			blobs[l+"/"+format] = b
		}
	}
	if err := h.cfg.Net.Up(ctx); err != nil {
		return err
	}
	if err := h.startRegistry(ctx); err != nil {
		return err
	}
	// Indexes are built anew by the lazyroot under test: one kept from an
	// earlier run may have been built with other settings.
	if err := os.RemoveAll(h.path("work", "index-push")); err != nil {
		return err
	}
	for _, img := range h.images() {
		for _, format := range h.cfg.Formats {
			var bs []Blob
			for _, l := range img.Layers {
				bs = append(bs, blobs[l+"/"+format])
			}
			repos := []string{"bench/" + img.Name}
			if h.profiled(img.Name) {
				repos = append(repos, profiledRepo(img.Name))
			}
			for i, repo := range repos {
				ref := fmt.Sprintf("%s/%s:%s", h.registryAddr(), repo, format)
				size, err := PushImage(ctx, ref, bs, name.Insecure)
				if err != nil {
					return err
				}
				if i == 0 {
					// The plain repository is for runs without a profile:
					// forget any published there by hand.
					if err := h.dropReferrers(ctx, ref); err != nil {
						return err
					}
				}
				h.imageBytes[img.Name+"/"+format] = size
				h.logf("image %s: %s compressed", ref, mib(size))
				if format == "gzip" {
					// Index once per cluster, as the README says a site would, so
					// cold gzip mounts read the shared index instead of streaming.
					idxRoot := h.path("work", "index-push")
					out, err := exec.CommandContext(ctx, h.cfg.Lazyroot, "index", "push", "--root", idxRoot,
						"--insecure-registry", h.registryAddr(), ref).CombinedOutput()
					if err != nil {
						return fmt.Errorf("lazyroot index push %s: %w: %s", ref, err, out)
					}
				}
			}
		}
	}
	if err := h.startProxy(ctx); err != nil {
		return err
	}
	if err := h.cfg.Net.Shape(ctx, h.cfg.RateBits); err != nil {
		return err
	}
	h.logf("network: %v round trip, %d Mbit/s", h.cfg.RTT, h.cfg.RateBits/1e6)
	return nil
}

func (h *Harness) startRegistry(ctx context.Context) error {
	conf := h.path("registry.yml")
	storage := h.path("registry")
	y := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:5001\n", storage)
	if err := os.WriteFile(conf, []byte(y), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(h.path("registry.log"))
	if err != nil {
		return err
	}
	cmd := h.cfg.Net.Command(context.Background(), "docker-registry", "serve", conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	h.procs = append(h.procs, cmd)
	return waitHTTP(ctx, "http://"+h.registryAddr()+"/v2/")
}

func (h *Harness) startProxy(ctx context.Context) error {
	logf, err := os.Create(h.path("proxy.log"))
	if err != nil {
		return err
	}
	cmd := h.cfg.Net.Command(context.Background(), h.cfg.Self, "proxy",
		"--listen", h.proxyAddr(), "--stats", h.cfg.Net.NSAddr+":5002",
		"--upstream", "http://127.0.0.1:5001", "--delay", (h.cfg.RTT / 2).String(), "--log-requests")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	h.procs = append(h.procs, cmd)
	return waitHTTP(ctx, h.statsURL())
}

func waitHTTP(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering: %w", url, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops the registry and the proxy and removes the namespace.
func (h *Harness) Close() {
	for i := len(h.procs) - 1; i >= 0; i-- {
		p := h.procs[i]
		if p.Process != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = p.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = p.Process.Kill()
				<-done
			}
		}
	}
	h.procs = nil
	h.cfg.Net.Down()
}

func (h *Harness) proxyStats() (ProxyStats, error) {
	resp, err := http.Get(h.statsURL())
	if err != nil {
		return ProxyStats{}, err
	}
	defer resp.Body.Close()
	var st ProxyStats
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Run runs every selected scenario and returns the results, in table
// order: per workload the baseline, then cold and warm per format.
func (h *Harness) Run(ctx context.Context) []Result {
	var out []Result
	defer h.emptyTrash()
	for _, w := range Workloads {
		if len(h.cfg.Workloads) > 0 && !contains(h.cfg.Workloads, w.Name) {
			continue
		}
		scen := []Scenario{{Workload: w, Mode: Baseline, Format: "gzip"}}
		for _, f := range h.cfg.Formats {
			scen = append(scen, Scenario{w, Cold, f}, Scenario{w, Warm, f}, Scenario{w, Kept, f})
			if w.Profile {
				scen = append(scen, Scenario{w, Profiled, f})
			}
		}
		for _, s := range scen {
			if ctx.Err() != nil {
				return out
			}
			h.logf("running %s", s)
			r := h.runScenario(ctx, s)
			if r.Err != "" {
				h.logf("%s failed: %s", s, r.Err)
			} else {
				h.logf("%s: first output %s, total %s, command %s, %s in %d requests, cpu %s, peak %s", s,
					secs(r.FirstOutput), secs(r.Total), secs(r.Command), mib(r.Bytes), r.Requests, secs(r.CPU), mib(r.PeakRSS))
			}
			out = append(out, r)
			if s.Mode == Kept || r.Err != "" {
				h.stopKept()
			}
			_ = exec.Command("sync").Run()
		}
		h.discard(h.path("work", "root-"+w.Name))
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (h *Harness) runScenario(ctx context.Context, s Scenario) Result {
	r := Result{Scenario: s, ImageBytes: h.imageBytes[s.Workload.Image+"/"+s.Format]}
	var err error
	if s.Mode == Baseline {
		err = h.runBaseline(ctx, s, &r)
	} else {
		err = h.runLazy(ctx, s, &r)
	}
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

func (h *Harness) runBaseline(ctx context.Context, s Scenario, r *Result) error {
	dir := h.path("work", "baseline")
	h.discard(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer h.discard(dir)
	st0, err := h.proxyStats()
	if err != nil {
		return err
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, h.cfg.Self, "pull", "--registry", "http://"+h.proxyAddr(),
		"--repo", "bench/"+s.Workload.Image, "--tag", "gzip", "--dir", dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pull: %w: %s", err, stderr.String())
	}
	r.CPU += rusageCPU(cmd.ProcessState.SysUsage().(*syscall.Rusage))
	if r.PeakRSS = parsePeakRSS(stdout.String()); r.PeakRSS == 0 {
		return fmt.Errorf("pull: no %q line in its output %q", PeakRSSLine, stdout.String())
	}
	r.Prepare = time.Since(start)
	if err := h.runJob(ctx, dir, s.Workload, start, r); err != nil {
		return err
	}
	st1, err := h.proxyStats()
	if err != nil {
		return err
	}
	d := st1.Sub(st0)
	r.Requests, r.Bytes = d.Requests, d.BodyBytes
	return nil
}

func (h *Harness) runLazy(ctx context.Context, s Scenario, r *Result) error {
	root := h.path("work", "root-"+s.Workload.Name, s.Format)
	if s.Mode != Warm && s.Mode != Kept {
		h.discard(root)
	}
	dir := h.path("work", "mnt")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ref := fmt.Sprintf("%s/bench/%s:%s", h.proxyAddr(), s.Workload.Image, s.Format)
	if s.Mode == Profiled {
		ref = fmt.Sprintf("%s/%s:%s", h.proxyAddr(), profiledRepo(s.Workload.Image), s.Format)
		if err := h.recordProfile(ctx, ref, dir, s.Workload); err != nil {
			return fmt.Errorf("record profile: %w", err)
		}
	}
	st0, err := h.proxyStats()
	if err != nil {
		return err
	}
	args := []string{"mount", "--root", root, "--insecure-registry", h.proxyAddr()}
	var cpu0 time.Duration
	switch s.Mode {
	case Warm:
		// The Kept run after this one mounts over the same tree.
		args = append(args, "--keep-lower", "10m")
	case Kept:
		if h.keptPID == 0 {
			return errors.New("no tree was kept by a warm run")
		}
		// The kept server's CPU counts from here, and its peak memory.
		if cpu0, _, err = procUsage(h.keptPID); err != nil {
			return fmt.Errorf("kept server %d: %w", h.keptPID, err)
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", h.keptPID), []byte("5"), 0); err != nil {
			return fmt.Errorf("reset the peak memory of server %d: %w", h.keptPID, err)
		}
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, h.cfg.Lazyroot, append(args, ref, dir)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("lazyroot mount: %w: %s", err, out)
	}
	defer func() {
		if out, err := exec.Command(h.cfg.Lazyroot, "umount", "--root", root, dir).CombinedOutput(); err != nil {
			h.logf("umount %s: %v: %s", dir, err, out)
			_ = exec.Command(h.cfg.Lazyroot, "umount", "--lazy", "--root", root, dir).Run()
		}
	}()
	r.CPU += rusageCPU(cmd.ProcessState.SysUsage().(*syscall.Rusage))
	r.Prepare = time.Since(start)
	if err := h.runJob(ctx, dir, s.Workload, start, r); err != nil {
		return err
	}
	// Asked after the job, which a job runner starts as soon as the mount
	// returns: the status command's own start-up is not lazyroot's time.
	pid, err := h.serverPID(ctx, root, dir)
	if err != nil {
		return err
	}
	switch {
	case s.Mode == Warm:
		h.keptPID = pid
	case s.Mode == Kept && pid != h.keptPID:
		return fmt.Errorf("the mount did not use the kept tree: server %d, not %d", pid, h.keptPID)
	}
	cpu, hwm, err := procUsage(pid)
	if err != nil {
		return fmt.Errorf("server %d: %w", pid, err)
	}
	r.CPU += cpu - cpu0
	r.PeakRSS = hwm
	st1, err := h.proxyStats()
	if err != nil {
		return err
	}
	d := st1.Sub(st0)
	r.Requests, r.Bytes = d.Requests, d.BodyBytes
	return nil
}

// stopKept stops the server a Warm run left keeping its tree.
func (h *Harness) stopKept() {
	pid := h.keptPID
	h.keptPID = 0
	if pid == 0 || syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	h.logf("kept server %d did not exit 15 s after SIGTERM: killing it", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// recordProfile runs w once on ref with a throwaway --root, recording its
// access profile and publishing it to the registry, as the first node to
// run an image would. Nothing of it is measured.
func (h *Harness) recordProfile(ctx context.Context, ref, dir string, w Workload) error {
	root := h.path("work", "root-record")
	h.discard(root)
	defer h.discard(root)
	out, err := exec.CommandContext(ctx, h.cfg.Lazyroot, "mount", "--root", root, "--insecure-registry", h.proxyAddr(),
		"--record-profile", "--publish-profile", ref, dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lazyroot mount: %w: %s", err, out)
	}
	var discard Result
	jobErr := h.runJob(ctx, dir, w, time.Now(), &discard)
	// The profile is saved and pushed as the mount ends.
	if out, err := exec.CommandContext(ctx, h.cfg.Lazyroot, "umount", "--root", root, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("lazyroot umount: %w: %s", err, out)
	}
	if jobErr != nil {
		return jobErr
	}
	logs, _ := filepath.Glob(filepath.Join(root, "logs", "*.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil && strings.Contains(string(b), "published the access profile") {
			return nil
		}
	}
	return fmt.Errorf("no profile was published (see the mount logs under %s)", root)
}

func (h *Harness) serverPID(ctx context.Context, root, dir string) (int, error) {
	out, err := exec.CommandContext(ctx, h.cfg.Lazyroot, "status", "--json", "--root", root, dir).Output()
	if err != nil {
		return 0, fmt.Errorf("lazyroot status: %w", err)
	}
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.PID == 0 {
		return 0, fmt.Errorf("lazyroot status: no pid in %q", out)
	}
	return st.PID, nil
}

// runJob runs the workload's command chrooted in dir, noting when its
// first output came (from start), its run time and its CPU.
func (h *Harness) runJob(ctx context.Context, dir string, w Workload, start time.Time, r *Result) error {
	args := append([]string{dir, "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LC_ALL=C"}, w.Cmd...)
	cmd := exec.CommandContext(ctx, "chroot", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr tailBuffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := stdout.Read(buf)
		if n > 0 {
			if r.OutputBytes == 0 {
				r.FirstOutput = time.Since(start)
			}
			r.OutputBytes += int64(n)
		}
		if err != nil {
			break
		}
	}
	err = cmd.Wait()
	r.Command = time.Since(t0)
	r.Total = time.Since(start)
	if cmd.ProcessState != nil {
		r.CPU += rusageCPU(cmd.ProcessState.SysUsage().(*syscall.Rusage))
	}
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(w.Cmd, " "), err, stderr.String())
	}
	if r.OutputBytes == 0 {
		r.FirstOutput = r.Total
	}
	return nil
}

func rusageCPU(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procUsage returns the user+system time and VmHWM of a running process.
func procUsage(pid int) (time.Duration, int64, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	cpu, err := ParseStatCPU(string(stat), 100)
	if err != nil {
		return 0, 0, err
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	return cpu, ParseVmHWM(string(status)), nil
}

// ParseStatCPU returns utime+stime from the text of /proc/PID/stat, given
// the clock ticks per second.
func ParseStatCPU(stat string, hz int64) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(stat[i+1:])
	// After the command: state(0) ppid ... utime is field 14 of the whole
	// line, index 11 here; stime index 12.
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed stat times")
	}
	return time.Duration((ut + st) * int64(time.Second) / hz), nil
}

// PeakRSSLine starts the line in which "lzbench pull" reports its peak
// resident memory (its VmHWM) in bytes.
const PeakRSSLine = "peak-rss"

// parsePeakRSS returns the bytes a PeakRSSLine in out reports, or 0.
func parsePeakRSS(out string) int64 {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, PeakRSSLine+" "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n > 0 {
				return n
			}
		}
	}
	return 0
}

// ParseVmHWM returns the VmHWM line of /proc/PID/status in bytes, or 0.
func ParseVmHWM(status string) int64 {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// tailBuffer keeps the last 4 KiB written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 4096 {
		t.b = t.b[len(t.b)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return strings.TrimSpace(string(t.b)) }

// ImageBytes returns the compressed sizes of the images pushed, by
// "image/format".
func (h *Harness) ImageBytes() map[string]int64 { return h.imageBytes }
