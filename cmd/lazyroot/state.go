package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// defaultRoot is where lazyroot keeps its state unless --root says otherwise.
const defaultRoot = "/var/lib/lazyroot"

// mountRecord describes a live mount; its server writes it under
// ROOT/mounts and removes it on exit.
type mountRecord struct {
	Dir    string `json:"dir"`
	Image  string `json:"image"`
	Digest string `json:"digest"`
	PID    int    `json:"pid"`
	Socket string `json:"socket"`
	Log    string `json:"log,omitempty"`
}

// mountID names a mount's files under the state root.
func mountID(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return hex.EncodeToString(sum[:8])
}

func recordPath(root, dir string) string {
	return filepath.Join(root, "mounts", mountID(dir)+".json")
}

func socketPath(root, dir string) string {
	return filepath.Join(root, "mounts", mountID(dir)+".sock")
}

func logPath(root, dir string) string {
	return filepath.Join(root, "logs", mountID(dir)+".log")
}

func writeRecord(root string, r mountRecord) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	p := recordPath(root, r.Dir)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write mount record: %w", err)
	}
	return os.Rename(tmp, p)
}

func readRecord(path string) (*mountRecord, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r := new(mountRecord)
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("mount record %s: %w", path, err)
	}
	return r, nil
}

func listRecords(root string) ([]*mountRecord, error) {
	paths, err := filepath.Glob(filepath.Join(root, "mounts", "*.json"))
	if err != nil {
		return nil, err
	}
	var recs []*mountRecord
	for _, p := range paths {
		if r, err := readRecord(p); err == nil {
			recs = append(recs, r)
		}
	}
	return recs, nil
}

// checkMountpoint requires dir to be an existing, empty directory.
func checkMountpoint(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("mount point %s does not exist", dir)
	}
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", dir)
	}
	if isMounted(dir) {
		return fmt.Errorf("mount point %s is already a mount", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("mount point %s is not empty", dir)
	}
	return nil
}

// mountFSType returns the file system type mounted at dir, or "" if dir is
// not a mount point.
func mountFSType(dir string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	var fstype string
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		fields := strings.Fields(pre)
		if !ok || len(fields) < 5 || unescapeMountinfo(fields[4]) != dir {
			continue
		}
		if f := strings.Fields(post); len(f) > 0 {
			fstype = f[0] // the last mount at dir is the visible one
		}
	}
	return fstype
}

func isMounted(dir string) bool { return mountFSType(dir) != "" }

// isLazyrootMount reports whether the visible mount at dir is ours.
func isLazyrootMount(dir string) bool { return mountFSType(dir) == "fuse.lazyroot" }

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// absDir makes dir absolute and resolves symlinks in it, as the kernel
// does when it records a mount point.
func absDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("directory %q: %w", dir, err)
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real, nil
	}
	return filepath.Clean(abs), nil
}
