package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"

	"github.com/lazyroot/lazyroot/cache"
	"github.com/lazyroot/lazyroot/fetch"
	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/index"
	"github.com/lazyroot/lazyroot/layer"
)

type mountFlags struct {
	registryFlags
	root        string
	foreground  bool
	readyFD     int
	cacheMem    string
	cacheSize   string
	readTimeout time.Duration
	debug       bool
	suid        bool
	indexSource string
	publish     bool
	spanSize    string
	readOnly    bool
	upper       string
	uidMap      []string
	gidMap      []string
	layers      []string
	// prefetch
	prefetch       string
	prefetchRate   string
	prefetchWait   time.Duration
	recordProfile  bool
	publishProfile bool
	passthrough    bool
	// keepLower is how long a shared lower stays after its last mount;
	// startLog, set only in the background server of a shared lower, is
	// the log the server was started with, before it knew its lower.
	keepLower time.Duration
	startLog  string
}

// registerMountFlags adds the flags that say how an image is mounted,
// shared by mount and run.
func (f *mountFlags) registerMountFlags(fset *pflag.FlagSet) {
	fset.StringVar(&f.root, "root", defaultRoot, "state directory: indexes, chunk cache, mount records, logs, temporary uppers")
	fset.StringArrayVar(&f.layers, "layer", nil, "mount these local layer files (tar, tar.gz, tar.zst) instead of an IMAGE, listed top layer first; repeat the flag")
	fset.StringVar(&f.upper, "upper", "", "keep the writable layer in this directory (DIR/diff holds the changes); mounting again with it continues where it left off. Default: a temporary upper removed on unmount")
	fset.StringArrayVar(&f.uidMap, "uid-map", nil, "show image uid CONTAINER as host uid HOST, for SIZE ids (CONTAINER:HOST:SIZE; repeat for more ranges; unmapped ids show as 65534)")
	fset.StringArrayVar(&f.gidMap, "gid-map", nil, "the same for gids")
	fset.StringVar(&f.cacheMem, "cache-mem", "512MiB", "memory for verified file chunks")
	fset.StringVar(&f.cacheSize, "cache-size", "10GiB", "disk quota of the chunk cache under --root, shared by every mount on the node (0 turns it off)")
	fset.DurationVar(&f.readTimeout, "read-timeout", 60*time.Second, "fail a file read with EIO if its bytes cannot be fetched in this time")
	fset.StringVar(&f.indexSource, "index-source", "any", indexSourceHelp)
	fset.StringVar(&f.spanSize, "span-size", "256KiB", "distance between the seek points of indexes this node builds (plain gzip and zstd layers)")
	fset.BoolVar(&f.publish, "publish-index", false, "push the indexes this node builds to the registry for other nodes (needs push rights)")
	fset.StringVar(&f.prefetch, "prefetch", "profile", "what to fetch ahead once mounted, in the background: none; profile (the files an eStargz layer prioritizes, then those of the image's recorded access profile, from --root or the registry); all (profile, then every layer whole, yielding to reads and within --prefetch-rate)")
	fset.StringVar(&f.prefetchRate, "prefetch-rate", "0", "cap on the bytes a second the whole-layer prefetch of --prefetch=all fetches, e.g. 20MiB (0: no cap)")
	fset.DurationVar(&f.prefetchWait, "prefetch-wait", 0, "wait up to this long, before reporting the mount ready, for the prioritized and profile files (0: do not wait)")
	fset.BoolVar(&f.recordProfile, "record-profile", false, fmt.Sprintf("record the files this mount reads first (at most %d, in its first %v) as the image's access profile under --root, for later mounts to prefetch", layer.DefaultProfileFiles, layer.DefaultProfileWindow))
	fset.BoolVar(&f.publishProfile, "publish-profile", false, "with --record-profile: also push the profile to the registry for other nodes (needs push rights)")
	fset.BoolVar(&f.passthrough, "passthrough", true, "let the kernel read a file straight from the disk cache (FUSE passthrough) once a mount on the node has read it whole and copied it there; false serves every read through lazyroot (--record-profile implies false)")
	fset.BoolVar(&f.debug, "debug", false, "log every FUSE request")
	f.register(fset)
}

