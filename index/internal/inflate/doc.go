// Package inflate decodes DEFLATE (RFC 1951) streams and gzip (RFC 1952)
// files of one or more members, and can restart decoding in the middle of a
// stream.
//
// While it decodes, a Reader can report restart points (Point): the bit
// offset of a DEFLATE block header, the output produced before it and the
// last 32 KiB of that output, which is all a later decoder needs to resume
// there (Reader.Resume) without the bytes before it.
//
// The decoder reads its input into a buffer and decodes 8 bytes of input at
// a time into a flat output buffer that keeps 32 KiB of history, so it never
// needs a bit past the input it was given to produce the output those bits
// hold: a Reader resumed on a span of a stream can return every byte of that
// span and fails only when it is asked for more (io.ErrUnexpectedEOF).
//
// Corrupt input fails with an error matching ErrCorrupt; the decoder does not
// panic and makes progress on every input bit, so it always terminates.
//
// A Reader is not safe for concurrent use; Reset and Resume reuse its
// buffers (about 450 KiB).
package inflate
