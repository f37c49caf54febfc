package cache

import "strconv"

// Key names cached bytes by content: the blob digest plus the chunk's
// place in that blob, e.g. "sha256:…@1048576+65536". Equal keys name equal
// bytes, whichever image or layer asked for them.
type Key string

// NewKey builds a Key from a blob digest and a chunk's offset and length in
// that blob's address space (compressed or uncompressed, as the caller
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
