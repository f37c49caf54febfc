package layer

import (
	"debug/elf"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/lazyroot/lazyroot/index"
)

// Besides the loader, two more things read files of their own before a
// job runs a line: the C library, setting up a locale, and a language
// runtime, setting itself up. Which files is fixed by the image (its
// locale settings, its runtime's version), not by the job, so prefetch
// fetches them up front instead of one miss after another.

// Bounds on what localeFiles takes from one locale directory: a locale
// has a dozen categories, the largest (LC_COLLATE of a big locale) about
// 2 MiB.
const (
	maxLocaleDirFiles = 32
	maxLocaleFileSize = 4 << 20
)

// localeFiles returns the files of t that the C library (glibc) reads to
// load the locale env sets (LC_ALL, else LC_CTYPE, else LANG, in "NAME=
// value" form as an image config lists them), and C.UTF-8, the locale
// Python turns the C locale into: each one's directory under
// /usr/lib/locale (a job setting its locale loads every category), then,
// if any was found, the alias file and the codeset converters' cache
// found in the library directories of machine m. A locale the C library
// builds in (C, POSIX) reads nothing, nor does one that is not there or
// is only in the locale archive (/usr/lib/locale/locale-archive, left to
// on-demand reads: it holds every generated locale, megabytes of them).
func localeFiles(t *index.Tree, m elf.Machine, env []string) []*index.Node {
	names := []string{"C.UTF-8"}
	if l := envLocale(env); l != "" && l != "C.UTF-8" {
		names = append([]string{l}, names...)
	}
	var files []*index.Node
	for _, name := range names {
		files = appendNew(files, localeDirFiles(t, name)...)
	}
	if len(files) == 0 {
		return nil
	}
	if n, ok := resolvePath(t, "/usr/share/locale/locale.alias"); ok && n.Type == index.TypeReg {
		files = appendNew(files, n)
	}
	for _, dir := range libraryDirs(m) {
		if n, ok := resolvePath(t, dir+"/gconv/gconv-modules.cache"); ok && n.Type == index.TypeReg {
			files = appendNew(files, n)
			break
		}
	}
	return files
}

// envLocale returns the locale a process started with env loads for its
// character set, or "" for none or one built in.
func envLocale(env []string) string {
	vals := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vals[k] = v
		}
	}
	for _, k := range []string{"LC_ALL", "LC_CTYPE", "LANG"} {
		if v := vals[k]; v != "" {
			// Names the C library would not load from a directory,
			// and none that could walk the tree.
			if v == "C" || v == "POSIX" || v == "." || v == ".." || len(v) > 255 || strings.Contains(v, "/") {
				return ""
			}
			return v
		}
	}
	return ""
}

// localeDirFiles returns the regular files of the directory the C library
// loads locale name from: /usr/lib/locale/NAME, else the same with its
// codeset normalized the way the C library does ("UTF-8" → "utf8").
func localeDirFiles(t *index.Tree, name string) []*index.Node {
	for _, cand := range []string{name, normalizeCodeset(name)} {
		d, ok := resolvePath(t, "/usr/lib/locale/"+cand)
		if !ok || d.Type != index.TypeDir {
			continue
		}
		var files []*index.Node
		var walk func(d *index.Node, depth int)
		walk = func(d *index.Node, depth int) {
			for _, c := range d.Names() {
				n := d.Children[c]
				switch {
				case len(files) >= maxLocaleDirFiles:
					return
				case n.Type == index.TypeReg && n.Size <= maxLocaleFileSize:
					files = append(files, n)
				case n.Type == index.TypeDir && depth == 0: // LC_MESSAGES
					walk(n, depth+1)
				}
			}
		}
		walk(d, 0)
		return files
	}
	return nil
}

