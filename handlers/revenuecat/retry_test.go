package revenuecat

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// answers serves the statuses in order (the last one from then on) and
// counts the requests.
func answers(t *testing.T, body string, statuses ...int) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		w.WriteHeader(statuses[min(i, len(statuses)-1)])
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(s.Close)
	return s, &n
}

// TestClientRetryPolicy: which answers are retried, how often, and what
// the error says.
func TestClientRetryPolicy(t *testing.T) {
	const retryable = `{"object":"error","type":"x","message":"m","retryable":true,"backoff_ms":1,"items":[]}`
	for _, tc := range []struct {
		name     string
		body     string
		statuses []int
		requests int32
		err      string // "" for success
	}{
		{"5xx five times, then 200", retryable, []int{500, 500, 502, 503, 500, 200}, 6, ""},
		{"5xx six times", retryable, []int{500}, 6, "RevenueCat API: 500 x: m (after 6 attempts)"},
		{"429", retryable, []int{429, 200}, 2, ""},
		{"retryable 400", retryable, []int{400, 200}, 2, ""},
		{"404 after a 500", `{"type":"x","message":"m","backoff_ms":1}`, []int{500, 404}, 2, "RevenueCat API: 404 x: m (after 2 attempts)"},
		{"401 at once", `{"type":"authentication_error","message":"no"}`, []int{401}, 1, "RevenueCat API: 401 authentication_error: no"},
		{"not JSON", `<html>`, []int{200}, 1, "not the documented JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, n := answers(t, tc.body, tc.statuses...)
			c, err := NewClient(s.URL, "key", 60000, nil)
			if err != nil {
				t.Fatal(err)
			}
			c.MaxBackoff = 5 * time.Millisecond
			_, err = c.ListCustomers(context.Background(), "p", 1, "")
			if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
			if got := n.Load(); got != tc.requests {
				t.Errorf("%d requests, want %d", got, tc.requests)
			}
		})
	}
}

// TestClientBackOffBounds: the client's own waits double from 250-500 ms
// and never pass MaxBackoff; with a MaxBackoff of 0 there are none.
func TestClientBackOffBounds(t *testing.T) {
	c := &Client{MaxBackoff: time.Minute}
	for range 100 {
		b := c.backOff()
		b.Reset()
		for try := range 12 {
			d := min(500*time.Millisecond<<try, time.Minute)
			if got := b.NextBackOff(); got < d/2 || got > d+time.Nanosecond {
				t.Fatalf("wait %d: %s, want %s to %s", try+1, got, d/2, d)
			}
		}
	}
	c.MaxBackoff = 0
	b := c.backOff()
	b.Reset()
	for range 3 {
		if got := b.NextBackOff(); got != 0 {
			t.Fatalf("wait %s with MaxBackoff 0", got)
		}
	}
}

// TestDeliveryRetryPolicy: 5xx, 429 are tried five times, another 4xx ends
// the delivery at once; a cancel ends a wait.
func TestDeliveryRetryPolicy(t *testing.T) {
	for _, tc := range []struct {
		name     string
		statuses []int
		requests int32
		err      string
	}{
		{"503, 429, then 200", []int{503, 429, 200}, 3, ""},
		{"500 five times", []int{500}, 5, "destination answered 500: no (after 5 attempts)"},
		{"400 after a 500", []int{500, 400}, 2, "destination refused a batch of 0 records: 400: no"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, n := answers(t, "no", tc.statuses...)
			d := &deliverer{url: s.URL, secret: []byte("secret"), http: s.Client()}
			err := d.deliver(context.Background(), Batch{})
			if (tc.err == "") != (err == nil) || (err != nil && err.Error() != tc.err) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
			if got := n.Load(); got != tc.requests {
				t.Errorf("%d requests, want %d", got, tc.requests)
			}
		})
	}
	s, _ := answers(t, "no", 500)
	d := &deliverer{url: s.URL, secret: []byte("secret"), http: s.Client()}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if err := d.deliver(ctx, Batch{}); err != context.Canceled {
		t.Errorf("cancelled delivery: %v", err)
	}
}
