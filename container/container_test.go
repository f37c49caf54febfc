package container

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseBind(t *testing.T) {
	cases := []struct {
		in   string
		want Bind
		ok   bool
	}{
		{"/data:/mnt/data", Bind{Source: "/data", Target: "/mnt/data"}, true},
		{"/data:/mnt/data:ro", Bind{Source: "/data", Target: "/mnt/data", ReadOnly: true}, true},
		{"/data:/mnt/data:rw", Bind{Source: "/data", Target: "/mnt/data"}, true},
		{"/data:/mnt/data:xx", Bind{}, false},
		{"/data", Bind{}, false},
		{":/x", Bind{}, false},
		{"/data:relative", Bind{}, false},
		{"/a:/b:ro:extra", Bind{}, false},
	}
	for _, c := range cases {
		got, err := ParseBind(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("ParseBind(%q) = %+v, %v; want %+v, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("passwd", "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1000::/home/app:/bin/sh\nodd:x:abc:1::/:/bin/sh\n")
	write("group", "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root\n")
	cases := []struct {
		spec string
		want User
		ok   bool
	}{
		{"", User{UID: 0, GID: 0, Groups: []uint32{10}, Home: "/root"}, true},
		{"app", User{UID: 1000, GID: 1000, Groups: []uint32{50}, Home: "/home/app"}, true},
		{"1000", User{UID: 1000, GID: 1000, Groups: []uint32{50}, Home: "/home/app"}, true},
		{"app:staff", User{UID: 1000, GID: 50, Home: "/home/app"}, true},
		{"app:7", User{UID: 1000, GID: 7, Groups: []uint32{50}, Home: "/home/app"}, true},
		{"4242", User{UID: 4242, GID: 0, Home: "/"}, true},
		{"4242:4343", User{UID: 4242, GID: 4343, Home: "/"}, true},
		{"nobody", User{}, false},
		{"app:nogroup", User{}, false},
		{"odd", User{}, false},
	}
	for _, c := range cases {
		got, err := ResolveUser(root, c.spec)
		if (err == nil) != c.ok || (c.ok && !reflect.DeepEqual(got, c.want)) {
			t.Errorf("ResolveUser(%q) = %+v, %v; want %+v, ok %v", c.spec, got, err, c.want, c.ok)
		}
	}
}

// TestResolveUserStaysInRoot: a symlinked /etc/passwd pointing out of the
// root is resolved inside it.
func TestResolveUserStaysInRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(outside, []byte("evil:x:0:0::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveUser(root, "evil"); err == nil {
		t.Error("a symlink out of the root was followed")
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	noexec := filepath.Join(dir, "data")
	if err := os.WriteFile(noexec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/nonexistent:" + dir}
	if p, _, err := lookPath("tool", env); err != nil || p != exe {
		t.Errorf("lookPath(tool) = %q, %v", p, err)
	}
	if _, code, err := lookPath("missing", env); err == nil || code != ExitNotFound {
		t.Errorf("lookPath(missing): code %d, %v", code, err)
	}
	if _, code, err := lookPath("data", env); err == nil || code != ExitCannotRun {
		t.Errorf("lookPath(data): code %d, %v", code, err)
	}
	if p, _, err := lookPath("./rel/x", env); err != nil || p != "./rel/x" {
		t.Errorf("a path with a slash is used as it is: %q, %v", p, err)
	}
}
