package main

// Shared lowers. Every writable mount of one image on a node, with the same
// serving options, sits over one read-only tree served by one process: the
// first mount starts it, later mounts ask it over its control socket for an
// overlay of their own. The kernel's dentry, inode and page caches of the
// tree then outlive any one mount: the second job to start on an image
// walks directories and reads files the first one warmed, at the speed of a
// local directory. With --keep-lower the tree stays mounted that long after
// its last mount, for the next job.
//
// Files under the state root:
//
//	lowers/KEY.lock          held by a server, once it has resolved the image, until it serves KEY or handed its mount over
//	lowers/KEY.sock          the server's control socket (attach, detach, status)
//	lowers/KEY/PID/tree      where server PID mounts the tree
//	lowers/KEY/PID/spare     the overlay a mount left untouched, kept for the next (spareOverlay)
//	lowers/KEY/PID/spare.upper  the path of that overlay's upper
//	lowers/refs/HINT         "KEY PID": the lower a reference was last served by (a hint)
//	logs/lower-KEY.log       the server's log
//	logs/lower-start-ID.log  a starting server's log until it knows its KEY, then a link to
//	                         lower-KEY.log until it serves (kept if it dies before)
//	mounts/ID.json           one record per mount, as for private mounts
//	mounts/ID.SESSION.d      a mount's temporary upper (a spare's upper keeps the name
//	                         the mount that made it gave it)
//
// Lock order in lowerServer: mu only; nothing is called with mu held that
// takes another lock of ours or waits on the network.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
)

// sharesLower says whether a mount with these flags goes through a shared
// lower: a writable mount in the background. A read-only mount is the tree
// itself; a recording must see only its own job's reads; a foreground
// mount serves in the calling process.
func (f *mountFlags) sharesLower() bool {
	return !f.readOnly && !f.recordProfile && !f.foreground
}

