package testutil

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Node is one file of an expected or observed tree.
type Node struct {
	// Path is "/"-rooted, e.g. "/usr/bin/sh"; the root is "/".
	Path string
	// Type is a tar type flag: tar.TypeReg, TypeDir, TypeSymlink, TypeChar,
	// TypeBlock or TypeFifo. Hardlinks are reported as their target's type
	// (usually TypeReg) with LinkGroup set. 0 means a type tar cannot carry
	// (a socket, found by Walk).
	Type byte
	// Mode holds the permission bits including setuid/setgid/sticky (07777).
	Mode     uint32
	UID, GID int
	// Size is the content size of regular files; 0 for every other type.
	Size int64
	// ModTime has second precision, in UTC.
	ModTime time.Time
	// Linkname is the symlink target.
	Linkname           string
	Devmajor, Devminor uint32
	// Xattrs is nil when the file has none.
	Xattrs map[string]string
	// SHA256 is the hex sha256 of the content of regular files.
	SHA256 string
	// LinkGroup is a key shared by all names of one hardlinked inode, "" if
	// the file is not hardlinked. Keys are only comparable within one tree.
	LinkGroup string
}

// Oracle returns the merged tree of img as go-containerregistry's
// mutate.Extract flattens it: an implementation of overlay semantics
// (whiteouts, opaque directories, upper layers replacing lower ones) that
// is independent of lazyroot's.
//
// Names are normalized to "/x" ("./x", "x" and "x/" all become "/x"). The
// root "/" is present only if some layer has an entry for it. Directories
// that no layer lists (implicit parents) are absent. A hardlink gets the
// Node of its target as it was in the link's own layer, and all names of
// one inode share a LinkGroup.
//
// The tree holds every file the layers' tar streams hold, including what
// eStargz tools add; see DropEStargzMetadata.
func Oracle(t testing.TB, img v1.Image) map[string]Node {
	t.Helper()
	img, err := lastEntryWins(img)
	if err != nil {
		t.Fatalf("oracle: %v", err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tree := map[string]Node{}
	links := map[string]string{} // hardlink name -> normalized target, from the flattened stream
	err = readTar(rc, func(hdr *tar.Header, n Node) {
		if hdr.Typeflag == tar.TypeLink {
			links[n.Path] = normPath(hdr.Linkname)
			return
		}
		tree[n.Path] = n
	})
	if err != nil {
		t.Fatalf("oracle: extract: %v", err)
	}
	if len(links) > 0 {
		if err := resolveHardlinks(img, tree, links); err != nil {
			t.Fatalf("oracle: hardlinks: %v", err)
		}
	}
	return tree
}

// DropEStargzMetadata returns a copy of tree without the files eStargz
// tooling adds to a layer ("/stargz.index.json", "/.prefetch.landmark",
// "/.no.prefetch.landmark"), which lazy filesystems usually hide.
func DropEStargzMetadata(tree map[string]Node) map[string]Node {
	out := maps.Clone(tree)
	for _, p := range []string{estargz.TOCTarName, estargz.PrefetchLandmark, estargz.NoPrefetchLandmark} {
		delete(out, "/"+p)
	}
	return out
}

// readTar calls fn for each entry of the tar stream r with a Node made from
// its header (and content hash, for regular files). Entry types a tree does
// not hold (PAX global headers and the like) are skipped.
func readTar(r io.Reader, fn func(*tar.Header, Node)) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		n := Node{
			Path:     normPath(hdr.Name),
			Type:     hdr.Typeflag,
			Mode:     uint32(hdr.Mode) & 0o7777,
			UID:      hdr.Uid,
			GID:      hdr.Gid,
			ModTime:  time.Unix(hdr.ModTime.Unix(), 0).UTC(),
			Devmajor: uint32(hdr.Devmajor),
			Devminor: uint32(hdr.Devminor),
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			n.Type = tar.TypeReg
			h := sha256.New()
			size, err := io.Copy(h, tr)
			if err != nil {
				return fmt.Errorf("read %s: %w", hdr.Name, err)
			}
			n.Size = size
			n.SHA256 = fmt.Sprintf("%x", h.Sum(nil))
		case tar.TypeSymlink:
			n.Linkname = hdr.Linkname
		case tar.TypeDir, tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeLink:
		default:
			continue
		}
		for k, v := range hdr.PAXRecords {
			if name, ok := strings.CutPrefix(k, xattrPAXPrefix); ok {
				if n.Xattrs == nil {
					n.Xattrs = map[string]string{}
				}
				n.Xattrs[name] = v
			}
		}
		fn(hdr, n)
	}
}

