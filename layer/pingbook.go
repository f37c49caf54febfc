package layer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// pingBookAge is how long a registry host's ping outcome, kept under the
// store's pings/, answers the pings of later mounts. A stale one costs a
// resolution that fails and is tried again (see Resolve), or a request
// that fails and drops it: rare enough that the age may be long.
const pingBookAge = 10 * time.Minute

// pingBookVersion is the version of the ping records written.
const pingBookVersion = 1

// maxPingRecord bounds a ping record read.
const maxPingRecord = 2*maxPingBody + 16<<10

// pingRecord is a host's ping outcome as kept on disk.
type pingRecord struct {
	Version int       `json:"version"`
	Host    string    `json:"host"`
	At      time.Time `json:"at"`
	// HTTPSError says why https failed; empty when it answered, in HTTPS.
	HTTPSError string            `json:"httpsError,omitempty"`
	HTTPS      *pingRecordAnswer `json:"https,omitempty"`
	HTTP       *pingRecordAnswer `json:"http,omitempty"`
}

// pingRecordAnswer is a registry's answer to a ping, as kept on disk.
type pingRecordAnswer struct {
	Status int         `json:"status"`
	Header http.Header `json:"header,omitempty"`
	Body   []byte      `json:"body,omitempty"`
}

// keptHeaders returns the headers of h a ping's answer keeps: those
// go-containerregistry reads.
func keptHeaders(h http.Header) http.Header {
	kept := http.Header{}
	for _, k := range []string{"WWW-Authenticate", "Docker-Distribution-Api-Version", "Content-Type"} {
		if v := h.Values(k); len(v) > 0 {
			kept[http.CanonicalHeaderKey(k)] = v
		}
	}
	return kept
}

func (s *Store) pingPath(host string) string {
	return filepath.Join(s.root, "pings", url.QueryEscape(host)+".json")
}

// loadPing returns host's kept ping outcome, if there is one from the last
// pingBookAge. A damaged or foreign record counts as none.
func (s *Store) loadPing(host string) *pingOutcome {
	f, err := os.Open(s.pingPath(host))
	if err != nil {
		return nil
	}
	defer f.Close()
	var r pingRecord
	if err := json.NewDecoder(io.LimitReader(f, maxPingRecord)).Decode(&r); err != nil {
		return nil
	}
	o, err := r.outcome(host, time.Now())
	if err != nil {
		return nil
	}
	return o
}

// outcome is r as host's outcome at now, if r is sound and fresh.
func (r *pingRecord) outcome(host string, now time.Time) (*pingOutcome, error) {
	switch age := now.Sub(r.At); {
	case r.Version != pingBookVersion:
		return nil, fmt.Errorf("version %d", r.Version)
	case r.Host != host:
		return nil, fmt.Errorf("kept for %q", r.Host)
	case age < -time.Minute || age > pingBookAge:
		return nil, fmt.Errorf("%s old", age)
	}
	o := &pingOutcome{at: r.At, fromBook: true}
	var err error
	if r.HTTPSError == "" {
		if r.HTTP != nil {
			return nil, errors.New("an http answer though https answered")
		}
		o.secure, err = r.HTTPS.answer()
	} else {
		if r.HTTPS != nil {
			return nil, errors.New("an https answer though https failed")
		}
		o.httpsErr = fmt.Errorf("https ping of %s failed (kept from %s): %s", host, r.At.Format(time.RFC3339), r.HTTPSError)
		o.plain, err = r.HTTP.answer()
	}
	if err != nil {
		return nil, err
	}
	return o, nil
}

// answer is a as a pingAnswer, if it is a registry's.
func (a *pingRecordAnswer) answer() (*pingAnswer, error) {
	if a == nil {
		return nil, errors.New("no answer")
	}
	pa := &pingAnswer{status: a.Status, header: keptHeaders(a.Header), body: a.Body}
	if !pa.fromRegistry() || len(a.Body) > maxPingBody {
		return nil, fmt.Errorf("status %d, %d bytes", a.Status, len(a.Body))
	}
	return pa, nil
}

// recordAnswer is a as kept on disk.
func recordAnswer(a *pingAnswer) *pingRecordAnswer {
	if a == nil {
		return nil
	}
	return &pingRecordAnswer{Status: a.status, Header: keptHeaders(a.header), Body: a.body}
}

// savePing keeps o as host's ping outcome. It is best effort: a mount
// whose record is lost pings again.
func (s *Store) savePing(host string, o *pingOutcome) {
	r := pingRecord{Version: pingBookVersion, Host: host, At: o.at, HTTPS: recordAnswer(o.secure), HTTP: recordAnswer(o.plain)}
	if o.httpsErr != nil {
		r.HTTPSError = o.httpsErr.Error()
		r.HTTPS = nil
	} else {
		r.HTTP = nil
	}
	b, err := json.Marshal(&r)
	if err != nil {
		return
	}
	path := s.pingPath(host)
	if os.MkdirAll(filepath.Dir(path), 0o700) != nil {
		return
	}
	replaceFile(path, b)
}

// forgetPing drops host's kept ping outcome.
func (s *Store) forgetPing(host string) {
	os.Remove(s.pingPath(host))
}
