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
			if d, ok := lookup(root, dir); ok && d.Type == TypeDir {
				clear(d.Children)
			}
		case strings.HasPrefix(base, whiteoutMeta):
			// Other ".wh..wh." names are overlay bookkeeping, not files.
		case strings.HasPrefix(base, whiteoutPrefix):
			if d, ok := lookup(root, dir); ok && d.Type == TypeDir {
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
	parent := mkdirAll(root, strings.TrimSuffix(dir, "/"))
	old := parent.Children[base]
	switch {
	case e.Type == TypeHardlink:
		target, ok := lookup(root, e.Linkname)
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

// mkdirAll returns the directory at name, creating missing directories and
// replacing non-directories on the way, as extracting a tar would.
func mkdirAll(root *Node, name string) *Node {
	n := root
	if name == "" {
		return n
	}
	for _, part := range strings.Split(name, "/") {
		c, ok := n.Children[part]
		if !ok || c.Type != TypeDir {
			c = &Node{Entry: Entry{Name: path.Join(n.Name, part), Type: TypeDir, Mode: 0755}, Children: map[string]*Node{}}
			n.Children[part] = c
		}
		n = c
	}
	return n
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