// check validates the flags and the image argument before anything is
// mounted, so a mistake is reported at once.
func (f *mountFlags) check(image string) (memBytes int64, err error) {
	if len(f.layers) > 0 && image != "" {
		return 0, fmt.Errorf("%w: give an IMAGE or --layer files, not both", errUsage)
	}
	if len(f.layers) == 0 {
		if strings.HasPrefix(image, "oci:") || strings.HasPrefix(image, "docker-archive:") {
			if _, path, _ := strings.Cut(image, ":"); path == "" {
				return 0, fmt.Errorf("%w: %s: no path after the colon", errUsage, image)
			}
		} else if _, err := layer.ParseReference(image, f.insecure); err != nil {
			return 0, err
		}
	}
	for _, l := range f.layers {
		if _, err := os.Stat(l); err != nil {
			return 0, fmt.Errorf("--layer: %w", err)
		}
	}
	if _, err := f.options(); err != nil {
		return 0, err
	}
	if _, err := layer.ParseIndexSource(f.indexSource); err != nil {
		return 0, fmt.Errorf("%w: --index-source: %v", errUsage, err)
	}
	if _, err := parseSpanSize(f.spanSize); err != nil {
		return 0, err
	}
	mem, err := humanize.ParseBytes(f.cacheMem)
	if err != nil || mem == 0 {
		return 0, fmt.Errorf("%w: --cache-mem %q: want a size such as 512MiB", errUsage, f.cacheMem)
	}
	if _, err := humanize.ParseBytes(f.cacheSize); err != nil {
		return 0, fmt.Errorf("%w: --cache-size %q: want a size such as 10GiB, or 0", errUsage, f.cacheSize)
	}
	if f.readOnly && f.upper != "" {
		return 0, fmt.Errorf("%w: --upper makes a writable mount; it cannot go with --read-only", errUsage)
	}
	if _, err := f.sessionOptions(""); err != nil {
		return 0, err
	}
	if f.publishProfile && !f.recordProfile {
		return 0, fmt.Errorf("%w: --publish-profile needs --record-profile", errUsage)
	}
	if f.root, err = filepath.Abs(f.root); err != nil {
		return 0, fmt.Errorf("state root: %w", err)
	}
	for _, d := range []string{"logs", "mounts"} {
		if err := os.MkdirAll(filepath.Join(f.root, d), 0o700); err != nil {
			return 0, fmt.Errorf("state root %s: %w", f.root, err)
		}
	}
	return int64(mem), nil
}