// lowerKey names the shared lower of an image whose content digest is
// digest: it covers every option that changes what the tree shows or how
// its bytes are fetched and served, so mounts that share a lower could not
// tell it from one of their own.
func (f *mountFlags) lowerKey(digest string) string {
	parts := []any{
		"digest", digest, "uid-map", f.uidMap, "gid-map", f.gidMap, "suid", f.suid,
		"read-timeout", f.readTimeout, "cache-mem", f.cacheMem, "cache-size", f.cacheSize,
		"index-source", f.indexSource, "span-size", f.spanSize, "publish-index", f.publish,
		"prefetch", f.prefetch, "prefetch-rate", f.prefetchRate, "passthrough", f.passthrough,
		"debug", f.debug, "hosts-dir", f.hostsDir, "max-conns", f.maxConns, "insecure", f.insecure,
	}
	b, _ := json.Marshal(parts)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func lowerSlot(root, key string) string { return filepath.Join(root, "lowers", key) }

func lowerSocket(root, key string) string { return lowerSlot(root, key) + ".sock" }

func lowerLog(root, key string) string { return filepath.Join(root, "logs", "lower-"+key+".log") }

// attachRequest asks a lower's server for an overlay at Dir.
type attachRequest struct {
	Dir string `json:"dir"`
	// Upper is a named upper directory; "" asks for a temporary one.
	Upper string `json:"upper,omitempty"`
	// PrefetchWait bounds how long the answer waits for prefetch's
	// priority files.
	PrefetchWait time.Duration `json:"prefetchWait,omitempty"`
	// Keep is how long the tree should stay mounted after its last mount.
	Keep time.Duration `json:"keep,omitempty"`
	// Image names the image as this mount asked for it.
	Image string `json:"image,omitempty"`
	// Hint is the mount's refHint: the server records that it serves it.
	Hint string `json:"hint,omitempty"`
}

// unmountRequest asks a lower's server to unmount the overlay of mount
// Session at Dir.
type unmountRequest struct {
	Dir     string `json:"dir"`
	Session string `json:"session"`
	// Lazy detaches the overlay even while it is busy.
	Lazy bool `json:"lazy,omitempty"`
}

// unmountAnswer says whether the server exits now that the mount is gone.
type unmountAnswer struct {
	Exiting bool `json:"exiting"`
}

var (
	// errNoServer: nothing answers on the lower's control socket.
	errNoServer = errors.New("no server for this lower")
	// errClosing: the lower's server takes no mount now: it is shutting
	// down, or not yet serving.
	errClosing = errors.New("lower server is closing")
)

// mountShared mounts image at dir over the image's shared lower.
//
// Which lower an image has is known only once it is resolved. When a hint
// says a server already serves this reference, the client resolves the
// image and asks that lower's server for an overlay. Otherwise it starts a
// server at once, which resolves the image once, for itself: it serves the
// lower, or, should another server of the same lower have started
// meanwhile (or serve the image under another name), hands the mount to
// that one and exits.
func mountShared(ctx context.Context, f *mountFlags, image, dir string, args []string, auth string) error {
	req, err := f.attachRequest(image, dir)
	if err != nil {
		return err
	}
	if key, ok := readHint(f.root, req.Hint); ok && answers(lowerSocket(f.root, key)) {
		name, digest, err := resolveDigest(ctx, f, image)
		if err != nil {
			return err
		}
		req.Image = name
		err = attachTo(ctx, lowerSocket(f.root, f.lowerKey(digest)), req)
		if !errors.Is(err, errNoServer) {
			return err
		}
		// The server went, or the reference names another image now.
	}
	id := make([]byte, 6)
	rand.Read(id)
	startLog := filepath.Join(f.root, "logs", "lower-start-"+hex.EncodeToString(id)+".log")
	err = startServer(ctx, f.root, startLog, append(args, "--shared-lower="+startLog), auth)
	if _, reported := errors.AsType[serverError](err); reported {
		// The server said what went wrong; a failed mount leaves no log.
		os.Remove(startLog)
	}
	return err
}

// attachRequest is the request for a mount of image at dir with these
// flags; Image is left to whoever has resolved it.
func (f *mountFlags) attachRequest(image, dir string) (attachRequest, error) {
	req := attachRequest{Dir: dir, PrefetchWait: f.prefetchWait, Keep: f.keepLower, Hint: f.refHint(image)}
	if f.upper != "" {
		var err error
		if req.Upper, err = filepath.Abs(f.upper); err != nil {
			return req, fmt.Errorf("--upper: %w", err)
		}
	}
	return req, nil
}

// attachTo asks the lower server at sock for the overlay req describes,
// waiting out a server that is shutting down (its socket goes first) or
// still starting. A socket nothing listens on is left alone: only the
// holder of the lower's lock replaces it.
func attachTo(ctx context.Context, sock string, req attachRequest) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := controlCall(ctx, sock, "/attach", req, nil, req.PrefetchWait+time.Minute)
		if !errors.Is(err, errClosing) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mount %s: the server at %s took no mount for 30 s: %w", req.Dir, sock, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// answers says whether a server listens on the unix socket sock.
func answers(sock string) bool {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// refHint names the shared lower a reference was last mounted from with
// these flags: the lower's key with the reference, made absolute where it
// names local files, in place of the image's digest. It is a hint only:
// a tag may have moved since.
func (f *mountFlags) refHint(image string) string {
	ref := []string{image}
	for _, prefix := range []string{"oci:", "docker-archive:"} {
		if p, ok := strings.CutPrefix(image, prefix); ok {
			if abs, err := filepath.Abs(p); err == nil {
				ref[0] = prefix + abs
			}
		}
	}
	for _, l := range f.layers {
		abs, err := filepath.Abs(l)
		if err != nil {
			abs = l
		}
		ref = append(ref, abs)
	}
	return f.lowerKey(strings.Join(ref, "\x00"))
}

func hintPath(root, hint string) string { return filepath.Join(root, "lowers", "refs", hint) }

// readHint returns the key of the lower that hint was last served by.
func readHint(root, hint string) (key string, ok bool) {
	b, err := os.ReadFile(hintPath(root, hint))
	if fields := strings.Fields(string(b)); err == nil && len(fields) > 0 && isKey(fields[0]) {
		return fields[0], true
	}
	return "", false
}

// isKey says whether s has the form of a lower key or hint (16 hex
// digits), so that it can name a file.
func isKey(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// hintLine is what this process writes in the hints of lower key.
func hintLine(key string) string { return fmt.Sprintf("%s %d\n", key, os.Getpid()) }

// writeHint records that the lower key, served by this process, serves
// references of hint.
func writeHint(root, hint, key string) error {
	path := hintPath(root, hint)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("reference hint: %w", err)
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	if err := os.WriteFile(tmp, []byte(hintLine(key)), 0o600); err != nil {
		return fmt.Errorf("reference hint: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("reference hint: %w", err)
	}
	return nil
}

// onStderr says whether path is the file on this process's standard error.
func onStderr(path string) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	cur, err := os.Stderr.Stat()
	return err == nil && os.SameFile(st, cur)
}

// adoptLog moves the server's log from startLog, where it went before the
// lower was known, to the lower's own log, and returns where the server
// logs from now on. Only a log on the server's standard error moves;
// startLog is left as a link to the new log, for the client to name should
// the server die before it is ready.
func adoptLog(startLog, lowerLog string, logger *log.Logger) string {
	if !onStderr(startLog) {
		return startLog
	}
	lf, err := os.OpenFile(lowerLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		logger.Printf("open %s: %v; logging on here", lowerLog, err)
		return startLog
	}
	defer lf.Close()
	if b, err := os.ReadFile(startLog); err == nil {
		lf.Write(b)
	}
	for _, fd := range []int{1, 2} {
		if err := unix.Dup3(int(lf.Fd()), fd, 0); err != nil {
			logger.Printf("log to %s: %v; logging on here", lowerLog, err)
			return startLog
		}
	}
	os.Remove(startLog)
	if err := os.Symlink(lowerLog, startLog); err != nil {
		logger.Printf("link %s to %s: %v", startLog, lowerLog, err)
	}
	return lowerLog
}

// resolveDigest resolves image (or the --layer files) to its name and the
// digest that names its content, as the server will mount it.
func resolveDigest(ctx context.Context, f *mountFlags, image string) (name, digest string, err error) {
	img, _, err := resolveImage(ctx, f, image, false)
	if err != nil {
		return "", "", err
	}
	defer img.Close()
	return img.Name(), imageDigest(img), nil
}

// lockPath takes an exclusive lock on the file at path, waiting for it
// until ctx ends, and returns its release.
func lockPath(ctx context.Context, path string) (func(), error) {
	lf, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err := unix.Flock(int(lf.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return sync.OnceFunc(func() { lf.Close() }), nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			lf.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			lf.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// controlCall posts req as JSON to path on the control socket sock and
// decodes the answer into answer (if not nil). It returns errNoServer if
// nothing listens, errClosing if the server takes no mount now (shutting
// down, or still starting), and the server's message for any other
// refusal.
func controlCall(ctx context.Context, sock, path string, req, answer any, timeout time.Duration) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://lazyroot"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(hreq)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			return errNoServer
		}
		return fmt.Errorf("lower server at %s: %w", sock, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable:
		return errClosing
	case resp.StatusCode != http.StatusOK:
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("lower server at %s: %s", sock, resp.Status)
	case answer != nil:
		if err := json.Unmarshal(b, answer); err != nil {
			return fmt.Errorf("lower server at %s: %w", sock, err)
		}
	}
	return nil
}

// lowerServer serves one image's tree to the overlays of many mounts.
type lowerServer struct {
	m      *mounted
	tree   *session // the tree, mounted read-only at treeDir
	key    string
	root   string
	sock   string
	log    string
	logger *log.Logger
	// overlay says how the overlays are mounted; idMapped that the tree
	// shows owners through an id map.
	overlay  fs.OverlayOptions
	idMapped bool
	// exit is closed when the server should shut down: signalled, idle
	// past its keep time, or its last mount gone with no keep time.
	exit         chan struct{}
	exitOnce     sync.Once
	shutdownOnce sync.Once

	mu sync.Mutex
	// mounts are the live overlays by directory (guarded by mu).
	mounts map[string]*overlayMount
	// deferred are the uppers of overlays that went without a clean
	// unmount: a detached overlay may still use them, so they stay (and
	// stay locked) until the tree goes (guarded by mu).
	deferred []*overlayMount
	// serving is set once the server's own first mount is made: until
	// then attaches are refused as if closing, so no mount is made over a
	// tree that may yet fail to mount (guarded by mu).
	serving bool
	// hints are the refHints this server wrote it serves (guarded by mu).
	hints map[string]bool
	// closing refuses new mounts once shutdown began (guarded by mu).
	closing bool
	// keep is how long the tree stays after its last mount: the longest
	// any of its mounts asked for. idle fires then (guarded by mu).
	keep time.Duration
	idle *time.Timer
	// spare is the overlay of a mount that ended without writing, kept
	// for the next mount with a temporary upper (guarded by mu).
	spare *spareOverlay
}

// overlayMount is one mount's overlay over the shared tree.
type overlayMount struct {
	rec   mountRecord
	upper *fs.Upper
	// spared says its overlay and upper became the spare.
	spared bool
}

// spareOverlay is an overlay whose mount ended with its temporary upper
// untouched, kept mounted at dir (beside the tree, private to the server)
// rather than unmounted. The next mount takes it as it is: a fresh
// overlay's every lookup goes through overlayfs again (ls -lR of a large
// tree takes about 1.4x as long over a new overlay as over one that has
// seen it), while this one has the kernel's dentries and inodes of what
// the jobs before looked up.
type spareOverlay struct {
	dir   string
	upper *fs.Upper
}

// serveShared resolves the image and puts its first mount's overlay at
// dir: through the server of the image's shared lower if one runs, or by
// becoming that server, mounting the tree and serving attaches until shut
// down.
func serveShared(ctx context.Context, f *mountFlags, image, dir string, memBytes int64) (err error) {
	logger := log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	ready := openReadiness(f.readyFD)
	defer func() { ready.finish(err) }()
	go adviseHugeHeap(memBytes) // while the registry answers
	img, st, err := resolveImage(ctx, f, image, true)
	if err != nil {
		return err
	}
	key := f.lowerKey(imageDigest(img))
	req, err := f.attachRequest(image, dir)
	if err != nil {
		img.Close()
		return err
	}
	req.Image = img.Name()
	slot := lowerSlot(f.root, key)
	if err := os.MkdirAll(slot, 0o700); err != nil {
		img.Close()
		return fmt.Errorf("state root %s: %w", f.root, err)
	}
	// One server per lower: the lock is held until this one serves, or
	// has handed the mount to the one that does.
	unlock, err := lockPath(ctx, slot+".lock")
	if err != nil {
		img.Close()
		return err
	}
	defer unlock()
	switch err := attachTo(ctx, lowerSocket(f.root, key), req); {
	case err == nil:
		img.Close()
		logger.Printf("mounted %s at %s through the running server of shared lower %s", img.Name(), dir, key)
		// The log and the lock go before the client returns (a job may
		// kill this process at once).
		if onStderr(f.startLog) {
			os.Remove(f.startLog)
		}
		unlock()
		ready.ok()
		return nil
	case !errors.Is(err, errNoServer):
		img.Close()
		return err
	}
	logPath := adoptLog(f.startLog, lowerLog(f.root, key), logger)
	logger.Printf("serving %s as shared lower %s", imageLabel(image, f.layers), key)
	m, err := prepareImage(ctx, f, img, st, memBytes, logger)
	if err != nil {
		return err
	}
	defer m.close()
	sweepDeadTrees(slot, logger)
	treeDir := filepath.Join(slot, strconv.Itoa(os.Getpid()), "tree")
	if err := os.MkdirAll(treeDir, 0o755); err != nil {
		return fmt.Errorf("lower directory: %w", err)
	}
	defer os.Remove(filepath.Dir(treeDir))
	defer os.Remove(treeDir)
	so, err := f.sessionOptions("")
	if err != nil {
		return err
	}
	overlay := fs.OverlayOptions{AllowSetuid: f.suid}
	var manifest string
	if m.img.Digest.Hex != "" {
		manifest = m.img.Digest.String()
	}
	metaDir := metaTreeDir(f.root, manifest, f.indexSource, m.tree, so.uidMap, so.gidMap)
	if haveMetaTree(metaDir) {
		overlay.MetaTree = metaDir
	}
	// The tree serves its files by inode number for a metadata tree's
	// redirects only when it has one.
	so.readOnly, so.upper, so.prefetchWait, so.inodes = true, "", 0, overlay.MetaTree != ""
	tree, err := openSession(m, treeDir, so, logger)
	if err != nil {
		return err
	}
	ls := &lowerServer{
		m: m, tree: tree, key: key, root: f.root, sock: lowerSocket(f.root, key), log: logPath, logger: logger,
		overlay: overlay, idMapped: len(so.uidMap) > 0 || len(so.gidMap) > 0, exit: make(chan struct{}),
		mounts: map[string]*overlayMount{}, hints: map[string]bool{}, keep: f.keepLower,
	}
	defer ls.shutdown()
	stopControl, err := ls.serveControl()
	if err != nil {
		return err
	}
	defer stopControl()
	if _, err := ls.attach(req); err != nil {
		return err
	}
	logger.Printf("shared lower of %s (%s) at %s: %d inodes, %s in files", m.img.Name(), digestString(m), treeDir,
		m.tree.Inodes, humanize.IBytes(uint64(m.tree.Bytes)))
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted while mounting %s", dir)
	}
	// adoptLog's pointer to logPath, which the client needs no more once
	// the mount is ready, and the lock go before the client returns (a job
	// may kill this process at once, and its umount find the lock held).
	if fi, err := os.Lstat(f.startLog); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		os.Remove(f.startLog)
	}
	unlock()
	ready.ok()
	var meta *metaTreeWriter
	if metaDir != "" && overlay.MetaTree == "" {
		meta = startMetaTree(metaDir, m.tree, so.uidMap, so.gidMap, logger)
	}
	go ls.watch(ctx)
	select {
	case <-ctx.Done():
		logger.Printf("signalled: unmounting every mount of shared lower %s", key)
	case <-tree.done:
		logger.Printf("the tree at %s was unmounted under its mounts", treeDir)
	case <-ls.exit:
		logger.Printf("shared lower %s has no mount left: unmounting it", key)
	}
	// The tree is written alongside the shutdown, within the umount's wait;
	// a signalled server stops at once.
	metaDeadline := time.Now().Add(metaTreeExitBound)
	if meta != nil && ctx.Err() == nil {
		meta.now()
	} else if meta != nil {
		meta.stop()
	}
	ls.beginClose()
	stopControl()
	ls.shutdown()
	if meta != nil {
		meta.wait(metaDeadline)
	}
	fst := m.img.FetchStats()
	logger.Printf("fetched %s in %d requests", humanize.IBytes(uint64(fst.Bytes)), fst.Requests)
	return nil
}

// attach mounts an overlay over the tree at r.Dir, then waits up to
// r.PrefetchWait for prefetch's priority files.
func (ls *lowerServer) attach(r attachRequest) (*overlayMount, error) {
	ls.mu.Lock()
	om, remove, err := ls.attachLocked(r)
	if err == nil {
		// Once the server's own mount is made, others may join, also
		// while it waits for prefetch below.
		ls.serving = true
	}
	ls.mu.Unlock()
	ls.removeUppers(remove)
	if err != nil {
		return nil, err
	}
	if p := ls.m.prefetch; p != nil && r.PrefetchWait > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), r.PrefetchWait)
		if err := p.WaitPriority(ctx); err != nil {
			ls.logger.Printf("mounted %s without waiting longer for prefetch (--prefetch-wait %v)", om.rec.Dir, r.PrefetchWait)
		}
		cancel()
	}
	return om, nil
}

