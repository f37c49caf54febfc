package layer

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"strings"

	"github.com/lazyroot/lazyroot/index"
)

// What a dynamically linked program opens before it runs a line of its
// own is written in its ELF headers: the loader (PT_INTERP), the loader's
// cache, and the libraries it needs (DT_NEEDED), looked up along its run
// path and the system's library directories. Prefetch reads them from the
// first bytes of a program or library a job reads, and fetches those files
// at once rather than one round trip after another as the loader asks.

// Bounds on what elfDeps reads of a file: it reads headers, not code.
const (
	maxELFPhnum    = 128
	maxELFInterp   = 4 << 10
	maxELFDynamic  = 64 << 10
	maxELFStrtab   = 1 << 20
	maxELFNeeded   = 64
	maxELFSymlinks = 16
	// maxELFFollowed bounds the files one Prefetch follows.
	maxELFFollowed = 512
	// maxELFFileSize is the largest file fetched whole for a follower or
	// FetchProgram: a larger one is mapped but read in part, on demand.
	maxELFFileSize = 64 << 20
	// elfFollowersAtOnce bounds the followers fetching at once.
	elfFollowersAtOnce = 2
	// restJobsAtOnce bounds the files whose rest is fetched at once
	// (FetchProgram).
	restJobsAtOnce = 2
)

// elfInfo is what the dynamic loader will open for an ELF file.
type elfInfo struct {
	machine elf.Machine
	interp  string   // the loader, "" for a static file or a library
	needed  []string // DT_NEEDED names, in order
	runpath []string // DT_RUNPATH, else DT_RPATH, split at ':'
}

// errNotELF reports a file that is not a 64-bit ELF file.
var errNotELF = errors.New("not a 64-bit ELF file")

