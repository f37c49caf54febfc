// Package layer finds images and reads their layers' file bytes.
//
// Resolve turns a reference into an Image: manifest, config and the layer
// descriptors, base first. The reference names a registry image, or a
// local one read in place from files: an OCI image layout directory
// (oci:PATH[:TAG]) or a docker save tarball (docker-archive:PATH[:REF]);
// ResolveFiles makes an image of plain layer files (see local.go). A Stack
// opens those layers for reading. For each layer it finds or builds an
// index:
//
//   - eStargz and zstd:chunked: the layer's own TOC, verified against the
//     manifest annotation, read with two range requests;
//   - plain gzip, multi-frame zstd, uncompressed tar: a seek index (package
//     index), taken from the local Store, from an index artifact in the
//     registry (FindIndexes), or built by streaming the blob once and
//     checking its digest, as the IndexSource allows. Built ones can be
//     pushed back for other nodes (Publish, PushIndexes);
//   - a layer that cannot be read in pieces (zstd in one frame): streamed
//     once and kept unpacked under the state root.
//
// ReadAt serves file content: index lookup, then the chunk cache, then the
// blob's range, then decompression, then a sha256 check (of the chunk, or
// of the span's compressed bytes before they are decoded). Bytes that fail
// a check are never cached or returned.
//
// State lives under one root directory: index/ holds encoded indexes by
// layer digest (those from the registry apart, as *.registry.idx), layers/
// the unpacked tar of layers that had to be kept whole, digests/ the
// digests computed of local layer files, by device, inode, offset and
// length (each record also holds the file's size and modification time,
// and is used only while they match). Files there are
// written to a temporary name and renamed, so a crash leaves no
// half-written file under a final name; a stored index that fails to
// decode, or names another layer, is ignored and rebuilt.
//
// A Stack is safe for concurrent use; reads of different chunks proceed in
// parallel and reads of one chunk or span share a single fetch (see
// package cache).
package layer
