package index

import "bytes"

// tocEntry is one entry of a TOC's JSON, with the members an Index is
// made of.
type tocEntry struct {
	Name, Type, ModTime, LinkName, Digest, ChunkDigest string

	Size, Mode, Offset, InnerOffset, ChunkOffset, ChunkSize int64
	UID, GID, DevMajor, DevMinor                            int64

	Xattrs map[string][]byte
}

// tocKeys are the entry members decodeTOCJSON keeps, as writers spell them.
var tocKeys = []string{"name", "type", "modtime", "linkName", "userName", "groupName", "digest", "chunkDigest",
	"size", "mode", "offset", "innerOffset", "chunkOffset", "chunkSize",
	"uid", "gid", "devMajor", "devMinor", "xattrs"}

// maxJSONDepth bounds the nesting of the values decodeTOCJSON skips.
const maxJSONDepth = 64

// decodeTOCJSON decodes the JSON of a TOC, {"version": N, "entries":
// [...]}, into its entries in order. It reads what json.Unmarshal reads
// into estargz's TOC types (member names match regardless of case,
// unknown members are skipped, null leaves a member unset, invalid UTF-8
// in a string reads as U+FFFD), except that it refuses a null entry, a
// document that is not an object, and unknown values nested over
// maxJSONDepth deep; and, unlike the json.Decoder estargz reads TOCs with,
// anything but white space after the object. It is a decoder for this one
// layout because the generic one spent most of a cold mount's indexing
// time.
func decodeTOCJSON(b []byte) ([]tocEntry, error) {
	s := jsonScanner{b: b}
	var entries []tocEntry
	sized := false
	s.ws()
	if s.peek() != '{' {
		return nil, s.errorf("the toc is not a JSON object")
	}
	err := s.object(func(key []byte) error {
		switch {
		case string(key) == "version" || bytes.EqualFold(key, []byte("version")):
			var v int64
			return s.integer(&v)
		case string(key) != "entries" && !bytes.EqualFold(key, []byte("entries")):
			return s.skip(0)
		}
		if s.null() {
			entries = nil
			return nil
		}
		if !sized {
			// An entry takes about 300 bytes of JSON; a TOC repeating
			// "entries" gets the room once.
			sized = true
			entries = make([]tocEntry, 0, len(b)/300+1)
		}
		// A second "entries" decodes into the entries of the first, as
		// encoding/json decodes into what a slice holds.
		n := 0
		err := s.array(func() error {
			if s.peek() != '{' {
				return s.errorf("entry %d is not an object", n)
			}
			if n < cap(entries) {
				entries = entries[:n+1]
			} else {
				entries = append(entries, tocEntry{})
			}
			e := &entries[n]
			var prev *tocEntry
			if n > 0 {
				prev = &entries[n-1]
			}
			n++
			return s.object(func(key []byte) error { return s.member(e, prev, key) })
		})
		entries = entries[:n]
		if n == 0 {
			entries = []tocEntry{} // so a later "entries" starts afresh
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	s.ws()
	if s.i < len(s.b) {
		return nil, s.errorf("data after the toc")
	}
	return entries, nil
}

// member decodes the value of entry e's member key. prev, the entry before
// e (or nil), lends its strings to values equal to them.
func (s *jsonScanner) member(e, prev *tocEntry, key []byte) error {
	switch string(key) {
	case "name":
		return s.str(&e.Name)
	case "type":
		return s.str(&e.Type, tocTypes...)
	case "modtime":
		if prev != nil {
			return s.str(&e.ModTime, prev.ModTime)
		}
		return s.str(&e.ModTime)
	case "linkName":
		return s.str(&e.LinkName)
	case "userName", "groupName":
		var unused string // not kept, but a string all the same
		return s.str(&unused)
	case "digest":
		return s.str(&e.Digest)
	case "chunkDigest":
		return s.str(&e.ChunkDigest, e.Digest)
	case "size":
		return s.integer(&e.Size)
	case "mode":
		return s.integer(&e.Mode)
	case "offset":
		return s.integer(&e.Offset)
	case "innerOffset":
		return s.integer(&e.InnerOffset)
	case "chunkOffset":
		return s.integer(&e.ChunkOffset)
	case "chunkSize":
		return s.integer(&e.ChunkSize)
	case "uid":
		return s.integer(&e.UID)
	case "gid":
		return s.integer(&e.GID)
	case "devMajor":
		return s.integer(&e.DevMajor)
	case "devMinor":
		return s.integer(&e.DevMinor)
	case "xattrs":
		return s.xattrs(&e.Xattrs)
	}
	for _, k := range tocKeys {
		if bytes.EqualFold(key, []byte(k)) {
			return s.member(e, prev, []byte(k))
		}
	}
	return s.skip(0)
}

// tocTypes are the TOC entry types: decoded as these constants, they
// spare an allocation for each entry.
var tocTypes = []string{"reg", "dir", "chunk", "symlink", "hardlink", "char", "block", "fifo"}