// elfDeps reads the ELF headers of a file of size bytes through read
// (which fills p from off or fails) and returns what it needs. It reads
// the file header, the program headers, the interpreter, the dynamic
// section and the strings it names, each bounded, and trusts nothing in
// them: a malformed file fails with an error, never a panic.
func elfDeps(read func(p []byte, off int64) error, size int64) (*elfInfo, error) {
	var hdr [64]byte
	if size < int64(len(hdr)) {
		return nil, errNotELF
	}
	if err := read(hdr[:], 0); err != nil {
		return nil, err
	}
	if string(hdr[:4]) != elf.ELFMAG || elf.Class(hdr[elf.EI_CLASS]) != elf.ELFCLASS64 {
		return nil, errNotELF
	}
	var bo binary.ByteOrder
	switch elf.Data(hdr[elf.EI_DATA]) {
	case elf.ELFDATA2LSB:
		bo = binary.LittleEndian
	case elf.ELFDATA2MSB:
		bo = binary.BigEndian
	default:
		return nil, errNotELF
	}
	info := &elfInfo{machine: elf.Machine(bo.Uint16(hdr[18:]))}
	phoff, phentsize, phnum := bo.Uint64(hdr[32:]), int64(bo.Uint16(hdr[54:])), int64(bo.Uint16(hdr[56:]))
	if phentsize != 56 || phnum == 0 || phnum > maxELFPhnum || !within(phoff, uint64(phentsize*phnum), size) {
		return nil, fmt.Errorf("elf: program headers at %d (%d of %d bytes) outside the file", phoff, phnum, phentsize)
	}
	ph := make([]byte, phentsize*phnum)
	if err := read(ph, int64(phoff)); err != nil {
		return nil, err
	}
	type segment struct{ off, vaddr, filesz uint64 }
	var loads []segment
	var dynamic *segment
	for i := int64(0); i < phnum; i++ {
		p := ph[i*phentsize:]
		s := segment{off: bo.Uint64(p[8:]), vaddr: bo.Uint64(p[16:]), filesz: bo.Uint64(p[32:])}
		switch elf.ProgType(bo.Uint32(p)) {
		case elf.PT_LOAD:
			loads = append(loads, s)
		case elf.PT_DYNAMIC:
			dynamic = &s
		case elf.PT_INTERP:
			if s.filesz == 0 || s.filesz > maxELFInterp || !within(s.off, s.filesz, size) {
				return nil, errors.New("elf: interpreter outside the file")
			}
			b := make([]byte, s.filesz)
			if err := read(b, int64(s.off)); err != nil {
				return nil, err
			}
			if i := bytes.IndexByte(b, 0); i >= 0 {
				b = b[:i]
			}
			info.interp = string(b)
		}
	}
	if dynamic == nil {
		return info, nil // static
	}
	if dynamic.filesz > maxELFDynamic || !within(dynamic.off, dynamic.filesz, size) {
		return nil, errors.New("elf: dynamic section outside the file")
	}
	dyn := make([]byte, dynamic.filesz)
	if err := read(dyn, int64(dynamic.off)); err != nil {
		return nil, err
	}
	var needed []uint64
	var strtab, strsz uint64
	runpath, rpath := int64(-1), int64(-1)
	for p := dyn; len(p) >= 16; p = p[16:] {
		tag, val := elf.DynTag(bo.Uint64(p)), bo.Uint64(p[8:])
		switch tag {
		case elf.DT_NULL:
			p = p[:16] // the last entry
		case elf.DT_NEEDED:
			if len(needed) < maxELFNeeded {
				needed = append(needed, val)
			}
		case elf.DT_STRTAB:
			strtab = val
		case elf.DT_STRSZ:
			strsz = val
		case elf.DT_RUNPATH:
			runpath = int64(val)
		case elf.DT_RPATH:
			rpath = int64(val)
		}
	}
	if strsz == 0 || (len(needed) == 0 && runpath < 0 && rpath < 0) {
		return info, nil
	}
	// DT_STRTAB is an address: the loadable segment that maps it says where
	// it lies in the file.
	strsz = min(strsz, maxELFStrtab)
	var stroff uint64
	found := false
	for _, s := range loads {
		if strtab >= s.vaddr && strtab-s.vaddr < s.filesz && within(s.off, s.filesz, size) {
			stroff, found = s.off+(strtab-s.vaddr), true
			break
		}
	}
	if !found || !within(stroff, strsz, size) {
		return nil, errors.New("elf: string table outside the file")
	}
	strs := make([]byte, strsz)
	if err := read(strs, int64(stroff)); err != nil {
		return nil, err
	}
	str := func(off uint64) (string, bool) {
		if off >= uint64(len(strs)) {
			return "", false
		}
		s := strs[off:]
		end := bytes.IndexByte(s, 0)
		if end <= 0 {
			return "", false
		}
		return string(s[:end]), true
	}
	for _, off := range needed {
		if s, ok := str(off); ok {
			info.needed = append(info.needed, s)
		}
	}
	if runpath < 0 {
		runpath = rpath
	}
	if runpath >= 0 {
		if s, ok := str(uint64(runpath)); ok {
			info.runpath = strings.Split(s, ":")
		}
	}
	return info, nil
}

// within reports whether [off, off+n) lies inside a file of size bytes.
func within(off, n uint64, size int64) bool {
	return size >= 0 && off <= uint64(size) && n <= uint64(size)-off
}

// libraryDirs are the directories the loader searches, after a file's run
// path, for the libraries of a file of machine m: those Debian's
// ld.so.conf names, in its order, then the loader's own.
func libraryDirs(m elf.Machine) []string {
	var triplet string
	switch m {
	case elf.EM_X86_64:
		triplet = "x86_64-linux-gnu"
	case elf.EM_AARCH64:
		triplet = "aarch64-linux-gnu"
	case elf.EM_PPC64:
		triplet = "powerpc64le-linux-gnu"
	case elf.EM_S390:
		triplet = "s390x-linux-gnu"
	case elf.EM_RISCV:
		triplet = "riscv64-linux-gnu"
	}
	dirs := []string{"/usr/local/lib"}
	if triplet != "" {
		dirs = append(dirs, "/usr/local/lib/"+triplet, "/lib/"+triplet, "/usr/lib/"+triplet)
	}
	return append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}

