package testutil

import (
	"archive/tar"
	"maps"
	"path"
	"slices"
	"strings"
	"testing"
)

// CompareTrees reports with t.Errorf every difference between want (usually
// an Oracle) and got (usually a Walk):
//
//   - paths missing from got, and paths in got that want lacks, except
//     directories that are implicit parents of want entries (their mode is
//     reported with t.Logf);
//   - for each path: type, mode, uid, gid, size, mtime, symlink target,
//     device numbers, xattrs and content sha256;
//   - hardlinks: names that share a LinkGroup in want must share one in got,
//     and names that share one in got must share the same one in want.
func CompareTrees(t testing.TB, want, got map[string]Node) {
	t.Helper()
	implicit := map[string]bool{}
	for p := range want {
		for p != "/" && p != "." {
			p = path.Dir(p)
			implicit[p] = true
		}
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		g, ok := got[p]
		if !ok {
			t.Errorf("%s: missing (want %s)", p, typeName(want[p].Type))
			continue
		}
		compareNode(t, want[p], g)
	}
	for _, p := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[p]; ok {
			continue
		}
		g := got[p]
		if g.Type == tar.TypeDir && implicit[p] {
			t.Logf("%s: implicit parent directory, mode %04o uid %d gid %d", p, g.Mode, g.UID, g.GID)
			continue
		}
		t.Errorf("%s: unexpected %s", p, typeName(g.Type))
	}
	compareLinkGroups(t, want, got)
}

func compareNode(t testing.TB, w, g Node) {
	t.Helper()
	p := w.Path
	if w.Type != g.Type {
		t.Errorf("%s: type %s, want %s", p, typeName(g.Type), typeName(w.Type))
	}
	if w.Mode != g.Mode {
		t.Errorf("%s: mode %04o, want %04o", p, g.Mode, w.Mode)
	}
	if w.UID != g.UID || w.GID != g.GID {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, g.UID, g.GID, w.UID, w.GID)
	}
	if w.Size != g.Size {
		t.Errorf("%s: size %d, want %d", p, g.Size, w.Size)
	}
	if !w.ModTime.Equal(g.ModTime) {
		t.Errorf("%s: mtime %s, want %s", p, g.ModTime.UTC(), w.ModTime.UTC())
	}
	if w.Linkname != g.Linkname {
		t.Errorf("%s: link target %q, want %q", p, g.Linkname, w.Linkname)
	}
	if w.Devmajor != g.Devmajor || w.Devminor != g.Devminor {
		t.Errorf("%s: device %d,%d, want %d,%d", p, g.Devmajor, g.Devminor, w.Devmajor, w.Devminor)
	}
	if w.SHA256 != g.SHA256 {
		t.Errorf("%s: sha256 %s, want %s", p, g.SHA256, w.SHA256)
	}
	for _, k := range slices.Sorted(maps.Keys(w.Xattrs)) {
		gv, ok := g.Xattrs[k]
		switch {
		case !ok:
			t.Errorf("%s: xattr %s missing", p, k)
		case gv != w.Xattrs[k]:
			t.Errorf("%s: xattr %s = %q, want %q", p, k, gv, w.Xattrs[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(g.Xattrs)) {
		if _, ok := w.Xattrs[k]; !ok {
			t.Errorf("%s: unexpected xattr %s = %q", p, k, g.Xattrs[k])
		}
	}
}

// compareLinkGroups checks that hardlink groups map one to one between the
// trees, looking only at names present in both.
func compareLinkGroups(t testing.TB, want, got map[string]Node) {
	t.Helper()
	check := func(from, to map[string]Node, fromName, toName string) {
		groups := map[string][]string{}
		for p, n := range from {
			if _, ok := to[p]; ok && n.LinkGroup != "" {
				groups[n.LinkGroup] = append(groups[n.LinkGroup], p)
			}
		}
		for _, key := range slices.Sorted(maps.Keys(groups)) {
			names := groups[key]
			if len(names) < 2 {
				continue
			}
			slices.Sort(names)
			first := to[names[0]].LinkGroup
			for _, p := range names[1:] {
				if g := to[p].LinkGroup; g == "" || g != first {
					t.Errorf("hardlinks %s: one inode in %s but not in %s (%s: %q, %s: %q)",
						strings.Join(names, " "), fromName, toName, names[0], first, p, g)
					break
				}
			}
		}
	}
	check(want, got, "want", "got")
	check(got, want, "got", "want")
}

func typeName(typ byte) string {
	switch typ {
	case tar.TypeReg:
		return "file"
	case tar.TypeDir:
		return "directory"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeChar:
		return "char device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "fifo"
	case 0:
		return "unknown type"
	}
	return "type " + string(rune(typ))
}
