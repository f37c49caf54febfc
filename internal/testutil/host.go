package testutil

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// HostBinaries returns the entries of a small root file system made of
// this machine's own (Debian) programs: each program named, the shared
// libraries ldd lists for it, the symlinks on the way to each, the
// usr-merge links (bin, lib, lib64, sbin) and a minimal /etc. It skips the
// test if a program is missing.
func HostBinaries(t testing.TB, programs ...string) []Entry {
	t.Helper()
	files := map[string]Entry{}
	var addPath func(p string, depth int)
	addPath = func(p string, depth int) {
		if depth > 16 {
			t.Fatalf("host binaries: too many links at %s", p)
		}
		p = usrPath(filepath.Clean(p))
		name := strings.TrimPrefix(p, "/")
		if _, ok := files[name]; ok {
			return
		}
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatalf("host binaries: %v", err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			target, err := os.Readlink(p)
			if err != nil {
				t.Fatalf("host binaries: %v", err)
			}
			files[name] = Entry{Name: name, Type: tar.TypeSymlink, Linkname: target}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(p), target)
			}
			addPath(target, depth+1)
			return
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("host binaries: %v", err)
		}
		files[name] = Entry{Name: name, Content: b, Mode: int64(fi.Mode().Perm())}
	}
	libRe := regexp.MustCompile(`(/[^ \t]+) \(0x`)
	for _, prog := range programs {
		p, err := exec.LookPath(prog)
		if err != nil {
			t.Skipf("host binaries: %s not installed: %v", prog, err)
		}
		addPath(p, 0)
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			continue // static
		}
		for _, m := range libRe.FindAllStringSubmatch(string(out), -1) {
			addPath(m[1], 0)
		}
	}
	dirs := map[string]bool{}
	for name := range files {
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	var entries []Entry
	for d := range dirs {
		entries = append(entries, Entry{Name: d, Type: tar.TypeDir, Mode: 0o755})
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		entries = append(entries, Entry{Name: l, Type: tar.TypeSymlink, Linkname: "usr/" + l})
		if !dirs["usr/"+l] {
			entries = append(entries, Entry{Name: "usr/" + l, Type: tar.TypeDir, Mode: 0o755})
		}
	}
	for _, f := range files {
		entries = append(entries, f)
	}
	entries = append(entries,
		Entry{Name: "etc", Type: tar.TypeDir, Mode: 0o755},
		Entry{Name: "etc/passwd", Content: []byte("root:x:0:0:root:/root:/bin/bash\njob:x:1000:1000:job:/home/job:/bin/bash\n")},
		Entry{Name: "etc/group", Content: []byte("root:x:0:\njob:x:1000:\nstaff:x:50:job\n")},
		Entry{Name: "tmp", Type: tar.TypeDir, Mode: 0o1777},
		Entry{Name: "root", Type: tar.TypeDir, Mode: 0o700},
		Entry{Name: "home", Type: tar.TypeDir, Mode: 0o755},
		Entry{Name: "home/job", Type: tar.TypeDir, Mode: 0o755, UID: 1000, GID: 1000},
	)
	// Parents before children, as image builders write them.
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries
}

// usrPath resolves the usr-merge links at the top of p (/bin/x is
// /usr/bin/x), as the image HostBinaries builds has them.
func usrPath(p string) string {
	for _, l := range []string{"/bin/", "/lib/", "/lib64/", "/sbin/"} {
		if strings.HasPrefix(p, l) {
			if fi, err := os.Lstat(strings.TrimSuffix(l, "/")); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				return "/usr" + p
			}
		}
	}
	return p
}