// attachLocked mounts the overlay; remove lists uppers to delete once mu
// is released.
func (ls *lowerServer) attachLocked(r attachRequest) (om *overlayMount, remove []*fs.Upper, err error) {
	dir := r.Dir
	if old := ls.mounts[dir]; old != nil {
		if ls.ownsOverlay(dir, old, parseOverlays()) {
			return nil, nil, fmt.Errorf("mount point %s is already a mount", dir)
		}
		// Gone without the watcher noticing yet.
		remove = ls.forgetLocked(old, false)
	}
	if ls.closing {
		return nil, remove, errClosing
	}
	if err := checkMountpoint(dir); err != nil {
		return nil, remove, err
	}
	id := make([]byte, 6)
	rand.Read(id)
	session := hex.EncodeToString(id)
	temp := r.Upper == ""
	upperDir := r.Upper
	if temp {
		upperDir = filepath.Join(ls.root, "mounts", mountID(dir)+"."+session+".d")
	}
	image := r.Image
	if image == "" {
		image = ls.m.img.Name()
	}
	var u *fs.Upper
	if temp {
		u, remove = ls.takeSpareLocked(dir, remove)
	}
	spared := u != nil
	if !spared {
		if u, err = fs.OpenUpper(upperDir, image, digestString(ls.m)); err != nil {
			return nil, remove, err
		}
	}
	fail := func(err error) (*overlayMount, []*fs.Upper, error) {
		if temp {
			u.Remove()
		} else {
			u.Close()
		}
		return nil, remove, err
	}
	if !spared {
		err := fs.MountOverlay(dir, ls.tree.dir, u, ls.overlay)
		if err != nil && ls.overlay.MetaTree != "" {
			ls.logger.Printf("%v: mounting without the image's metadata tree", err)
			ls.overlay.MetaTree = ""
			err = fs.MountOverlay(dir, ls.tree.dir, u, ls.overlay)
		}
		if err != nil {
			return fail(err)
		}
		if temp {
			if err := u.Mark(); err != nil {
				ls.logger.Printf("%v: its overlay will not be kept as a spare", err)
			}
		}
	}
	rec := mountRecord{Dir: dir, Image: image, Digest: digestString(ls.m), PID: os.Getpid(), Socket: ls.sock, Log: ls.log,
		Lower: ls.tree.dir, Upper: u.Dir, TempUpper: temp, IDMapped: ls.idMapped, Shared: ls.key, Session: session}
	if err := writeRecord(ls.root, rec); err != nil {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		return fail(err)
	}
	om = &overlayMount{rec: rec, upper: u}
	ls.mounts[dir] = om
	ls.keep = max(ls.keep, r.Keep)
	if ls.idle != nil {
		ls.idle.Stop()
		ls.idle = nil
	}
	if isKey(r.Hint) && !ls.hints[r.Hint] {
		if err := writeHint(ls.root, r.Hint, ls.key); err != nil {
			ls.logger.Printf("%v", err)
		} else {
			ls.hints[r.Hint] = true
		}
	}
	ls.logger.Printf("mounted %s at %s (%d mounts share the tree)", rec.Image, dir, len(ls.mounts))
	if temp {
		ls.logger.Printf("writable: changes go to %s", u.Diff)
	}
	return om, remove, nil
}

