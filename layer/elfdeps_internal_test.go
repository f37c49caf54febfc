package layer

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/lazyroot/lazyroot/index"
)

func readerOf(b []byte) func(p []byte, off int64) error {
	return func(p []byte, off int64) error {
		if off < 0 || off+int64(len(p)) > int64(len(b)) {
			return errors.New("read past the end")
		}
		copy(p, b[off:])
		return nil
	}
}

// TestELFDeps reads the needs of real Debian binaries and refuses
// malformed ones without panicking.
func TestELFDeps(t *testing.T) {
	env, err := os.ReadFile("/usr/bin/env")
	if err != nil || !bytes.HasPrefix(env, []byte(elf.ELFMAG)) {
		t.Skipf("no dynamically linked /usr/bin/env: %v", err)
	}
	info, err := elfDeps(readerOf(env), int64(len(env)))
	if errors.Is(err, errNotELF) {
		t.Skip("/usr/bin/env is not a 64-bit ELF file")
	}
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info.interp, "/ld-linux") {
		t.Skipf("/usr/bin/env is not a glibc program (interpreter %q)", info.interp)
	}
	if !slices.Contains(info.needed, "libc.so.6") {
		t.Errorf("/usr/bin/env: needs %q; want libc.so.6", info.needed)
	}

	for _, tc := range []struct {
		name string
		mod  func(b []byte) []byte
	}{
		{"not elf", func(b []byte) []byte {
			return []byte("#!/bin/sh\necho hello, this is longer than an ELF header......\n")
		}},
		{"truncated", func(b []byte) []byte { return b[:100] }},
		{"program headers past the end", func(b []byte) []byte { b[32], b[33], b[34], b[35] = 0xff, 0xff, 0xff, 0x7f; return b }},
		{"too many program headers", func(b []byte) []byte { b[56], b[57] = 0xff, 0xff; return b }},
		{"32-bit", func(b []byte) []byte { b[elf.EI_CLASS] = byte(elf.ELFCLASS32); return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mod(bytes.Clone(env))
			if info, err := elfDeps(readerOf(b), int64(len(b))); err == nil {
				t.Errorf("got %+v, want an error", info)
			}
		})
	}
}

// TestNeededFiles resolves a program's needs in a merged tree laid out as
// Debian's, through directory and file symlinks.
func TestNeededFiles(t *testing.T) {
	dir := func(name string) index.Entry { return index.Entry{Name: name, Type: index.TypeDir, Mode: 0o755} }
	reg := func(name string) index.Entry {
		return index.Entry{Name: name, Type: index.TypeReg, Mode: 0o755, Size: 1}
	}
	link := func(name, to string) index.Entry {
		return index.Entry{Name: name, Type: index.TypeSymlink, Mode: 0o777, Linkname: to}
	}
	x := &index.Index{Layer: "sha256:" + string(bytes.Repeat([]byte("a"), 64)), Format: index.FormatTar, Entries: []index.Entry{
		dir("usr"), dir("usr/bin"), dir("usr/lib"), dir("usr/lib/x86_64-linux-gnu"), dir("etc"), dir("opt"), dir("opt/app"), dir("opt/app/lib"),
		link("lib", "usr/lib"), link("lib64", "/usr/lib64"), dir("usr/lib64"),
		link("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
		reg("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), reg("usr/lib/x86_64-linux-gnu/libc.so.6"),
		link("usr/lib/x86_64-linux-gnu/libz.so.1", "libz.so.1.2.13"), reg("usr/lib/x86_64-linux-gnu/libz.so.1.2.13"),
		reg("opt/app/lib/libown.so"), reg("opt/app/run"), reg("etc/ld.so.cache"), reg("usr/bin/env"),
	}}
	tree, err := index.Merge([]*index.Index{x})
	if err != nil {
		t.Fatal(err)
	}
	info := &elfInfo{machine: elf.EM_X86_64, interp: "/lib64/ld-linux-x86-64.so.2",
		needed: []string{"libown.so", "libz.so.1", "libc.so.6", "libmissing.so.1"}, runpath: []string{"$ORIGIN/lib"}}
	var got []string
	for _, n := range neededFiles(tree, "opt/app/run", info) {
		got = append(got, n.Name)
	}
	want := []string{"usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "etc/ld.so.cache", "opt/app/lib/libown.so",
		"usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "usr/lib/x86_64-linux-gnu/libc.so.6"}
	if !slices.Equal(got, want) {
		t.Errorf("needed files %q, want %q", got, want)
	}
	// A symlink loop resolves to nothing.
	loop := &index.Index{Layer: x.Layer, Format: index.FormatTar, Entries: []index.Entry{link("a", "b"), link("b", "a")}}
	if tree, err := index.Merge([]*index.Index{loop}); err != nil {
		t.Fatal(err)
	} else if n, ok := resolvePath(tree, "/a/x"); ok {
		t.Errorf("a symlink loop resolved to %+v", n)
	}
}
