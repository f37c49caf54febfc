package index

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fullIndex is an index with every member set somewhere.
func fullIndex() *Index {
	mt := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	return &Index{
		Layer:  "sha256:" + strings.Repeat("ab", 32),
		Format: FormatGzip,
		Entries: []Entry{
			{Name: "", Type: TypeDir, Mode: 0o755, ModTime: mt},
			{Name: "bin/ünï \"q\"\\", Type: TypeReg, Mode: 0o4755, UID: 1000, GID: -1, Size: 9, ModTime: mt,
				Xattrs: map[string][]byte{"security.capability": {1, 0, 0xff}, "user.empty": {}},
				Chunks: []Chunk{{Offset: 0, Size: 4, BlobOffset: 512, BlobEnd: 516, Digest: "sha256:x"}, {Offset: 4, Size: 5, BlobOffset: 516, BlobEnd: 530, InnerOffset: 3}}},
			{Name: "lnk", Type: TypeSymlink, Linkname: "bin/\u2713", ModTime: mt.Add(time.Hour)},
			{Name: "dev", Type: TypeChar, Devmajor: 4294967295, Devminor: 7, ModTime: time.Date(1969, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600))},
		},
		Spans:    []Span{{Out: 0, InBits: 80, Digest: "sha256:s0"}, {Out: 1 << 20, InBits: 8 << 20, Digest: "sha256:s1", WinOff: 5, WinLen: 6, WinSize: 7, WinDigest: "sha256:w"}},
		BlobSize: 1 << 30,
		TarSize:  3 << 30,
		Windows:  &BlobRef{Digest: "sha256:win", Size: 99},
		Prefetch: 2,
	}
}

