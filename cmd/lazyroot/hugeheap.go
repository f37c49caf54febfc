package main

import (
	"os"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugeHeapBytes is how much of its heap a mount server has backed by
// transparent huge pages.
const hugeHeapBytes = 64 << 20

// minHugeHeapCache is the smallest memory tier (--cache-mem) with which a
// mount server asks for huge pages.
const minHugeHeapCache = 256 << 20

// thpModeFile says when the kernel backs anonymous memory with
// transparent huge pages: "always", "madvise" or "never", the one in use
// in brackets.
const thpModeFile = "/sys/kernel/mm/transparent_hugepage/enabled"

// adviseHugeHeap has the kernel back the next hugeHeapBytes of the Go heap
// with transparent huge pages, where the system gives them only to memory
// that asks (the "madvise" mode, Debian's default). A mount server's heap
// grows fast as it starts: indexes, chunks and spans fetched and decoded,
// the memory cache. Each 4 KiB page of it costs a page fault when first
// written, and on some virtual machines a fault costs 10-15 us (14 us on
// the bench's): a 4 MiB chunk is then 15 ms of faults, against 2 faults
// with huge pages. The Go runtime does not ask for huge pages for its heap,
// so the server allocates a block (mapped, not yet touched), asks for huge
// pages for it and drops it; the heap then grows into it.
//
// Huge pages can cost memory (up to the block's size, were the kernel to
// rebuild huge pages from what the runtime gives back) and, where the
// kernel compacts memory to find one at a fault, time: the block is left
// alone under a tight budget (a memory tier under minHugeHeapCache, or
// GOMEMLIMIT set), and with GODEBUG disablethp=1. It reports whether it
// advised the block.
func adviseHugeHeap(memBytes int64) bool {
	if memBytes < minHugeHeapCache || os.Getenv("GOMEMLIMIT") != "" || strings.Contains(os.Getenv("GODEBUG"), "disablethp=1") {
		return false
	}
	mode, err := os.ReadFile(thpModeFile)
	if err != nil || !strings.Contains(string(mode), "[madvise]") {
		return false // none to have, or the heap has them already
	}
	block := make([]byte, hugeHeapBytes)
	const huge = 2 << 20
	base := uintptr(unsafe.Pointer(&block[0]))
	skip := int((base+huge-1)&^(huge-1) - base)
	n := (len(block) - skip) &^ (huge - 1)
	if n <= 0 {
		return false
	}
	err = unix.Madvise(block[skip:skip+n], unix.MADV_HUGEPAGE)
	runtime.KeepAlive(block)
	// Freed now, the block is where the heap's next pages come from.
	runtime.GC()
	return err == nil
}
