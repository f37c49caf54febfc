// Package testutil holds the test helpers shared by lazyroot's packages.
//
// It owns four things:
//
//   - Registry: an in-process OCI registry (go-containerregistry's
//     pkg/registry behind httptest on 127.0.0.1) that records every request
//     it answers, counts blob bytes, and lets a test put fault-injecting
//     middleware in front of it (Wrap).
//   - Builders: Tar writes tar streams from Entry values; Layer compresses a
//     tar stream as gzip, eStargz, zstd:chunked, zstd or uncompressed and
//     returns the annotations the layer descriptor must carry; Image and
//     Registry.Push / Registry.PushIndex assemble and publish images.
//   - Oracle: the expected merged tree of an image, computed by
//     go-containerregistry's mutate.Extract, which implements overlay
//     semantics (whiteouts, opaque directories) independently of lazyroot.
//   - Walk and CompareTrees: read a real directory (for example a FUSE mount)
//     into the same shape as the oracle and report every difference.
//
// Invariants: testutil imports no other lazyroot package, so every package
// may use it from its tests without an import cycle. Walk only opens and
// reads files; it never executes or maps them, which keeps it safe on a FUSE
// mount served by the same process.
//
// Concurrency: a Registry may be used from many goroutines (its handler runs
// on httptest's goroutines); the builders and the oracle are plain functions
// that must be called from the test goroutine because they call t.Fatal.
package testutil
