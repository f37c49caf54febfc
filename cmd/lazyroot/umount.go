package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func runUmount(ctx context.Context, stdout io.Writer, args []string) error {
	fset := newFlagSet(stdout, "umount")
	root := fset.String("root", defaultRoot, "state directory the mount was made with")
	lazy := fset.Bool("lazy", false, "detach now even if the mount is busy; it goes away when no longer used")
	timeout := fset.Duration("timeout", 10*time.Second, "how long to wait for the mount server to exit")
	if err := parseArgs(fset, args, 1, 1); err != nil {
		return err
	}
	dir, err := absDir(fset.Arg(0))
	if err != nil {
		return err
	}
	rec, _ := readRecord(recordPath(*root, dir))
	if !isLazyrootMount(dir) {
		if rec != nil && !alive(rec.PID) {
			os.Remove(recordPath(*root, dir)) // left by a server that died
		}
		return fmt.Errorf("%s is not a lazyroot mount", dir)
	}
	if rec != nil && rec.Shared != "" && alive(rec.PID) {
		return unmountShared(ctx, rec, *lazy, *timeout)
	}
	flags := 0
	if *lazy {
		flags = syscall.MNT_DETACH
	}
	if err := unmount(dir, flags); err != nil {
		return err
	}
	if rec != nil && !alive(rec.PID) {
		cleanupDeadServer(*root, rec)
		return nil
	}
	if rec == nil || rec.PID <= 0 || *lazy {
		// A detached mount ends, and its server with it, when the last
		// process using it lets go.
		return nil
	}
	if rec.Lower != "" {
		// The overlay is gone; its server unmounts the tree beneath it,
		// removes a temporary upper and exits.
		syscall.Kill(rec.PID, syscall.SIGTERM)
	}
	return waitExit(ctx, rec.PID, *timeout)
}

// unmountShared has the server of a shared lower unmount the overlay at
// rec.Dir, and waits for the server to exit if that was its last mount
// and it keeps no idle tree.
func unmountShared(ctx context.Context, rec *mountRecord, lazy bool, timeout time.Duration) error {
	var ans unmountAnswer
	err := controlCall(ctx, rec.Socket, "/unmount", unmountRequest{Dir: rec.Dir, Session: rec.Session, Lazy: lazy}, &ans, timeout)
	switch {
	case errors.Is(err, errNoServer) || errors.Is(err, errClosing):
		// The server is shutting down, which unmounts all its mounts.
		return waitExit(ctx, rec.PID, timeout)
	case err != nil:
		return err
	case ans.Exiting && !lazy:
		return waitExit(ctx, rec.PID, timeout)
	}
	return nil
}

// cleanupDeadServer does what a mount server killed before it could clean
// up left undone: the tree beneath the overlay, a temporary upper, the
// record and the control socket.
func cleanupDeadServer(root string, rec *mountRecord) {
	if rec.Shared != "" && rec.Lower != "" {
		// A spare overlay it kept lies over the same tree.
		sweepSpare(root, filepath.Dir(rec.Lower), log.New(io.Discard, "", 0))
	}
	if rec.Lower != "" {
		if isMounted(rec.Lower) {
			syscall.Unmount(rec.Lower, syscall.MNT_DETACH)
		}
		os.Remove(rec.Lower)
	}
	if rec.TempUpper && rec.Upper != "" {
		os.RemoveAll(rec.Upper)
	}
	if rec.Lower != "" {
		os.Remove(filepath.Dir(rec.Lower))
	}
	if rec.Shared == "" {
		os.Remove(rec.Socket)
	} else {
		removeDeadSocket(root, rec)
	}
	os.Remove(recordPath(root, rec.Dir))
}

// removeDeadSocket removes the control socket of a dead shared lower's
// server, unless a mount is finding or starting a new server for the key
// or one already listens there.
func removeDeadSocket(root string, rec *mountRecord) {
	lf, err := os.OpenFile(lowerSlot(root, rec.Shared)+".lock", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer lf.Close()
	if syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return
	}
	if c, err := net.DialTimeout("unix", rec.Socket, time.Second); err == nil {
		c.Close()
		return
	}
	os.Remove(rec.Socket)
}

// unmount unmounts dir, through fusermount when umount(2) is not allowed
// (a mount made without root).
func unmount(dir string, flags int) error {
	err := syscall.Unmount(dir, flags)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EBUSY):
		return fmt.Errorf("unmount %s: busy: a process still uses it (or retry with --lazy)", dir)
	case errors.Is(err, syscall.EPERM):
		args := []string{"-u", dir}
		if flags&syscall.MNT_DETACH != 0 {
			args = []string{"-u", "-z", dir}
		}
		for _, tool := range []string{"fusermount3", "fusermount"} {
			if path, lerr := exec.LookPath(tool); lerr == nil {
				if out, ferr := exec.Command(path, args...).CombinedOutput(); ferr != nil {
					return fmt.Errorf("unmount %s: %s: %s", dir, tool, strings.TrimSpace(string(out)))
				}
				return nil
			}
		}
	}
	return fmt.Errorf("unmount %s: %w", dir, err)
}

func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil && !isZombie(pid)
}

// waitExit waits for process pid to go away.
func waitExit(ctx context.Context, pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) || isZombie(pid) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("unmounted, but mount server %d is still running after %s", pid, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			return i+2 < len(b) && b[i+2] == 'Z'
		}
	}
	return false
}
