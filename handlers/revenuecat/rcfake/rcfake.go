// Package rcfake is a RevenueCat API v2 server and an ingest endpoint for
// tests, written from RevenueCat's documentation: the customer list with
// its cursor envelope, active entitlements, the flat error body, 429 with
// Retry-After. NewRevenueCat and NewDestination serve on loopback
// (httptest); both are http.Handlers, for a server of one's own (the
// real-node test's pod, ./rcfakeserver).
package rcfake

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"

	"jobrun.dev/jobrun/handlers/revenuecat"
)

// Fault is an error response the server gives instead of the next matching
// request's answer.
type Fault struct {
	// Path matches requests whose path contains it ("/customers?",
	// "/active_entitlements").
	Path       string
	Status     int
	Type       string
	Retryable  bool
	BackoffMS  int64
	RetryAfter int // seconds; 0 leaves the header out
}

// RevenueCat is a fake RevenueCat API v2 for one project.
type RevenueCat struct {
	APIKey, Project string

	mu             sync.Mutex
	onEntitlements func(n int)
	customers      []revenuecat.Customer // sorted by id: the cursor order
	entitlements   map[string][]revenuecat.ActiveEntitlement
	faults         []Fault
	// Requests counts answered requests by kind: "list", "entitlements",
	// "unauthorized", "fault:<status>".
	requests map[string]int
	server   *httptest.Server
}

// NewRevenueCat starts the fake on loopback; Close it when done.
func NewRevenueCat(apiKey, project string) *RevenueCat {
	f := RevenueCatHandler(apiKey, project)
	f.server = httptest.NewServer(f)
	return f
}

// RevenueCatHandler returns the fake without a server: serve it (under /v2/)
// yourself; URL and Close are only for NewRevenueCat's.
func RevenueCatHandler(apiKey, project string) *RevenueCat {
	return &RevenueCat{APIKey: apiKey, Project: project, entitlements: map[string][]revenuecat.ActiveEntitlement{}, requests: map[string]int{}}
}

// URL is the API base, like https://api.revenuecat.com/v2.
func (f *RevenueCat) URL() string { return f.server.URL + "/v2" }

// Close stops the server.
func (f *RevenueCat) Close() { f.server.Close() }

// Put adds or replaces a customer and its active entitlements.
func (f *RevenueCat) Put(c revenuecat.Customer, ents ...revenuecat.ActiveEntitlement) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, found := slices.BinarySearchFunc(f.customers, c.ID, func(a revenuecat.Customer, id string) int { return strings.Compare(a.ID, id) })
	if found {
		f.customers[i] = c
	} else {
		f.customers = slices.Insert(f.customers, i, c)
	}
	f.entitlements[c.ID] = ents
}

// OnEntitlements sets a hook called (outside the server's lock) before the
// n-th entitlements answer; nil removes it.
func (f *RevenueCat) OnEntitlements(hook func(n int)) {
	f.mu.Lock()
	f.onEntitlements = hook
	f.mu.Unlock()
}

// Inject queues faults; each answers one matching request.
func (f *RevenueCat) Inject(faults ...Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, faults...)
}

// Requests returns how many requests of a kind were answered.
func (f *RevenueCat) Requests(kind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[kind]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, typ, msg string, retryable bool, backoffMS int64) {
	body := map[string]any{"object": "error", "type": typ, "message": msg, "retryable": retryable}
	if backoffMS > 0 {
		body["backoff_ms"] = backoffMS
	}
	writeJSON(w, status, body)
}

// ServeHTTP answers RevenueCat API v2 requests (paths under /v2/).
func (f *RevenueCat) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+f.APIKey {
		f.count("unauthorized")
		writeError(w, http.StatusUnauthorized, "authentication_error", "Invalid API key.", false, 0)
		return
	}
	f.mu.Lock()
	for i, fault := range f.faults {
		if strings.Contains(r.URL.RequestURI(), fault.Path) {
			f.faults = slices.Delete(f.faults, i, i+1)
			f.requests[fmt.Sprintf("fault:%d", fault.Status)]++
			f.mu.Unlock()
			if fault.RetryAfter > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(fault.RetryAfter))
			}
			writeError(w, fault.Status, fault.Type, "injected "+http.StatusText(fault.Status), fault.Retryable, fault.BackoffMS)
			return
		}
	}
	f.mu.Unlock()

	prefix := "/v2/projects/" + f.Project + "/customers"
	path := r.URL.Path
	switch {
	case r.Method != http.MethodGet:
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "method not allowed", false, 0)
	case path == prefix:
		f.list(w, r)
	case strings.HasPrefix(path, prefix+"/") && strings.HasSuffix(path, "/active_entitlements"):
		id := strings.TrimSuffix(strings.TrimPrefix(path, prefix+"/"), "/active_entitlements")
		f.activeEntitlements(w, id)
	default:
		writeError(w, http.StatusNotFound, "resource_missing", "no such resource: "+path, false, 0)
	}
}