// unmount unmounts the overlay of r.Session at r.Dir. It reports whether
// the server now exits.
func (ls *lowerServer) unmount(r unmountRequest) (exiting bool, err error) {
	ls.mu.Lock()
	om := ls.mounts[r.Dir]
	if om == nil || om.rec.Session != r.Session {
		ls.mu.Unlock()
		return false, fmt.Errorf("%s is not mounted by this server (pid %d)", r.Dir, os.Getpid())
	}
	var remove []*fs.Upper
	flags := 0
	if r.Lazy {
		flags = syscall.MNT_DETACH
	}
	clean := !r.Lazy
	if ls.ownsOverlay(r.Dir, om, parseOverlays()) {
		if ls.maySpareLocked(om, r.Lazy) {
			om.spared, clean, err = ls.unmountSparingLocked(om)
		} else {
			err = syscall.Unmount(r.Dir, flags)
		}
	}
	switch {
	case errors.Is(err, syscall.EBUSY):
		err = fmt.Errorf("unmount %s: busy: a process still uses it (or retry with --lazy)", r.Dir)
	case err != nil:
		err = fmt.Errorf("unmount %s: %w", r.Dir, err)
	default:
		remove = ls.forgetLocked(om, clean)
	}
	exiting = ls.closing
	ls.mu.Unlock()
	ls.removeUppers(remove)
	return exiting, err
}

