package index

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonScanner reads JSON values from b, from position i on.
type jsonScanner struct {
	b []byte
	i int
}

func (s *jsonScanner) errorf(format string, args ...any) error {
	return fmt.Errorf("json at byte %d: %s", s.i, fmt.Sprintf(format, args...))
}

// ws skips white space.
func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end.
func (s *jsonScanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// literal consumes word if it comes next.
func (s *jsonScanner) literal(word string) bool {
	if bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		s.i += len(word)
		return true
	}
	return false
}

// null consumes a null if one comes next.
func (s *jsonScanner) null() bool { return s.literal("null") }

// object reads an object, calling member for each member with the
// scanner at its value; member must consume the value. The key is valid
// only during the call.
func (s *jsonScanner) object(member func(key []byte) error) error {
	return s.sequence('}', func() error {
		if s.peek() != '"' {
			return s.errorf("want a member name")
		}
		key, err := s.rawString()
		if err != nil {
			return err
		}
		s.ws()
		if s.peek() != ':' {
			return s.errorf("want ':' after a member name")
		}
		s.i++
		s.ws()
		return member(key)
	})
}

// array reads an array, calling elem for each element with the scanner at
// it; elem must consume it.
func (s *jsonScanner) array(elem func() error) error {
	if s.peek() != '[' {
		return s.errorf("want an array")
	}
	return s.sequence(']', elem)
}

// sequence reads the items of an object or array, the scanner at its
// opening bracket, up to the closing one: item reads each, from its first
// byte.
func (s *jsonScanner) sequence(closing byte, item func() error) error {
	s.i++
	s.ws()
	if s.peek() == closing {
		s.i++
		return nil
	}
	for {
		if err := item(); err != nil {
			return err
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.i++
			s.ws()
		case closing:
			s.i++
			return nil
		default:
			return s.errorf("want ',' or '%c'", closing)
		}
	}
}

// str reads a string or null into *dst (null leaves it). A value equal to
// one of known takes that string rather than a copy of its own.
func (s *jsonScanner) str(dst *string, known ...string) error {
	if s.null() {
		return nil
	}
	if s.peek() != '"' {
		return s.errorf("want a string")
	}
	raw, err := s.rawString()
	if err != nil {
		return err
	}
	for _, k := range known {
		if string(raw) == k {
			*dst = k
			return nil
		}
	}
	*dst = string(raw)
	return nil
}

// uint32 reads an integer from 0 to 2^32-1, or null, into *dst.
func (s *jsonScanner) uint32(dst *uint32) error {
	v := uint64(*dst)
	err := s.unsigned(&v, math.MaxUint32)
	*dst = uint32(v)
	return err
}

// int reads a 64-bit integer, or null, into *dst.
func (s *jsonScanner) int(dst *int) error {
	v := int64(*dst)
	err := s.integer(&v)
	*dst = int(v)
	return err
}

// rawString reads a string and returns its decoded bytes: a slice of b
// when it has no escapes and is valid UTF-8, else a new slice.
func (s *jsonScanner) rawString() ([]byte, error) {
	s.i++ // '"'
	start := s.i
	ascii := true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			raw := s.b[start:s.i]
			s.i++
			if ascii || utf8.Valid(raw) {
				return raw, nil
			}
			s.i = start // each invalid byte reads as U+FFFD
			return s.escapedString()
		case c == '\\':
			s.i = start
			return s.escapedString()
		case c < 0x20:
			return nil, s.errorf("control character in a string")
		case c >= utf8.RuneSelf:
			ascii = false
		}
		s.i++
	}
	return nil, s.errorf("unterminated string")
}

// escapedString decodes a string with escapes, s.i at its first byte
// after the quote.
func (s *jsonScanner) escapedString() ([]byte, error) {
	var out []byte
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return out, nil
		case c < 0x20:
			return nil, s.errorf("control character in a string")
		case c == '\\':
			if s.i+1 >= len(s.b) {
				return nil, s.errorf("unterminated string")
			}
			e := s.b[s.i+1]
			s.i += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := s.hex4()
				if !ok {
					return nil, s.errorf("bad \\u escape")
				}
				if utf16.IsSurrogate(r) {
					// A pair makes one rune; a lone half is U+FFFD.
					save := s.i
					if s.literal(`\u`) {
						if r2, ok := s.hex4(); ok {
							if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
								out = utf8.AppendRune(out, dec)
								continue
							}
						}
					}
					s.i = save
					r = utf8.RuneError
				}
				out = utf8.AppendRune(out, r)
			default:
				return nil, s.errorf("bad escape \\%c", e)
			}
		case c < utf8.RuneSelf:
			out = append(out, c)
			s.i++
		default:
			r, n := utf8.DecodeRune(s.b[s.i:])
			out = utf8.AppendRune(out, r) // U+FFFD for an invalid byte
			s.i += n
		}
	}
	return nil, s.errorf("unterminated string")
}

