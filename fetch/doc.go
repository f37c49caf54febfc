// Package fetch gives random access to blobs in a remote OCI or Docker
// registry with HTTP Range requests.
//
// # What it owns
//
// fetch knows HTTP and registries and nothing about tar, compression or
// indexes. It owns:
//
//   - the blob URL ({scheme}://{registry}/v2/{repository}/blobs/{digest});
//   - the authentication handshake (go-containerregistry's transport with
//     pull scope), done once per repository and cached in the [Client];
//   - Range requests and the checks on their answers (status,
//     Content-Range, Content-Length, body length);
//   - retries with exponential backoff and jitter, Retry-After, and
//     per-attempt timeouts;
//   - following redirects to blob storage without sending registry
//     credentials there;
//   - byte and request counters ([Stats]).
//
// # Invariants
//
//   - The size of a blob comes from its descriptor. fetch never sends a HEAD
//     request and never asks the registry how big a blob is.
//   - [Client.Blob] authenticates but sends no request for the blob itself.
//   - [RemoteBlob.ReadAt] sends only closed ranges (bytes=a-b), clamped to
//     the blob size. It returns bytes only when the server said they are
//     exactly the bytes asked for: a 206 whose Content-Range matches the
//     request, or a 200 (the server ignored Range) from which the leading
//     bytes were skipped. A short body is a temporary failure and is
//     retried from where it stopped; ReadAt never returns fewer bytes than
//     asked without an error.
//   - fetch does not verify digests. [RemoteBlob.Open] streams the whole blob
//     and the caller checks its digest; bytes from ReadAt are checked by the
//     caller against whatever digest its format provides.
//   - Every wait has a bound: each HTTP attempt gives up when no response
//     or no body bytes arrive within the request timeout, the number of
//     retries is bounded, and no backoff sleep reaches past the context
//     deadline (fetch gives up at once instead).
//
// # Errors
//
// Failed reads return an [*Error] that names the digest and byte range,
// carries the HTTP status when there was one and says whether a retry may
// help. A missing blob wraps [ErrNotFound] and refused credentials wrap
// [ErrUnauthorized]; neither is retried. When the context ends, the error
// wraps the context's error.
//
// # Concurrency
//
// A [Client] and the [RemoteBlob] values it returns are safe for concurrent
// use; ReadAt calls on one blob run in parallel, each with its own HTTP
// requests. The authentication handshake for a repository runs once, even
// when many goroutines ask for blobs of it at the same time, and outlives
// the context of the caller that started it only up to its own timeouts.
// Counters are atomic. The reader returned by Open, like any io.Reader, is
// for one goroutine at a time.
package fetch
