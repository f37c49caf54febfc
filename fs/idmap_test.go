package fs_test

import (
	"path/filepath"
	"syscall"
	"testing"

	"github.com/lazyroot/lazyroot/fs"
	"github.com/lazyroot/lazyroot/internal/testutil"
)

func TestParseIDMap(t *testing.T) {
	cases := []struct {
		specs   []string
		ok      bool
		in, out uint32
	}{
		{nil, true, 1000, 1000},
		{[]string{"0:100000:65536"}, true, 0, 100000},
		{[]string{"0:100000:65536"}, true, 1000, 101000},
		{[]string{"0:100000:65536"}, true, 65536, 65534},
		{[]string{"0:5000:1", "1:200000:999"}, true, 0, 5000},
		{[]string{"0:5000:1", "1:200000:999"}, true, 2, 200001},
		{[]string{"0:5000:1", "1:200000:999"}, true, 1000, 65534},
		{[]string{"0:1:0"}, false, 0, 0},
		{[]string{"0:1"}, false, 0, 0},
		{[]string{"a:1:1"}, false, 0, 0},
		{[]string{"-1:1:1"}, false, 0, 0},
		{[]string{"0:100:10", "5:200:10"}, false, 0, 0},
		{[]string{"0:100:10", "20:105:10"}, false, 0, 0},
		{[]string{"4294967295:0:2"}, false, 0, 0},
	}
	for _, c := range cases {
		m, err := fs.ParseIDMap(c.specs)
		if (err == nil) != c.ok {
			t.Errorf("ParseIDMap(%q): err %v, want ok %v", c.specs, err, c.ok)
			continue
		}
		if c.ok {
			if got := m.Map(c.in); got != c.out {
				t.Errorf("ParseIDMap(%q).Map(%d) = %d, want %d", c.specs, c.in, got, c.out)
			}
		}
	}
}

func TestMountShowsMappedOwners(t *testing.T) {
	requireFUSE(t)
	reg := testutil.NewRegistry(t)
	ref, _ := pushStack(t, reg, "idmap:v1", []testutil.Format{testutil.Gzip, testutil.Gzip, testutil.Gzip})
	uids, _ := fs.ParseIDMap([]string{"0:100000:1000"})
	gids, _ := fs.ParseIDMap([]string{"0:200000:65536"})
	dir, _ := mountImage(t, ref, func(r *fs.Root) { r.MapIDs(uids, gids) })
	for _, c := range []struct {
		path     string
		uid, gid uint32
	}{
		{"etc/passwd", 100000, 200000},
		{"etc/shadow", 100000, 200042},
		{"home/user", 65534, 201000}, // uid 1000 is past the uid range
	} {
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, c.path), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != c.uid || st.Gid != c.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", c.path, st.Uid, st.Gid, c.uid, c.gid)
		}
	}
}
