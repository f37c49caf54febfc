package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
		if rec != nil {
			os.Remove(recordPath(*root, dir))
		}
		return fmt.Errorf("%s is not a lazyroot mount", dir)
	}
	flags := 0
	if *lazy {
		flags = syscall.MNT_DETACH
	}
	if err := syscall.Unmount(dir, flags); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("unmount %s: busy: a process still uses it (or retry with --lazy)", dir)
		}
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	if rec == nil || rec.PID <= 0 {
		return nil
	}
	return waitExit(ctx, rec.PID, *timeout)
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
