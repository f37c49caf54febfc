// Package layer finds images and reads their layers' file bytes.
//
// Resolve turns a reference into an Image: manifest, config and the layer
// descriptors, base first. A Stack opens those layers for reading: it finds
// or builds each layer's index (a verified eStargz or zstd:chunked TOC read
// with two range requests, or, for other layers, one verified stream of the
// blob unpacked under the state root) and serves file content through
// ReadAt: index lookup, then the chunk cache, then the blob, then
// decompression, then a sha256 check of the chunk. Bytes that fail the check
// are never cached or returned.
//
// State lives under one root directory: index/ holds encoded indexes by
// layer digest, layers/ the unpacked tar of layers that had to be streamed.
// Files there are written to a temporary name and renamed, so a crash leaves
// no half-written file under a final name.
//
// A Stack is safe for concurrent use; reads of different chunks proceed in
// parallel and reads of one chunk share a single fetch (see package cache).
package layer