// forgetLocked drops om, whose overlay is gone, and starts the idle
// countdown when it was the last mount. clean says no process can still
// use its upper; a temporary upper to delete now is returned.
func (ls *lowerServer) forgetLocked(om *overlayMount, clean bool) (remove []*fs.Upper) {
	delete(ls.mounts, om.rec.Dir)
	if cur, err := readRecord(recordPath(ls.root, om.rec.Dir)); err == nil && cur.Session == om.rec.Session {
		os.Remove(recordPath(ls.root, om.rec.Dir))
	}
	switch {
	case om.spared:
		// Its upper is the spare's now.
	case !clean:
		ls.deferred = append(ls.deferred, om)
	case om.rec.TempUpper:
		remove = append(remove, om.upper)
	default:
		om.upper.Close()
	}
	ls.logger.Printf("unmounted %s (%d mounts left)", om.rec.Dir, len(ls.mounts))
	if len(ls.mounts) > 0 || ls.closing {
		return remove
	}
	if ls.keep <= 0 {
		ls.closing = true
		ls.exitOnce.Do(func() { close(ls.exit) })
		return remove
	}
	ls.logger.Printf("keeping the tree for %v for the next mount", ls.keep)
	ls.idle = time.AfterFunc(ls.keep, func() {
		ls.mu.Lock()
		defer ls.mu.Unlock()
		if len(ls.mounts) == 0 && !ls.closing {
			ls.closing = true
			ls.exitOnce.Do(func() { close(ls.exit) })
		}
	})
	return remove
}

