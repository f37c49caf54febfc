// Package bench is lazyroot's benchmark harness. It builds images of real
// Debian packages, serves them from Debian's docker-registry behind an
// emulated network (a network namespace, tc tbf for the rate and a delaying
// HTTP proxy for the round trip, which also counts what the registry
// serves), and runs workloads three ways: the full-pull baseline (fetch
// every layer, extract, chroot), lazyroot with a cold cache and lazyroot
// with a warm one. It drives the built lazyroot binary; it never links
// lazyroot's packages.
//
// The pieces that need no root, no network namespace and no debootstrap
// (the delaying proxy, the layer differ, the extractor, the table math) are
// plain functions tested in this package. The orchestration that does need
// them lives in Harness and is run by bench/cmd/lzbench (make bench).
//
// Inputs are trusted: the extractor is for layers this harness made and
// does not defend against hostile tar files.
package bench
