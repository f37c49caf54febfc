package index

import (
	"bytes"
	"math"
	"time"
)

// decodeIndexJSON decodes the JSON Encode writes into x. It reads what
// encoding/json reads into an Index (member names match regardless of
// case, unknown members are skipped, null leaves a member as it is, a
// repeated member decodes into what the first left), except that nothing
// but white space may follow the object and values nested over
// maxJSONDepth deep in unknown members are refused. Every mount decodes
// the stored index of each layer without a TOC: the generic decoder took
// most of a warm mount's indexing time.
func decodeIndexJSON(b []byte, x *Index) error {
	s := jsonScanner{b: b}
	s.ws()
	if s.null() {
		return s.end()
	}
	if s.peek() != '{' {
		return s.errorf("the index is not a JSON object")
	}
	if err := s.object(func(key []byte) error { return s.indexMember(x, key) }); err != nil {
		return err
	}
	return s.end()
}

// end checks that only white space is left.
func (s *jsonScanner) end() error {
	s.ws()
	if s.i < len(s.b) {
		return s.errorf("data after the value")
	}
	return nil
}

// formats are the known formats: decoded as these constants, they spare
// an allocation.
var formats = []string{string(FormatTar), string(FormatEStargz), string(FormatZstdChunked), string(FormatGzip), string(FormatZstd)}

var indexKeys = []string{"layer", "format", "entries", "spans", "blobSize", "tarSize", "windows", "prefetch"}

func (s *jsonScanner) indexMember(x *Index, key []byte) error {
	switch string(key) {
	case "layer":
		return s.str(&x.Layer)
	case "format":
		f := string(x.Format)
		err := s.str(&f, formats...)
		x.Format = Format(f)
		return err
	case "entries":
		var mt mtimes
		return slice(s, &x.Entries, func(e *Entry) error {
			return s.object(func(key []byte) error { return s.entryMember(e, key, &mt) })
		})
	case "spans":
		return slice(s, &x.Spans, func(sp *Span) error {
			return s.object(func(key []byte) error { return s.spanMember(sp, key) })
		})
	case "blobSize":
		return s.integer(&x.BlobSize)
	case "tarSize":
		return s.integer(&x.TarSize)
	case "windows":
		if s.null() {
			x.Windows = nil
			return nil
		}
		if s.peek() != '{' {
			return s.errorf("windows is not an object")
		}
		if x.Windows == nil {
			x.Windows = new(BlobRef)
		}
		w := x.Windows
		return s.object(func(key []byte) error {
			switch k, _ := canonicalKey(key, "digest", "size"); k {
			case "digest":
				return s.str(&w.Digest)
			case "size":
				return s.integer(&w.Size)
			}
			return s.skip(0)
		})
	case "prefetch":
		v := int64(x.Prefetch)
		err := s.integer(&v)
		x.Prefetch = int(v)
		return err
	}
	if k, ok := canonicalKey(key, indexKeys...); ok {
		return s.indexMember(x, []byte(k))
	}
	return s.skip(0)
}

var entryKeys = []string{"name", "type", "mode", "uid", "gid", "size", "mtime", "link", "devmajor", "devminor", "xattrs", "chunks"}

// mtimes keeps the last modification time decoded: files of one layer
// mostly share a few.
type mtimes struct {
	raw string
	t   time.Time
}

func (s *jsonScanner) entryMember(e *Entry, key []byte, mt *mtimes) error {
	switch string(key) {
	case "name":
		return s.str(&e.Name)
	case "type":
		v := uint64(e.Type)
		err := s.unsigned(&v, math.MaxUint8)
		e.Type = Type(v)
		return err
	case "mode":
		return s.uint32(&e.Mode)
	case "uid":
		return s.int(&e.UID)
	case "gid":
		return s.int(&e.GID)
	case "size":
		return s.integer(&e.Size)
	case "mtime":
		return s.time(&e.ModTime, mt)
	case "link":
		return s.str(&e.Linkname)
	case "devmajor":
		return s.uint32(&e.Devmajor)
	case "devminor":
		return s.uint32(&e.Devminor)
	case "xattrs":
		return s.xattrs(&e.Xattrs)
	case "chunks":
		return slice(s, &e.Chunks, func(c *Chunk) error {
			return s.object(func(key []byte) error { return s.chunkMember(c, key) })
		})
	}
	if k, ok := canonicalKey(key, entryKeys...); ok {
		return s.entryMember(e, []byte(k), mt)
	}
	return s.skip(0)
}

