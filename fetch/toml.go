package fetch

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// This file reads the part of TOML that hosts.toml files use: comments,
// [table] headers with dotted and quoted keys, key = value lines (dotted
// keys allowed), basic and literal strings, booleans, integers and arrays
// (nested, spanning lines). Anything else (multi-line strings, floats,
// dates, inline tables, arrays of tables) is an error that names the line,
// so a file is never half understood. Arrays nest at most maxArrayDepth
// deep, so no input can take the recursive reader deep into the stack.

// maxArrayDepth bounds the nesting of arrays; hosts.toml needs two
// (client = [["cert", "key"]]).
const maxArrayDepth = 8

// tomlEntry is one table header (val nil) or one key/value pair, with the
// full key path, in file order.
type tomlEntry struct {
	key  []string
	val  any // string, bool, int64 or []any; nil for a table header
	line int
}

// parseTOML returns the entries of src in the order they appear.
func parseTOML(src string) ([]tomlEntry, error) {
	p := &tomlParser{s: src, line: 1}
	entries, err := p.parse()
	if err != nil {
		return nil, fmt.Errorf("line %d: %w", p.line, err)
	}
	return entries, nil
}

// tomlParser reads src from pos on; line is the line of pos, for messages.
type tomlParser struct {
	s     string
	pos   int
	line  int
	depth int // arrays open at pos
}

// parse reads the whole input: table headers and key/value lines, and
// rejects keys and tables defined twice.
func (p *tomlParser) parse() ([]tomlEntry, error) {
	var (
		entries []tomlEntry
		table   []string
		seen    = map[string]bool{} // defined keys and tables
	)
	for {
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.eof() {
			return entries, nil
		}
		line := p.line
		if p.peek() == '[' {
			p.pos++
			if p.peek() == '[' {
				return nil, fmt.Errorf("arrays of tables are not supported")
			}
			p.skipSpace()
			key, err := p.key()
			if err != nil {
				return nil, err
			}
			p.skipSpace()
			if p.peek() != ']' {
				return nil, fmt.Errorf("expected ] after table name")
			}
			p.pos++
			if err := p.endOfLine(); err != nil {
				return nil, err
			}
			id := "[" + strings.Join(key, "\x00")
			if seen[id] {
				return nil, fmt.Errorf("table %s defined twice", strings.Join(key, "."))
			}
			seen[id] = true
			table = key
			entries = append(entries, tomlEntry{key: key, line: line})
			continue
		}
		key, err := p.key()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.peek() != '=' {
			return nil, fmt.Errorf("expected = after key %s", strings.Join(key, "."))
		}
		p.pos++
		p.skipSpace()
		val, err := p.value()
		if err != nil {
			return nil, err
		}
		if err := p.endOfLine(); err != nil {
			return nil, err
		}
		full := append(append([]string(nil), table...), key...)
		id := strings.Join(full, "\x00")
		if seen[id] {
			return nil, fmt.Errorf("key %s defined twice", strings.Join(full, "."))
		}
		seen[id] = true
		entries = append(entries, tomlEntry{key: full, val: val, line: line})
	}
}

// eof reports whether all input was read.
func (p *tomlParser) eof() bool { return p.pos >= len(p.s) }

// peek returns the byte at pos, or 0 at the end.
func (p *tomlParser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.s[p.pos]
}

