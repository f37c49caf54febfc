package inflate

import "math/bits"

// A decoding table maps the next bits of the stream (least significant bit
// first) to an entry. The first 1<<primary entries are indexed by the next
// primary bits; codes longer than primary go through a link entry to a
// second-level table placed after the primary part.
//
// Entry layout (uint32):
//
//	bits  0-3   length of the codeword in bits (for a link: primary)
//	bits  4-7   extra bits that follow the codeword (for a link: the
//	            second-level table's index bits)
//	bits  8-11  flags
//	bits 16-31  payload: literal byte, base length or distance, or the
//	            offset of the second-level table
const (
	flagLit  = 1 << 8 // payload is a literal byte
	flagEnd  = 2 << 8 // end of block
	flagBad  = 4 << 8 // the code is not valid here
	flagLink = 8 << 8 // look up the second-level table
	flagMask = 15 << 8
)

// Primary index bits and sizes of the three kinds of tables. A second-level
// table has at most 1<<(15-primary) entries and there is at most one per
// code longer than primary bits, which bounds the sizes below.
const (
	litPrimary  = 11
	distPrimary = 8
	clPrimary   = 7

	litTableSize  = 1<<litPrimary + 286<<(15-litPrimary)
	distTableSize = 1<<distPrimary + 30<<(15-distPrimary)
	clTableSize   = 1 << clPrimary

	litMask  = 1<<litPrimary - 1
	distMask = 1<<distPrimary - 1
	clMask   = 1<<clPrimary - 1
)

// maxCodeLen is the longest Huffman code DEFLATE allows.
const maxCodeLen = 15

// Payloads (entries without the codeword length) of each symbol.
var (
	litPayload  [288]uint32
	distPayload [32]uint32
	clPayload   [19]uint32
)

// Fixed-code tables of block type 1 (RFC 1951 section 3.2.6).
var (
	fixedLit  [litTableSize]uint32
	fixedDist [distTableSize]uint32
)

// clOrder is the order in which code-length code lengths are sent.
var clOrder = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

func init() {
	lengthBase := [29]uint32{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
		35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra := [29]uint32{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
		3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase := [30]uint32{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
		257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra := [30]uint32{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
		7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	for s := range litPayload {
		switch {
		case s < 256:
			litPayload[s] = uint32(s)<<16 | flagLit
		case s == 256:
			litPayload[s] = flagEnd
		case s < 286:
			litPayload[s] = lengthBase[s-257]<<16 | lengthExtra[s-257]<<4
		default:
			litPayload[s] = flagBad
		}
	}
	for s := range distPayload {
		if s < 30 {
			distPayload[s] = distBase[s]<<16 | distExtra[s]<<4
		} else {
			distPayload[s] = flagBad
		}
	}
	for s := range clPayload {
		clPayload[s] = uint32(s) << 16
	}

	var lens [288]uint8
	for s := range lens {
		switch {
		case s < 144:
			lens[s] = 8
		case s < 256:
			lens[s] = 9
		case s < 280:
			lens[s] = 7
		default:
			lens[s] = 8
		}
	}
	if !buildTable(fixedLit[:], lens[:], litPayload[:], litPrimary) {
		panic("inflate: fixed literal/length code")
	}
	for s := range 32 {
		lens[s] = 5
	}
	if !buildTable(fixedDist[:], lens[:32], distPayload[:], distPrimary) {
		panic("inflate: fixed distance code")
	}
}

// reverseBits returns the n low bits of v in reverse order.
func reverseBits(v uint32, n uint) uint32 {
	return bits.Reverse32(v) >> (32 - n)
}

// buildTable fills tab with the decoding table of the canonical Huffman code
// whose code lengths per symbol are lens (0: symbol unused), using payload
// for each symbol's entry. It reports false for a code that is
// over-subscribed, or incomplete other than the two forms DEFLATE streams
// use in practice: no code at all (every entry is then flagBad) and a single
// code of one bit.
func buildTable(tab []uint32, lens []uint8, payload []uint32, primary uint) bool {
	var count [maxCodeLen + 1]int
	for _, l := range lens {
		if l > maxCodeLen {
			return false
		}
		count[l]++
	}
	count[0] = 0
	maxLen := maxCodeLen
	for maxLen > 0 && count[maxLen] == 0 {
		maxLen--
	}
	if maxLen == 0 {
		for i := range 1 << primary {
			tab[i] = flagBad
		}
		return true
	}
	left := 1
	for l := 1; l <= maxCodeLen; l++ {
		left = left<<1 - count[l]
		if left < 0 {
			return false // over-subscribed
		}
	}
	if left > 0 {
		if maxLen != 1 || count[1] != 1 {
			return false // incomplete
		}
		for i := range 1 << primary {
			tab[i] = flagBad | 1
		}
	}

	// Symbols sorted by (length, symbol), with their canonical codes.
	var start [maxCodeLen + 2]int
	for l := 1; l <= maxCodeLen; l++ {
		start[l+1] = start[l] + count[l]
	}
	var sorted [288]uint16
	n := 0
	for s, l := range lens {
		if l != 0 {
			sorted[start[l]] = uint16(s)
			start[l]++
			n++
		}
	}
	var next [maxCodeLen + 1]uint32
	code := uint32(0)
	for l := 1; l <= maxCodeLen; l++ {
		code = (code + uint32(count[l-1])) << 1
		next[l] = code
	}

	// Canonical code of each sorted symbol.
	var codes [288]uint32
	for k := range n {
		l := lens[sorted[k]]
		codes[k] = next[l]
		next[l]++
	}
	k := 0
	for ; k < n; k++ { // codes that fit the primary table
		s := sorted[k]
		l := uint(lens[s])
		if l > primary {
			break
		}
		e := payload[s] | uint32(l)
		for i := reverseBits(codes[k], l); i < 1<<primary; i += 1 << l {
			tab[i] = e
		}
	}
	free := uint32(1) << primary
	for k < n { // longer codes, grouped by their first primary bits
		// Canonical codes left-aligned increase along sorted, so codes with
		// the same first primary bits are adjacent and the last is longest.
		prefix := codes[k] >> (uint(lens[sorted[k]]) - primary)
		end := k + 1
		for end < n && codes[end]>>(uint(lens[sorted[end]])-primary) == prefix {
			end++
		}
		sub := uint(lens[sorted[end-1]]) - primary
		if int(free)+1<<sub > len(tab) {
			return false
		}
		tab[reverseBits(prefix, primary)] = free<<16 | flagLink | uint32(sub)<<4 | uint32(primary)
		for ; k < end; k++ {
			s := sorted[k]
			l := uint(lens[s])
			rest := l - primary
			e := payload[s] | uint32(l)
			for i := reverseBits(codes[k]&(1<<rest-1), rest); i < 1<<sub; i += 1 << rest {
				tab[free+i] = e
			}
		}
		free += 1 << sub
	}
	return true
}
