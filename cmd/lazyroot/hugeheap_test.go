package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// anonHugeKiB returns the process's anonymous memory in transparent huge
// pages, in KiB.
func anonHugeKiB(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps_rollup")
	if err != nil {
		t.Skipf("no smaps_rollup: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "AnonHugePages:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("smaps_rollup: %q: %v", sc.Text(), err)
			}
			return n
		}
	}
	t.Fatal("smaps_rollup has no AnonHugePages")
	return 0
}

// TestHugeHeap: where the kernel gives huge pages to memory that asks,
// the heap's next allocations after adviseHugeHeap are backed by them.
func TestHugeHeap(t *testing.T) {
	mode, err := os.ReadFile(thpModeFile)
	if err != nil || !strings.Contains(string(mode), "[madvise]") {
		t.Skipf("transparent huge pages are not in madvise mode here (%q, %v)", mode, err)
	}
	before := anonHugeKiB(t)
	if !adviseHugeHeap() {
		t.Fatal("the heap was not advised")
	}
	buf := make([]byte, 32<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = 1
	}
	after := anonHugeKiB(t)
	if after-before < 4<<10 {
		t.Errorf("huge pages went from %d to %d KiB with 32 MiB written; want 4 MiB more at least", before, after)
	}
	t.Logf("huge pages: %d -> %d KiB", before, after)
	buf[0] = 2 // keep buf until here
}
