package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
)

// signedStorage is blob storage behind a registry that redirects blob GETs
// to URLs signed with the current generation; bumping the generation
// expires every URL handed out so far.
type signedStorage struct {
	srv      *httptest.Server
	env      *testEnv
	gen      atomic.Int64
	resolves atomic.Int64 // blob GETs the registry redirected
	reqs     atomic.Int64 // requests storage saw
	refused  atomic.Int64 // of which refused
	authSeen atomic.Int64 // of which carried Authorization
	down     atomic.Int64 // if not 0, the status storage answers every request with
}

// newSignedStorage starts storage and a registry (requiring creds) that
// redirects to it. refuse is the status storage gives an expired URL;
// query adds to the signed URL's query.
func newSignedStorage(t *testing.T, refuse int, query func() url.Values) *signedStorage {
	t.Helper()
	layer := newTestLayer(t, 128<<10)
	s := &signedStorage{}
	s.srv = newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.reqs.Add(1)
		if r.Header.Get("Authorization") != "" {
			s.authSeen.Add(1)
		}
		if code := s.down.Load(); code != 0 {
			http.Error(w, "storage is unwell", int(code))
			return
		}
		if r.URL.Query().Get("sig") != strconv.FormatInt(s.gen.Load(), 10) {
			s.refused.Add(1)
			http.Error(w, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", refuse)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(layer.blob))
	}))
	redirect := faultAll(func(w http.ResponseWriter, r *http.Request, _ http.Handler) {
		s.resolves.Add(1)
		q := url.Values{}
		if query != nil {
			q = query()
		}
		q.Set("sig", strconv.FormatInt(s.gen.Load(), 10))
		http.Redirect(w, r, s.srv.URL+"/storage"+r.URL.Path+"?"+q.Encode(), http.StatusTemporaryRedirect)
	})
	creds := &authn.Basic{Username: "lazy", Password: "root"}
	s.env = newEnv(t, envConfig{layer: &layer, mw: redirect, auth: creds})
	return s
}

func (s *signedStorage) client(t *testing.T, opts ...Option) *Client {
	return s.env.client(t, append([]Option{WithAuth(&authn.Basic{Username: "lazy", Password: "root"})}, opts...)...)
}

func (s *signedStorage) read(t *testing.T, b *RemoteBlob, off int64) {
	t.Helper()
	p := make([]byte, 1000)
	if _, err := b.ReadAt(context.Background(), p, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, s.env.blob[off:off+int64(len(p))]) {
		t.Fatalf("bytes at %d differ from the layer", off)
	}
}

// TestSignedURLExpires: the storage URL is reused until storage refuses
// it; then the registry is asked again at once and the read succeeds.
func TestSignedURLExpires(t *testing.T) {
	for _, refuse := range []int{http.StatusForbidden, http.StatusUnauthorized, http.StatusNotFound, http.StatusBadRequest} {
		t.Run(strconv.Itoa(refuse), func(t *testing.T) {
			t.Parallel()
			s := newSignedStorage(t, refuse, nil)
			c := s.client(t)
			b := s.env.remoteBlob(t, c)
			for i := range 5 {
				s.read(t, b, int64(i)*1000)
			}
			if n := s.resolves.Load(); n != 1 {
				t.Fatalf("registry redirected %d times for 5 reads, want 1", n)
			}
			if n := s.reqs.Load(); n != 5 {
				t.Fatalf("storage saw %d requests, want 5", n)
			}

			s.gen.Add(1) // every URL handed out so far expires
			s.read(t, b, 7000)
			if n := s.resolves.Load(); n != 2 {
				t.Errorf("registry redirected %d times, want a second time after the expiry", n)
			}
			if n := s.refused.Load(); n != 1 {
				t.Errorf("storage refused %d requests, want 1", n)
			}
			s.read(t, b, 9000) // the new URL is reused in turn
			if n := s.resolves.Load(); n != 2 {
				t.Errorf("registry redirected %d times, want 2", n)
			}
			if n := s.authSeen.Load(); n != 0 {
				t.Errorf("storage saw Authorization on %d requests", n)
			}
			st := c.Stats()
			if st.Reresolves != 1 || st.Retries != 0 || st.Errors != 0 {
				t.Errorf("Stats = %+v, want 1 re-resolve, no retry, no error", st)
			}
			storageHost := s.srv.Listener.Addr().String()
			if h := st.Hosts[storageHost]; h.Requests != 8 || h.Failures != 1 {
				t.Errorf("storage host stats %+v, want 8 requests and 1 failure", h)
			}
		})
	}
}

