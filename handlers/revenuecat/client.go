// Package revenuecat is the revenuecat_sync job: it reads a project's
// customers from the RevenueCat REST API v2 and delivers them, normalized and
// signed, to the product's ingest endpoint.
package revenuecat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"golang.org/x/time/rate"
)

// DefaultBaseURL is RevenueCat's API v2.
const DefaultBaseURL = "https://api.revenuecat.com/v2"

// DefaultRequestsPerMinute stays under the Customer Information domain's
// limit of about 480 requests per minute.
const DefaultRequestsPerMinute = 450

// Client is a small RevenueCat API v2 client: the customer list and a
// customer's active entitlements, with a client-side rate limit, and retries
// of what RevenueCat says is retryable (429 after Retry-After / backoff_ms,
// 5xx, retryable: true). Every wait ends when ctx is cancelled.
type Client struct {
	base    *url.URL
	apiKey  string
	http    *http.Client
	limiter *rate.Limiter
	// MaxAttempts bounds the tries of one request (default 6).
	MaxAttempts int
	// MaxBackoff caps one wait between tries (default 60 s).
	MaxBackoff time.Duration
}

// NewClient makes a client for the API at baseURL (DefaultBaseURL if empty)
// with a secret API key, allowing requestsPerMinute requests.
func NewClient(baseURL, apiKey string, requestsPerMinute int, hc *http.Client) (*Client, error) {
	if baseURL == "" {
		baseURL = DefaultBaseURL
	}
	base, err := url.Parse(strings.TrimSuffix(baseURL, "/"))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, fmt.Errorf("RevenueCat base URL %q is not an http(s) URL", baseURL)
	}
	if apiKey == "" {
		return nil, errors.New("no RevenueCat API key")
	}
	if requestsPerMinute <= 0 {
		requestsPerMinute = DefaultRequestsPerMinute
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	burst := max(1, requestsPerMinute/60)
	return &Client{
		base: base, apiKey: apiKey, http: hc,
		limiter:     rate.NewLimiter(rate.Limit(float64(requestsPerMinute)/60), burst),
		MaxAttempts: 6, MaxBackoff: time.Minute,
	}, nil
}

// APIError is RevenueCat's error body, with the HTTP status.
type APIError struct {
	Status    int    `json:"-"`
	Object    string `json:"object"`
	Type      string `json:"type"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable"`
	BackoffMS int64  `json:"backoff_ms"`
	// RetryAfter is the Retry-After header of a 429, if any.
	RetryAfter time.Duration `json:"-"`
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if e.Type != "" {
		return fmt.Sprintf("RevenueCat API: %d %s: %s", e.Status, e.Type, msg)
	}
	return fmt.Sprintf("RevenueCat API: %d: %s", e.Status, msg)
}

