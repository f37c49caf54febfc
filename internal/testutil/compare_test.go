package testutil

import (
	"archive/tar"
	"fmt"
	"strings"
	"testing"
	"time"
)

// recordingTB captures what CompareTrees reports instead of failing.
type recordingTB struct {
	testing.TB
	errors, logs []string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recordingTB) Logf(format string, args ...any) {
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func TestCompareTrees(t *testing.T) {
	mtime := time.Unix(1700000000, 0).UTC()
	base := map[string]Node{
		"/etc":        {Path: "/etc", Type: tar.TypeDir, Mode: 0o755, ModTime: mtime},
		"/etc/passwd": {Path: "/etc/passwd", Type: tar.TypeReg, Mode: 0o644, Size: 3, SHA256: "aa", ModTime: mtime},
		"/usr/bin/a":  {Path: "/usr/bin/a", Type: tar.TypeReg, Mode: 0o755, Size: 1, SHA256: "bb", ModTime: mtime, LinkGroup: "w1"},
		"/usr/bin/b":  {Path: "/usr/bin/b", Type: tar.TypeReg, Mode: 0o755, Size: 1, SHA256: "bb", ModTime: mtime, LinkGroup: "w1"},
		"/usr/bin/c":  {Path: "/usr/bin/c", Type: tar.TypeReg, Mode: 0o755, Size: 1, SHA256: "bb", ModTime: mtime},
		"/lib":        {Path: "/lib", Type: tar.TypeSymlink, Mode: 0o777, Linkname: "usr/lib", ModTime: mtime},
		"/x":          {Path: "/x", Type: tar.TypeReg, Mode: 0o644, ModTime: mtime, Xattrs: map[string]string{"user.a": "1"}},
	}
	clone := func(edit func(map[string]Node)) map[string]Node {
		m := map[string]Node{}
		for k, v := range base {
			m[k] = v
		}
		// A Walk has the root and the implicit parents too.
		m["/"] = Node{Path: "/", Type: tar.TypeDir, Mode: 0o700}
		m["/usr"] = Node{Path: "/usr", Type: tar.TypeDir, Mode: 0o755}
		m["/usr/bin"] = Node{Path: "/usr/bin", Type: tar.TypeDir, Mode: 0o755}
		// Group keys differ between trees.
		for _, p := range []string{"/usr/bin/a", "/usr/bin/b"} {
			n := m[p]
			n.LinkGroup = "2049:77"
			m[p] = n
		}
		if edit != nil {
			edit(m)
		}
		return m
	}
	set := func(p string, f func(*Node)) func(map[string]Node) {
		return func(m map[string]Node) {
			n := m[p]
			f(&n)
			m[p] = n
		}
	}
	tests := []struct {
		name string
		got  map[string]Node
		want []string // substrings, one per expected error, in order
	}{
		{"equal", clone(nil), nil},
		{"missing", clone(func(m map[string]Node) { delete(m, "/etc/passwd") }), []string{"/etc/passwd: missing"}},
		{"extra file", clone(set("/new", func(n *Node) { n.Path, n.Type = "/new", tar.TypeReg })), []string{"/new: unexpected file"}},
		{"extra dir", clone(set("/opt", func(n *Node) { n.Path, n.Type = "/opt", tar.TypeDir })), []string{"/opt: unexpected directory"}},
		{"type", clone(set("/lib", func(n *Node) { n.Type = tar.TypeDir })), []string{"/lib: type directory, want symlink"}},
		{"mode", clone(set("/etc", func(n *Node) { n.Mode = 0o2755 })), []string{"/etc: mode 2755, want 0755"}},
		{"owner", clone(set("/etc", func(n *Node) { n.UID = 1 })), []string{"/etc: owner 1:0, want 0:0"}},
		{"size and hash", clone(set("/etc/passwd", func(n *Node) { n.Size, n.SHA256 = 4, "cc" })),
			[]string{"/etc/passwd: size 4, want 3", "/etc/passwd: sha256 cc, want aa"}},
		{"mtime", clone(set("/etc", func(n *Node) { n.ModTime = mtime.Add(time.Second) })), []string{"/etc: mtime"}},
		{"link target", clone(set("/lib", func(n *Node) { n.Linkname = "lib64" })), []string{`/lib: link target "lib64", want "usr/lib"`}},
		{"device", clone(set("/x", func(n *Node) { n.Devmajor = 1 })), []string{"/x: device 1,0, want 0,0"}},
		{"xattr value", clone(set("/x", func(n *Node) { n.Xattrs = map[string]string{"user.a": "2"} })), []string{`/x: xattr user.a = "2", want "1"`}},
		{"xattr missing", clone(set("/x", func(n *Node) { n.Xattrs = nil })), []string{"/x: xattr user.a missing"}},
		{"xattr extra", clone(set("/x", func(n *Node) { n.Xattrs = map[string]string{"user.a": "1", "user.b": ""} })), []string{"/x: unexpected xattr user.b"}},
		{"hardlink split", clone(set("/usr/bin/b", func(n *Node) { n.LinkGroup = "" })), []string{"hardlinks /usr/bin/a /usr/bin/b: one inode in want but not in got"}},
		{"hardlink joined", clone(set("/usr/bin/c", func(n *Node) { n.LinkGroup = "2049:77" })), []string{"hardlinks /usr/bin/a /usr/bin/b /usr/bin/c: one inode in got but not in want"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingTB{TB: t}
			CompareTrees(rec, base, tc.got)
			if len(rec.errors) != len(tc.want) {
				t.Fatalf("errors %q, want %d matching %q", rec.errors, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(rec.errors[i], w) {
					t.Errorf("error %d = %q, want it to contain %q", i, rec.errors[i], w)
				}
			}
			if len(rec.logs) != 3 {
				t.Errorf("logs %q, want the 3 implicit parents", rec.logs)
			}
		})
	}
}