// normPath turns a tar name ("./x", "x", "x/", "/x") into "/x"; the root
// in any spelling becomes "/".
func normPath(name string) string {
	return path.Clean("/" + name)
}

// layerFiles is what one layer's tar stream says, as needed to resolve
// hardlinks within that layer.
type layerFiles struct {
	names map[string]bool   // every non-whiteout name in the layer
	links map[string]string // hardlink name -> final target name (chains followed)
	nodes map[string]Node   // node of every non-link entry, and of every link (its target's, at link time)
}

// resolveHardlinks replaces each hardlink of the flattened tree with the
// Node of its target. A tar hardlink refers to an earlier entry of its own
// layer, and an upper layer may since have replaced or deleted that target
// name, so each link is resolved in the layer it comes from: the topmost
// layer that has the link's name (which is the entry mutate.Extract kept).
func resolveHardlinks(img v1.Image, tree map[string]Node, links map[string]string) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	scanned := make([]layerFiles, len(layers))
	for i, l := range layers {
		if scanned[i], err = scanLayer(l); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	topmost := func(name string) int {
		for i := len(scanned) - 1; i >= 0; i-- {
			if scanned[i].names[name] {
				return i
			}
		}
		return -1
	}
	for name, target := range links {
		i := topmost(name)
		if i < 0 {
			return fmt.Errorf("%s: in no layer", name)
		}
		lf := scanned[i]
		final, ok := lf.links[name]
		if !ok {
			return fmt.Errorf("%s: not a hardlink in layer %d", name, i)
		}
		n, ok := lf.nodes[name]
		if !ok {
			return fmt.Errorf("%s: target %s not found in layer %d", name, target, i)
		}
		group := fmt.Sprintf("layer%d:%s", i, final)
		n.Path = name
		n.LinkGroup = group
		tree[name] = n
		// The target's own name shares the inode if the flattened tree kept
		// it from the same layer.
		if tn, ok := tree[final]; ok && topmost(final) == i {
			if _, isLink := links[final]; !isLink {
				tn.LinkGroup = group
				tree[final] = tn
			}
		}
	}
	return nil
}

func scanLayer(l v1.Layer) (layerFiles, error) {
	lf := layerFiles{names: map[string]bool{}, links: map[string]string{}, nodes: map[string]Node{}}
	rc, err := l.Uncompressed()
	if err != nil {
		return lf, err
	}
	defer rc.Close()
	err = readTar(rc, func(hdr *tar.Header, n Node) {
		if strings.HasPrefix(path.Base(n.Path), ".wh.") {
			return
		}
		lf.names[n.Path] = true
		if hdr.Typeflag != tar.TypeLink {
			lf.nodes[n.Path] = n
			delete(lf.links, n.Path)
			return
		}
		target := normPath(hdr.Linkname)
		if final, ok := lf.links[target]; ok {
			target = final
		}
		lf.links[n.Path] = target
		if tn, ok := lf.nodes[target]; ok {
			lf.nodes[n.Path] = tn
		} else {
			delete(lf.nodes, n.Path) // dangling; reported by the caller if kept
		}
	})
	return lf, err
}

// lastEntryWins returns img with each layer's tar stripped of all but the
// last entry of each name, as extracting the tar would leave it.
// mutate.Extract keeps the first instead.
func lastEntryWins(img v1.Image) (v1.Image, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	var out []v1.Layer
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		type entry struct {
			hdr  *tar.Header
			body []byte
		}
		var entries []entry
		last := map[string]int{}
		tr := tar.NewReader(rc)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				rc.Close()
				return nil, fmt.Errorf("layer %d: %w", i, err)
			}
			body, err := io.ReadAll(tr)
			if err != nil {
				rc.Close()
				return nil, fmt.Errorf("layer %d: %w", i, err)
			}
			last[normPath(hdr.Name)] = len(entries)
			entries = append(entries, entry{hdr, body})
		}
		rc.Close()
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for j, e := range entries {
			if last[normPath(e.hdr.Name)] != j {
				continue
			}
			if err := tw.WriteHeader(e.hdr); err != nil {
				return nil, err
			}
			if _, err := tw.Write(e.body); err != nil {
				return nil, err
			}
		}
		if err := tw.Close(); err != nil {
			return nil, err
		}
		out = append(out, static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer))
	}
	return mutate.AppendLayers(empty.Image, out...)
}