// hex4 reads the four hex digits of a \u escape.
func (s *jsonScanner) hex4() (rune, bool) {
	if s.i+4 > len(s.b) {
		return 0, false
	}
	var r rune
	for _, c := range s.b[s.i : s.i+4] {
		var v byte
		switch {
		case '0' <= c && c <= '9':
			v = c - '0'
		case 'a' <= c && c <= 'f':
			v = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	s.i += 4
	return r, true
}

// integer reads an integer, or null, into *dst. A number with a fraction
// or an exponent is an error, as encoding/json makes it for an integer.
func (s *jsonScanner) integer(dst *int64) error {
	lit, err := s.numberLiteral()
	if lit == nil {
		return err
	}
	digits, max := lit, uint64(math.MaxInt64)
	if lit[0] == '-' {
		digits, max = lit[1:], 1<<63
	}
	v, ok := decimal(digits, max)
	if !ok {
		return s.errorf("%s is not a 64-bit integer", lit)
	}
	if lit[0] == '-' {
		*dst = -int64(v) // -(1<<63) wraps to itself, as it should
	} else {
		*dst = int64(v)
	}
	return nil
}

// unsigned reads an integer from 0 to max, or null, into *dst, as
// encoding/json reads one into an unsigned type.
func (s *jsonScanner) unsigned(dst *uint64, max uint64) error {
	lit, err := s.numberLiteral()
	if lit == nil {
		return err
	}
	v, ok := decimal(lit, max)
	if !ok {
		return s.errorf("%s is not an integer from 0 to %d", lit, max)
	}
	*dst = v
	return nil
}

// numberLiteral consumes a number and returns it as written; nil for a
// null, or with the error of a malformed number.
func (s *jsonScanner) numberLiteral() ([]byte, error) {
	if s.null() {
		return nil, nil
	}
	start := s.i
	if err := s.number(); err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

// decimal returns the value of digits if they are decimal digits only and
// it is at most max.
func decimal(digits []byte, max uint64) (uint64, bool) {
	if len(digits) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		if d := uint64(c - '0'); d > max || v > (max-d)/10 {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

// number consumes a number, checking JSON's grammar for it.
func (s *jsonScanner) number() error {
	start := s.i
	if s.peek() == '-' {
		s.i++
	}
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		s.digits()
	default:
		s.i = start
		return s.errorf("want a number")
	}
	if s.peek() == '.' {
		s.i++
		if !s.digits() {
			return s.errorf("want digits after '.'")
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return s.errorf("want digits in an exponent")
		}
	}
	return nil
}

// digits consumes decimal digits and reports whether there was one.
func (s *jsonScanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// skip consumes any value, nested at most maxJSONDepth deep.
func (s *jsonScanner) skip(depth int) error {
	if depth > maxJSONDepth {
		return s.errorf("values nested over %d deep", maxJSONDepth)
	}
	switch c := s.peek(); {
	case c == '{':
		return s.object(func([]byte) error { return s.skip(depth + 1) })
	case c == '[':
		return s.array(func() error { return s.skip(depth + 1) })
	case c == '"':
		_, err := s.rawString()
		return err
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	case s.literal("true"), s.literal("false"), s.null():
		return nil
	}
	return s.errorf("want a value")
}

// xattrs decodes an object of base64 strings, adding to *m as
// encoding/json does.
func (s *jsonScanner) xattrs(m *map[string][]byte) error {
	if s.null() {
		*m = nil
		return nil
	}
	if s.peek() != '{' {
		return s.errorf("xattrs are not an object")
	}
	if *m == nil {
		*m = map[string][]byte{}
	}
	return s.object(func(key []byte) error {
		name := string(key)
		if s.null() {
			(*m)[name] = nil
			return nil
		}
		if s.peek() == '[' {
			// encoding/json also takes bytes as an array of numbers.
			b := []byte{}
			err := s.array(func() error {
				var v uint64
				err := s.unsigned(&v, 255)
				b = append(b, byte(v))
				return err
			})
			(*m)[name] = b
			return err
		}
		var v string
		if err := s.str(&v); err != nil {
			return err
		}
		// encoding/json reads []byte as standard base64, line breaks
		// ignored.
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return s.errorf("xattr %q: %v", name, err)
		}
		(*m)[name] = b
		return nil
	})
}
