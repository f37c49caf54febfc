package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	if rec != nil && rec.Shared != "" {
		return detachShared(ctx, rec, *lazy, *timeout)
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

// detachShared tells the server of a shared lower that the overlay at
// rec.Dir is gone, and waits for the server to exit if that was its last
// mount and it keeps no idle tree.
func detachShared(ctx context.Context, rec *mountRecord, lazy bool, timeout time.Duration) error {
	var ans detachAnswer
	err := controlCall(ctx, rec.Socket, "/detach", detachRequest{Dir: rec.Dir, Clean: !lazy}, &ans, timeout)
	switch {
	case lazy:
		return nil
	case errors.Is(err, errNoServer) || errors.Is(err, errClosing):
		// The server noticed the overlay go first, and is on its way out.
		return waitExit(ctx, rec.PID, timeout)
	case err != nil:
		return fmt.Errorf("unmounted %s, but its server did not answer: %w", rec.Dir, err)
	case ans.Exiting:
		return waitExit(ctx, rec.PID, timeout)
	}
	return nil
}

// cleanupDeadServer does what a mount server killed before it could clean
// up left undone: the tree beneath the overlay, a temporary upper, the
// record and the control socket.
func cleanupDeadServer(root string, rec *mountRecord) {
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
	// A shared lower's socket may have a new server by now.
	if rec.Shared == "" || errors.Is(controlCall(context.Background(), rec.Socket, "/status", struct{}{}, nil, time.Second), errNoServer) {
		os.Remove(rec.Socket)
	}
	os.Remove(recordPath(root, rec.Dir))
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