// neededFiles returns the regular files of t that the loader opens for the
// ELF file at name (its path in the tree) that info describes: the
// interpreter and its cache, and each needed library found along the run
// path and the library directories. Names that resolve to nothing are
// left out.
func neededFiles(t *index.Tree, name string, info *elfInfo) []*index.Node {
	var out []*index.Node
	seen := map[*index.Node]bool{}
	add := func(p string) bool {
		n, ok := resolvePath(t, p)
		if !ok || n.Type != index.TypeReg {
			return false
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
		return true
	}
	if path.IsAbs(info.interp) {
		add(info.interp)
		add("/etc/ld.so.cache")
	}
	origin := "/" + path.Dir(name)
	var dirs []string
	for _, d := range info.runpath {
		d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
		if path.IsAbs(d) {
			dirs = append(dirs, d)
		}
	}
	dirs = append(dirs, libraryDirs(info.machine)...)
	for _, lib := range info.needed {
		if strings.Contains(lib, "/") {
			if path.IsAbs(lib) {
				add(lib)
			}
			continue
		}
		for _, d := range dirs {
			// Not path.Join: resolvePath follows a symlinked d before "..".
			if add(d + "/" + lib) {
				break
			}
		}
	}
	return out
}

// resolvePath returns the node of t at the absolute path p, following
// symlinks (absolute ones from the tree's root) in every component, at
// most maxELFSymlinks of them.
func resolvePath(t *index.Tree, p string) (*index.Node, bool) {
	parts := strings.Split(p, "/")
	var stack []*index.Node // the directories walked, root first
	n := t.Root
	hops := 0
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if len(stack) > 0 {
				n, stack = stack[len(stack)-1], stack[:len(stack)-1]
			}
			continue
		}
		if n.Type != index.TypeDir {
			return nil, false
		}
		c, ok := n.Children[part]
		if !ok {
			return nil, false
		}
		if c.Type == index.TypeSymlink {
			if hops++; hops > maxELFSymlinks {
				return nil, false
			}
			if strings.HasPrefix(c.Linkname, "/") {
				n, stack = t.Root, nil
			}
			parts = append(strings.Split(c.Linkname, "/"), parts...)
			continue
		}
		stack = append(stack, n)
		n = c
	}
	return n, true
}

// FollowELF notes that a job read head, the first bytes of file n. If n is
// an ELF file, the rest of it is fetched in the background (see
// FetchProgram), and, with a merged tree, the files the loader opens for
// it (see neededFiles), which are then followed in turn, each file once.
// It returns at once, and does nothing with prefetch off or once Stop was
// called.
func (p *Prefetch) FollowELF(n *index.Node, head []byte) {
	if p == nil || p.opts.Mode == PrefetchNone || !bytes.HasPrefix(head, []byte(elf.ELFMAG)) {
		return
	}
	// The loader maps it and the program runs through it: the rest is
	// read soon, much of it.
	p.fetchRest(n, int64(len(head)))
	if p.opts.Tree != nil {
		p.follow(n)
	}
}

// FetchProgram notes that a job starts reading n, a file with an execute
// bit, with a read of its first end bytes: most likely the kernel
// starting to run it, which then reads much of the program as it runs.
// The rest of the file is fetched at once, in the background, beside
// the job's own read, rather than one miss after another as the program
// pages itself in (and the loader reads its dynamic section, which
// FollowELF needs, near the end). It plans and claims the fetch (a stat
// of the disk cache per chunk or span) and returns; the fetch runs in the
// background. The rest is not fetched for a file of a local layer, one
// over maxELFFileSize or one planned before (here or by a follower),
// beyond maxELFFollowed files, or once Stop was called; restJobsAtOnce
// files are fetched at a time. Beside it, a language runtime that n is
// has the files it reads as it starts fetched, once (see
// fetchRuntimeStart). Nothing happens with prefetch off.
func (p *Prefetch) FetchProgram(n *index.Node, end int64) {
	if p == nil || p.opts.Mode == PrefetchNone || n.Type != index.TypeReg || n.Mode&0o111 == 0 {
		return
	}
	p.fetchRest(n, end)
	p.fetchRuntimeStart(n)
}

