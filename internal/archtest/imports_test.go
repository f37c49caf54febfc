package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/lazyroot/lazyroot/"

// allowed lists, for each package with a place in the dependency order,
// the project packages it may import. Packages not listed (cmd, bench,
// internal tools and test helpers) may import anything.
var allowed = map[string][]string{
	"index":     {},
	"cache":     {},
	"fetch":     {},
	"layer":     {"index", "cache", "fetch"},
	"fs":        {"index"},
	"container": {},
	"daemon":    {"layer", "fs", "cache", "fetch", "index"},
}

func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", module+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(p.ImportPath, module)
		// A package's own sub-packages share its place in the order.
		name, _, _ = strings.Cut(name, "/")
		ok, ruled := allowed[name]
		if !ruled {
			continue
		}
		seen++
		for _, imp := range p.Imports {
			dep, own := strings.CutPrefix(imp, module)
			if !own {
				continue
			}
			dep, _, _ = strings.Cut(dep, "/")
			permitted := dep == name
			for _, a := range ok {
				permitted = permitted || a == dep
			}
			if !permitted {
				t.Errorf("%s imports %s, against the order in DESIGN.md", name, dep)
			}
		}
	}
	if seen < 5 {
		t.Errorf("checked only %d packages; go list output changed?", seen)
	}
}
