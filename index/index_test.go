package index

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"
)

// tarEntry is one entry for makeTar.
type tarEntry struct {
	name, link string
	typ        byte
	mode       int64
	content    string
	xattrs     map[string]string
}

func makeTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.content)),
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX, Devmajor: 1, Devminor: 3}
		if hdr.Typeflag == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Mode == 0 {
			hdr.Mode = 0644
		}
		if hdr.Typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords[xattrPrefix+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.content); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func buildTar(t *testing.T, layer string, chunk int64, entries ...tarEntry) (*Index, []byte) {
	t.Helper()
	raw := makeTar(t, entries...)
	x, err := BuildTar(bytes.NewReader(raw), layer, chunk)
	if err != nil {
		t.Fatalf("BuildTar: %v", err)
	}
	if err := x.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return x, raw
}

func TestCleanName(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		unsafe   bool
	}{
		{"./", "", false},
		{"/", "", false},
		{"./usr/bin/", "usr/bin", false},
		{"usr//lib/./x", "usr/lib/x", false},
		{"../etc/passwd", "", true},
		{"a/../../b", "", true},
		{"a/..", "", true},
	} {
		got, err := CleanName(tc.in)
		if tc.unsafe {
			if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("CleanName(%q) = %q, %v; want ErrUnsafePath", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestBuildTarOffsetsAndChunks(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 1000) // 16000 bytes
	x, raw := buildTar(t, "sha256:l", 4096,
		tarEntry{name: "./", typ: tar.TypeDir, mode: 0755},
		tarEntry{name: "bin/", typ: tar.TypeDir, mode: 0755},
		tarEntry{name: "bin/big", content: big, mode: 04755, xattrs: map[string]string{"security.capability": "\x01\x00"}},
		tarEntry{name: "bin/empty"},
		tarEntry{name: "bin/link", typ: tar.TypeSymlink, link: "big"},
		tarEntry{name: "bin/hard", typ: tar.TypeLink, link: "./bin/big"},
		tarEntry{name: "dev/null", typ: tar.TypeChar, mode: 0666},
		tarEntry{name: "fifo", typ: tar.TypeFifo},
	)
	want := []struct {
		name string
		typ  Type
		size int64
	}{{"", TypeDir, 0}, {"bin", TypeDir, 0}, {"bin/big", TypeReg, 16000}, {"bin/empty", TypeReg, 0},
		{"bin/link", TypeSymlink, 0}, {"bin/hard", TypeHardlink, 0}, {"dev/null", TypeChar, 0}, {"fifo", TypeFifo, 0}}
	if len(x.Entries) != len(want) {
		t.Fatalf("got %d entries, want %d", len(x.Entries), len(want))
	}
	for i, w := range want {
		e := x.Entries[i]
		if e.Name != w.name || e.Type != w.typ || e.Size != w.size {
			t.Errorf("entry %d = %q %s %d; want %q %s %d", i, e.Name, e.Type, e.Size, w.name, w.typ, w.size)
		}
	}
	bigEntry := x.Entries[2]
	if bigEntry.Mode != 04755 || string(bigEntry.Xattrs["security.capability"]) != "\x01\x00" {
		t.Errorf("big: mode %o xattrs %q", bigEntry.Mode, bigEntry.Xattrs)
	}
	if len(bigEntry.Chunks) != 4 {
		t.Fatalf("big has %d chunks, want 4", len(bigEntry.Chunks))
	}
	var got []byte
	for _, c := range bigEntry.Chunks {
		b := raw[c.BlobOffset:c.BlobEnd]
		if sum := sha256.Sum256(b); fmt.Sprintf("sha256:%x", sum) != c.Digest {
			t.Errorf("chunk at %d: digest does not match the bytes at its offset", c.Offset)
		}
		got = append(got, b...)
	}
	if string(got) != big {
		t.Errorf("chunks do not reassemble the content")
	}
	if x.Entries[5].Linkname != "bin/big" {
		t.Errorf("hardlink target %q, want cleaned bin/big", x.Entries[5].Linkname)
	}
	if d := x.Entries[6]; d.Devmajor != 1 || d.Devminor != 3 {
		t.Errorf("device numbers %d,%d", d.Devmajor, d.Devminor)
	}
}

func TestBuildTarRejects(t *testing.T) {
	good := makeTar(t, tarEntry{name: "a", content: strings.Repeat("x", 2000)})
	for _, tc := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"not a tar", bytes.Repeat([]byte("garbage!"), 200), ErrMalformed},
		{"truncated content", good[:512+1000], nil},
		{"path traversal", makeTar(t, tarEntry{name: "../../etc/passwd", content: "x"}), ErrUnsafePath},
		{"hardlink traversal", makeTar(t, tarEntry{name: "a", typ: tar.TypeLink, link: "../x"}), ErrUnsafePath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := BuildTar(bytes.NewReader(tc.raw), "sha256:l", 0)
			if err == nil {
				t.Fatal("BuildTar accepted it")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v; want %v", err, tc.want)
			}
		})
	}
}

