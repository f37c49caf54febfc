package testutil

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoProjectPackage keeps testutil usable from every package's
// tests: it must not import another lazyroot package.
func TestImportsNoProjectPackage(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	const self = "github.com/lazyroot/lazyroot/internal/testutil"
	for _, pkg := range strings.Fields(string(out)) {
		if pkg != self && (pkg == "github.com/lazyroot/lazyroot" || strings.HasPrefix(pkg, "github.com/lazyroot/lazyroot/")) {
			t.Errorf("testutil imports project package %s", pkg)
		}
	}
}