// retry says whether a failed request may be tried again.
func (e *APIError) retry() bool {
	return e.Retryable || e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// Customer is the part of RevenueCat's customer object the sync uses.
type Customer struct {
	ID               string `json:"id"`
	FirstSeenAt      int64  `json:"first_seen_at"`
	LastSeenAt       int64  `json:"last_seen_at"`
	LastSeenPlatform string `json:"last_seen_platform,omitempty"`
	LastSeenCountry  string `json:"last_seen_country,omitempty"`
}

// ActiveEntitlement is one of a customer's active entitlements.
type ActiveEntitlement struct {
	EntitlementID string `json:"entitlement_id"`
	// ExpiresAt is in ms since the epoch; nil never expires.
	ExpiresAt *int64 `json:"expires_at"`
}

// list is RevenueCat's list envelope. next_page is a path that already
// holds /v2 and the cursor; null or absent on the last page.
type list[T any] struct {
	Object   string  `json:"object"`
	Items    []T     `json:"items"`
	NextPage *string `json:"next_page"`
}

// CustomersPage is one page of a project's customers; Next is "" on the
// last one.
type CustomersPage struct {
	Customers []Customer
	Next      string
}

// ListCustomers reads the first page of project's customers (next == "") or
// the page next names (a previous page's Next).
func (c *Client) ListCustomers(ctx context.Context, project string, limit int, next string) (CustomersPage, error) {
	path := next
	if path == "" {
		path = "/projects/" + url.PathEscape(project) + "/customers?limit=" + strconv.Itoa(limit)
	}
	var l list[Customer]
	if err := c.get(ctx, path, &l); err != nil {
		return CustomersPage{}, err
	}
	p := CustomersPage{Customers: l.Items}
	if l.NextPage != nil {
		p.Next = *l.NextPage
	}
	return p, nil
}

// ActiveEntitlements reads all of a customer's active entitlements.
func (c *Client) ActiveEntitlements(ctx context.Context, project, customerID string) ([]ActiveEntitlement, error) {
	var all []ActiveEntitlement
	path := "/projects/" + url.PathEscape(project) + "/customers/" + url.PathEscape(customerID) + "/active_entitlements"
	for path != "" {
		var l list[ActiveEntitlement]
		if err := c.get(ctx, path, &l); err != nil {
			return nil, err
		}
		all = append(all, l.Items...)
		path = ""
		if l.NextPage != nil {
			path = *l.NextPage
		}
	}
	return all, nil
}

// resolve turns an API path into a URL. Paths from next_page start with
// /v2 (RevenueCat's own prefix); the base URL's path replaces it, so a
// base behind a proxy prefix works too.
func (c *Client) resolve(path string) (string, error) {
	path = strings.TrimPrefix(path, "/v2/")
	path = "/" + strings.TrimPrefix(path, "/")
	u, err := url.Parse(c.base.Path + path)
	if err != nil {
		return "", fmt.Errorf("bad RevenueCat path %q: %w", path, err)
	}
	if u.Host != "" || u.Scheme != "" {
		return "", fmt.Errorf("RevenueCat next_page %q is not a path", path)
	}
	return c.base.ResolveReference(u).String(), nil
}

// get does one GET with the rate limit and retries, decoding a 2xx body
// into out.
func (c *Client) get(ctx context.Context, path string, out any) error {
	target, err := c.resolve(path)
	if err != nil {
		return err
	}
	tries := 0
	return retry(ctx, c.MaxAttempts, c.backOff(), func() error {
		if err := c.limiter.Wait(ctx); err != nil {
			return backoff.Permanent(ctxErr(ctx, err))
		}
		tries++
		err := c.try(ctx, target, out)
		if err != nil && ctx.Err() != nil {
			return backoff.Permanent(ctx.Err())
		}
		if p, ok := err.(*backoff.PermanentError); ok {
			return backoff.Permanent(afterAttempts(p.Err, tries))
		}
		return err
	})
}

// backOff is the wait before a retry that RevenueCat gave no time for:
// from 250-500 ms, doubling, at most MaxBackoff. (The library draws from
// the interval ± RandomizationFactor: 375 ms ± 1/3 is 250-500 ms.)
func (c *Client) backOff() backoff.BackOff {
	return &backoff.ExponentialBackOff{
		InitialInterval:     min(375*time.Millisecond, c.MaxBackoff*3/4),
		RandomizationFactor: 1.0 / 3,
		Multiplier:          2,
		MaxInterval:         c.MaxBackoff * 3 / 4,
	}
}

// try does one request. An error that must not be retried is a
// backoff.Permanent; one that comes with RevenueCat's time to wait
// (Retry-After, backoff_ms) carries it as a backoff.RetryAfterError.
func (c *Client) try(ctx context.Context, target string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return backoff.Permanent(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.apiKey)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("RevenueCat API: %w", err) // network: retry
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("RevenueCat API: reading the response: %w", err)
	}
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(body, out); err != nil {
			return backoff.Permanent(fmt.Errorf("RevenueCat API: a %d response that is not the documented JSON: %w", resp.StatusCode, err))
		}
		return nil
	}
	apiErr := &APIError{}
	_ = json.Unmarshal(body, apiErr) // a proxy's HTML error page leaves it empty
	apiErr.Status = resp.StatusCode
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
		apiErr.RetryAfter = time.Duration(s) * time.Second
	}
	if !apiErr.retry() {
		return backoff.Permanent(apiErr)
	}
	if wait := max(apiErr.RetryAfter, time.Duration(apiErr.BackoffMS)*time.Millisecond); wait > 0 {
		return &retryAfter{err: apiErr, wait: &backoff.RetryAfterError{Duration: min(wait, c.MaxBackoff)}}
	}
	return apiErr
}

// ctxErr prefers the context's own error to the limiter's wording.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