func runMount(ctx context.Context, stdout io.Writer, args []string) error {
	var f mountFlags
	fset := newFlagSet(stdout, "mount")
	fset.BoolVar(&f.readOnly, "read-only", false, "mount the image's tree alone, with no writable layer over it")
	fset.BoolVar(&f.foreground, "foreground", false, "serve in this process until unmounted or signalled, logging to stderr")
	fset.BoolVar(&f.suid, "suid", false, "honour setuid and setgid bits (trusted images only: any user who can reach DIR can run them)")
	fset.IntVar(&f.readyFD, "ready-fd", 0, "file descriptor to report readiness on (used by the background server)")
	_ = fset.MarkHidden("ready-fd")
	fset.DurationVar(&f.keepLower, "keep-lower", 0, "keep the image's read-only tree mounted this long after its last writable mount on the node goes, so the next mount of the image starts with the kernel's caches of it warm; the tree keeps the longest time any of its mounts asked for (0: unmount it with the last mount)")
	fset.StringVar(&f.startLog, "shared-lower", "", "serve the image's shared lower, or join the server that does; log to this file until the lower is known (used by the background server)")
	_ = fset.MarkHidden("shared-lower")
	f.registerMountFlags(fset)
	if err := parseArgs(fset, args, 1, 2); err != nil {
		return err
	}
	image, dirArg := "", fset.Arg(0)
	if fset.NArg() == 2 {
		image, dirArg = fset.Arg(0), fset.Arg(1)
	} else if len(f.layers) == 0 {
		return fmt.Errorf("%w: mount takes IMAGE DIR, or --layer FILE... DIR (see 'lazyroot mount --help')", errUsage)
	}
	dir, err := absDir(dirArg)
	if err != nil {
		return err
	}
	memBytes, err := f.check(image)
	if err != nil {
		return err
	}
	if err := checkMountpoint(dir); err != nil {
		return err
	}
	if f.keepLower < 0 {
		return fmt.Errorf("%w: --keep-lower %v is negative", errUsage, f.keepLower)
	}
	if f.keepLower > 0 && !f.sharesLower() && f.startLog == "" {
		return fmt.Errorf("%w: --keep-lower keeps the tree that writable background mounts share; --read-only, --foreground and --record-profile mounts have a tree of their own", errUsage)
	}
	// A shared lower's server forgets a mount whose overlay went; a
	// private server still serving a detached mount holds its directory.
	if rec, err := readRecord(recordPath(f.root, dir)); err == nil && rec.Shared == "" && alive(rec.PID) {
		// A detached, still busy mount's server: a new mount here would
		// share its work directory.
		return fmt.Errorf("mount point %s: the server of an earlier mount there (pid %d) still runs, serving its users after a lazy unmount; wait for them or stop it", dir, rec.PID)
	}
	if f.upper != "" {
		if up, err := absDir(f.upper); err == nil && (up == dir || strings.HasPrefix(up, dir+"/")) {
			return fmt.Errorf("%w: --upper %s is inside the mount point %s", errUsage, f.upper, dir)
		}
	}
	if !f.foreground {
		rest, auth := f.takeCredentials(args)
		if f.sharesLower() {
			return mountShared(ctx, &f, image, dir, rest, auth)
		}
		return startServer(ctx, f.root, logPath(f.root, dir), rest, auth)
	}
	if f.startLog != "" {
		return serveShared(ctx, &f, image, dir, memBytes)
	}
	return serve(ctx, &f, image, dir, memBytes)
}

// serverError is a failure a mount server reported on its readiness pipe.
type serverError string

func (e serverError) Error() string { return string(e) }

// startServer runs "mount --foreground" in a new session, logging to
// logFile, and returns once it reports the mount ready or failed.
func startServer(ctx context.Context, root, logFile string, args []string, auth string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer lf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	// The absolute --root goes last so it wins over a relative one in args.
	cmd := exec.Command(self, append(append([]string{"mount", "--foreground", "--ready-fd=3"}, args...), "--root", root)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if auth != "" {
		cmd.Env = append(os.Environ(), authEnv+"="+auth)
	}
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("start mount server: %w", err)
	}
	pw.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	waiting := make(chan struct{})
	defer close(waiting)
	go func() {
		// Interrupting the wait for readiness stops the server too.
		select {
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
		case <-exited:
		case <-waiting:
		}
	}()
	line, readErr := bufio.NewReader(pr).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ok":
		return nil
	case strings.HasPrefix(line, "error: "):
		<-exited
		return serverError(strings.TrimPrefix(line, "error: "))
	}
	<-exited
	return fmt.Errorf("mount server exited before the mount was ready (%v); see %s", readErr, logFile)
}