// treeDump renders a tree as sorted "path type mode size layer nlink" lines.
func treeDump(t *Tree) string {
	var lines []string
	var walk func(p string, n *Node)
	walk = func(p string, n *Node) {
		shown := p
		if shown == "" {
			shown = "/"
		}
		line := fmt.Sprintf("%s %s %o n%d", shown, n.Type, n.Mode, n.Nlink)
		if n.Type == TypeReg {
			line += fmt.Sprintf(" L%d i%d", n.Layer, n.Ino)
		}
		lines = append(lines, line)
		for _, name := range n.Names() {
			walk(strings.TrimPrefix(p+"/"+name, "/"), n.Children[name])
		}
	}
	walk("", t.Root)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestMerge(t *testing.T) {
	dir := func(name string, mode int64) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: mode} }
	file := func(name string) tarEntry { return tarEntry{name: name, content: name} }
	for _, tc := range []struct {
		name   string
		layers [][]tarEntry
		want   []string // lines expected in the dump (subset check on exact lines)
		absent []string // paths that must not exist
	}{
		{
			name: "whiteout removes lower file and subtree",
			layers: [][]tarEntry{
				{dir("a", 0755), file("a/f"), dir("a/d", 0755), file("a/d/g"), file("keep")},
				{file("a/.wh.f"), file("a/.wh.d")},
			},
			want:   []string{"a dir 755 n2", "keep file 644 n1 L0 i3"},
			absent: []string{"a/f", "a/d", "a/d/g"},
		},
		{
			name: "opaque dir hides lower entries but keeps its own layer's",
			layers: [][]tarEntry{
				{dir("o", 0755), file("o/lower"), dir("o/sub", 0755)},
				{dir("o", 0700), file("o/.wh..wh..opq"), file("o/upper")},
			},
			want:   []string{"o dir 700 n2", "o/upper file 644 n1 L1 i3"},
			absent: []string{"o/lower", "o/sub", "o/.wh..wh..opq"},
		},
		{
			name: "file replaced by dir and dir by file",
			layers: [][]tarEntry{
				{file("x"), dir("y", 0755), file("y/inner")},
				{dir("x", 0750), file("x/child"), file("y")},
			},
			want:   []string{"x dir 750 n2", "x/child file 644 n1 L1 i3", "y file 644 n1 L1 i4"},
			absent: []string{"y/inner"},
		},
		{
			name: "dir over dir keeps lower children",
			layers: [][]tarEntry{
				{dir("d", 0755), file("d/lower")},
				{dir("d", 0711), file("d/upper")},
			},
			want: []string{"d dir 711 n2", "d/lower file 644 n1 L0 i3", "d/upper file 644 n1 L1 i4"},
		},
		{
			name:   "implicit parents and last entry wins",
			layers: [][]tarEntry{{{name: "p/q/r", content: "one"}, {name: "p/q/r", content: "two", mode: 0600}}},
			want:   []string{"p dir 755 n3", "p/q dir 755 n2", "p/q/r file 600 n1 L0 i4"},
		},
		{
			name: "hardlinks share an inode across layers",
			layers: [][]tarEntry{
				{file("t")},
				{{name: "h1", typ: tar.TypeLink, link: "t"}, {name: "h2", typ: tar.TypeLink, link: "h1"}},
			},
			want: []string{"h1 file 644 n3 L0 i2", "h2 file 644 n3 L0 i2", "t file 644 n3 L0 i2"},
		},
		{
			name: "parents that are symlinks are followed inside the tree",
			layers: [][]tarEntry{
				{dir("usr", 0755), dir("usr/lib", 0755), file("usr/lib/a"), {name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
					{name: "lib64", typ: tar.TypeSymlink, link: "/usr/../usr/lib"}, {name: "loop", typ: tar.TypeSymlink, link: "loop"}},
				{file("lib/b"), file("lib64/c"), file("lib/.wh.a"), file("loop/d")},
			},
			want:   []string{"lib symlink 644 n1", "usr/lib/b file 644 n1 L1 i8", "usr/lib/c file 644 n1 L1 i9", "loop dir 755 n2", "loop/d file 644 n1 L1 i5"},
			absent: []string{"usr/lib/a"},
		},
		{
			name: "whiteout in same layer does not hide that layer's entry",
			layers: [][]tarEntry{
				{file("w")},
				{file("w"), file(".wh.w")},
			},
			want: []string{"w file 644 n1 L1 i2"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var xs []*Index
			for i, l := range tc.layers {
				x, _ := buildTar(t, fmt.Sprintf("sha256:%d", i), 0, l...)
				xs = append(xs, x)
			}
			tree, err := Merge(xs)
			if err != nil {
				t.Fatal(err)
			}
			dump := treeDump(tree)
			lines := map[string]bool{}
			for _, l := range strings.Split(dump, "\n") {
				lines[l] = true
			}
			for _, w := range tc.want {
				if !lines[w] {
					t.Errorf("missing %q in\n%s", w, dump)
				}
			}
			for _, p := range tc.absent {
				if _, ok := tree.Lookup(p); ok {
					t.Errorf("%s still exists in\n%s", p, dump)
				}
			}
		})
	}
}