// spareDir is where the spare overlay is mounted: beside the tree.
func (ls *lowerServer) spareDir() string { return filepath.Join(filepath.Dir(ls.tree.dir), "spare") }

// spareNote is the file beside the spare that names its upper, for the
// sweep after a server that died (sweepSpare).
func spareNote(spareDir string) string { return spareDir + ".upper" }

// maySpareLocked says whether om's overlay may become the spare as it is
// unmounted: a clean unmount of an overlay over a temporary upper, with
// no spare yet, while the tree stays for another mount (one runs, or the
// tree is kept after its last).
func (ls *lowerServer) maySpareLocked(om *overlayMount, lazy bool) bool {
	return !lazy && om.rec.TempUpper && ls.spare == nil && !ls.closing && (ls.keep > 0 || len(ls.mounts) > 1)
}

// unmountSparingLocked unmounts om's overlay from its directory, keeping
// it as the spare if it is as good as a new one. It binds the overlay at
// the spare's place first and unmounts the directory, which fails as a
// plain unmount would while a process uses it (the bind then goes). The
// overlay is kept only if nothing was written to its upper, it is still
// writable, and no other mount of it is left, in any mount namespace (a
// job's private namespace, a bind made elsewhere): through one, a process
// of the job could still write to what the next job gets. Otherwise it
// goes with its upper, as a plain unmount. clean is false when it could
// only be detached (its upper must then stay until the tree goes).
func (ls *lowerServer) unmountSparingLocked(om *overlayMount) (spared, clean bool, err error) {
	dir, spare := om.rec.Dir, ls.spareDir()
	if err := os.MkdirAll(spare, 0o755); err != nil {
		ls.logger.Printf("spare overlay: %v", err)
		return false, true, syscall.Unmount(dir, 0)
	}
	if err := fs.BindOverlay(dir, spare, ls.overlay); err != nil {
		ls.logger.Printf("spare overlay: %v", err)
		return false, true, syscall.Unmount(dir, 0)
	}
	if err := syscall.Unmount(dir, 0); err != nil {
		unmountOrDetach(spare)
		return false, true, err
	}
	var sfs unix.Statfs_t
	switch {
	case !om.upper.Untouched():
	case unix.Statfs(spare, &sfs) != nil || sfs.Flags&unix.ST_RDONLY != 0:
		ls.logger.Printf("not keeping the overlay of %s: it was made read-only", dir)
	case overlayMountedElsewhere(om.upper.Diff, spare):
		ls.logger.Printf("not keeping the overlay of %s: it is still mounted elsewhere", dir)
	default:
		if err := os.WriteFile(spareNote(spare), []byte(om.upper.Dir), 0o600); err != nil {
			ls.logger.Printf("not keeping the overlay of %s: %v", dir, err)
			break
		}
		ls.spare = &spareOverlay{dir: spare, upper: om.upper}
		ls.logger.Printf("keeping the overlay of %s for the next mount: nothing was written to it", dir)
		return true, true, nil
	}
	return false, unmountOrDetach(spare), nil
}

// takeSpareLocked mounts the spare overlay, if there is one, at dir, and
// returns its upper; nil if there is none, or it is gone or could not be
// moved (it is then dropped).
func (ls *lowerServer) takeSpareLocked(dir string, remove []*fs.Upper) (*fs.Upper, []*fs.Upper) {
	sp := ls.spare
	if sp == nil {
		return nil, remove
	}
	if !slices.Contains(parseOverlays()[sp.dir], sp.upper.Diff) {
		ls.logger.Printf("the spare overlay at %s is gone: mounting a new one", sp.dir)
		return nil, append(remove, ls.dropSpareLocked()...)
	}
	// Noted as gone first: should this server die from here on, a sweep
	// must not remove the upper of the mount it became.
	os.Remove(spareNote(sp.dir))
	if err := fs.BindOverlay(sp.dir, dir, ls.overlay); err != nil {
		ls.logger.Printf("spare overlay: %v; mounting a new one", err)
		return nil, append(remove, ls.dropSpareLocked()...)
	}
	ls.spare = nil
	// Only dir shows it now; nothing else uses the spare's place.
	syscall.Unmount(sp.dir, syscall.MNT_DETACH)
	ls.logger.Printf("mounting at %s the overlay a mount before left untouched", dir)
	return sp.upper, remove
}

