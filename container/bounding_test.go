package container

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCheckBounding: the last check before exec refuses a thread that
// kept a capability the drop removes (this test's own thread, which kept
// them all), and passes one whose bounding set is the kept set.
func TestCheckBounding(t *testing.T) {
	if in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, unix.CAP_SYS_ADMIN, 0, 0, 0); err != nil || in != 1 {
		t.Skip("needs CAP_SYS_ADMIN in the bounding set")
	}
	if err := checkBounding(); err == nil {
		t.Error("a thread with every capability passed the check")
	}
	done := make(chan error)
	go func() {
		// Dropping is for good on this thread: it is never unlocked,
		// so the runtime discards it when the goroutine ends.
		runtime.LockOSThread()
		if err := dropCapabilities(); err != nil {
			done <- err
			return
		}
		done <- checkBounding()
	}()
	if err := <-done; err != nil {
		t.Errorf("after the drop: %v", err)
	}
}
