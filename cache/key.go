package cache

import "strconv"

// Key names cached bytes by content: a digest plus a place and length, e.g.
// "sha256:…@1048576+65536". The digest is a blob's (the place is then the
// chunk's offset in it) or, where the format gives one, the chunk's own
// (place 0), so equal chunks of different layers share one entry. Equal keys
// name equal bytes, whichever image or layer asked for them.
type Key string

// NewKey builds a Key from a blob or chunk digest and a chunk's offset and
// length in that digest's address space (compressed or uncompressed, as the caller
// chooses; the caller must choose the same way every time for one blob).
// The numbers follow the last '@' of the key, so distinct arguments always
// give distinct keys.
func NewKey(blob string, off, length int64) Key {
	b := make([]byte, 0, len(blob)+1+20+1+20)
	b = append(b, blob...)
	b = append(b, '@')
	b = strconv.AppendInt(b, off, 10)
	b = append(b, '+')
	b = strconv.AppendInt(b, length, 10)
	return Key(b)
}
