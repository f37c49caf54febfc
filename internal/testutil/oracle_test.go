package testutil

import (
	"archive/tar"
	"maps"
	"runtime"
	"slices"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// threeLayers is a base, an update with a whiteout, an opaque directory, a
// file replaced by a directory and a replaced hardlink target, and a top
// layer with special files. Names are spelled in several ways on purpose.
func threeLayers() [][]Entry {
	return [][]Entry{{
		{Name: "./", Type: tar.TypeDir},
		{Name: "./etc/", Type: tar.TypeDir},
		{Name: "./etc/passwd", Content: []byte("root:x:0:0::/root:/bin/sh\n")},
		{Name: "./etc/hosts", Content: []byte("127.0.0.1 localhost\n")},
		{Name: "opt", Type: tar.TypeDir},
		{Name: "opt/a", Content: []byte("a")},
		{Name: "opt/b/", Type: tar.TypeDir},
		{Name: "opt/b/c", Content: []byte("c")},
		{Name: "data", Content: []byte("old data")},
		{Name: "bin/", Type: tar.TypeDir},
		{Name: "bin/tool", Content: []byte("tool v1"), Mode: 0o4755},
		{Name: "bin/tool-link", Type: tar.TypeLink, Linkname: "bin/tool"},
		{Name: "keep", Content: []byte("keep"), UID: 7, GID: 8},
		{Name: "./keep-link", Type: tar.TypeLink, Linkname: "./keep"},
	}, {
		{Name: "etc/.wh.hosts"},
		{Name: "opt/", Type: tar.TypeDir, Mode: 0o700},
		{Name: "opt/.wh..wh..opq"},
		{Name: "opt/new", Content: []byte("new")},
		{Name: "data/", Type: tar.TypeDir},
		{Name: "data/x", Content: []byte("x")},
		{Name: "bin/tool", Content: []byte("tool v2"), Mode: 0o755},
	}, {
		{Name: "usr/lib/", Type: tar.TypeDir},
		{Name: "usr/lib/libfoo.so.1", Content: []byte("ELF")},
		{Name: "usr/lib/libfoo.so", Type: tar.TypeSymlink, Linkname: "libfoo.so.1"},
		{Name: "usr/lib/libfoo-hard", Type: tar.TypeLink, Linkname: "usr/lib/libfoo.so.1"},
		{Name: "dev/", Type: tar.TypeDir},
		{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		{Name: "dev/fifo", Type: tar.TypeFifo},
		{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		{Name: "etc/attr", Content: []byte("attr"), Xattrs: map[string]string{"user.test": "v"}},
		{Name: "late", Content: []byte("late"), ModTime: time.Date(2030, 5, 6, 7, 8, 9, 500, time.UTC)},
	}}
}

func threeLayerImage(t *testing.T, formats ...Format) v1.Image {
	t.Helper()
	var layers []v1.Layer
	var anns []map[string]string
	for i, entries := range threeLayers() {
		l, ann := Layer(t, Tar(t, entries), formats[i%len(formats)])
		layers = append(layers, l)
		anns = append(anns, ann)
	}
	return Image(t, layers, anns)
}

func TestOracle(t *testing.T) {
	tree := Oracle(t, threeLayerImage(t, Gzip, Zstd, Uncompressed))
	wantPaths := []string{
		"/", "/bin", "/bin/tool", "/bin/tool-link", "/data", "/data/x",
		"/dev", "/dev/fifo", "/dev/null", "/etc", "/etc/attr", "/etc/passwd",
		"/keep", "/keep-link", "/late", "/opt", "/opt/new", "/tmp",
		"/usr/lib", "/usr/lib/libfoo-hard", "/usr/lib/libfoo.so", "/usr/lib/libfoo.so.1",
	}
	if got := slices.Sorted(maps.Keys(tree)); !slices.Equal(got, wantPaths) {
		t.Fatalf("paths:\n got %q\nwant %q", got, wantPaths)
	}
	for p, n := range tree {
		if n.Path != p {
			t.Errorf("%s: Path %q", p, n.Path)
		}
	}

	check := func(p string, ok bool, what string) {
		t.Helper()
		if !ok {
			t.Errorf("%s: %s; node %+v", p, what, tree[p])
		}
	}
	check("/opt", tree["/opt"].Mode == 0o700 && tree["/opt"].Type == tar.TypeDir, "upper directory's mode 0700")
	check("/data", tree["/data"].Type == tar.TypeDir, "file replaced by a directory")
	check("/tmp", tree["/tmp"].Mode == 0o1777, "sticky mode 01777")
	check("/bin/tool", tree["/bin/tool"].SHA256 == sha256Hex([]byte("tool v2")) && tree["/bin/tool"].LinkGroup == "" &&
		tree["/bin/tool"].Mode == 0o755, "replaced by layer 2, not linked")
	// The link keeps the inode it had in layer 1, whose name was since replaced.
	tl := tree["/bin/tool-link"]
	check("/bin/tool-link", tl.Type == tar.TypeReg && tl.SHA256 == sha256Hex([]byte("tool v1")) && tl.Mode == 0o4755 &&
		tl.Size == 7 && tl.LinkGroup != "", "layer 1's setuid tool v1, linked")
	k, kl := tree["/keep"], tree["/keep-link"]
	check("/keep-link", k.LinkGroup != "" && k.LinkGroup == kl.LinkGroup && kl.SHA256 == k.SHA256 &&
		kl.UID == 7 && kl.GID == 8 && kl.Type == tar.TypeReg, "same inode as /keep")
	lf, lh := tree["/usr/lib/libfoo.so.1"], tree["/usr/lib/libfoo-hard"]
	check("/usr/lib/libfoo-hard", lf.LinkGroup != "" && lf.LinkGroup == lh.LinkGroup && lh.SHA256 == sha256Hex([]byte("ELF")),
		"same inode as libfoo.so.1")
	check("/keep", k.LinkGroup != lf.LinkGroup && k.LinkGroup != tl.LinkGroup, "distinct link groups")
	check("/usr/lib/libfoo.so", tree["/usr/lib/libfoo.so"].Type == tar.TypeSymlink &&
		tree["/usr/lib/libfoo.so"].Linkname == "libfoo.so.1", "symlink to libfoo.so.1")
	dn := tree["/dev/null"]
	check("/dev/null", dn.Type == tar.TypeChar && dn.Devmajor == 1 && dn.Devminor == 3 && dn.Mode == 0o666, "char device 1,3")
	check("/dev/fifo", tree["/dev/fifo"].Type == tar.TypeFifo, "fifo")
	check("/etc/attr", tree["/etc/attr"].Xattrs["user.test"] == "v" && len(tree["/etc/attr"].Xattrs) == 1, "xattr user.test=v")
	check("/etc/passwd", tree["/etc/passwd"].ModTime.Equal(DefaultModTime) && tree["/etc/passwd"].Size == 26, "default mtime, size 26")
	check("/late", tree["/late"].ModTime.Equal(time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)), "mtime truncated to seconds")
}

// TestOracleAcrossFormats checks that every layer format yields the same
// tree once eStargz's own files are dropped.
func TestOracleAcrossFormats(t *testing.T) {
	want := Oracle(t, threeLayerImage(t, Uncompressed))
	for _, f := range Formats {
		t.Run(string(f), func(t *testing.T) {
			got := Oracle(t, threeLayerImage(t, f))
			if f == EStargz {
				for _, p := range []string{"/stargz.index.json", "/.no.prefetch.landmark"} {
					if _, ok := got[p]; !ok {
						t.Errorf("%s: missing before DropEStargzMetadata", p)
					}
				}
			}
			CompareTrees(t, want, DropEStargzMetadata(got))
		})
	}
}

func TestImage(t *testing.T) {
	l, ann := Layer(t, Tar(t, sampleEntries()), EStargz)
	img := Image(t, []v1.Layer{l}, []map[string]string{ann})
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("media types %s, %s", m.MediaType, m.Config.MediaType)
	}
	if len(m.Layers) != 1 || !maps.Equal(m.Layers[0].Annotations, ann) {
		t.Errorf("layer descriptors %+v, want annotations %v", m.Layers, ann)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH || !slices.Equal(cf.Config.Cmd, []string{"/bin/sh"}) {
		t.Errorf("config: %s/%s cmd %q", cf.OS, cf.Architecture, cf.Config.Cmd)
	}
	diffID, _ := l.DiffID()
	if len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.DiffIDs[0] != diffID {
		t.Errorf("diff IDs %v, want [%s]", cf.RootFS.DiffIDs, diffID)
	}
}