// dropSpareLocked unmounts the spare overlay, if any, and returns its
// upper to remove now; an upper whose overlay could only be detached
// waits with the deferred ones instead, until the tree goes.
func (ls *lowerServer) dropSpareLocked() []*fs.Upper {
	sp := ls.spare
	if sp == nil {
		return nil
	}
	ls.spare = nil
	os.Remove(spareNote(sp.dir))
	mounted := slices.Contains(parseOverlays()[sp.dir], sp.upper.Diff)
	if mounted && !unmountOrDetach(sp.dir) {
		ls.deferred = append(ls.deferred, &overlayMount{rec: mountRecord{TempUpper: true}, upper: sp.upper})
		return nil
	}
	return []*fs.Upper{sp.upper}
}

// unmountOrDetach unmounts dir, else detaches it; it reports whether the
// unmount was clean.
func unmountOrDetach(dir string) bool {
	if err := syscall.Unmount(dir, 0); err != nil {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		return false
	}
	return true
}

// overlayMountedElsewhere reports whether an overlay with upperdir diff is
// mounted anywhere but at except in this mount namespace, in any mount
// namespace of the node (it looks at one process of each).
func overlayMountedElsewhere(diff, except string) bool {
	self, _ := os.Readlink("/proc/self/ns/mnt")
	dirs := []string{"/proc/self"} // first: its mount points are this namespace's
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err == nil {
			dirs = append(dirs, "/proc/"+p.Name())
		}
	}
	seen := map[string]bool{}
	for _, dir := range dirs {
		ns, err := os.Readlink(dir + "/ns/mnt")
		if err != nil || seen[ns] {
			continue
		}
		seen[ns] = true
		b, err := os.ReadFile(dir + "/mountinfo")
		if err != nil {
			continue
		}
		for at, uppers := range overlaysIn(b) {
			if slices.Contains(uppers, diff) && (ns != self || at != except) {
				return true
			}
		}
	}
	return false
}

// sweepSpare removes the spare overlay a server that died left in pidDir
// (its lowers/KEY/PID directory) and the upper under root it names.
func sweepSpare(root, pidDir string, logger *log.Logger) {
	spare := filepath.Join(pidDir, "spare")
	clearStaleMount(spare, logger)
	os.Remove(spare)
	b, err := os.ReadFile(spareNote(spare))
	if err != nil {
		return
	}
	upper := string(b)
	if filepath.Dir(upper) == filepath.Join(root, "mounts") && strings.HasSuffix(upper, ".d") {
		os.RemoveAll(upper)
	}
	os.Remove(spareNote(spare))
}

// removeUppers deletes temporary uppers; called without mu.
func (ls *lowerServer) removeUppers(us []*fs.Upper) {
	for _, u := range us {
		if err := u.Remove(); err != nil {
			ls.logger.Printf("remove temporary upper %s: %v", u.Dir, err)
		}
	}
}

// ownsOverlay reports whether om's overlay is still mounted at dir,
// among the overlays of the mount table.
func (ls *lowerServer) ownsOverlay(dir string, om *overlayMount, overlays map[string][]string) bool {
	for _, upper := range overlays[dir] {
		if upper == om.upper.Diff {
			return true
		}
	}
	return false
}

// parseOverlays returns the upperdir of every overlay in this mount
// namespace, by mount point, bottom first.
func parseOverlays() map[string][]string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	return overlaysIn(b)
}

// overlaysIn returns the upperdir of every overlay in mountinfo, the text
// of a /proc/PID/mountinfo, by mount point, bottom first.
func overlaysIn(mountinfo []byte) map[string][]string {
	out := map[string][]string{}
	for _, line := range strings.Split(string(mountinfo), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		fields, after := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(after) < 3 || after[0] != "overlay" {
			continue
		}
		for _, opt := range strings.Split(after[2], ",") {
			if v, ok := strings.CutPrefix(opt, "upperdir="); ok {
				dir := unescapeMountinfo(fields[4])
				out[dir] = append(out[dir], unescapeMountinfo(v))
			}
		}
	}
	return out
}

// watch forgets mounts whose overlay someone else unmounted, whenever the
// mount table changes.
func (ls *lowerServer) watch(ctx context.Context) {
	changes := newMountTableWaiter()
	defer changes.close()
	for {
		var remove []*fs.Upper
		ls.mu.Lock()
		// Read under mu: a mount attached after the read would look gone.
		overlays := parseOverlays()
		if overlays != nil {
			for dir, om := range ls.mounts {
				if !ls.ownsOverlay(dir, om, overlays) {
					remove = append(remove, ls.forgetLocked(om, false)...)
				}
			}
		}
		closing := ls.closing
		ls.mu.Unlock()
		ls.removeUppers(remove)
		if closing || ctx.Err() != nil {
			return
		}
		changes.wait()
	}
}

// beginClose refuses further mounts.
func (ls *lowerServer) beginClose() {
	ls.mu.Lock()
	ls.closing = true
	if ls.idle != nil {
		ls.idle.Stop()
	}
	ls.mu.Unlock()
}

