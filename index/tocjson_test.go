package index

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/stargz-snapshotter/estargz"
)

// jtocEntries decodes b as estargz's TOC types with encoding/json, the
// reference decodeTOCJSON agrees with.
func jtocEntries(b []byte) ([]tocEntry, bool, error) {
	var toc estargz.JTOC
	if err := json.Unmarshal(b, &toc); err != nil {
		return nil, false, err
	}
	var out []tocEntry
	for _, te := range toc.Entries {
		if te == nil {
			return nil, true, nil // an entry decodeTOCJSON refuses
		}
		out = append(out, tocEntry{
			Name: te.Name, Type: te.Type, ModTime: te.ModTime3339, LinkName: te.LinkName,
			Digest: te.Digest, ChunkDigest: te.ChunkDigest,
			Size: te.Size, Mode: te.Mode, Offset: te.Offset, InnerOffset: te.InnerOffset,
			ChunkOffset: te.ChunkOffset, ChunkSize: te.ChunkSize,
			UID: int64(te.UID), GID: int64(te.GID), DevMajor: int64(te.DevMajor), DevMinor: int64(te.DevMinor),
			Xattrs: te.Xattrs,
		})
	}
	return out, false, nil
}

// sameEntries compares decodeTOCJSON's result with the reference's.
func sameEntries(t *testing.T, doc []byte, got, want []tocEntry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%q: %d entries, encoding/json %d", doc, len(got), len(want))
	}
	for i := range got {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Fatalf("%q: entry %d is\n%+v\nencoding/json reads\n%+v", doc, i, got[i], want[i])
		}
	}
}