// fetchRest fetches, in the background, the chunks or spans of n that a
// job's read of its first end bytes does not touch (see FetchProgram).
func (p *Prefetch) fetchRest(n *index.Node, end int64) {
	if n.Size <= end || n.Size > maxELFFileSize || n.Layer < 0 || n.Layer >= len(p.s.layers) || !isRemote(p.s.layers[n.Layer]) {
		return
	}
	if _, dup := p.elfFetched.LoadOrStore(n, true); dup || p.restCount.Add(1) > maxELFFollowed {
		return
	}
	l := p.s.layers[n.Layer]
	// What the job's read fetches is left to it: planned as seen.
	head := newPlan(p.s)
	head.addFileRange(l, &n.Entry, 0, end)
	pl := newPlan(p.s)
	maps.Copy(pl.seen, head.seen)
	if !pl.addFileRange(l, &n.Entry, end, n.Size) || pl.dropHeld() == 0 {
		return
	}
	// Claimed before the job's read goes on, so that its own fetch
	// stops where the rest begins, though the rest waits for a slot.
	c := claimPlan(pl)
	if !p.inLife(func() {
		select {
		case p.restSlots <- struct{}{}:
			defer func() { <-p.restSlots }()
		case <-p.life.Done():
			c.release()
			return
		}
		p.runClaimedCounting(p.life, c, &p.elfBytes, &p.elfDone, &p.elfFiles)
	}) {
		c.release()
	}
}

// inLife runs f on a goroutine of its own that Stop waits for, and
// reports whether it did: not once Stop was called.
func (p *Prefetch) inLife(f func()) bool {
	p.elfMu.Lock()
	defer p.elfMu.Unlock()
	if p.stopped {
		return false
	}
	p.elfJobs.Add(1)
	go func() {
		defer p.elfJobs.Done()
		f()
	}()
	return true
}

// follow starts following n unless it was, or too many files were.
func (p *Prefetch) follow(n *index.Node) {
	if _, dup := p.elfSeen.LoadOrStore(n, true); dup || p.elfCount.Add(1) > maxELFFollowed {
		return
	}
	p.elfFollowing.Add(1)
	if !p.inLife(func() {
		defer p.elfFollowing.Add(-1)
		p.followELF(p.life, n)
	}) {
		p.elfFollowing.Add(-1)
	}
}

// followELF fetches what the loader opens for n, if n is a dynamically
// linked ELF file, then follows those files. Failures only mean the files
// are read on demand.
func (p *Prefetch) followELF(ctx context.Context, n *index.Node) {
	info, err := elfDeps(func(b []byte, off int64) error {
		_, err := p.s.ReadAt(ctx, n, b, off)
		if errors.Is(err, io.EOF) {
			err = nil // bounds are checked against the size
		}
		return err
	}, n.Size)
	if err != nil || (info.interp == "" && len(info.needed) == 0) {
		return
	}
	files := neededFiles(p.opts.Tree, n.Name, info)
	pl := newPlan(p.s)
	for _, f := range files {
		if p.planWhole(pl, f) {
			p.elfFiles.Add(1)
		}
	}
	if pl.dropHeld() > 0 {
		select {
		case p.elfSlots <- struct{}{}:
			p.runPlanCounting(ctx, pl, &p.elfBytes, &p.elfDone, nil)
			<-p.elfSlots
		case <-ctx.Done():
			return
		}
	}
	for _, f := range files {
		if ctx.Err() == nil {
			p.follow(f)
		}
	}
}

