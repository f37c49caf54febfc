package container

import (
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestCheckBounding: the last check before exec refuses a thread that
// kept a capability the drop removes (this test's own thread, which kept
// them all), and passes one whose bounding set is the kept set.
func TestCheckBounding(t *testing.T) {
	b, err := os.ReadFile("/proc/thread-self/status")
	if err != nil || !strings.Contains(string(b), "CapBnd:\t000001ff") {
		t.Skip("needs /proc and a full bounding set")
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