func (f *RevenueCat) count(kind string) {
	f.mu.Lock()
	f.requests[kind]++
	f.mu.Unlock()
}

func (f *RevenueCat) list(w http.ResponseWriter, r *http.Request) {
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "parameter_error", "limit must be between 1 and 1000", false, 0)
			return
		}
		limit = n
	}
	after := r.URL.Query().Get("starting_after")
	f.mu.Lock()
	f.requests["list"]++
	start := 0
	if after != "" {
		i, found := slices.BinarySearchFunc(f.customers, after, func(a revenuecat.Customer, id string) int { return strings.Compare(a.ID, id) })
		start = i
		if found {
			start = i + 1
		}
	}
	end := min(start+limit, len(f.customers))
	items := slices.Clone(f.customers[start:end])
	more := end < len(f.customers)
	f.mu.Unlock()

	body := map[string]any{"object": "list", "items": items, "url": r.URL.Path}
	if more {
		body["next_page"] = "/v2/projects/" + f.Project + "/customers?limit=" + strconv.Itoa(limit) + "&starting_after=" + items[len(items)-1].ID
	} else if len(items)%2 == 0 {
		body["next_page"] = nil // both forms of "no more": null here, absent otherwise
	}
	writeJSON(w, http.StatusOK, body)
}

func (f *RevenueCat) activeEntitlements(w http.ResponseWriter, id string) {
	f.mu.Lock()
	f.requests["entitlements"]++
	n := f.requests["entitlements"]
	ents, ok := f.entitlements[id]
	hook := f.onEntitlements
	f.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	if !ok {
		writeError(w, http.StatusNotFound, "resource_missing", "customer not found", false, 0)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "items": ents, "next_page": nil})
}

// Destination is the product's ingest endpoint: it checks each batch's
// signature and applies records once per idempotency key, keeping the latest
// record of each customer.
type Destination struct {
	Secret []byte

	mu                                    sync.Mutex
	records                               map[string]revenuecat.Record
	applied                               map[string]bool
	deliveries, duplicates, badSignatures int
	failNext                              int
	server                                *httptest.Server
}

// NewDestination starts the endpoint on loopback.
func NewDestination(secret []byte) *Destination {
	d := DestinationHandler(secret)
	d.server = httptest.NewServer(d)
	return d
}

// DestinationHandler returns the endpoint without a server: serve it
// yourself; URL and Close are only for NewDestination's.
func DestinationHandler(secret []byte) *Destination {
	return &Destination{Secret: secret, records: map[string]revenuecat.Record{}, applied: map[string]bool{}}
}

// URL is where batches go.
func (d *Destination) URL() string { return d.server.URL + "/ingest/revenuecat" }

// Close stops the server.
func (d *Destination) Close() { d.server.Close() }

// FailNext answers the next n deliveries with 503.
func (d *Destination) FailNext(n int) {
	d.mu.Lock()
	d.failNext = n
	d.mu.Unlock()
}

// Stats are what the endpoint saw.
type Stats struct {
	// Customers is how many distinct customers it holds.
	Customers int
	// Deliveries counts accepted batches; Duplicates, records whose
	// idempotency key was already applied; BadSignatures, refused batches.
	Deliveries, Duplicates, BadSignatures int
}

// Stats returns a snapshot.
func (d *Destination) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return Stats{Customers: len(d.records), Deliveries: d.deliveries, Duplicates: d.duplicates, BadSignatures: d.badSignatures}
}

// Record returns the customer's record, if delivered.
func (d *Destination) Record(id string) (revenuecat.Record, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.records[id]
	return r, ok
}

// signatureHeader is the header the product's endpoint reads, spelled out
// here rather than taken from the handler, like the check below.
const signatureHeader = "X-Jobrun-Signature"

// validSignature checks "sha256=<hex HMAC-SHA256 of body keyed with the
// secret>" with code of its own: a check that called the handler's Sign
// would accept whatever the handler computes, right or wrong.
func (d *Destination) validSignature(header string, body []byte) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	sig, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, d.Secret)
	m.Write(body)
	return hmac.Equal(sig, m.Sum(nil))
}

// ServeHTTP takes one signed batch (POST).
func (d *Destination) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil || r.Method != http.MethodPost {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.validSignature(r.Header.Get(signatureHeader), body) {
		d.badSignatures++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if d.failNext > 0 {
		d.failNext--
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	var b revenuecat.Batch
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		http.Error(w, "bad batch: "+err.Error(), http.StatusBadRequest)
		return
	}
	d.deliveries++
	for _, rec := range b.Records {
		if d.applied[rec.IdempotencyKey] {
			d.duplicates++
			continue
		}
		d.applied[rec.IdempotencyKey] = true
		d.records[rec.CustomerID] = rec
	}
	writeJSON(w, http.StatusOK, map[string]int{"accepted": len(b.Records)})
}