// TestSignedURLStorageUnwell: any failure of a reused storage URL (a
// redirect, a 5xx) sends the read back to the registry at once, without a
// pause and without using up a retry; that happens once per read.
func TestSignedURLStorageUnwell(t *testing.T) {
	for _, code := range []int{http.StatusTemporaryRedirect, http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusNotImplemented} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			s := newSignedStorage(t, code, nil)
			c := s.client(t, WithRetries(0))
			b := s.env.remoteBlob(t, c)
			s.read(t, b, 0)
			s.gen.Add(1) // storage answers the old URL with code
			s.read(t, b, 1000)
			if n := s.resolves.Load(); n != 2 {
				t.Errorf("registry redirected %d times, want 2", n)
			}
			if st := c.Stats(); st.Retries != 0 || st.Reresolves != 1 || st.Errors != 0 {
				t.Errorf("Stats = %+v, want 1 re-resolve, no retry, no error", st)
			}
		})
	}
	t.Run("once per read", func(t *testing.T) {
		t.Parallel()
		s := newSignedStorage(t, http.StatusForbidden, nil)
		c := s.client(t, WithRetries(2))
		b := s.env.remoteBlob(t, c)
		s.read(t, b, 0)
		s.down.Store(http.StatusServiceUnavailable)
		_, err := b.ReadAt(context.Background(), make([]byte, 100), 1000)
		var fe *Error
		if !errors.As(err, &fe) || fe.Status != http.StatusServiceUnavailable || !fe.Temporary {
			t.Fatalf("err = %v, want storage's 503", err)
		}
		// The reused URL, then the registry three times (the re-resolve
		// and two retries).
		if n := s.resolves.Load() - 1; n != 3 {
			t.Errorf("registry redirected %d times, want 3", n)
		}
		if st := c.Stats(); st.Retries != 2 || st.Reresolves != 1 {
			t.Errorf("Stats = %+v, want 2 retries and 1 re-resolve", st)
		}
	})
}

// TestSignedURLMaxAge: a storage URL older than the max age is not used;
// the registry is asked again without storage refusing anything.
func TestSignedURLMaxAge(t *testing.T) {
	t.Parallel()
	s := newSignedStorage(t, http.StatusForbidden, nil)
	c := s.client(t, WithRedirectMaxAge(300*time.Millisecond))
	b := s.env.remoteBlob(t, c)
	s.read(t, b, 0)
	s.read(t, b, 1000)
	if n := s.resolves.Load(); n != 1 {
		t.Fatalf("registry redirected %d times, want 1", n)
	}
	time.Sleep(400 * time.Millisecond)
	s.read(t, b, 2000)
	if n := s.resolves.Load(); n != 2 {
		t.Errorf("registry redirected %d times after the max age, want 2", n)
	}
	if n := s.refused.Load(); n != 0 {
		t.Errorf("storage refused %d requests, want 0", n)
	}
}

// TestSignedURLOwnExpiry: a URL that says it expires within the safety
// margin is not reused at all; one that expires later is.
func TestSignedURLOwnExpiry(t *testing.T) {
	for _, tt := range []struct {
		name    string
		expires time.Duration
		want    int64 // registry redirects for 3 reads
	}{
		{"short-lived", signedURLMargin / 2, 3},
		{"long-lived", time.Hour, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSignedStorage(t, http.StatusForbidden, func() url.Values {
				return url.Values{
					"X-Amz-Date":    {time.Now().UTC().Format("20060102T150405Z")},
					"X-Amz-Expires": {fmt.Sprint(int(tt.expires / time.Second))},
				}
			})
			c := s.client(t)
			b := s.env.remoteBlob(t, c)
			for i := range 3 {
				s.read(t, b, int64(i)*1000)
			}
			if n := s.resolves.Load(); n != tt.want {
				t.Errorf("registry redirected %d times, want %d", n, tt.want)
			}
		})
	}
}

func TestURLExpiry(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		query string
		want  time.Time // zero: no expiry known
	}{
		{"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20250301T120000Z&X-Amz-Expires=900&X-Amz-Signature=x", at.Add(15 * time.Minute)},
		{"x-amz-date=20250301T120000Z&x-amz-expires=60", at.Add(time.Minute)},
		{"X-Goog-Date=20250301T120000Z&X-Goog-Expires=3600", at.Add(time.Hour)},
		{fmt.Sprintf("Expires=%d&Signature=x&Key-Pair-Id=y", at.Unix()), at},
		{"sv=2021-08-06&se=2025-03-01T12%3A00%3A00Z&sig=x", at},
		{"X-Amz-Date=20250301T120000Z", time.Time{}},
		{"X-Amz-Date=yesterday&X-Amz-Expires=60", time.Time{}},
		{"Expires=soon", time.Time{}},
		{"sig=abc", time.Time{}},
		{"", time.Time{}},
	}
	for _, tt := range tests {
		u := &url.URL{Scheme: "https", Host: "s3.example", Path: "/b", RawQuery: tt.query}
		got, ok := urlExpiry(u)
		if ok != !tt.want.IsZero() || ok && !got.Equal(tt.want) {
			t.Errorf("urlExpiry(?%s) = %v, %v; want %v", tt.query, got, ok, tt.want)
		}
	}
}
