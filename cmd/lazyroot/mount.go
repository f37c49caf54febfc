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
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

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
}

func runMount(ctx context.Context, stdout io.Writer, args []string) error {
	var f mountFlags
	fset := newFlagSet(stdout, "mount")
	fset.StringVar(&f.root, "root", defaultRoot, "state directory: indexes, unpacked layers, mount records, logs")
	fset.BoolVar(&f.foreground, "foreground", false, "serve in this process until unmounted or signalled, logging to stderr")
	fset.StringVar(&f.cacheMem, "cache-mem", "512MiB", "memory for verified file chunks")
	fset.StringVar(&f.cacheSize, "cache-size", "10GiB", "disk quota of the chunk cache under --root, shared by every mount on the node (0 turns it off)")
	fset.DurationVar(&f.readTimeout, "read-timeout", 60*time.Second, "fail a file read with EIO if its bytes cannot be fetched in this time")
	fset.BoolVar(&f.suid, "suid", false, "honour setuid and setgid bits (trusted images only: any user who can reach DIR can run them)")
	fset.StringVar(&f.indexSource, "index-source", "any", indexSourceHelp)
	fset.StringVar(&f.spanSize, "span-size", "4MiB", "distance between the seek points of indexes this node builds (plain gzip and zstd layers)")
	fset.BoolVar(&f.publish, "publish-index", false, "push the indexes this node builds to the registry for other nodes (needs push rights)")
	fset.BoolVar(&f.debug, "debug", false, "log every FUSE request")
	fset.IntVar(&f.readyFD, "ready-fd", 0, "file descriptor to report readiness on (used by the background server)")
	_ = fset.MarkHidden("ready-fd")
	f.register(fset)
	if err := parseArgs(fset, args, 2, 2); err != nil {
		return err
	}
	image := fset.Arg(0)
	dir, err := absDir(fset.Arg(1))
	if err != nil {
		return err
	}
	if _, err := layer.ParseReference(image, f.insecure); err != nil {
		return err
	}
	if _, err := f.options(); err != nil {
		return err
	}
	if _, err := layer.ParseIndexSource(f.indexSource); err != nil {
		return fmt.Errorf("%w: --index-source: %v", errUsage, err)
	}
	if _, err := parseSpanSize(f.spanSize); err != nil {
		return err
	}
	memBytes, err := humanize.ParseBytes(f.cacheMem)
	if err != nil || memBytes == 0 {
		return fmt.Errorf("%w: --cache-mem %q: want a size such as 512MiB", errUsage, f.cacheMem)
	}
	if _, err := humanize.ParseBytes(f.cacheSize); err != nil {
		return fmt.Errorf("%w: --cache-size %q: want a size such as 10GiB, or 0", errUsage, f.cacheSize)
	}
	if err := checkMountpoint(dir); err != nil {
		return err
	}
	if f.root, err = filepath.Abs(f.root); err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	for _, d := range []string{"logs", "mounts"} {
		if err := os.MkdirAll(filepath.Join(f.root, d), 0o700); err != nil {
			return fmt.Errorf("state root %s: %w", f.root, err)
		}
	}
	if !f.foreground {
		rest, auth := f.takeCredentials(args)
		return startServer(ctx, f.root, dir, rest, auth)
	}
	return serve(ctx, &f, image, dir, int64(memBytes))
}

// startServer runs "mount --foreground" in a new session, logging to a file
// under the state root, and returns once it reports the mount ready or
// failed.
func startServer(ctx context.Context, root, dir string, args []string, auth string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	logFile := logPath(root, dir)
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
		return errors.New(strings.TrimPrefix(line, "error: "))
	}
	<-exited
	return fmt.Errorf("mount server exited before the mount was ready (%v); see %s", readErr, logFile)
}