// builtTOCJSON returns the TOC JSON estargz writes for a layer of entries.
func builtTOCJSON(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	blob, _ := buildTOCBlob(t, makeTar(t, entries...), FormatEStargz)
	footer := blob[len(blob)-int(estargz.FooterSize):]
	_, off, _, err := (&estargz.GzipDecompressor{}).ParseFooter(footer)
	if err != nil {
		t.Fatal(err)
	}
	js, err := tocJSON(blob[off:len(blob)-len(footer)], FormatEStargz)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestDecodeTOCJSONAgreesWithEncodingJSON(t *testing.T) {
	built := builtTOCJSON(t,
		tarEntry{name: "d/", typ: tar.TypeDir, mode: 0o750},
		tarEntry{name: "d/big", content: strings.Repeat("0123456789", 1000), mode: 0o4711, xattrs: map[string]string{"user.a": "b", "security.capability": "\x01\x00\xff"}},
		tarEntry{name: "d/quo\"te\\back\tslash", content: "q"},
		tarEntry{name: "d/ünïcødé ✓ 𝄞", content: "u"},
		tarEntry{name: "d/ctl\x01\x7f", content: "c"},
		tarEntry{name: "d/sym", typ: tar.TypeSymlink, link: "../big"},
		tarEntry{name: "d/hard", typ: tar.TypeLink, link: "d/big"},
		tarEntry{name: "d/dev", typ: tar.TypeChar},
		tarEntry{name: "d/.wh..wh..opq"},
	)
	docs := map[string]string{
		"estargz's own TOC": string(built),
		"empty":             `{}`,
		"no entries":        `{"version":1,"entries":[]}`,
		"null entries":      `{"version":1,"entries":null}`,
		"members in any case": `{"VERSION":1,"Entries":[{"NAME":"a","Type":"reg","SIZE":3,"Offset":9,` +
			`"CHUNKDIGEST":"sha256:x","linkname":"l","ModTime":"2020-01-02T03:04:05Z","Xattrs":{"k":"dg=="}}]}`,
		"unknown members skipped": `{"x":{"a":[1,2,{"b":null}],"c":"}"},"entries":[{"name":"a","userName":"root",` +
			`"numLink":2,"extra":[true,false,null,-1.5e+3,"\"]"],"type":"dir"}],"y":0}`,
		"nulls leave members unset": `{"entries":[{"name":null,"type":"reg","size":null,"xattrs":null,"digest":null}]}`,
		"null xattr":                `{"entries":[{"name":"a","xattrs":{"k":null,"e":"","w":"d2hv\nYW0="}}]}`,
		"empty xattrs":              `{"entries":[{"name":"a","xattrs":{}}]}`,
		"xattrs as numbers":         `{"entries":[{"name":"a","xattrs":{"k":[1,2,null],"e":[]}}]}`,
		"escapes": `{"entries":[{"name":"\u00e9\/\b\f\n\r\t\"\\","linkName":"\ud834\udd1e","digest":"\ud834x",` +
			`"chunkDigest":"\udd1e\u0041"}]}`,
		"invalid utf-8":      "{\"entries\":[{\"name\":\"a\xff\xfeb\",\"linkName\":\"\xe2\x82\",\"digest\":\"x\xff\\n\"}]}",
		"last member wins":   `{"entries":[{"name":"a","name":"b","size":1,"SIZE":2}]}`,
		"entries again":      `{"entries":[{"name":"a","size":5},{"name":"b"}],"entries":[{"name":"c"}]}`,
		"entries again more": `{"entries":[{"name":"a","size":5},{"name":"b"}],"entries":[],"entries":[{"name":"c"},{"type":"dir"}]}`,
		"xattrs merge":       `{"entries":[{"xattrs":{"a":"YQ=="},"xattrs":{"b":"Yg=="}}]}`,
		"integers":           `{"entries":[{"size":0,"mode":-0,"uid":9223372036854775807,"gid":-9223372036854775808,"offset":12}]}`,
		"white space":        " \t\r\n{ \"entries\" : [ { \"name\" : \"a\" } , { } ] } \n",
	}
	for name, doc := range docs {
		t.Run(name, func(t *testing.T) {
			want, refused, err := jtocEntries([]byte(doc))
			if err != nil || refused {
				t.Fatalf("encoding/json: %v (nil entry: %v)", err, refused)
			}
			got, err := decodeTOCJSON([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			sameEntries(t, []byte(doc), got, want)
		})
	}
	got, err := decodeTOCJSON(built)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 9 {
		t.Fatalf("%d entries in estargz's TOC", len(got))
	}
}

func TestDecodeTOCJSONRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		// jsonToo: encoding/json refuses it as well; else it is one of
		// the documents decodeTOCJSON is stricter about.
		jsonToo bool
	}{
		{"nothing", ``, true},
		{"truncated", `{"entries":[{"name":"a"`, true},
		{"unterminated string", `{"entries":[{"name":"a`, true},
		{"fraction", `{"entries":[{"size":1.5}]}`, true},
		{"exponent", `{"entries":[{"size":1e3}]}`, true},
		{"overflow", `{"entries":[{"offset":9223372036854775808}]}`, true},
		{"underflow", `{"entries":[{"offset":-9223372036854775809}]}`, true},
		{"leading zero", `{"entries":[{"size":01}]}`, true},
		{"string for a number", `{"entries":[{"size":"1"}]}`, true},
		{"number for a string", `{"entries":[{"name":1}]}`, true},
		{"number for a user name", `{"entries":[{"userName":1}]}`, true},
		{"version not a number", `{"version":"1","entries":[]}`, true},
		{"bad escape", `{"entries":[{"name":"\x"}]}`, true},
		{"short unicode escape", `{"entries":[{"name":"\u12"}]}`, true},
		{"control character", "{\"entries\":[{\"name\":\"a\x01\"}]}", true},
		{"entries an object", `{"entries":{}}`, true},
		{"xattrs an array", `{"entries":[{"xattrs":[]}]}`, true},
		{"xattr not base64", `{"entries":[{"xattrs":{"k":"!!"}}]}`, true},
		{"xattr byte over 255", `{"entries":[{"xattrs":{"k":[256]}}]}`, true},
		{"missing comma", `{"entries":[{"name":"a" "type":"reg"}]}`, true},
		{"trailing comma", `{"entries":[{"name":"a"},]}`, true},
		{"bad literal", `{"x":nul,"entries":[]}`, true},
		{"data after the object", `{"entries":[]} {}`, true},
		{"a null entry", `{"entries":[null]}`, false},
		{"a number for an entry", `{"entries":[1]}`, true},
		{"not an object", `[]`, true},
		{"null", `null`, false},
		{"deep nesting", `{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `,"entries":[]}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeTOCJSON([]byte(tc.doc)); err == nil {
				t.Fatalf("%q decoded", tc.doc)
			}
			if _, _, err := jtocEntries([]byte(tc.doc)); (err != nil) != tc.jsonToo {
				t.Errorf("encoding/json: %v; want refused: %v", err, tc.jsonToo)
			}
		})
	}
}