var chunkKeys = []string{"off", "size", "boff", "bend", "inner", "digest"}

func (s *jsonScanner) chunkMember(c *Chunk, key []byte) error {
	switch string(key) {
	case "off":
		return s.integer(&c.Offset)
	case "size":
		return s.integer(&c.Size)
	case "boff":
		return s.integer(&c.BlobOffset)
	case "bend":
		return s.integer(&c.BlobEnd)
	case "inner":
		return s.integer(&c.InnerOffset)
	case "digest":
		return s.str(&c.Digest)
	}
	if k, ok := canonicalKey(key, chunkKeys...); ok {
		return s.chunkMember(c, []byte(k))
	}
	return s.skip(0)
}

var spanKeys = []string{"out", "in", "digest", "woff", "wlen", "wsize", "wdigest"}

func (s *jsonScanner) spanMember(sp *Span, key []byte) error {
	switch string(key) {
	case "out":
		return s.integer(&sp.Out)
	case "in":
		return s.integer(&sp.InBits)
	case "digest":
		return s.str(&sp.Digest)
	case "woff":
		return s.integer(&sp.WinOff)
	case "wlen":
		return s.integer(&sp.WinLen)
	case "wsize":
		return s.integer(&sp.WinSize)
	case "wdigest":
		return s.str(&sp.WinDigest)
	}
	if k, ok := canonicalKey(key, spanKeys...); ok {
		return s.spanMember(sp, []byte(k))
	}
	return s.skip(0)
}

// canonicalKey returns the member name of known that key matches
// regardless of case, as encoding/json matches them.
func canonicalKey(key []byte, known ...string) (string, bool) {
	for _, k := range known {
		if string(key) == k || bytes.EqualFold(key, []byte(k)) {
			return k, true
		}
	}
	return "", false
}

// slice decodes an array, or null, into *dst as encoding/json decodes
// into a slice: elements past the old length reuse what the slice's array
// holds there, null elements are left as they are, and an empty array
// makes an empty slice of no capacity.
func slice[T any](s *jsonScanner, dst *[]T, elem func(*T) error) error {
	if s.null() {
		*dst = nil
		return nil
	}
	v := *dst
	n := 0
	err := s.array(func() error {
		if n < cap(v) {
			v = v[:n+1]
		} else {
			v = append(v, *new(T))
		}
		e := &v[n]
		n++
		if s.null() {
			return nil
		}
		if s.peek() != '{' {
			return s.errorf("element %d is not an object", n-1)
		}
		return elem(e)
	})
	if n == 0 && err == nil {
		v = []T{}
	}
	*dst = v[:n]
	return err
}

// time reads a time as time.Time's UnmarshalJSON does: the bytes between
// the quotes, unescaped or not, as an RFC 3339 time; null leaves *dst.
func (s *jsonScanner) time(dst *time.Time, last *mtimes) error {
	if s.null() {
		return nil
	}
	if s.peek() != '"' {
		return s.errorf("a time is not a string")
	}
	start := s.i
	if _, err := s.rawString(); err != nil {
		return err
	}
	raw := s.b[start:s.i]
	if string(raw) == last.raw {
		*dst = last.t
		return nil
	}
	var t time.Time
	if err := t.UnmarshalJSON(raw); err != nil {
		return s.errorf("%v", err)
	}
	*dst = t
	last.raw, last.t = string(raw), t
	return nil
}