// skipSpace skips spaces and tabs.
func (p *tomlParser) skipSpace() {
	for !p.eof() && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

// skipComment skips a comment up to (not including) the end of the line.
func (p *tomlParser) skipComment() {
	if p.peek() != '#' {
		return
	}
	for !p.eof() && p.s[p.pos] != '\n' {
		p.pos++
	}
}

// newline consumes "\n" or "\r\n" and reports whether it did.
func (p *tomlParser) newline() bool {
	switch {
	case strings.HasPrefix(p.s[p.pos:], "\n"):
		p.pos++
	case strings.HasPrefix(p.s[p.pos:], "\r\n"):
		p.pos += 2
	default:
		return false
	}
	p.line++
	return true
}

// skipBlank skips whitespace, comments and line ends.
func (p *tomlParser) skipBlank() error {
	for {
		p.skipSpace()
		p.skipComment()
		if p.eof() {
			return nil
		}
		if !p.newline() {
			if p.peek() == '\r' {
				return fmt.Errorf("stray carriage return")
			}
			return nil
		}
	}
}

// endOfLine accepts optional space and a comment, then a line end or EOF.
func (p *tomlParser) endOfLine() error {
	p.skipSpace()
	p.skipComment()
	if p.eof() || p.newline() {
		return nil
	}
	return fmt.Errorf("unexpected %q after value", p.rest())
}

// rest is the remainder of the current line, for messages.
func (p *tomlParser) rest() string {
	s := p.s[p.pos:]
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	if len(s) > 20 {
		s = s[:20] + "..."
	}
	return s
}

// key reads a dotted key: bare or quoted parts separated by dots.
func (p *tomlParser) key() ([]string, error) {
	var parts []string
	for {
		var part string
		switch c := p.peek(); {
		case c == '"':
			if strings.HasPrefix(p.s[p.pos:], `"""`) {
				return nil, fmt.Errorf("multi-line strings are not supported")
			}
			s, err := p.basicString()
			if err != nil {
				return nil, err
			}
			part = s
		case c == '\'':
			s, err := p.literalString()
			if err != nil {
				return nil, err
			}
			part = s
		case isBareKeyChar(c):
			start := p.pos
			for !p.eof() && isBareKeyChar(p.s[p.pos]) {
				p.pos++
			}
			part = p.s[start:p.pos]
		default:
			return nil, fmt.Errorf("expected a key, found %q", p.rest())
		}
		parts = append(parts, part)
		p.skipSpace()
		if p.peek() != '.' {
			return parts, nil
		}
		p.pos++
		p.skipSpace()
	}
}

// isBareKeyChar reports the bytes an unquoted key may have.
func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// value reads a string, boolean, integer or array.
func (p *tomlParser) value() (any, error) {
	switch c := p.peek(); {
	case c == '"':
		if strings.HasPrefix(p.s[p.pos:], `"""`) {
			return nil, fmt.Errorf("multi-line strings are not supported")
		}
		return p.basicString()
	case c == '\'':
		if strings.HasPrefix(p.s[p.pos:], `'''`) {
			return nil, fmt.Errorf("multi-line strings are not supported")
		}
		return p.literalString()
	case c == '[':
		return p.array()
	case c == '{':
		return nil, fmt.Errorf("inline tables are not supported")
	case strings.HasPrefix(p.s[p.pos:], "true") && p.wordEnds(4):
		p.pos += 4
		return true, nil
	case strings.HasPrefix(p.s[p.pos:], "false") && p.wordEnds(5):
		p.pos += 5
		return false, nil
	case c == '+' || c == '-' || c >= '0' && c <= '9':
		return p.integer()
	case c == 0:
		return nil, fmt.Errorf("missing value")
	default:
		return nil, fmt.Errorf("unsupported value %q", p.rest())
	}
}

// wordEnds reports whether the word of n bytes at pos ends there.
func (p *tomlParser) wordEnds(n int) bool {
	i := p.pos + n
	return i >= len(p.s) || !isBareKeyChar(p.s[i]) && p.s[i] != '.'
}

// integer reads a decimal integer, with optional sign and underscores
// between digits. It takes the whole word, so that floats, dates and
// other numbers fail rather than stop part way.
func (p *tomlParser) integer() (int64, error) {
	start := p.pos
	for !p.eof() && (isBareKeyChar(p.s[p.pos]) || strings.IndexByte("+.:", p.s[p.pos]) >= 0) {
		p.pos++
	}
	word := p.s[start:p.pos]
	digits := strings.ReplaceAll(word, "_", "")
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || strings.Contains(word, "__") || strings.HasSuffix(word, "_") {
		return 0, fmt.Errorf("unsupported value %q (only decimal integers)", word)
	}
	return n, nil
}

// array reads an array of values, which may span lines and hold comments
// and a trailing comma.
func (p *tomlParser) array() ([]any, error) {
	if p.depth >= maxArrayDepth {
		return nil, fmt.Errorf("arrays nested deeper than %d", maxArrayDepth)
	}
	p.depth++
	defer func() { p.depth-- }()
	p.pos++ // [
	items := []any{}
	for {
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		if p.peek() == ']' {
			p.pos++
			return items, nil
		}
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		items = append(items, v)
		if err := p.skipBlank(); err != nil {
			return nil, err
		}
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return items, nil
		default:
			return nil, fmt.Errorf("expected , or ] in array, found %q", p.rest())
		}
	}
}

// literalString reads a 'literal string': no escapes, one line.
func (p *tomlParser) literalString() (string, error) {
	p.pos++ // '
	end := strings.IndexAny(p.s[p.pos:], "'\n")
	if end < 0 || p.s[p.pos+end] != '\'' {
		return "", fmt.Errorf("unterminated string")
	}
	s := p.s[p.pos : p.pos+end]
	p.pos += end + 1
	return s, nil
}

// basicString reads a "basic string" on one line, with TOML's escapes.
func (p *tomlParser) basicString() (string, error) {
	p.pos++ // "
	var b strings.Builder
	for {
		if p.eof() {
			return "", fmt.Errorf("unterminated string")
		}
		c := p.s[p.pos]
		switch {
		case c == '"':
			p.pos++
			return b.String(), nil
		case c == '\n' || c == '\r':
			return "", fmt.Errorf("unterminated string")
		case c < 0x20 && c != '\t' || c == 0x7f:
			return "", fmt.Errorf("control character in string")
		case c == '\\':
			if p.pos+1 >= len(p.s) {
				return "", fmt.Errorf("unterminated string")
			}
			esc := p.s[p.pos+1]
			p.pos += 2
			switch esc {
			case 'b':
				b.WriteByte('\b')
			case 't':
				b.WriteByte('\t')
			case 'n':
				b.WriteByte('\n')
			case 'f':
				b.WriteByte('\f')
			case 'r':
				b.WriteByte('\r')
			case '"':
				b.WriteByte('"')
			case '\\':
				b.WriteByte('\\')
			case 'u', 'U':
				n := 4
				if esc == 'U' {
					n = 8
				}
				if p.pos+n > len(p.s) {
					return "", fmt.Errorf("short unicode escape")
				}
				r, err := strconv.ParseUint(p.s[p.pos:p.pos+n], 16, 32)
				if err != nil || !utf8.ValidRune(rune(r)) {
					return "", fmt.Errorf("bad unicode escape %q", p.s[p.pos:p.pos+n])
				}
				b.WriteRune(rune(r))
				p.pos += n
			default:
				return "", fmt.Errorf("bad escape \\%c", esc)
			}
		default:
			b.WriteByte(c)
			p.pos++
		}
	}
}