// serve mounts the image and serves it until unmounted or signalled.
func serve(ctx context.Context, f *mountFlags, image, dir string, memBytes int64) (err error) {
	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	ready := openReadiness(f.readyFD)
	defer func() { ready.finish(err) }()
	logger.Printf("mounting %s at %s", imageLabel(image, f.layers), dir)
	go adviseHugeHeap(memBytes) // while the registry answers
	m, err := prepare(ctx, f, image, memBytes, logger)
	if err != nil {
		return err
	}
	defer m.close()
	so, err := f.sessionOptions(workPath(f.root, dir))
	if err != nil {
		return err
	}
	s, err := openSession(m, dir, so, logger)
	if err != nil {
		return err
	}
	defer s.close()
	rec := mountRecord{Dir: dir, Image: m.img.Name(), Digest: digestString(m), PID: os.Getpid(), Socket: socketPath(f.root, dir), Lower: s.lower,
		IDMapped: len(so.uidMap) > 0 || len(so.gidMap) > 0}
	if s.upper != nil {
		rec.Upper, rec.TempUpper = s.upper.Dir, s.tempUpper
	}
	if f.readyFD > 0 {
		rec.Log = logPath(f.root, dir)
	}
	stopControl, err := serveControl(rec.Socket, m, rec, logger)
	if err != nil {
		return err
	}
	defer stopControl()
	if err := writeRecord(f.root, rec); err != nil {
		return err
	}
	defer os.Remove(recordPath(f.root, dir))
	logger.Printf("mounted %s (%s) at %s: %d inodes, %s in files", rec.Image, rec.Digest, dir, m.tree.Inodes, humanize.IBytes(uint64(m.tree.Bytes)))
	if rec.Upper != "" {
		logger.Printf("writable: changes go to %s", s.upper.Diff)
	}
	if ctx.Err() != nil {
		// Signalled while mounting: do not report a mount being torn down.
		return fmt.Errorf("interrupted while mounting %s", dir)
	}
	if !ready.ok() {
		fmt.Fprintf(os.Stderr, "mounted %s at %s; press Ctrl-C or run 'lazyroot umount %s' to unmount\n", rec.Image, dir, dir)
	}
	select {
	case <-s.gone(ctx):
		logger.Printf("unmounted %s", dir)
	case <-ctx.Done():
		logger.Printf("signalled: unmounting %s", dir)
	}
	s.close()
	st := m.img.FetchStats()
	logger.Printf("fetched %s in %d requests", humanize.IBytes(uint64(st.Bytes)), st.Requests)
	return nil
}

// sessionOptions turns the flags into how the image is mounted.
func (f *mountFlags) sessionOptions(work string) (sessionOptions, error) {
	uids, err := fs.ParseIDMap(f.uidMap)
	if err != nil {
		return sessionOptions{}, fmt.Errorf("%w: --uid-map: %v", errUsage, err)
	}
	gids, err := fs.ParseIDMap(f.gidMap)
	if err != nil {
		return sessionOptions{}, fmt.Errorf("%w: --gid-map: %v", errUsage, err)
	}
	upper := ""
	if f.upper != "" {
		if upper, err = filepath.Abs(f.upper); err != nil {
			return sessionOptions{}, fmt.Errorf("--upper: %w", err)
		}
	}
	mode, err := layer.ParsePrefetchMode(f.prefetch)
	if err != nil {
		return sessionOptions{}, fmt.Errorf("%w: --prefetch: %v", errUsage, err)
	}
	rate, err := humanize.ParseBytes(strings.TrimSuffix(f.prefetchRate, "/s"))
	if err != nil {
		return sessionOptions{}, fmt.Errorf("%w: --prefetch-rate %q: want bytes a second such as 20MiB, or 0", errUsage, f.prefetchRate)
	}
	if f.prefetchWait < 0 {
		return sessionOptions{}, fmt.Errorf("%w: --prefetch-wait %v is negative", errUsage, f.prefetchWait)
	}
	return sessionOptions{readOnly: f.readOnly, work: work, upper: upper, allowSetuid: f.suid, uidMap: uids, gidMap: gids, debug: f.debug,
		prefetch: mode, prefetchRate: int64(rate), prefetchWait: f.prefetchWait, recordProfile: f.recordProfile, publishProfile: f.publishProfile,
		passthrough: f.passthrough}, nil
}

// imageLabel names what is mounted, for log lines.
func imageLabel(image string, layers []string) string {
	if len(layers) > 0 {
		return "layers " + strings.Join(layers, ", ")
	}
	return image
}

// limitHeap asks the Go collector to keep this serving process near the
// memory cache's bound plus working room (a soft limit: it collects
// harder, it never fails), unless GOMEMLIMIT says otherwise. Without it,
// garbage from reads let a job reading a whole image take the server to
// two or three times --cache-mem.
func limitHeap(memBytes int64) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(memBytes + memBytes/2 + 128<<20)
}