// normalizeCodeset returns name (language[_territory][.codeset][@modifier])
// with its codeset in the C library's normal form: letters lowered, digits
// kept, everything else dropped, and "iso" before a codeset of digits only.
func normalizeCodeset(name string) string {
	dot := strings.IndexByte(name, '.')
	if dot < 0 {
		return name
	}
	codeset, mod := name[dot+1:], ""
	if at := strings.IndexByte(codeset, '@'); at >= 0 {
		codeset, mod = codeset[:at], codeset[at:]
	}
	var b strings.Builder
	digitsOnly := true
	for _, r := range codeset {
		switch {
		case r >= 'A' && r <= 'Z':
			b.WriteRune(r + 'a' - 'A')
			digitsOnly = false
		case r >= 'a' && r <= 'z':
			b.WriteRune(r)
			digitsOnly = false
		case r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	norm := b.String()
	if digitsOnly {
		norm = "iso" + norm
	}
	return name[:dot+1] + norm + mod
}

// pythonStartFiles returns the files of t that CPython reads as it starts,
// before any code of the job's, when prog (a path in the tree) is its
// interpreter, named pythonX.Y: the byte code of the encodings package and
// of the codecs the usual file system encodings need, and of Debian's
// sitecustomize; before 3.11, which freezes them into the program, also
// of the modules the site module imports. It is nil for any other
// program, or a Python whose library is not where the program's prefix
// puts it (PREFIX/bin/pythonX.Y → PREFIX/lib/pythonX.Y).
func pythonStartFiles(t *index.Tree, prog string) []*index.Node {
	major, minor, ok := pythonVersion(path.Base(prog))
	if !ok {
		return nil
	}
	lib := "/" + path.Join(path.Dir(path.Dir(prog)), "lib", "python"+strconv.Itoa(major)+"."+strconv.Itoa(minor))
	if d, ok := resolvePath(t, lib); !ok || d.Type != index.TypeDir {
		return nil
	}
	tag := ".cpython-" + strconv.Itoa(major) + strconv.Itoa(minor) + ".pyc"
	names := []string{
		"encodings/__pycache__/__init__", "encodings/__pycache__/aliases", "encodings/__pycache__/utf_8",
		"__pycache__/sitecustomize",
	}
	if major == 3 && minor < 11 {
		for _, m := range []string{"abc", "codecs", "io", "site", "os", "stat", "_collections_abc", "posixpath", "genericpath", "_sitebuiltins", "_bootlocale"} {
			names = append(names, "__pycache__/"+m)
		}
	}
	var files []*index.Node
	for _, name := range names {
		if n, ok := resolvePath(t, lib+"/"+name+tag); ok && n.Type == index.TypeReg {
			files = appendNew(files, n)
		}
	}
	return files
}

// pythonVersion parses a program name "pythonX.Y" (X at least 3; X and
// Y decimal digits).
func pythonVersion(base string) (major, minor int, ok bool) {
	v, ok := strings.CutPrefix(base, "python")
	if !ok {
		return 0, 0, false
	}
	x, y, ok := strings.Cut(v, ".")
	if !ok || !decimal(x) || !decimal(y) || len(x) > 3 || len(y) > 3 {
		return 0, 0, false
	}
	major, _ = strconv.Atoi(x)
	minor, _ = strconv.Atoi(y)
	return major, minor, major >= 3
}

// decimal reports whether s is one or more decimal digits.
func decimal(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// appendNew appends to files those of more it does not hold yet.
func appendNew(files []*index.Node, more ...*index.Node) []*index.Node {
	for _, n := range more {
		if !slices.Contains(files, n) {
			files = append(files, n)
		}
	}
	return files
}

// fetchRuntimeStart fetches, in the background, what the runtime that n
// is (see pythonStartFiles) reads as it starts; n is looked at once, and
// each file fetched once. It returns at once, with the files and their
// bytes counted (ELFFiles, ELFBytes); nothing happens without a merged
// tree, for another program, or once Stop was called.
func (p *Prefetch) fetchRuntimeStart(n *index.Node) {
	if p.opts.Tree == nil {
		return
	}
	if _, seen := p.runtimeSeen.LoadOrStore(n, true); seen {
		return
	}
	files := pythonStartFiles(p.opts.Tree, n.Name)
	if len(files) == 0 {
		return
	}
	pl := newPlan(p.s)
	added := 0
	for _, f := range files {
		if p.planWhole(pl, f) {
			added++
		}
	}
	if pl.dropHeld() == 0 {
		return
	}
	// Claimed at once, so that the interpreter's reads of these files
	// join this fetch rather than make their own. A few small files: no
	// slot to wait for.
	c := claimPlan(pl)
	var planned atomic.Int64 // counted here, before the fetch starts
	for _, b := range c.batches {
		p.elfBytes.Add(b.unitBytes)
	}
	p.elfFiles.Add(int64(added))
	if !p.inLife(func() { p.runClaimedCounting(p.life, c, &planned, &p.elfDone, nil) }) {
		c.release()
		for _, b := range c.batches {
			p.elfDone.Add(b.unitBytes) // none will come: the count settles
		}
	}
}