// serve mounts the image and serves it until unmounted or signalled.
func serve(ctx context.Context, f *mountFlags, image, dir string, memBytes int64) (err error) {
	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	var ready *os.File
	if f.readyFD > 0 {
		ready = os.NewFile(uintptr(f.readyFD), "ready")
		defer func() {
			if err != nil {
				fmt.Fprintf(ready, "error: %s\n", oneLine(err))
			}
			ready.Close()
		}()
	}
	logger.Printf("mounting %s at %s", image, dir)
	m, err := prepare(ctx, f, image, memBytes, logger)
	if err != nil {
		return err
	}
	defer m.close()
	root := fs.NewRoot(m.tree, m.stack, logger)
	server, err := fs.Mount(dir, root, fs.Options{FsName: m.img.Ref.String(), Logger: logger, Debug: f.debug, AllowSetuid: f.suid})
	if err != nil {
		return err
	}
	unmount := func() {
		if uerr := server.Unmount(); uerr != nil {
			// Busy: detach now; the kernel ends the mount when its last
			// user lets go, and server.Wait returns then.
			logger.Printf("unmount %s: %v; detaching", dir, uerr)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	}
	rec := mountRecord{Dir: dir, Image: m.img.Ref.String(), Digest: m.img.Digest.String(), PID: os.Getpid(), Socket: socketPath(f.root, dir)}
	if f.readyFD > 0 {
		rec.Log = logPath(f.root, dir)
	}
	stopControl, err := serveControl(rec.Socket, m, rec, logger)
	if err != nil {
		unmount()
		return err
	}
	defer stopControl()
	if err := writeRecord(f.root, rec); err != nil {
		unmount()
		return err
	}
	defer os.Remove(recordPath(f.root, dir))
	logger.Printf("mounted %s (%s) at %s: %d inodes, %s in files", rec.Image, rec.Digest, dir, m.tree.Inodes, humanize.IBytes(uint64(m.tree.Bytes)))
	done := make(chan struct{})
	go func() { server.Wait(); close(done) }()
	if ctx.Err() != nil {
		// Signalled while mounting: do not report a mount being torn down.
		unmount()
		<-done
		return fmt.Errorf("interrupted while mounting %s", dir)
	}
	if ready != nil {
		fmt.Fprintln(ready, "ok")
		ready.Close()
		ready = nil
	} else {
		fmt.Fprintf(os.Stderr, "mounted %s at %s; press Ctrl-C or run 'lazyroot umount %s' to unmount\n", rec.Image, dir, dir)
	}
	select {
	case <-done:
		logger.Printf("unmounted %s", dir)
	case <-ctx.Done():
		logger.Printf("signalled: unmounting %s", dir)
		unmount()
		<-done
	}
	st := m.img.FetchStats()
	logger.Printf("fetched %s in %d requests", humanize.IBytes(uint64(st.Bytes)), st.Requests)
	return nil
}

// mounted is an image made ready to serve.
type mounted struct {
	img   *layer.Image
	stack *layer.Stack
	tree  *index.Tree
	cache *cache.Cache
}

func (m *mounted) close() {
	m.stack.Close()
	m.cache.Close()
}

// prepare resolves the image, indexes its layers and merges them.
func prepare(ctx context.Context, f *mountFlags, image string, memBytes int64, logger *log.Logger) (*mounted, error) {
	opts, err := f.options()
	if err != nil {
		return nil, err
	}
	st, err := layer.NewStore(f.root)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, f.resolveTimeout)
	img, err := layer.Resolve(rctx, image, opts...)
	cancel()
	if err != nil {
		return nil, err
	}
	diskBytes, err := humanize.ParseBytes(f.cacheSize)
	if err != nil {
		return nil, err
	}
	copts := cache.Options{MemoryBytes: memBytes, Logf: logger.Printf}
	if diskBytes > 0 {
		copts.Dir, copts.DiskBytes = filepath.Join(f.root, "cache"), int64(diskBytes)
	}
	c, err := cache.New(copts)
	if err != nil {
		return nil, err
	}
	// Indexing may stream whole layers: it is bounded by the fetcher's
	// stall timeouts and by signals, not by the resolve timeout.
	src, err := layer.ParseIndexSource(f.indexSource)
	if err != nil {
		return nil, err
	}
	spanSize, err := parseSpanSize(f.spanSize)
	if err != nil {
		return nil, err
	}
	stack, err := layer.Open(ctx, img, st, c, layer.StackOptions{
		ReadTimeout: f.readTimeout, Logf: logger.Printf, IndexSource: src, Publish: f.publish, SpanSize: spanSize,
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: %w", img.Ref, err)
	}
	tree, err := index.Merge(stack.Indexes())
	if err != nil {
		stack.Close()
		c.Close()
		return nil, fmt.Errorf("%s: %w", img.Ref, err)
	}
	for i, l := range stack.Layers() {
		logger.Printf("layer %d %s: %s, index from %s, %d entries", i, l.Layer.Descriptor.Digest, l.Index.Format, l.Origin, len(l.Index.Entries))
	}
	return &mounted{img: img, stack: stack, tree: tree, cache: c}, nil
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