// planWhole adds f to pl, whole, unless it is in a local layer, over
// maxELFFileSize, or was planned before by a follower, FetchProgram or the
// start-up files; it reports whether it did.
func (p *Prefetch) planWhole(pl *plan, f *index.Node) bool {
	if f.Layer < 0 || f.Layer >= len(p.s.layers) || !isRemote(p.s.layers[f.Layer]) || f.Size > maxELFFileSize {
		return false
	}
	_, dup := p.elfFetched.LoadOrStore(f, true)
	return !dup && pl.addFile(p.s.layers[f.Layer], &f.Entry)
}

// dropHeld removes from pl the units already cached or being fetched (by
// profile prefetch, say), so that a batch does not fetch their bytes
// again, and returns how many units are left.
func (pl *plan) dropHeld() int {
	left := 0
	for l, us := range pl.units {
		kept := us[:0]
		for _, u := range us {
			if pl.s.cache.Holds(u.key) || l.inflight.covering(u.in.Start, u.in.End) != nil {
				continue
			}
			kept = append(kept, u)
		}
		pl.units[l] = kept
		left += len(kept)
	}
	return left
}

// loaderPaths returns the ELF machine of Go architecture arch and the
// standard paths of its dynamic loader, glibc's then musl's: the ELF ABI
// of each platform fixes them, so every dynamically linked program of an
// image names one of them as its interpreter. Both are zero for an
// architecture it does not know.
func loaderPaths(arch string) (elf.Machine, []string) {
	switch arch {
	case "amd64":
		return elf.EM_X86_64, []string{"/lib64/ld-linux-x86-64.so.2", "/lib/ld-musl-x86_64.so.1"}
	case "arm64":
		return elf.EM_AARCH64, []string{"/lib/ld-linux-aarch64.so.1", "/lib/ld-musl-aarch64.so.1"}
	case "386":
		return elf.EM_386, []string{"/lib/ld-linux.so.2", "/lib/ld-musl-i386.so.1"}
	case "arm":
		return elf.EM_ARM, []string{"/lib/ld-linux-armhf.so.3", "/lib/ld-musl-armhf.so.1"}
	case "ppc64le":
		return elf.EM_PPC64, []string{"/lib64/ld64.so.2", "/lib/ld-musl-powerpc64le.so.1"}
	case "s390x":
		return elf.EM_S390, []string{"/lib/ld64.so.1", "/lib/ld-musl-s390x.so.1"}
	case "riscv64":
		return elf.EM_RISCV, []string{"/lib/ld-linux-riscv64-lp64d.so.1", "/lib/ld-musl-riscv64.so.1"}
	}
	return 0, nil
}

// startupFiles returns the files of t that nearly every job on an image
// of architecture arch reads first, whatever it runs: the dynamic loader
// at its standard path, the loader's cache and the C library (glibc's
// libc.so.6, found where the loader looks; musl's loader is its C
// library), and the local time zone, which the C library reads for any
// program that shows or logs a local time (ls -l, date, python's start).
// With glibc, the files of the locale env sets and of C.UTF-8 come too
// (see localeFiles). It is nil for an image without such a loader (static
// programs only).
func startupFiles(t *index.Tree, arch string, env []string) []*index.Node {
	machine, interps := loaderPaths(arch)
	for _, interp := range interps {
		if n, ok := resolvePath(t, interp); !ok || n.Type != index.TypeReg {
			continue
		}
		info := &elfInfo{machine: machine, interp: interp}
		if !strings.Contains(interp, "musl") {
			info.needed = []string{"libc.so.6"}
		}
		files := neededFiles(t, "", info)
		if n, ok := resolvePath(t, "/etc/localtime"); ok && n.Type == index.TypeReg {
			files = appendNew(files, n)
		}
		if !strings.Contains(interp, "musl") {
			files = appendNew(files, localeFiles(t, machine, env)...)
		}
		return files
	}
	return nil
}
