package fetch

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestErrorMessage(t *testing.T) {
	d := v1.Hash{Algorithm: "sha256", Hex: "abc"}
	tests := []struct {
		name string
		err  *Error
		want string
	}{
		{"status only", &Error{Digest: d, End: 100, Status: 503, Temporary: true}, "fetch sha256:abc [0,100): 503 Service Unavailable"},
		{"status and cause", &Error{Digest: d, Off: 5, End: 10, Status: 404, Err: ErrNotFound}, "fetch sha256:abc [5,10): 404 Not Found: blob not found"},
		{"cause only", &Error{Digest: d, End: 1, Err: context.DeadlineExceeded}, "fetch sha256:abc [0,1): context deadline exceeded"},
		{"no range", &Error{Digest: d, Err: errors.New("authenticate to x")}, "fetch sha256:abc: authenticate to x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
			if !errors.Is(tt.err, tt.err.Err) && tt.err.Err != nil {
				t.Errorf("Unwrap does not reach %v", tt.err.Err)
			}
		})
	}
}

func TestStatusFailure(t *testing.T) {
	tests := []struct {
		status   int
		header   http.Header
		wantTemp bool
		wantIs   error
		wantWait time.Duration
	}{
		{status: 404, wantIs: ErrNotFound},
		{status: 401, wantIs: ErrUnauthorized},
		{status: 403, wantIs: ErrUnauthorized},
		{status: 400},
		{status: 416},
		{status: 501},
		{status: 408, wantTemp: true},
		{status: 500, wantTemp: true},
		{status: 502, wantTemp: true},
		{status: 429, wantTemp: true, header: http.Header{"Retry-After": {"3"}}, wantWait: 3 * time.Second},
		{status: 503, wantTemp: true, header: http.Header{"Retry-After": {"1"}}, wantWait: time.Second},
		{status: 500, wantTemp: true, header: http.Header{"Retry-After": {"1"}}},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			f := statusFailure(tt.status, tt.header, nil)
			if f.temporary != tt.wantTemp || f.retryAfter != tt.wantWait || f.status != tt.status {
				t.Errorf("got %+v, want temporary %v, retry after %s", f, tt.wantTemp, tt.wantWait)
			}
			if tt.wantIs != nil && !errors.Is(f, tt.wantIs) {
				t.Errorf("%v is not %v", f, tt.wantIs)
			}
			if msg := f.Error(); strings.Contains(msg, "%!") {
				t.Errorf("bad message %q", msg)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"1", time.Second},
		{" 7 ", 7 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"soon", 0},
		{"999999999999", maxRetryAfter},
		{now.Add(4 * time.Second).Format(http.TimeFormat), 4 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{now.Add(time.Hour).Format(http.TimeFormat), maxRetryAfter},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestCheckContentRange(t *testing.T) {
	tests := []struct {
		v       string
		off     int64
		end     int64
		size    int64
		wantErr bool
	}{
		{"bytes 0-99/1000", 0, 100, 1000, false},
		{"bytes 10-19/*", 10, 20, 1000, false},
		{"BYTES 999-999/1000", 999, 1000, 1000, false},
		{"", 0, 100, 1000, true},
		{"bytes 0-98/1000", 0, 100, 1000, true},
		{"bytes 1-100/1000", 0, 100, 1000, true},
		{"bytes 0-99/999", 0, 100, 1000, true},
		{"bytes */1000", 0, 100, 1000, true},
		{"items 0-99/1000", 0, 100, 1000, true},
		{"bytes 0-99", 0, 100, 1000, true},
		{"bytes a-b/1000", 0, 100, 1000, true},
	}
	for _, tt := range tests {
		err := checkContentRange(tt.v, tt.off, tt.end, tt.size)
		if (err != nil) != tt.wantErr {
			t.Errorf("checkContentRange(%q, %d, %d, %d) = %v, want error %v", tt.v, tt.off, tt.end, tt.size, err, tt.wantErr)
		}
	}
}

func TestBackoff(t *testing.T) {
	for failures := range 40 {
		d := min(baseBackoff<<min(failures, 16), maxBackoff)
		for range 20 {
			if got := backoff(failures); got < d/2 || got > d {
				t.Fatalf("backoff(%d) = %s, want within [%s, %s]", failures, got, d/2, d)
			}
		}
	}
}

func TestErrorDetail(t *testing.T) {
	tests := []struct {
		body string
		want string // "" means no detail
	}{
		{`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`, "BLOB_UNKNOWN: blob unknown to registry"},
		{`{"errors":[{"code":"A","message":"x"},{"code":"B","message":"y"}]}`, "A: x; B: y"},
		{"upstream down\n", "upstream down"},
		{"<html><body>Bad gateway</body></html>", ""},
		{"", ""},
	}
	for _, tt := range tests {
		err := errorDetail([]byte(tt.body))
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("errorDetail(%q) = %q, want %q", tt.body, got, tt.want)
		}
	}
}
