package main

import (
	"bufio"
	"fmt"
	"os"
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

// TestHugeHeap: where the kernel gives huge pages to memory that asks,
// the heap's next large allocation after adviseHugeHeap lies in memory
// that asked (VmFlags hg), unless the memory budget is small.
func TestHugeHeap(t *testing.T) {
	mode, err := os.ReadFile(thpModeFile)
	if err != nil || !strings.Contains(string(mode), "[madvise]") {
		t.Skipf("transparent huge pages are not in madvise mode here (%q, %v)", mode, err)
	}
	if adviseHugeHeap(minHugeHeapCache / 2) {
		t.Error("advised the heap under a small memory tier")
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
