package index

import (
	"fmt"
	"path"
	"sort"
	"strings"
)

// Overlay markers in layer tars.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
)

// Node is one inode of a merged tree. Hardlinked names share one Node.
type Node struct {
	// Entry holds the metadata and, for regular files, the chunks. Its Name
	// is the path the inode had in its layer.
	Entry
	// Layer is the position, base first, of the layer whose blob holds
	// the chunks.
	Layer int
	// Ino numbers the inode, from 1 (the root); stable for one tree.
	Ino uint64
	// Nlink is the number of names (files) or 2 + subdirectories (dirs).
	Nlink uint32
	// Children maps names to nodes, for directories.
	Children map[string]*Node
}

// Names returns the children's names in byte order.
func (n *Node) Names() []string {
	names := make([]string, 0, len(n.Children))
	for name := range n.Children {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Tree is the merged view of a layer stack.
type Tree struct {
	// Root is the root directory.
	Root *Node
	// Inodes and Bytes count distinct inodes and regular file bytes.
	Inodes uint64
	Bytes  int64
}

// Lookup returns the node at a slash-separated path ("" or "/" is the
// root), without following symlinks.
func (t *Tree) Lookup(p string) (*Node, bool) {
	name, err := CleanName(p)
	if err != nil {
		return nil, false
	}
	return lookup(t.Root, name)
}

func lookup(root *Node, name string) (*Node, bool) {
	n := root
	if name == "" {
		return n, true
	}
	for _, part := range strings.Split(name, "/") {
		if n.Type != TypeDir {
			return nil, false
		}
		c, ok := n.Children[part]
		if !ok {
			return nil, false
		}
		n = c
	}
	return n, true
}

// Merge applies layers, base first, with OCI overlay semantics: ".wh.NAME"
// removes NAME from lower layers, ".wh..wh..opq" hides every lower entry of
// its directory, a later entry replaces an earlier one (directories keep
// their children when replaced by a directory), missing parents are created
// as directories, and hardlinks share the Node of their target.
func Merge(layers []*Index) (*Tree, error) {
	root := &Node{Entry: Entry{Type: TypeDir, Mode: 0755}, Children: map[string]*Node{}}
	for i, x := range layers {
		if err := applyLayer(root, i, x); err != nil {
			return nil, fmt.Errorf("merge layer %d (%s): %w", i, x.Layer, err)
		}
	}
	t := &Tree{Root: root}
	t.number()
	return t, nil
}

func applyLayer(root *Node, layer int, x *Index) error {
	// Whiteouts and opaque markers hide lower layers only, so apply them
	// all before adding any entry of this layer.
	var entries []*Entry
	for i := range x.Entries {
		e := &x.Entries[i]
		dir, base := path.Split(e.Name)
		dir = strings.TrimSuffix(dir, "/")
		switch {
		case base == opaqueMarker:
			if d := resolveDir(root, dir, false); d != nil {
				clear(d.Children)
			}
		case strings.HasPrefix(base, whiteoutMeta):
			// Other ".wh..wh." names are overlay bookkeeping, not files.
		case strings.HasPrefix(base, whiteoutPrefix):
			if d := resolveDir(root, dir, false); d != nil {
				delete(d.Children, strings.TrimPrefix(base, whiteoutPrefix))
			}
		default:
			entries = append(entries, e)
		}
	}
	for _, e := range entries {
		if err := addEntry(root, layer, e); err != nil {
			return err
		}
	}
	return nil
}

func addEntry(root *Node, layer int, e *Entry) error {
	if e.Name == "" {
		if e.Type != TypeDir {
			return fmt.Errorf("entry %q: %w: the root must be a directory, not a %s", e.Name, ErrMalformed, e.Type)
		}
		root.Entry = dirEntry(e)
		return nil
	}
	dir, base := path.Split(e.Name)
	parent := resolveDir(root, strings.TrimSuffix(dir, "/"), true)
	old := parent.Children[base]
	switch {
	case e.Type == TypeHardlink:
		target, ok := lookupFollow(root, e.Linkname)
		if !ok {
			return fmt.Errorf("hardlink %q: %w: target %q does not exist", e.Name, ErrMalformed, e.Linkname)
		}
		if target.Type == TypeDir {
			return fmt.Errorf("hardlink %q: %w: target %q is a directory", e.Name, ErrMalformed, e.Linkname)
		}
		parent.Children[base] = target
	case e.Type == TypeDir && old != nil && old.Type == TypeDir:
		old.Entry = dirEntry(e)
	case e.Type == TypeDir:
		parent.Children[base] = &Node{Entry: dirEntry(e), Children: map[string]*Node{}}
	default:
		parent.Children[base] = &Node{Entry: *e, Layer: layer}
	}
	return nil
}

// dirEntry copies a directory's metadata; a directory has no content.
func dirEntry(e *Entry) Entry {
	d := *e
	d.Size, d.Chunks = 0, nil
	return d
}

// maxSymlinkHops bounds the symlinks followed to find one directory.
const maxSymlinkHops = 40

// resolveDir returns the directory at name, following symlinks met on the
// way inside the tree (an absolute target starts at the root, ".." stops at
// the root), as extracting a tar into a real root does: an upper layer's
// "lib/x" lands in "usr/lib/x" when a lower layer made "lib" a symlink to
// "usr/lib". With create, missing directories are made and non-directories
// replaced; without it, nil is returned when name is not a directory.
func resolveDir(root *Node, name string, create bool) *Node {
	var parts []string
	if name != "" {
		parts = strings.Split(name, "/")
	}
	n, cur, hops := root, []string{}, 0
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		c, ok := n.Children[part]
		if ok && c.Type == TypeSymlink && hops < maxSymlinkHops {
			hops++
			target := c.Linkname
			if !strings.HasPrefix(target, "/") {
				target = strings.Join(cur, "/") + "/" + target
			}
			if clean := strings.TrimPrefix(path.Clean("/"+target), "/"); clean != "" {
				parts = append(strings.Split(clean, "/"), parts...)
			}
			n, cur = root, cur[:0]
			continue
		}
		if !ok || c.Type != TypeDir {
			if !create {
				return nil
			}
			c = &Node{Entry: Entry{Name: path.Join(append(cur, part)...), Type: TypeDir, Mode: 0755}, Children: map[string]*Node{}}
			n.Children[part] = c
		}
		n, cur = c, append(cur, part)
	}
	return n
}

// lookupFollow finds name as a tar extraction would: symlinks in its
// parents are followed, the last component is not.
func lookupFollow(root *Node, name string) (*Node, bool) {
	if name == "" {
		return root, true
	}
	dir, base := path.Split(name)
	d := resolveDir(root, strings.TrimSuffix(dir, "/"), false)
	if d == nil {
		return nil, false
	}
	c, ok := d.Children[base]
	return c, ok
}

// number assigns inode numbers and link counts and totals the tree.
func (t *Tree) number() {
	t.Root.Nlink = 0
	var walk func(n *Node)
	walk = func(n *Node) {
		t.Inodes++
		n.Ino = t.Inodes
		if n.Type == TypeReg {
			t.Bytes += n.Size
		}
		if n.Type != TypeDir {
			return
		}
		n.Nlink = 2
		for _, name := range n.Names() {
			c := n.Children[name]
			if c.Type == TypeDir {
				n.Nlink++
				walk(c)
				continue
			}
			if c.Ino == 0 {
				c.Nlink = 0
				walk(c)
			}
			c.Nlink++
		}
	}
	walk(t.Root)
}