// shutdown unmounts every overlay still there and then the tree, waits
// for the tree's users, and removes the temporary uppers. It runs once
// the control socket is closed; a second call does nothing.
func (ls *lowerServer) shutdown() { ls.shutdownOnce.Do(ls.shutdownNow) }

func (ls *lowerServer) shutdownNow() {
	ls.beginClose()
	overlays := parseOverlays()
	var remove []*fs.Upper
	ls.mu.Lock()
	for dir, om := range ls.mounts {
		clean := true
		if ls.ownsOverlay(dir, om, overlays) {
			if err := syscall.Unmount(dir, 0); err != nil {
				ls.logger.Printf("unmount %s: %v; detaching", dir, err)
				syscall.Unmount(dir, syscall.MNT_DETACH)
				clean = false
			}
		}
		remove = append(remove, ls.forgetLocked(om, clean)...)
	}
	for hint := range ls.hints {
		// A successor serving the same lower may have written it since.
		if b, err := os.ReadFile(hintPath(ls.root, hint)); err == nil && string(b) == hintLine(ls.key) {
			os.Remove(hintPath(ls.root, hint))
		}
	}
	ls.hints = map[string]bool{}
	remove = append(remove, ls.dropSpareLocked()...)
	ls.mu.Unlock()
	ls.removeUppers(remove)
	os.Remove(ls.spareDir())
	// Closing the tree waits until no detached overlay uses it.
	ls.tree.close()
	ls.mu.Lock()
	deferred := ls.deferred
	ls.deferred = nil
	ls.mu.Unlock()
	for _, om := range deferred {
		if om.rec.TempUpper {
			ls.removeUppers([]*fs.Upper{om.upper})
		} else {
			om.upper.Close()
		}
	}
}

// serveControl answers attach, unmount and status on the lower's socket.
// The returned stop lets requests in flight finish.
func (ls *lowerServer) serveControl() (func(), error) {
	os.Remove(ls.sock)
	ln, err := net.Listen("unix", ls.sock)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /attach", func(w http.ResponseWriter, r *http.Request) {
		var req attachRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !filepath.IsAbs(req.Dir) {
			writeControlError(w, http.StatusBadRequest, fmt.Errorf("bad attach request: %v", err))
			return
		}
		ls.mu.Lock()
		serving := ls.serving
		ls.mu.Unlock()
		if !serving {
			writeControlError(w, http.StatusServiceUnavailable, errors.New("lower server is starting"))
			return
		}
		om, err := ls.attach(req)
		switch {
		case errors.Is(err, errClosing):
			writeControlError(w, http.StatusServiceUnavailable, err)
		case err != nil:
			writeControlError(w, http.StatusConflict, err)
		case r.Context().Err() != nil:
			// The client gave up (interrupted, or timed out): it reports
			// a failure, so leave nothing mounted.
			ls.logger.Printf("the mount of %s was abandoned by its client: unmounting it", req.Dir)
			ls.unmount(unmountRequest{Dir: req.Dir, Session: om.rec.Session, Lazy: true})
		default:
			w.Write([]byte("{}"))
		}
	})
	mux.HandleFunc("POST /unmount", func(w http.ResponseWriter, r *http.Request) {
		var req unmountRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeControlError(w, http.StatusBadRequest, fmt.Errorf("bad unmount request: %v", err))
			return
		}
		exiting, err := ls.unmount(req)
		if err != nil {
			writeControlError(w, http.StatusConflict, err)
			return
		}
		json.NewEncoder(w).Encode(unmountAnswer{Exiting: exiting})
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		dir := r.URL.Query().Get("dir")
		ls.mu.Lock()
		om := ls.mounts[dir]
		n := len(ls.mounts)
		ls.mu.Unlock()
		if dir == "" {
			// The tree itself, with or without mounts.
			om = &overlayMount{rec: mountRecord{Image: ls.m.img.Name(), Digest: digestString(ls.m), PID: os.Getpid(), Socket: ls.sock,
				Log: ls.log, Lower: ls.tree.dir, Shared: ls.key}}
		}
		if om == nil {
			writeControlError(w, http.StatusNotFound, fmt.Errorf("no mount at %q", dir))
			return
		}
		st := ls.m.status(om.rec)
		st.SharedMounts = n
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			ls.logger.Printf("control socket: %v", err)
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if srv.Shutdown(ctx) != nil {
				srv.Close()
			}
		})
	}, nil
}

func writeControlError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

// sweepDeadTrees detaches and removes the tree mount points of servers
// for this lower that died without cleaning up.
func sweepDeadTrees(slot string, logger *log.Logger) {
	entries, _ := os.ReadDir(slot)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() || pid == os.Getpid() || alive(pid) {
			continue
		}
		// The spare overlay of a server that died (see spareOverlay)
		// lies over its tree.
		sweepSpare(filepath.Dir(filepath.Dir(slot)), filepath.Join(slot, e.Name()), logger)
		tree := filepath.Join(slot, e.Name(), "tree")
		clearStaleMount(tree, logger)
		os.Remove(tree)
		os.Remove(filepath.Dir(tree))
	}
}
