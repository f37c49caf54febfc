package fetch

import (
	"net/url"
	"strconv"
	"strings"
	"time"
)

// signedURLMargin is how long before a signed URL's own expiry fetch stops
// using it.
const signedURLMargin = 10 * time.Second

// urlExpiry reads when a signed storage URL stops working from its query:
// X-Amz-Date plus X-Amz-Expires (S3 signature v4), X-Goog-Date plus
// X-Goog-Expires (GCS v4), Expires as Unix seconds (S3 v2, CloudFront,
// GCS v2) or se (Azure SAS). It reports false when the URL says nothing.
func urlExpiry(u *url.URL) (time.Time, bool) {
	q := u.Query()
	get := func(name string) string {
		for k, v := range q {
			if strings.EqualFold(k, name) && len(v) > 0 {
				return v[0]
			}
		}
		return ""
	}
	for _, prefix := range []string{"X-Amz-", "X-Goog-"} {
		date, secs := get(prefix+"Date"), get(prefix+"Expires")
		if date == "" || secs == "" {
			continue
		}
		t, err := time.Parse("20060102T150405Z", date)
		n, err2 := strconv.ParseInt(secs, 10, 64)
		if err == nil && err2 == nil && n >= 0 && n < 1<<31 {
			return t.Add(time.Duration(n) * time.Second), true
		}
	}
	if v := get("Expires"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 && n < 1<<40 {
			return time.Unix(n, 0), true
		}
	}
	if v := get("se"); v != "" {
		for _, layout := range []string{time.RFC3339, "2006-01-02T15:04Z", "2006-01-02"} {
			if t, err := time.Parse(layout, v); err == nil {
				return t, true
			}
		}
	}
	return time.Time{}, false
}
