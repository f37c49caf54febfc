// Package cache holds the chunk bytes that lazyroot has fetched,
// decompressed and verified, so that a file read served once is served
// again without touching the network, by this mount, by other mounts on
// the node, and after a restart.
//
// # What it owns
//
// [Cache] is the read-through front that the layer reader calls:
// [Cache.Get] returns cached bytes for a [Key] or runs the caller's fill
// function once, however many readers ask for the same key at the same
// time, and stores what it returns. Behind the front sit two tiers:
//
//   - [Memory], a bytes-bounded in-memory tier built on ristretto, private
//     to the process, with an eighth of its bound (at most 64 MiB) kept
//     for the values put last, which ristretto's admission refuses once
//     it is full but readers of a large file ask for again at once;
//   - [Disk] (when Options.Dir is set), a directory of entry files with a
//     hard byte quota and least-recently-used eviction, shared by every
//     process on the node that opens the same directory and kept across
//     restarts. lazyroot puts it at STATE_ROOT/cache.
//
// A Get looks in memory, then on disk (a disk hit is put in memory too),
// then fills; a fill's result goes to memory at once and to disk just
// after (see Write-behind). [OpenDisk], [Disk.Usage] and [Disk.Prune]
// also serve maintenance commands that run without a Cache.
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
//   - Nothing damaged is served from disk: every entry file carries a
//     CRC-32C over its key and data, its lengths and its key, all checked
//     on each read. A file that fails (bad checksum, wrong length or key,
//     unreadable, not a regular file) is reported as a miss, so the fill
//     runs again, counted in Stats.DiskCorrupt, and removed; if the
//     directory lock is busy the read does not wait for it, and leaves
//     the file for a later read to remove (until then, a put of its key
//     finds an entry present and writes nothing).
//   - Entries appear whole or not at all: a writer fills a temp file in
//     the entry's directory and renames it into place.
//   - Stored byte slices are shared, not copied: the slice given to
//     [Memory.Put] (or returned by a fill) is the slice later Gets return.
//     Neither the producer nor any reader may modify it afterwards.
//   - The memory tier holds at most its configured number of bytes (value
//     lengths plus a small per-entry overhead). An entry may be refused or
//     evicted at any time to keep that bound; a miss is always safe.
//   - The disk tier's files (entries and temp files; not the lock file or
//     directories) never hold more than the quota, across all processes
//     sharing the directory, provided they all use the same quota. This
//     is stricter than "at most one chunk over": space is reserved before
//     a byte is written.
//   - The quota is per process, not a property of the directory: each
//     process enforces its own on its own writes, against the usage of
//     all. A process with a larger quota can fill the directory past a
//     smaller one's, which then evicts to get back under its own. So every
//     process sharing a directory should use the same quota (lazyroot's
//     --cache-size).
//   - Usage counts logical file sizes (st_size: header, key and data),
//     not the blocks the filesystem allocates, so du(1) may report
//     somewhat more (block rounding, directories, the lock file).
//   - Disk errors never fail a Get. A write that fails (full disk, EDQUOT,
//     I/O error, no room, the directory lock busy) removes its temp file
//     and leaves the entry absent; it is counted in Stats.DiskWriteErrors
//     and logged through Options.Logf at most once a minute.
//   - Every wait for the directory lock has a bound (see Bounded waits):
//     a process that holds it forever (stopped, frozen, a long prune)
//     costs the others their disk writes and removals of damaged entries,
//     never a read.
//
// # Disk layout
//
//	DIR/lock                       lock file; its first 32 bytes are the usage record
//	DIR/ab/abcdef…(64 hex)         an entry: hex SHA-256 of the key, sharded by its first byte
//	DIR/ab/abcdef….file            a file entry: a whole file's bytes alone (see PutFile)
//	DIR/ab/.tmp-SIZE-RANDOM        a write in progress that reserved SIZE bytes
//
// An entry file is a 20-byte header (magic, CRC-32C of the rest of the
// file, key length, data length), the key, then the data. The usage
// record holds the bytes and count of committed entries and the bytes
// reserved by writes in progress, with its own CRC.
//
// A file entry ([Disk.PutFile], [Disk.OpenFile]) holds a whole file's
// bytes and nothing else, for readers that need a plain file (FUSE
// passthrough). It has no checksum: the writer checks the bytes it writes,
// the file is fsynced before it is renamed into place, and an open checks
// its type and size. It counts against the quota and ages like any entry.
//
// An entry's mtime is its LRU clock: set when written, refreshed by a disk
// hit when more than a minute old (so hits cost no extra syscall most of
// the time). Eviction removes the oldest mtimes first. A hit in the
// memory tier refreshes the disk entry too, by path, at most once a
// minute per key in each process (a process remembers the last refresh
// of up to 16384 keys; when it has more it forgets them all, which costs
// each one extra refresh), so an entry kept hot in memory does not look
// unused on disk.
//
// # Cross-process protocol
//
// Every change to the set of files, and to the usage record, happens
// under an exclusive flock(2) on DIR/lock: creating a temp file, renaming
// it into place, removing a temp file, evicting, pruning, removing a bad
// entry, and scanning. Reading an entry, refreshing its mtime and writing
// a temp file's bytes take no lock. A put goes:
//
//  1. Outside the lock: return if the entry exists (same key, same bytes).
//  2. Under the lock (reserve): read the usage record; if committed plus
//     reserved plus this entry's size would pass the quota, scan the
//     directory and remove entries, oldest mtime first, until it would fit
//     under 90% of the quota (or nothing evictable is left; the put then
//     fails if it still does not fit). Create the temp file, named with the
//     size it reserves, take a flock on it, add its size to "reserved" in
//     the record.
//  3. Outside the lock: write header, key and data into the temp file.
//  4. Under the lock (commit): rename the temp file over the entry's name
//     (or remove it if the write failed) and move its size from reserved
//     to committed (less the size of any file the rename replaced). Then
//     close it, dropping its flock. If the writer cannot get the lock in
//     time (see Bounded waits), it removes its temp file without the lock
//     and leaves its reservation counted until the next scan: files only
//     vanish, so the bound below still holds.
//
// So under the lock, the files present add up to no more than committed
// plus reserved, which never passes the quota.
//
// A scan (at OpenDisk, at every eviction, in Usage and Prune, and whenever
// the record is missing or damaged) recomputes the record from the files:
// entries by their sizes, temp files by the size in their names if their
// writer is alive. A writer holds its temp file's flock from creation to
// rename or removal, both under the directory lock, so a temp file whose
// flock the scanner can take belongs to a writer that died: the scan
// removes it. A crash can only leave the record counting too much
// (a reservation or a removed file still counted), never too little, so
// the quota holds until the next scan corrects it. Readers may see a file
// vanish (miss) or keep reading one removed under them (the open
// descriptor still reads the old, complete bytes); they never see a
// partial file, except after a power loss (entries are not fsynced), and
// the checksum catches that.
//
// A damaged entry is removed under the lock only if the name still refers
// to the file that was read (same device and inode), so a sound entry
// written meanwhile by another process is not removed.
//
// flock locks belong to the open file description, so the directory must
// be on a local filesystem (NFS emulates flock with per-process locks).
//
// # Bounded waits
//
// Another process may hold DIR/lock for long: a `lazyroot cache prune` of
// a large directory, OpenDisk's scan at another mount's start, or a
// process stopped or frozen while holding it. flock(2) has no timed wait,
// so the lock is tried with LOCK_NB, pausing between tries (100µs
// doubling to 5ms), until a deadline:
//
//   - removing a damaged entry (in Disk.Get, so inside a Get's lookup):
//     no wait at all; if the lock is busy the entry stays for a later
//     read to remove, and the Get goes on to fill.
//   - a put: at most 2 s to reserve and 2 s to commit; the put then fails
//     cleanly (counted, logged, temp file removed). After such a failure,
//     puts for the next 2 s try the lock once and fail at once, so writes
//     do not pile up behind it.
//   - OpenDisk's scan: at most 2 s; if the lock stays busy OpenDisk opens
//     without the scan (and logs so).
//   - Usage and Prune (maintenance commands): at most 30 s, then an error.
//   - Cache.Close: see Write-behind.
//
// Disk.Close ends every wait for the lock at once (ErrClosed).
//
// # Lock order
//
// Outermost first; no lock is taken while a later one is held, except as
// listed:
//
//  1. Disk.life (RWMutex: read-held by every Disk operation, write-held by
//     Disk.Close).
//  2. Disk.turn (this process's turn at the lock file's descriptor: flock
//     does not exclude two goroutines using one descriptor; a channel, so
//     that its wait can be bounded).
//  3. flock on DIR/lock (node-wide).
//  4. flock on a temp file, held by its writer only.
//
// The exception: commit (step 4 of a put) takes 2 and 3 while holding its
// temp file's flock (4). That cannot deadlock: nobody ever waits for a
// temp file's flock. The only other taker is a scan (under 3), which
// tries it with LOCK_NB and counts the file as a live writer's when it
// fails. (And the waits for 2 and 3 are bounded anyway.)
//
// Cache.wmu (write-behind state) and Memory.mu are taken while holding no
// other lock of the package; none is taken under Cache.wmu, and under
// Memory.mu only ristretto's own and the leaf recent.mu (the values put
// last).
//
// # Concurrency
//
// All methods of [Cache], [Memory] and [Disk] are safe for concurrent use.
// A fill (with its disk lookup before it) runs on its own goroutine with a
// context derived from the first caller's context by
// [context.WithoutCancel]: one waiter giving up (its context ends, and it
// returns ctx.Err()) does not cancel the fill for the others. The cache
// puts no deadline on a fill, so the fill itself must bound its waits. A
// fill that panics crashes the process, as any unrecovered panic does.
//
// After [Memory.Put] returns, a Get of the same key hits unless the entry
// was refused or evicted to honour the bound; Cache relies on this so that
// a reader arriving just after a fill finishes does not fill again.
//
// # Write-behind
//
// A fill's result is returned to its waiters without waiting for the
// disk: the fill's goroutine puts it in memory and hands it to a write
// goroutine, at most two of which write at a time per Cache (so one Cache
// holds at most two reservations in the quota). Until the write lands, the
// bytes are also kept in a pending set that Get consults, so a key whose
// memory entry was refused is not filled twice. At most 256 MiB may wait;
// fills beyond that are not written (Stats.DiskWritesSkipped).
// [Cache.Flush] waits until nothing is pending; tests use it to know a
// write landed.
//
// Close waits up to 5 s for pending disk writes, then drops what has not
// landed (counted in Stats.DiskWritesSkipped): writes waiting for the
// directory lock give up at once, writes not yet started are not made. It
// then releases both tiers. So Close returns in bounded time even if
// another process holds the directory lock forever. It may race with
// Gets and fills still running: afterwards the tiers miss and drop puts,
// and [Cache.Get] returns [ErrClosed].
package cache