// FuzzDecodeTOCJSON checks that decodeTOCJSON reads what encoding/json
// reads into estargz's types, and refuses only what it is documented to
// be stricter about.
func FuzzDecodeTOCJSON(f *testing.F) {
	for _, seed := range []string{
		`{"version":1,"entries":[{"name":"a","type":"reg","size":3,"offset":9,"digest":"sha256:x","chunkDigest":"sha256:x"}]}`,
		`{"entries":[{"NAME":"\u00e9\ud834\udd1e","xattrs":{"k":"dg=="},"x":[{"y":null}]}]}`,
		`{"entries":[{"name":"a","size":5}],"entries":[{"name":"c"}]}`,
		"{\"entries\":[{\"name\":\"a\xff\"}]}",
		`{"entries":[{"userName":1,"groupName":"g","numLink":[]}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		got, err := decodeTOCJSON(doc)
		want, refused, jerr := jtocEntries(doc)
		switch {
		case err == nil && (jerr != nil || refused):
			t.Fatalf("%q: decoded, encoding/json refuses it (%v, nil entry %v)", doc, jerr, refused)
		case err != nil && jerr == nil && !refused:
			if trimmed := bytes.TrimLeft(doc, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' ||
				strings.Contains(err.Error(), "nested") {
				return // stricter by design
			}
			t.Fatalf("%q: %v; encoding/json reads it", doc, err)
		case err == nil:
			sameEntries(t, doc, got, want)
		}
	})
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestTOCJSONRefusesBadStreams covers the TOC's compressed wrapping.
func TestTOCJSONRefusesBadStreams(t *testing.T) {
	tarOf := func(name string, content string) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content))})
		io.WriteString(tw, content)
		tw.Close()
		return gzipped(t, buf.Bytes())
	}
	for name, raw := range map[string][]byte{
		"not gzip":          []byte("plain"),
		"another file":      tarOf("other.json", `{}`),
		"truncated":         tarOf(tocTarName, `{"entries":[]}`)[:30],
		"empty gzip stream": gzipped(t, nil),
	} {
		if _, err := tocJSON(raw, FormatEStargz); err == nil {
			t.Errorf("%s: decompressed", name)
		}
	}
	if js, err := tocJSON(tarOf(tocTarName, `{"entries":[]}`), FormatEStargz); err != nil || string(js) != `{"entries":[]}` {
		t.Errorf("good stream: %q, %v", js, err)
	}
	if _, err := tocJSON([]byte("not zstd"), FormatZstdChunked); err == nil {
		t.Error("zstd: decompressed garbage")
	}
}

// TestDecodeTOCJSONSizesOnce: a TOC that repeats "entries" does not make
// the decoder allocate its size-based room again for each.
func TestDecodeTOCJSONSizesOnce(t *testing.T) {
	doc := `{"entries":[]` + strings.Repeat(`,"entries":null,"entries":[]`, 20000) + `}`
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := decodeTOCJSON([]byte(doc)); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 64*uint64(len(doc)) {
		t.Errorf("decoding %d bytes allocated %d", len(doc), n)
	}
}

// TestTOCJSONTrustsNoHeader: a tar header claiming a huge TOC, over a few
// bytes, fails without the allocation the header asks for.
func TestTOCJSONTrustsNoHeader(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: tocTarName, Mode: 0o644, Size: 900 << 20}); err != nil {
		t.Fatal(err)
	}
	io.WriteString(tw, `{"entries":[]}`)
	tw.Flush() // the header and the bytes written; Close would complain
	raw := gzipped(t, buf.Bytes())
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := tocJSON(raw, FormatEStargz); err == nil {
		t.Fatal("a truncated TOC decompressed")
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
		t.Errorf("a %d-byte TOC claiming 900 MiB allocated %d bytes", len(raw), n)
	}
}
