package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lazyroot/lazyroot/fs"
)

// defaultRoot is where lazyroot keeps its state unless --root says otherwise.
const defaultRoot = "/var/lib/lazyroot"

// mountRecord describes a live mount; its server writes it under
// ROOT/mounts and removes it on exit.
type mountRecord struct {
	Dir    string `json:"dir"`
	Image  string `json:"image"`
	Digest string `json:"digest"`
	PID    int    `json:"pid"`
	Socket string `json:"socket"`
	Log    string `json:"log,omitempty"`
	// Lower is where the read-only tree is mounted beneath the overlay at
	// Dir; empty for a --read-only mount, which is the tree itself.
	Lower string `json:"lower,omitempty"`
	// Upper is the directory holding the overlay's writable layer (its
	// diff/ holds the changes); TempUpper says umount deletes it.
	Upper     string `json:"upper,omitempty"`
	TempUpper bool   `json:"tempUpper,omitempty"`
	// IDMapped says owners are shown through --uid-map/--gid-map.
	IDMapped bool `json:"idMapped,omitempty"`
	// Shared is the key of the shared lower the mount's overlay sits on
	// (its server, PID, serves other mounts too); Session tells this
	// mount from an earlier one at Dir.
	Shared  string `json:"shared,omitempty"`
	Session string `json:"session,omitempty"`
}

// mountID names a mount's files under the state root.
func mountID(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return hex.EncodeToString(sum[:8])
}

func recordPath(root, dir string) string {
	return filepath.Join(root, "mounts", mountID(dir)+".json")
}

func socketPath(root, dir string) string {
	return filepath.Join(root, "mounts", mountID(dir)+".sock")
}

// workPath is where a mount keeps its lower mount point and temporary
// upper.
func workPath(root, dir string) string {
	return filepath.Join(root, "mounts", mountID(dir)+".d")
}

func logPath(root, dir string) string {
	return filepath.Join(root, "logs", mountID(dir)+".log")
}

func writeRecord(root string, r mountRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	p := recordPath(root, r.Dir)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write mount record: %w", err)
	}
	return os.Rename(tmp, p)
}

func readRecord(path string) (*mountRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := new(mountRecord)
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("mount record %s: %w", path, err)
	}
	return r, nil
}

func listRecords(root string) ([]*mountRecord, error) {
	paths, err := filepath.Glob(filepath.Join(root, "mounts", "*.json"))
	if err != nil {
		return nil, err
	}
	var recs []*mountRecord
	for _, p := range paths {
		if r, err := readRecord(p); err == nil {
			recs = append(recs, r)
		}
	}
	return recs, nil
}

// checkMountpoint requires dir to be an existing, empty directory.
func checkMountpoint(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("mount point %s does not exist", dir)
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", dir)
	}
	if isMounted(dir) {
		return fmt.Errorf("mount point %s is already a mount", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("mount point %s is not empty", dir)
	}
	return nil
}

// mountAt returns the file system type and source of the visible mount at
// dir; fstype is "" if dir is not a mount point.
func mountAt(dir string) (fstype, source string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		fields := strings.Fields(pre)
		if !ok || len(fields) < 5 || unescapeMountinfo(fields[4]) != dir {
			continue
		}
		if f := strings.Fields(post); len(f) > 1 {
			// The last mount at dir is the visible one.
			fstype, source = f[0], unescapeMountinfo(f[1])
		}
	}
	return fstype, source
}

func isMounted(dir string) bool {
	fstype, _ := mountAt(dir)
	return fstype != ""
}

// isLazyrootMount reports whether the visible mount at dir is ours: the
// read-only tree, or the overlay lazyroot puts over it.
func isLazyrootMount(dir string) bool {
	fstype, source := mountAt(dir)
	return fstype == "fuse.lazyroot" || fstype == "overlay" && source == fs.OverlaySource
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// absDir makes dir absolute and resolves symlinks in it, as the kernel
// does when it records a mount point.
func absDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("directory %q: %w", dir, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real, nil
	}
	return filepath.Clean(abs), nil
}

// readiness is the pipe a background server reports on to the mount
// command that started it: "ok", or the error that stopped it. Without a
// pipe (--foreground) it reports nothing.
type readiness struct{ f *os.File }

func openReadiness(fd int) *readiness {
	if fd <= 0 {
		return &readiness{}
	}
	return &readiness{os.NewFile(uintptr(fd), "ready")}
}

// ok reports the mount ready; it returns false if no one waits.
func (r *readiness) ok() bool {
	if r.f == nil {
		return false
	}
	fmt.Fprintln(r.f, "ok")
	r.f.Close()
	r.f = nil
	return true
}

// finish reports err, unless the mount was reported ready already.
func (r *readiness) finish(err error) {
	if r.f == nil {
		return
	}
	if err != nil {
		fmt.Fprintf(r.f, "error: %s\n", oneLine(err))
	}
	r.f.Close()
	r.f = nil
}

// mountTableWaiter waits for a change of this mount namespace's mount
// table.
type mountTableWaiter struct{ f *os.File }

func newMountTableWaiter() *mountTableWaiter {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return &mountTableWaiter{}
	}
	return &mountTableWaiter{f}
}

// wait returns once the mount table changed, or after at most 2 s:
// mountinfo polls ready on a change, and the timeout covers a kernel that
// does not say.
func (w *mountTableWaiter) wait() {
	const most = 2 * time.Second
	if w.f == nil {
		time.Sleep(most)
		return
	}
	fds := []unix.PollFd{{Fd: int32(w.f.Fd()), Events: unix.POLLPRI}}
	unix.Poll(fds, int(most.Milliseconds()))
}

func (w *mountTableWaiter) close() {
	if w.f != nil {
		w.f.Close()
	}
}