// mounted is an image made ready to serve.
type mounted struct {
	img   *layer.Image
	stack *layer.Stack
	tree  *index.Tree
	cache *cache.Cache
	store *layer.Store
	// prefetch and recorder are set by openSession before the control
	// socket serves; either may be nil.
	prefetch *layer.Prefetch
	recorder *layer.Recorder
	// profileLookup is the registry lookup of the access profile, started
	// while the layers are indexed (nil if not needed); endLookup ends it.
	profileLookup *layer.ProfileLookup
	endLookup     context.CancelFunc
}

func (m *mounted) close() {
	if m.endLookup != nil {
		m.endLookup()
	}
	m.stack.Close()
	m.cache.Close()
	m.img.Close()
}

// prepare resolves the image, indexes its layers and merges them.
func prepare(ctx context.Context, f *mountFlags, image string, memBytes int64, logger *log.Logger) (*mounted, error) {
	img, st, err := resolveImage(ctx, f, image, true)
	if err != nil {
		return nil, err
	}
	return prepareImage(ctx, f, img, st, memBytes, logger)
}

// prepareImage indexes the layers of the resolved img and merges them; it
// owns img from then on, and closes it on failure.
func prepareImage(ctx context.Context, f *mountFlags, img *layer.Image, st *layer.Store, memBytes int64, logger *log.Logger) (*mounted, error) {
	limitHeap(memBytes)
	// Prefetch will want the image's access profile: its registry round
	// trips overlap the indexing.
	var lookup *layer.ProfileLookup
	lookupCtx, endLookup := context.WithCancel(context.Background())
	if mode, err := layer.ParsePrefetchMode(f.prefetch); err == nil && mode != layer.PrefetchNone {
		lookup = layer.LookupProfile(lookupCtx, img, st)
	}
	fail := func(err error) (*mounted, error) {
		endLookup()
		img.Close()
		return nil, err
	}
	diskBytes, err := humanize.ParseBytes(f.cacheSize)
	if err != nil {
		return fail(err)
	}
	copts := cache.Options{MemoryBytes: memBytes, Logf: logger.Printf}
	if diskBytes > 0 {
		copts.Dir, copts.DiskBytes = filepath.Join(f.root, "cache"), int64(diskBytes)
	}
	c, err := cache.New(copts)
	if err != nil {
		return fail(err)
	}
	// Indexing may stream whole layers: it is bounded by the fetcher's
	// stall timeouts and by signals, not by the resolve timeout.
	src, err := layer.ParseIndexSource(f.indexSource)
	if err != nil {
		c.Close()
		return fail(err)
	}
	spanSize, err := parseSpanSize(f.spanSize)
	if err != nil {
		c.Close()
		return fail(err)
	}
	stack, err := layer.Open(ctx, img, st, c, layer.StackOptions{
		ReadTimeout: f.readTimeout, Logf: logger.Printf, IndexSource: src, Publish: f.publish, SpanSize: spanSize,
	})
	if err != nil {
		c.Close()
		return fail(fmt.Errorf("%s: %w", img.Name(), err))
	}
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		stack.Close()
		c.Close()
		return fail(fmt.Errorf("%s: %w", img.Name(), err))
	}
	for i, l := range stack.Layers() {
		logger.Printf("layer %d %s: %s, index from %s, %d entries", i, l.Layer.Descriptor.Digest, l.Index.Format, l.Origin, len(l.Index.Entries))
	}
	return &mounted{img: img, stack: stack, tree: tree, cache: c, store: st, profileLookup: lookup, endLookup: endLookup}, nil
}

