package revenuecat

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the body>" keyed with
// the integration's signing secret.
const SignatureHeader = "X-Jobrun-Signature"

// Record is one customer, normalized, as the ingest endpoint receives it.
type Record struct {
	CustomerID   string        `json:"customer_id"`
	FirstSeenAt  time.Time     `json:"first_seen_at"`
	LastSeenAt   time.Time     `json:"last_seen_at"`
	Platform     string        `json:"platform,omitempty"`
	Country      string        `json:"country,omitempty"`
	Entitlements []Entitlement `json:"active_entitlements"`
	// IdempotencyKey is the SHA-256 of the record's content: the same
	// customer in the same state always has the same key, so a delivery
	// repeated by a retry or a re-run is recognised and applied once.
	IdempotencyKey string `json:"idempotency_key"`
}

// Entitlement is an active entitlement; ExpiresAt nil never expires.
type Entitlement struct {
	ID        string     `json:"id"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// Batch is one delivery.
type Batch struct {
	IntegrationID string   `json:"integration_id"`
	ProjectID     string   `json:"project_id"`
	RunID         string   `json:"run_id"`
	Records       []Record `json:"records"`
}

func normalize(c Customer, ents []ActiveEntitlement) Record {
	r := Record{
		CustomerID: c.ID, FirstSeenAt: time.UnixMilli(c.FirstSeenAt).UTC(), LastSeenAt: time.UnixMilli(c.LastSeenAt).UTC(),
		Platform: c.LastSeenPlatform, Country: c.LastSeenCountry, Entitlements: []Entitlement{},
	}
	for _, e := range ents {
		ent := Entitlement{ID: e.EntitlementID}
		if e.ExpiresAt != nil {
			t := time.UnixMilli(*e.ExpiresAt).UTC()
			ent.ExpiresAt = &t
		}
		r.Entitlements = append(r.Entitlements, ent)
	}
	content, _ := json.Marshal(r) // IdempotencyKey is still empty here
	sum := sha256.Sum256(content)
	r.IdempotencyKey = hex.EncodeToString(sum[:])
	return r
}

// Sign is the signature header value of body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// deliverer POSTs batches to the ingest endpoint, retrying 5xx, 429 and
// network errors; a 4xx ends the run (the endpoint refuses us).
type deliverer struct {
	url    string
	secret []byte
	http   *http.Client
}

// deliveryAttempts bounds the tries of one batch.
const deliveryAttempts = 5

// deliveryBackOff is the wait between tries of a batch: 0.5 s, then half
// as long again each time (4 s in all), without jitter: one runner sends.
func deliveryBackOff() backoff.BackOff {
	return &backoff.ExponentialBackOff{InitialInterval: 500 * time.Millisecond, Multiplier: 1.5, MaxInterval: 2 * time.Second}
}

func (d *deliverer) deliver(ctx context.Context, b Batch) error {
	body, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return retry(ctx, deliveryAttempts, deliveryBackOff(), func() error { return d.post(ctx, body, len(b.Records)) })
}

// post sends a batch of n records once. An error that must not be retried
// is a backoff.Permanent.
func (d *deliverer) post(ctx context.Context, body []byte, n int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(body))
	if err != nil {
		return backoff.Permanent(fmt.Errorf("destination: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SignatureHeader, Sign(d.secret, body))
	resp, err := d.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return backoff.Permanent(ctx.Err())
		}
		return fmt.Errorf("destination: %w", err)
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("destination answered %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	default:
		return backoff.Permanent(fmt.Errorf("destination refused a batch of %d records: %d: %s", n, resp.StatusCode, bytes.TrimSpace(msg)))
	}
}
