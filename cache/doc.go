// Package cache holds the chunk bytes that lazyroot has fetched,
// decompressed and verified, so that a file read served once is served
// again without touching the network.
//
// # What it owns
//
// [Cache] is the read-through front that the layer reader calls:
// [Cache.Get] returns cached bytes for a [Key] or runs the caller's fill
// function once, however many readers ask for the same key at the same
// time, and stores what it returns. Behind the front sit tiers; today
// there is one, [Memory], a bytes-bounded in-memory tier built on
// ristretto. A disk tier will slot in between the memory tier and the
// fill without changing the front.
//
// The package knows keys and bytes only: nothing about registries, tar or
// compression, and it imports no other lazyroot package.
//
// # Invariants
//
//   - Keys are content addresses ([NewKey]: blob digest plus the chunk's
//     offset and length), so equal keys always name equal bytes and layers
//     shared between images share cache entries.
//   - Only bytes returned by a successful fill are stored. A fill error is
//     handed to every waiter and nothing is kept, so the next Get fills
//     again. Callers verify bytes before returning them from fill; the
//     cache never stores anything it was not handed as good.
//   - Stored byte slices are shared, not copied: the slice given to
//     [Memory.Put] (or returned by a fill) is the slice later Gets return.
//     Neither the producer nor any reader may modify it afterwards.
//   - The memory tier holds at most its configured number of bytes (value
//     lengths plus a small per-entry overhead). An entry may be refused or
//     evicted at any time to keep that bound; a miss is always safe.
//
// # Concurrency
//
// All methods of [Cache] and [Memory] are safe for concurrent use.
// A fill runs on its own goroutine with a context derived from the first
// caller's context by [context.WithoutCancel]: one waiter giving up (its
// context ends, and it returns ctx.Err()) does not cancel the fill for the
// others. The cache puts no deadline on a fill, so the fill itself must
// bound its waits. A fill that panics crashes the process, as any
// unrecovered panic does.
//
// After [Memory.Put] returns, a Get of the same key hits unless the entry
// was refused or evicted to honour the bound; Cache relies on this so that
// a reader arriving just after a fill finishes does not fill again.
//
// Close releases the memory tier. It may race with Gets and fills still
// running: afterwards the memory tier misses and drops puts, and
// [Cache.Get] returns [ErrClosed].
package cache
