// Package index describes what a layer holds and where each file's bytes
// live, and merges a stack of layers into the one tree a mount shows.
//
// An Index lists a layer's tar entries in archive order. Regular files carry
// Chunks: each names a range of the file, the range of the blob that holds it
// (a gzip member, a zstd frame or raw tar bytes, as the layer's Format says)
// and the sha256 of the chunk's uncompressed bytes, so every chunk read later
// can be verified before it is served.
//
// Indexes come from a scan of an uncompressed tar stream (BuildTar), the
// table of contents of an eStargz or zstd:chunked blob (ReadTOC), one pass
// over a plain gzip or zstd blob (BuildGzip, BuildZstd), or the versioned,
// checksummed encoding written by Encode and read back by Decode.
//
// Plain gzip and multi-frame zstd blobs are seekable: their Spans mark
// where decoding can restart (a DEFLATE block boundary with the 32 KiB of
// output before it, or a zstd frame boundary), about every SpanSize bytes of
// tar. Their chunks are located by offsets in the uncompressed tar, and
// DecodeSpan checks a span's compressed bytes against its sha256 before it
// decodes them.
//
// Merge applies OCI overlay rules (whiteouts, opaque directories, hardlinks,
// implicit parents, last entry wins) base layer first and returns a Tree whose
// Nodes are immutable once Merge returns.
//
// The package is pure data: it does no network or file system I/O beyond the
// readers it is given, and holds no global state. Values are safe for
// concurrent reads once built.
package index
