package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	kgzip "github.com/klauspost/compress/gzip"
)

// EncodingVersion is the version Encode writes and Decode accepts. Version
// 2 added the seekable formats (gzip and zstd spans); version 3 the
// prefetch landmark of eStargz TOCs (Index.Prefetch); version 4 moved the
// windows of gzip spans out of the index into a blob of their own.
const EncodingVersion = 4

// encodingMagic starts every encoded index.
var encodingMagic = [8]byte{'L', 'Z', 'R', 'I', 'D', 'X', 0, '\n'}

// maxEncodedSize bounds the encoded index Decode accepts.
const maxEncodedSize = 256 << 20

// maxExpansion and maxDecodedSize bound the JSON an encoded index may
// expand to: honest indexes compress a few times, a crafted one could
// expand a thousandfold.
const (
	maxExpansion   = 64
	maxDecodedSize = 1 << 30
)

// ErrVersion reports an encoded index written by another version: rebuild it.
var ErrVersion = errors.New("unsupported index version")

// ErrChecksum reports an encoded index whose bytes were damaged.
var ErrChecksum = errors.New("index checksum mismatch")

// Encode writes x as: magic, version (uint32), payload length (uint64),
// payload (gzip of JSON), and the sha256 of everything before it.
func (x *Index) Encode(w io.Writer) error {
	var payload bytes.Buffer
	// klauspost's fastest level takes half the time of the standard
	// writer's default (mostly JSON is left), for about as many bytes.
	zw, err := kgzip.NewWriterLevel(&payload, kgzip.BestSpeed)
	if err != nil {
		return fmt.Errorf("encode index of %s: %w", x.Layer, err)
	}
	if err := json.NewEncoder(zw).Encode(x); err != nil {
		return fmt.Errorf("encode index of %s: %w", x.Layer, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("encode index of %s: %w", x.Layer, err)
	}
	var head [20]byte
	copy(head[:8], encodingMagic[:])
	binary.BigEndian.PutUint32(head[8:12], EncodingVersion)
	binary.BigEndian.PutUint64(head[12:20], uint64(payload.Len()))
	h := sha256.New()
	h.Write(head[:])
	h.Write(payload.Bytes())
	for _, b := range [][]byte{head[:], payload.Bytes(), h.Sum(nil)} {
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("write index of %s: %w", x.Layer, err)
		}
	}
	return nil
}

// Decode reads an index written by Encode and validates it. A damaged,
// truncated or foreign input fails with ErrChecksum or ErrMalformed, one from
// another version with ErrVersion.
func Decode(r io.Reader) (*Index, error) {
	var head [20]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, fmt.Errorf("decode index: %w: header: %w", ErrMalformed, err)
	}
	if !bytes.Equal(head[:8], encodingMagic[:]) {
		return nil, fmt.Errorf("decode index: %w: not an index", ErrMalformed)
	}
	if v := binary.BigEndian.Uint32(head[8:12]); v != EncodingVersion {
		return nil, fmt.Errorf("decode index: %w %d (want %d)", ErrVersion, v, EncodingVersion)
	}
	n := binary.BigEndian.Uint64(head[12:20])
	if n > maxEncodedSize {
		return nil, fmt.Errorf("decode index: %w: payload of %d bytes", ErrMalformed, n)
	}
	// Read what is there rather than allocate what the header claims.
	body, err := io.ReadAll(io.LimitReader(r, int64(n)+sha256.Size))
	if err != nil {
		return nil, fmt.Errorf("decode index: %w", err)
	}
	if uint64(len(body)) != n+sha256.Size {
		return nil, fmt.Errorf("decode index: %w: truncated at %d of %d bytes", ErrChecksum, len(body), n+sha256.Size)
	}
	payload, sum := body[:n], body[n:]
	h := sha256.New()
	h.Write(head[:])
	h.Write(payload)
	if !bytes.Equal(h.Sum(nil), sum) {
		return nil, fmt.Errorf("decode index: %w", ErrChecksum)
	}
	// klauspost's reader inflates about twice as fast as the standard one.
	zr, err := kgzip.NewReader(bytes.NewReader(payload))
	if err != nil {
		return nil, fmt.Errorf("decode index: %w: %w", ErrMalformed, err)
	}
	limit := min(maxDecodedSize, int64(n)*maxExpansion+(1<<20))
	// Index JSON compresses about eight times: room for that at once, up
	// to a bound; more only as it comes.
	buf := bytes.NewBuffer(make([]byte, 0, min(limit, 12*int64(n)+4096, 64<<20)))
	if _, err := buf.ReadFrom(io.LimitReader(zr, limit+1)); err != nil {
		return nil, fmt.Errorf("decode index: %w: %w", ErrMalformed, err)
	}
	js := buf.Bytes()
	if int64(len(js)) > limit {
		return nil, fmt.Errorf("decode index: %w: payload expands over %d bytes", ErrMalformed, limit)
	}
	x := new(Index)
	if err := decodeIndexJSON(js, x); err != nil {
		return nil, fmt.Errorf("decode index: %w: %w", ErrMalformed, err)
	}
	if err := x.Validate(); err != nil {
		return nil, fmt.Errorf("decode index: %w", err)
	}
	return x, nil
}