// resolveImage resolves image, or the --layer files, within
// --resolve-timeout, with the node's store of indexes and file digests;
// toOpen is for a caller about to open the image's layers.
func resolveImage(ctx context.Context, f *mountFlags, image string, toOpen bool) (*layer.Image, *layer.Store, error) {
	opts, err := f.options()
	if err != nil {
		return nil, nil, err
	}
	st, err := layer.NewStore(f.root)
	if err != nil {
		return nil, nil, err
	}
	opts = append(opts, layer.WithStore(st))
	if toOpen {
		// The referrers listing (index and profile artifacts) and the
		// layers' TOCs are asked for beside the config.
		opts = append(opts, layer.WithReferrers(), layer.WithEarlyTOC(st))
	}
	rctx, cancel := context.WithTimeout(ctx, f.resolveTimeout)
	defer cancel()
	var img *layer.Image
	if len(f.layers) > 0 {
		img, err = layer.ResolveFiles(rctx, f.layers, opts...)
	} else {
		img, err = layer.Resolve(rctx, image, opts...)
	}
	return img, st, err
}

// mountStatus is what the control socket reports.
type mountStatus struct {
	mountRecord
	ImageBytes     int64         `json:"imageBytes"`
	FetchedBytes   int64         `json:"fetchedBytes"`
	FetchRequests  int64         `json:"fetchRequests"`
	Inodes         uint64        `json:"inodes"`
	FileBytes      int64         `json:"fileBytes"`
	Layers         []layerStatus `json:"layers"`
	CacheHits      uint64        `json:"cacheHits"`
	CacheMisses    uint64        `json:"cacheMisses"`
	CacheHeldBytes int64         `json:"cacheHeldBytes"`
	DiskHits       uint64        `json:"diskHits"`
	CacheFills     uint64        `json:"cacheFills"`
	// Hosts counts blob requests and bytes per registry, mirror or
	// storage host.
	Hosts     map[string]fetch.HostStats `json:"hosts,omitempty"`
	DiskBytes int64                      `json:"diskBytes"`
	// Prefetch is the prefetch's progress; ProfileFiles the files
	// recorded so far with --record-profile.
	Prefetch     *layer.PrefetchStatus `json:"prefetch,omitempty"`
	ProfileFiles int                   `json:"profileFiles,omitempty"`
	// SharedMounts counts the mounts over a shared lower, this one
	// included; 0 for a mount with a tree of its own.
	SharedMounts int `json:"sharedMounts,omitempty"`
}

type layerStatus struct {
	Digest        string `json:"digest"`
	MediaType     string `json:"mediaType"`
	Size          int64  `json:"size"`
	Format        string `json:"format"`
	Origin        string `json:"origin"`
	FetchedBytes  int64  `json:"fetchedBytes"`
	FetchRequests int64  `json:"fetchRequests"`
}

func (m *mounted) status(rec mountRecord) mountStatus {
	fs := m.img.FetchStats()
	cs := m.cache.Stats()
	s := mountStatus{
		mountRecord: rec, ImageBytes: m.img.Size(), FetchedBytes: fs.Bytes, FetchRequests: fs.Requests,
		Inodes: m.tree.Inodes, FileBytes: m.tree.Bytes,
		CacheHits: cs.MemoryHits, CacheMisses: cs.Misses, CacheHeldBytes: cs.MemoryBytes,
		DiskHits: cs.DiskHits, DiskBytes: cs.DiskBytes, CacheFills: cs.Fills, Hosts: fs.Hosts,
	}
	if m.prefetch != nil {
		ps := m.prefetch.Status()
		s.Prefetch = &ps
	}
	if m.recorder != nil {
		s.ProfileFiles = m.recorder.Len()
	}
	for _, l := range m.stack.Layers() {
		d := l.Layer.Descriptor
		bs := l.Layer.FetchStats()
		s.Layers = append(s.Layers, layerStatus{d.Digest.String(), string(d.MediaType), d.Size, string(l.Index.Format), string(l.Origin), bs.Bytes, bs.Requests})
	}
	return s
}

// serveControl answers GET /status on a unix socket at path.
func serveControl(path string, m *mounted, rec mountRecord, logger *log.Logger) (func(), error) {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(m.status(rec))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Printf("control socket: %v", err)
		}
	}()
	return func() { srv.Close(); os.Remove(path) }, nil
}

// oneLine keeps an error message on one line for the readiness pipe.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
