package inflate

import "encoding/binary"

// huffman decodes the current compressed block until it ends, the output
// area is full or an error occurs. Most symbols go through fast, which reads
// the input 8 bytes at a time; the last bytes of the input go through slow,
// which reads only the bits a symbol needs.
func (z *Reader) huffman() {
	for z.err == nil && z.state == stHuffman && z.w < stopAt {
		if z.ipos+8 <= z.iend {
			z.fast()
			continue
		}
		if z.rerr == nil && z.fill() && z.ipos+8 <= z.iend {
			continue
		}
		z.slow()
	}
}

// fast decodes symbols while at least 8 input bytes are left and the output
// area has room. Each turn refills the bit buffer to 56 or more bits, which
// is enough for a whole length/distance pair (at most 48 bits) or two
// literals. A refill fills all 64 bits of the buffer with input bits (those
// above nbits are read again by the next refill), so after any turn at
// least 16 real bits remain and the next table entry is looked up before
// the refill, off the path that waits for the load.
func (z *Reader) fast() {
	in := z.in[:z.iend]
	pos := z.ipos
	bits, nbits := z.bits, z.nbits
	out := z.out[:outSize]
	w := z.w
	hist := z.histStart
	lit, dist := z.lit, z.dist
	if pos+8 > len(in) || w >= stopAt {
		return
	}
	bits |= binary.LittleEndian.Uint64(in[pos:]) << (nbits & 63)
	pos += int((63 - nbits) >> 3)
	nbits |= 56
	e := lit[bits&litMask]
	for {
		if e&flagLit != 0 {
			bits >>= e & 15
			nbits -= uint(e & 15)
			out[w] = byte(e >> 16)
			w++
			e = lit[bits&litMask]
			if e&flagLit != 0 {
				bits >>= e & 15
				nbits -= uint(e & 15)
				out[w] = byte(e >> 16)
				w++
				e = lit[bits&litMask]
			}
		} else {
			if e&flagLink != 0 {
				e = lit[e>>16+uint32(bits>>litPrimary)&(1<<(e>>4&15)-1)]
			}
			bits >>= e & 15
			nbits -= uint(e & 15)
			if e&flagMask != 0 {
				if e&flagLit != 0 { // a long literal code
					out[w] = byte(e >> 16)
					w++
					e = lit[bits&litMask]
					goto next
				}
				z.ipos, z.bits, z.nbits, z.w = pos, bits, nbits, w
				if e&flagEnd != 0 {
					z.endBlock()
				} else {
					z.corrupt("bad literal/length code")
				}
				return
			}
			ex := e >> 4 & 15
			length := int(e>>16) + int(bits&(1<<ex-1))
			bits >>= ex
			nbits -= uint(ex)

			d := dist[bits&distMask]
			if d&flagLink != 0 {
				d = dist[d>>16+uint32(bits>>distPrimary)&(1<<(d>>4&15)-1)]
			}
			bits >>= d & 15
			nbits -= uint(d & 15)
			ex = d >> 4 & 15
			dd := int(d>>16) + int(bits&(1<<ex-1))
			bits >>= ex
			nbits -= uint(ex)
			if d&flagBad != 0 || dd > w-hist {
				z.ipos, z.bits, z.nbits, z.w = pos, bits, nbits, w
				if d&flagBad != 0 {
					z.corrupt("bad distance code")
				} else {
					z.corrupt("distance too far back")
				}
				return
			}
			e = lit[bits&litMask]

			// Copy the match. Stores of 8 bytes may write up to 13 bytes
			// past its end, into the slack after the output area.
			src := w - dd
			switch {
			case dd >= 8:
				if length <= 16 {
					binary.LittleEndian.PutUint64(out[w:], binary.LittleEndian.Uint64(out[src:]))
					binary.LittleEndian.PutUint64(out[w+8:], binary.LittleEndian.Uint64(out[src+8:]))
					break
				}
				if dd >= length && length > 32 {
					copy(out[w:w+length], out[src:src+length])
					break
				}
				for i := 0; i < length; i += 8 {
					binary.LittleEndian.PutUint64(out[w+i:], binary.LittleEndian.Uint64(out[src+i:]))
				}
			case dd == 1:
				v := uint64(out[src]) * 0x0101010101010101
				for i := 0; i < length; i += 8 {
					binary.LittleEndian.PutUint64(out[w+i:], v)
				}
			default:
				for i := range length {
					out[w+i] = out[src+i]
				}
			}
			w += length
		}
	next:
		if pos+8 > len(in) || w >= stopAt {
			break
		}
		bits |= binary.LittleEndian.Uint64(in[pos:]) << (nbits & 63)
		pos += int((63 - nbits) >> 3)
		nbits |= 56
	}
	z.ipos, z.bits, z.nbits, z.w = pos, bits, nbits, w
}

// slow decodes one symbol, reading only the bits it needs.
func (z *Reader) slow() {
	e, ok := z.symbol(z.lit[:], litPrimary)
	if !ok {
		return
	}
	switch {
	case e&flagLit != 0:
		z.out[z.w] = byte(e >> 16)
		z.w++
		return
	case e&flagEnd != 0:
		z.endBlock()
		return
	case e&flagBad != 0:
		z.corrupt("bad literal/length code")
		return
	}
	ex := uint(e >> 4 & 15)
	if !z.need(ex) {
		return
	}
	length := int(e>>16) + int(z.take(ex))
	d, ok := z.symbol(z.dist[:], distPrimary)
	if !ok {
		return
	}
	if d&flagBad != 0 {
		z.corrupt("bad distance code")
		return
	}
	ex = uint(d >> 4 & 15)
	if !z.need(ex) {
		return
	}
	dd := int(d>>16) + int(z.take(ex))
	if dd > z.w-z.histStart {
		z.corrupt("distance too far back")
		return
	}
	out := z.out[z.w-dd : z.w+length]
	for i := range length {
		out[dd+i] = out[i]
	}
	z.w += length
}
