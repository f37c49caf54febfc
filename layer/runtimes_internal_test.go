package layer

import (
	"debug/elf"
	"slices"
	"strings"
	"testing"

	"github.com/lazyroot/lazyroot/index"
)

// runtimeTree is a merged tree of entries laid out by the tests below:
// names ending in "/" are directories, "name -> target" symlinks, the
// rest regular files.
func runtimeTree(t *testing.T, names ...string) *index.Tree {
	t.Helper()
	var ents []index.Entry
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, "/"):
			ents = append(ents, index.Entry{Name: strings.TrimSuffix(n, "/"), Type: index.TypeDir, Mode: 0o755})
		case strings.Contains(n, " -> "):
			name, to, _ := strings.Cut(n, " -> ")
			ents = append(ents, index.Entry{Name: name, Type: index.TypeSymlink, Mode: 0o777, Linkname: to})
		default:
			ents = append(ents, index.Entry{Name: n, Type: index.TypeReg, Mode: 0o644, Size: 1})
		}
	}
	tree, err := index.Merge([]*index.Index{{Layer: "sha256:" + strings.Repeat("b", 64), Format: index.FormatTar, Entries: ents}})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func nodeNames(ns []*index.Node) []string {
	var names []string
	for _, n := range ns {
		names = append(names, n.Name)
	}
	return names
}

// TestLocaleFiles: the files of the locale an image's environment names
// and of C.UTF-8, found under the C library's normalized codeset name,
// with the alias file and the converters' cache; nothing for a built-in
// locale alone or an image without locales.
func TestLocaleFiles(t *testing.T) {
	tree := runtimeTree(t, "usr/", "usr/lib/", "usr/lib/locale/", "usr/lib/locale/C.utf8/",
		"usr/lib/locale/C.utf8/LC_CTYPE", "usr/lib/locale/C.utf8/LC_TIME", "usr/lib/locale/C.utf8/LC_MESSAGES/",
		"usr/lib/locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES",
		"usr/lib/locale/de_DE.utf8/", "usr/lib/locale/de_DE.utf8/LC_CTYPE",
		"usr/lib/locale/fr_FR.iso88591/", "usr/lib/locale/fr_FR.iso88591/LC_CTYPE",
		"usr/lib/x86_64-linux-gnu/", "usr/lib/x86_64-linux-gnu/gconv/", "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
		"usr/share/", "usr/share/locale/", "usr/share/locale/locale.alias", "lib -> usr/lib")
	cutf8 := []string{"usr/lib/locale/C.utf8/LC_CTYPE", "usr/lib/locale/C.utf8/LC_MESSAGES/SYS_LC_MESSAGES", "usr/lib/locale/C.utf8/LC_TIME"}
	tail := []string{"usr/share/locale/locale.alias", "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache"}
	for _, tc := range []struct {
		name string
		tree *index.Tree
		env  []string
		want []string
	}{
		{"no locale set", tree, nil, slices.Concat(cutf8, tail)},
		{"LANG", tree, []string{"PATH=/bin", "LANG=de_DE.UTF-8"}, slices.Concat([]string{"usr/lib/locale/de_DE.utf8/LC_CTYPE"}, cutf8, tail)},
		{"LC_ALL over LANG", tree, []string{"LANG=de_DE.UTF-8", "LC_ALL=fr_FR.ISO-8859-1"}, slices.Concat([]string{"usr/lib/locale/fr_FR.iso88591/LC_CTYPE"}, cutf8, tail)},
		{"C", tree, []string{"LANG=C"}, slices.Concat(cutf8, tail)},
		{"missing locale", tree, []string{"LANG=ja_JP.UTF-8"}, slices.Concat(cutf8, tail)},
		{"a path is not looked up", tree, []string{"LANG=../../etc"}, slices.Concat(cutf8, tail)},
		{"nor a parent", tree, []string{"LANG=.."}, slices.Concat(cutf8, tail)},
		{"nor the locale directory", tree, []string{"LC_ALL=."}, slices.Concat(cutf8, tail)},
		{"no locales", runtimeTree(t, "usr/", "usr/share/", "usr/share/locale/", "usr/share/locale/locale.alias"), []string{"LANG=C.UTF-8"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := nodeNames(localeFiles(tc.tree, elf.EM_X86_64, tc.env)); !slices.Equal(got, tc.want) {
				t.Errorf("locale files %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNormalizeCodeset(t *testing.T) {
	for in, want := range map[string]string{
		"C.UTF-8": "C.utf8", "en_US.UTF-8@euro": "en_US.utf8@euro", "fr_FR.ISO-8859-1": "fr_FR.iso88591",
		"ja_JP.eucJP": "ja_JP.eucjp", "ru_RU.1251": "ru_RU.iso1251", "de_DE": "de_DE", "C": "C",
	} {
		if got := normalizeCodeset(in); got != want {
			t.Errorf("normalizeCodeset(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPythonStartFiles: a CPython interpreter's start-up byte code, under
// the library of its own prefix, with the site modules that 3.11 froze
// only before 3.11; nothing for another program.
func TestPythonStartFiles(t *testing.T) {
	lib := func(prefix, v, tag string, mods ...string) []string {
		var names []string
		for _, m := range mods {
			names = append(names, prefix+"/lib/python"+v+"/"+m+".cpython-"+tag+".pyc")
		}
		return names
	}
	dirs := []string{"usr/", "usr/bin/", "usr/lib/", "usr/local/", "usr/local/bin/", "usr/local/lib/"}
	var ents []string
	ents = append(ents, dirs...)
	for _, p := range []struct{ prefix, v, tag string }{{"usr", "3.11", "311"}, {"usr/local", "3.9", "39"}} {
		ents = append(ents, p.prefix+"/lib/python"+p.v+"/", p.prefix+"/lib/python"+p.v+"/__pycache__/",
			p.prefix+"/lib/python"+p.v+"/encodings/", p.prefix+"/lib/python"+p.v+"/encodings/__pycache__/", p.prefix+"/bin/python"+p.v)
		ents = append(ents, lib(p.prefix, p.v, p.tag, "encodings/__pycache__/__init__", "encodings/__pycache__/aliases",
			"encodings/__pycache__/utf_8", "encodings/__pycache__/latin_1", "__pycache__/site", "__pycache__/os", "__pycache__/json")...)
	}
	ents = append(ents, "usr/bin/perl5.36", "usr/bin/python3.12")
	tree := runtimeTree(t, ents...)
	for _, tc := range []struct {
		prog string
		want []string
	}{
		{"usr/bin/python3.11", lib("usr", "3.11", "311", "encodings/__pycache__/__init__", "encodings/__pycache__/aliases", "encodings/__pycache__/utf_8")},
		{"usr/local/bin/python3.9", lib("usr/local", "3.9", "39", "encodings/__pycache__/__init__", "encodings/__pycache__/aliases",
			"encodings/__pycache__/utf_8", "__pycache__/site", "__pycache__/os")},
		{"usr/bin/python3.12", nil}, // its library is not there
		{"usr/bin/perl5.36", nil},
	} {
		if got := nodeNames(pythonStartFiles(tree, tc.prog)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: start files %q, want %q", tc.prog, got, tc.want)
		}
	}
	for _, bad := range []string{"python3", "python", "python3.", "python.11", "python3.x", "python2.7", "python3.11-config", "python+3.1", "python3.+1"} {
		if _, _, ok := pythonVersion(bad); ok {
			t.Errorf("pythonVersion(%q) parsed", bad)
		}
	}
}