// sameIndex decodes doc both ways and compares.
func sameIndex(t *testing.T, doc []byte) {
	t.Helper()
	var want Index
	if err := json.Unmarshal(doc, &want); err != nil {
		t.Fatalf("%q: encoding/json: %v", doc, err)
	}
	var got Index
	if err := decodeIndexJSON(doc, &got); err != nil {
		t.Fatalf("%q: %v", doc, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: decoded\n%+v\nencoding/json reads\n%+v", doc, got, want)
	}
}

func TestDecodeIndexJSONAgreesWithEncodingJSON(t *testing.T) {
	full, err := json.Marshal(fullIndex())
	if err != nil {
		t.Fatal(err)
	}
	for name, doc := range map[string]string{
		"every member": string(full),
		"empty":        `{}`,
		"null":         `null`,
		"members in any case": `{"LAYER":"l","Format":"tar","ENTRIES":[{"NAME":"a","Type":1,"MTime":"2020-01-02T03:04:05Z",` +
			`"Chunks":[{"OFF":0,"Size":1,"BOFF":2,"BEnd":3,"Digest":"d"}]}],"Spans":[{"OUT":1,"IN":2,"WDigest":"w"}],"Windows":{"DIGEST":"x","SIZE":1}}`,
		"unknown members":   `{"x":[1,{"y":null}],"entries":[{"name":"a","z":"}","chunks":[{"q":[],"off":1}]}],"spans":[{"w":true}]}`,
		"nulls":             `{"layer":null,"entries":[{"name":null,"type":null,"mtime":null,"xattrs":null,"chunks":null,"mode":null}],"windows":null,"spans":null}`,
		"null elements":     `{"entries":[null,{"name":"a"},null],"spans":[null],"entries":[{"chunks":[null]}]}`,
		"repeated members":  `{"entries":[{"name":"a","size":5},{"name":"b"}],"entries":[{"name":"c"}],"windows":{"size":3},"windows":{"digest":"d"}}`,
		"emptied then more": `{"entries":[{"name":"a","size":5},{"name":"b"}],"entries":[],"entries":[{"name":"c"},{"type":2}]}`,
		"bounds":            `{"entries":[{"type":255,"mode":4294967295,"devmajor":0,"uid":-9223372036854775808,"size":9223372036854775807}]}`,
		"times":             `{"entries":[{"mtime":"2020-01-02T03:04:05.5+01:00"},{"mtime":"2020-01-02T03:04:05.5+01:00"},{"mtime":"0001-01-01T00:00:00Z"}]}`,
		"unknown format":    `{"format":"lz4"}`,
		"xattrs as numbers": `{"entries":[{"xattrs":{"a":[1,2,null,255],"e":[]}}]}`,
	} {
		t.Run(name, func(t *testing.T) { sameIndex(t, []byte(doc)) })
	}
}

func TestDecodeIndexJSONRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		jsonToo   bool // encoding/json refuses it too
	}{
		{"truncated", `{"entries":[{"name":"a"`, true},
		{"type over a byte", `{"entries":[{"type":256}]}`, true},
		{"negative mode", `{"entries":[{"mode":-1}]}`, true},
		{"negative zero mode", `{"entries":[{"mode":-0}]}`, true},
		{"mode over 32 bits", `{"entries":[{"mode":4294967296}]}`, true},
		{"fractional size", `{"entries":[{"size":1.5}]}`, true},
		{"bad time", `{"entries":[{"mtime":"yesterday"}]}`, true},
		{"time not a string", `{"entries":[{"mtime":5}]}`, true},
		{"escaped time", `{"entries":[{"mtime":"2020-01-02T03:04:05\u005a"}]}`, true},
		{"entry not an object", `{"entries":[1]}`, true},
		{"windows not an object", `{"windows":[]}`, true},
		{"string for a number", `{"blobSize":"1"}`, true},
		{"data after the object", `{} x`, true},
		{"not an object", `[]`, true},
		{"deep nesting", `{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var x Index
			if err := decodeIndexJSON([]byte(tc.doc), &x); err == nil {
				t.Fatalf("%q decoded", tc.doc)
			}
			var y Index
			if err := json.Unmarshal([]byte(tc.doc), &y); (err != nil) != tc.jsonToo {
				t.Errorf("encoding/json: %v; want refused: %v", err, tc.jsonToo)
			}
		})
	}
}

// TestDecodeReadsWhatEncodeWrote: Decode of Encode's output gives the index
// back, through the decoder of this package.
func TestDecodeReadsWhatEncodeWrote(t *testing.T) {
	x := fullIndex()
	// A valid tar index: no spans, chunks where the blob holds them.
	x.Format, x.Spans, x.Windows, x.BlobSize, x.TarSize, x.Prefetch = FormatTar, nil, nil, 0, 0, 1
	x.Entries = x.Entries[1:3]
	x.Entries[0].Chunks = []Chunk{{Offset: 0, Size: 9, BlobOffset: 0, BlobEnd: 9, Digest: "sha256:" + strings.Repeat("cd", 32)}}
	var buf bytes.Buffer
	if err := x.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, x) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", got, x)
	}
}

// FuzzDecodeIndexJSON checks that decodeIndexJSON reads what
// encoding/json reads into an Index, refusing only what it is documented
// to be stricter about.
func FuzzDecodeIndexJSON(f *testing.F) {
	full, _ := json.Marshal(fullIndex())
	f.Add(full)
	for _, seed := range []string{
		`{"entries":[{"name":"a","size":5}],"entries":[{"name":"c"},null]}`,
		`{"Entries":[{"MTIME":"2020-01-02T03:04:05Z","type":3,"chunks":[{"off":1}]}],"windows":{"size":1}}`,
		"{\"layer\":\"a\xff\\ud800\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		var got, want Index
		err := decodeIndexJSON(doc, &got)
		jerr := json.Unmarshal(doc, &want)
		switch {
		case err == nil && jerr != nil:
			t.Fatalf("%q: decoded, encoding/json refuses it: %v", doc, jerr)
		case err != nil && jerr == nil:
			if strings.Contains(err.Error(), "nested") {
				return // stricter by design
			}
			t.Fatalf("%q: %v; encoding/json reads it", doc, err)
		case err == nil && !reflect.DeepEqual(got, want):
			t.Fatalf("%q: decoded\n%+v\nencoding/json reads\n%+v", doc, got, want)
		}
	})
}
