// Package fetch gives random access to blobs in a remote OCI or Docker
// registry, and in its mirrors, with HTTP Range requests.
//
// # What it owns
//
// fetch knows HTTP and registries and nothing about tar, compression or
// indexes. It owns:
//
//   - the blob URL ({scheme}://{host}{root}/{repository}/blobs/{digest},
//     with ?ns={registry} on a mirror, as containerd sends it);
//   - the endpoints of a registry: mirrors and a server override read from a
//     containerd-style hosts directory ([WithHostsDir], [LoadHosts]), with
//     their TLS settings (ca, client, skip_verify), headers, proxies and
//     dial timeouts;
//   - the authentication handshake (go-containerregistry's transport with
//     pull scope), done once per endpoint and repository and cached in the
//     [Client], and done again when a registry answers 401; which
//     credentials each host gets;
//   - Range requests, single and multi-range ([RemoteBlob.ReadRanges]),
//     and the checks on their answers (status, Content-Range,
//     Content-Length, body length, multipart parts);
//   - retries with exponential backoff and jitter, Retry-After, and
//     per-attempt timeouts; falling through from a failing mirror to the
//     next endpoint, and skipping a misbehaving mirror for a while;
//   - following redirects to blob storage without sending credentials
//     there, and reusing the storage URL for later reads of the blob;
//   - a bound on the requests in flight per host ([WithMaxConnsPerHost]);
//   - sharing one request among concurrent reads of the same bytes;
//   - byte and request counters, in total, per host and per blob ([Stats],
//     [RemoteBlob.Stats]);
//   - manifests and small blobs (an image config) through the same
//     endpoints when a registry has mirrors ([Client.Manifest],
//     [Client.BlobBytes], [Client.HasMirrors]): a tag from the endpoints
//     that may resolve, anything by digest from those that may pull, the
//     origin last, every answer by digest checked against its digest and
//     size before it is used (see manifest.go). These are not counted in
//     [Stats], which is about layer reads;
//   - the listing of an image's referrers from its registry, with or
//     without the referrers API in one round trip ([Client.Referrers]);
//   - a mount's first connections dialed ahead, while the image is
//     resolved ([Client.Prepare]), and an idle connection kept for each
//     request allowed in flight per host; other requests to the same
//     hosts may share them ([Client.SharedTransport]).
//
// # Endpoints and mirrors
//
// For a registry HOST[:PORT] the first existing directory of
// DIR/HOST_PORT_, DIR/HOST[:PORT] and DIR/_default (Docker Hub: DIR/docker.io)
// is read. Its hosts.toml lists mirrors as [host."URL"] sections, tried in
// file order, and optionally the registry's own address as server; the
// server (by default the registry) comes last. Only endpoints with the
// "pull" capability serve blobs. hosts.toml is read by [Client.Blob], so
// a changed file applies to blobs opened afterwards. The file is read by a
// small TOML reader that rejects, with a line number, the TOML it does not
// know (multi-line strings, floats, dates, inline tables, arrays of
// tables), files larger than 1 MiB and arrays nested more than 8 deep.
//
// A mirror that fails (no connection, an error status, a bad or broken
// answer, a handshake that fails) passes the read to the next endpoint
// without a pause and is skipped for 30 seconds; one that only lacks the
// blob (404) is skipped for that blob. After a pause for a failing server,
// skipped mirrors are tried again. A mirror that answers a partial Range
// request with 200 (a cold pull-through cache about to stream the whole
// blob) fails at once: its body is closed unread, so a small read never
// becomes a whole download. Only the last endpoint may do that; its
// leading bytes are then skipped.
//
// # Credentials
//
// [WithAuth] is for the registry named in the image reference: endpoints
// on its host get it (or, without it, the [WithKeychain] credentials for
// the repository), as go-containerregistry gives them. An endpoint on
// another host (a mirror, a server override elsewhere) never gets
// WithAuth's credentials: it gets those the keychain holds for its own
// host (as containerd resolves them per host), or none without a
// keychain, and only once it has asked for them (401 with
// WWW-Authenticate), through its own handshake; a bearer token service
// it names is asked without credentials when there are none. No endpoint
// that hosts.toml names with plain http:// on a host other than loopback
// (127.0.0.0/8, ::1, localhost) gets any credentials, nor a token
// obtained with them. Both options may be given: the layer above passes
// WithAuth with the registry's credentials, and WithKeychain when the
// user named no credentials of their own.
//
// # Redirects
//
// Registries usually redirect a blob GET to a signed storage URL. fetch
// follows redirects itself: a hop to another host than the endpoint's goes
// without credentials, without hosts.toml headers and through the base
// transport, not with the endpoint's TLS (ca, client, skip_verify), proxy
// or dial settings; the final
// storage URL is kept per blob and endpoint for [WithRedirectMaxAge]
// (default 5 minutes), or until shortly before the expiry the URL states
// (X-Amz-Date/X-Amz-Expires, X-Goog-Date/X-Goog-Expires, Expires, se),
// whichever comes first. Later reads go straight to storage. When a reused
// URL fails in any way (a refusal such as 403, a redirect, a 5xx, no
// answer, a bad answer) it is dropped and the registry is asked again at
// once, without a pause; that happens at most once per read, after which
// failures are retried as usual.
//
// # Multi-range reads
//
// [RemoteBlob.ReadRanges] reads several ranges of a blob (sorted, not
// overlapping, within the blob) with one GET naming them all
// (bytes=a-b,c-d; adjacent ranges merged into one; at most 64 per
// request), sent like a ReadAt request: endpoints in order, credentials,
// redirects and storage URLs, retries, limits and counters. A
// multipart/byteranges answer is parsed as it streams: every part's
// Content-Range must name bytes asked for (a part may hold several
// ranges, and the few bytes between ranges a server merged) in a blob of
// the right size, and its payload must be exactly that long. Besides the
// bytes asked for, part headers, boundaries and merged gaps may take up
// 8 KiB and 1 KiB per range; an answer that holds more is cut off. Bytes
// that did not come are asked for again, and only they. An endpoint host that does not serve multi-range
// requests (it answers 400 or 416, the whole blob, one range of several,
// or a multipart answer that fails those checks) is remembered in the
// Client for as long as it lives (HostStats.NoMultiRange): its ranges are
// then read one run of adjacent ranges per request, several at a time,
// a lone range through ReadAt (so shared with concurrent reads of the
// same bytes). A 400 or 416 is no failure of the blob nor of the host. A
// mirror's whole-blob answer is dropped unread as for ReadAt; the
// registry's serves the read, its stream read up to the last range.
//
// # Invariants
//
//   - The size of a blob comes from its descriptor. fetch never sends a HEAD
//     request and never asks the registry how big a blob is.
//   - [Client.Blob] sends no request for the blob itself. When the
//     registry is the only endpoint it authenticates there, so bad
//     credentials show at once; with mirrors, each endpoint authenticates
//     when first used (so a node that reaches only its mirror works).
//   - [RemoteBlob.ReadAt] sends only closed ranges (bytes=a-b), clamped to
//     the blob size. It returns bytes only when the server said they are
//     exactly the bytes asked for: a 206 whose Content-Range matches the
//     request, or a 200 from the last endpoint from which the leading
//     bytes were skipped. A short body is a temporary failure and the rest
//     is asked for (from the next endpoint, if a mirror broke off);
//     ReadAt never returns fewer bytes than asked without an error.
//     ReadRanges sends closed ranges too, and copies bytes into a buffer
//     only from a part or body whose Content-Range was checked; it returns
//     nil only when every buffer is filled.
//   - fetch does not verify digests. [RemoteBlob.Open] streams the whole blob
//     and the caller checks its digest; bytes from ReadAt are checked by the
//     caller against whatever digest its format provides.
//   - Every wait has a bound: each HTTP attempt gives up when no response
//     or no body bytes arrive within the request timeout, the number of
//     retries is bounded, no backoff sleep reaches past the context
//     deadline (fetch gives up at once instead), and waiting for a
//     connection slot ends with the context. A failed handshake is one
//     attempt of the read that needed it, not a retry loop of its own.
//   - Credentials never reach a storage host a registry redirects to, nor
//     a mirror that did not ask for them; [WithAuth]'s never reach another
//     host than the registry's; none travel over plain HTTP beyond this
//     machine to an endpoint named in hosts.toml.
//
// # Errors
//
// Failed reads return an [*Error] that names the digest and byte range,
// carries the HTTP status when there was one and says whether a retry may
// help. When mirrors failed too, the error is the last endpoint's. A
// missing blob wraps [ErrNotFound] and refused credentials wrap
// [ErrUnauthorized]; neither is retried (a 401 is answered with one new
// handshake first). When the context ends, the error wraps the context's
// error and names the last failure before it, if any: then Temporary is
// that failure's, so a registry that is down past the deadline yields a
// temporary error.
//
// # Concurrency
//
// A [Client] and the [RemoteBlob] values it returns are safe for concurrent
// use; ReadAt and ReadRanges calls on one blob run in parallel. Calls that ask for the
// same bytes of the same blob in the same repository while a request for
// them is in flight wait for it and copy its bytes; if the call that
// started the request is canceled first, the others carry on with a
// request of their own. At most [WithMaxConnsPerHost] requests per host
// are in flight; a request holds its slot until its body is closed, so a
// stream from Open holds one for as long as it is open. The
// authentication handshake for an endpoint and repository runs once, even
// when many goroutines ask for it at the same time, and outlives the
// context of the caller that started it only up to its own timeouts.
// Counters are atomic. The reader returned by Open, like any io.Reader, is
// for one goroutine at a time. Sharing one Client among every image of a
// node makes the per-host bound and the sharing of requests node-wide.
//
// # Transports and proxies
//
// The default transport takes its proxy from HTTPS_PROXY, HTTP_PROXY and
// NO_PROXY (as net/http reads them, once per process); hosts.toml's proxy
// overrides them for one endpoint. An endpoint with TLS, proxy or dial
// settings gets a clone of the base transport with them. To put
// behaviour of its own on every request (a guard on schemes, logging),
// the caller gives [WithTransportWrapper]: fetch wraps the base transport
// and each endpoint's transport with it, so nothing fetch sends goes
// around it ([Client.SharedTransport] returns the base unwrapped: whoever
// sends through it wraps it as needed).
// A transport given with [WithTransport] (meant for tests) decides for
// itself about proxies; it must be an *http.Transport for endpoints with
// settings of their own, else Blob fails for that registry.
package fetch