func TestMergeHardlinkToMissingTarget(t *testing.T) {
	x, _ := buildTar(t, "sha256:0", 0, tarEntry{name: "h", typ: tar.TypeLink, link: "nowhere"})
	if _, err := Merge([]*Index{x}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Merge = %v; want ErrMalformed", err)
	}
}

func TestEncodeDecode(t *testing.T) {
	x, _ := buildTar(t, "sha256:abc", 1024,
		tarEntry{name: "f", content: strings.Repeat("z", 5000), xattrs: map[string]string{"user.k": "v"}},
		tarEntry{name: "s", typ: tar.TypeSymlink, link: "f"})
	var buf bytes.Buffer
	if err := x.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	enc := buf.Bytes()
	y, err := Decode(bytes.NewReader(enc))
	if err != nil {
		t.Fatal(err)
	}
	if y.Layer != x.Layer || y.Format != x.Format || len(y.Entries) != 2 || len(y.Entries[0].Chunks) != 5 ||
		y.Entries[0].Chunks[3] != x.Entries[0].Chunks[3] || string(y.Entries[0].Xattrs["user.k"]) != "v" ||
		!y.Entries[0].ModTime.Equal(x.Entries[0].ModTime) {
		t.Errorf("round trip changed the index: %+v", y)
	}
	flip := func(i int) []byte {
		b := bytes.Clone(enc)
		b[i] ^= 0x40
		return b
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"foreign", []byte("{\"layer\":\"x\"} and more bytes to fill"), ErrMalformed},
		{"other version", flip(11), ErrVersion},
		{"damaged payload", flip(30), ErrChecksum},
		{"damaged checksum", flip(len(enc) - 1), ErrChecksum},
		{"truncated", enc[:len(enc)-10], ErrChecksum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(bytes.NewReader(tc.in)); !errors.Is(err, tc.want) {
				t.Errorf("Decode = %v; want %v", err, tc.want)
			}
		})
	}
}
