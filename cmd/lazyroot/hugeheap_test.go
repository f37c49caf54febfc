package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"unsafe"
)

// vmFlags returns the VmFlags of the mapping of this process that holds
// addr, from /proc/self/smaps.
func vmFlags(t *testing.T, addr uintptr) []string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if first, _, _ := strings.Cut(line, " "); !strings.HasSuffix(first, ":") {
			var lo, hi uintptr
			if _, err := fmt.Sscanf(first, "%x-%x", &lo, &hi); err == nil {
				in = lo <= addr && addr < hi
			}
			continue
		}
		if v, ok := strings.CutPrefix(line, "VmFlags:"); ok && in {
			return strings.Fields(v)
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return nil
}

// hugeHeapChild, set in the environment, makes TestHugeHeap the process
// that checks: a test binary's heap, after other tests, has free runs of
// its own that a new allocation may take instead of the advised block; a
// fresh process's, like a mount server's as it starts, has none.
const hugeHeapChild = "LAZYROOT_TEST_HUGE_HEAP_CHILD"

// TestHugeHeap: where the kernel gives huge pages to memory that asks,
// the heap's next large allocation after adviseHugeHeap, in a process just
// started, lies in memory that asked (VmFlags hg); under a small memory
// tier nothing is advised.
func TestHugeHeap(t *testing.T) {
	mode, err := os.ReadFile(thpModeFile)
	if err != nil || !strings.Contains(string(mode), "[madvise]") {
		t.Skipf("transparent huge pages are not in madvise mode here (%q, %v)", mode, err)
	}
	if os.Getenv(hugeHeapChild) == "" {
		if adviseHugeHeap(minHugeHeapCache / 2) {
			t.Error("advised the heap under a small memory tier")
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestHugeHeap$", "-test.v")
		cmd.Env = append(os.Environ(), hugeHeapChild+"=1")
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "--- PASS: TestHugeHeap") {
			t.Fatalf("the fresh process: %v\n%s", err, out)
		}
		return
	}
	if !adviseHugeHeap(512 << 20) {
		t.Fatal("the heap was not advised")
	}
	buf := make([]byte, 16<<20)
	flags := vmFlags(t, uintptr(unsafe.Pointer(&buf[len(buf)/2])))
	found := false
	for _, f := range flags {
		found = found || f == "hg"
	}
	if !found {
		t.Errorf("the heap's next 16 MiB lie in a mapping with VmFlags %v; want hg among them", flags)
	}
	buf[0] = 1 // keep buf until here
}
