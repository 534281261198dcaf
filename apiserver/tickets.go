package apiserver

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Stream tickets let a browser's EventSource, which cannot send an
// Authorization header, open an event stream: a page asks for a ticket
// with its usual credential (POST /v1/stream-tickets) and puts it in the
// stream's URL (?ticket=). A ticket is good for one path, for
// streamTicketTTL, once, with the rights of the credential that asked for
// it and no more. Long-lived credentials (JWTs, API keys) are never
// accepted in a URL, where logs and browser histories keep them.
//
// A ticket is "jst1." and the base64url of its JSON payload followed by the
// payload's HMAC-SHA256 under the server's TicketKey: stateless, so a
// ticket issued by one replica is accepted by another, as long as the
// replicas share the key (the manager derives it from the JWT secret, or
// reads --stream-ticket-key-file). Single use is enforced per replica (a
// used-set of unexpired nonces): behind a load balancer without sticky
// sessions a ticket could be used once on each replica within its 60 s.

// streamTicketTTL is how long a ticket may be presented after its issue.
const streamTicketTTL = 60 * time.Second

const ticketPrefix = "jst1."

// streamPath is a path a ticket may be issued for: a run's or a team's
// event stream.
var streamPath = regexp.MustCompile(`^/v1/(jobs/[^/]+|teams/[^/]+/jobs)/events$`)

// ticketPayload is what a ticket carries: its path, expiry (Unix ms),
// nonce and the principal that asked for it.
type ticketPayload struct {
	Path    string    `json:"path"`
	Expires int64     `json:"exp"`
	Nonce   string    `json:"n"`
	P       Principal `json:"p"`
}

// tickets issues and checks stream tickets.
type tickets struct {
	key []byte
	now func() time.Time
	// used are the nonces of the tickets presented here.
	used usedNonces
}

// usedNonces are the nonces of single-use tokens (stream tickets, sign-in
// links) presented to this process, each kept until its token expires.
type usedNonces struct {
	mu sync.Mutex
	m  map[string]time.Time
}

// use records nonce, good until exp, and says whether it was unused.
func (u *usedNonces) use(nonce string, exp, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for n, e := range u.m {
		if !now.Before(e) {
			delete(u.m, n) // expired: it would be refused anyway
		}
	}
	if _, seen := u.m[nonce]; seen {
		return false
	}
	if u.m == nil {
		u.m = map[string]time.Time{}
	}
	u.m[nonce] = exp
	return true
}

// seen says whether nonce was used.
func (u *usedNonces) seen(nonce string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.m[nonce]
	return ok
}

func newTickets(key []byte, now func() time.Time) *tickets {
	if len(key) == 0 {
		key = make([]byte, 32)
		_, _ = rand.Read(key)
	}
	return &tickets{key: key, now: now}
}

func (t *tickets) mac(payload []byte) []byte {
	m := hmac.New(sha256.New, t.key)
	m.Write(payload)
	return m.Sum(nil)
}

// derive is a key of the server's for purpose (the console's session
// sealing and CSRF tokens), derived from the ticket key: one secret that
// the replicas share, one key per use. A ticket's MAC is over a JSON
// object, never over a purpose label, so no ticket reveals a derived key.
func (t *tickets) derive(purpose string) []byte {
	return t.mac([]byte("jobrun key for " + purpose))
}

// issue returns a ticket for path with p's rights, and its expiry.
func (t *tickets) issue(path string, p *Principal) (string, time.Time) {
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	exp := t.now().Add(streamTicketTTL)
	payload, _ := json.Marshal(ticketPayload{Path: path, Expires: exp.UnixMilli(), Nonce: base64.RawURLEncoding.EncodeToString(nonce), P: *p})
	return ticketPrefix + base64.RawURLEncoding.EncodeToString(append(payload, t.mac(payload)...)), exp
}

var errBadTicket = errors.New("invalid, expired, used or misdirected stream ticket")

// redeem checks a ticket presented for path and uses it up.
func (t *tickets) redeem(ticket, path string) (*Principal, error) {
	raw, ok := strings.CutPrefix(ticket, ticketPrefix)
	if !ok {
		return nil, errBadTicket // a JWT, an API key, or garbage
	}
	data, err := base64.RawURLEncoding.DecodeString(raw)
	if err != nil || len(data) <= sha256.Size {
		return nil, errBadTicket
	}
	payload, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	if !hmac.Equal(sum, t.mac(payload)) {
		return nil, errBadTicket
	}
	var tp ticketPayload
	if err := json.Unmarshal(payload, &tp); err != nil || tp.Nonce == "" {
		return nil, errBadTicket
	}
	now := t.now()
	exp := time.UnixMilli(tp.Expires)
	if tp.Path != path || !now.Before(exp) || exp.Sub(now) > streamTicketTTL {
		return nil, errBadTicket
	}
	if !t.used.use(tp.Nonce, exp, now) {
		return nil, errBadTicket
	}
	return &tp.P, nil
}

// issueTicket serves POST /v1/stream-tickets: {"path": "/v1/jobs/<id>/events"}
// → {"ticket": "...", "expires_at": "..."}. Whether the caller may read the
// path is checked when the stream opens, with the same rights.
func (s *Server) issueTicket(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Path string `json:"path"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, r, badRequest("the body must be {\"path\": \"/v1/jobs/<runId>/events\"} or {\"path\": \"/v1/teams/<teamId>/jobs/events\"}"))
		return
	}
	if !streamPath.MatchString(req.Path) {
		writeError(w, r, badRequest("invalid path %q: a ticket is for /v1/jobs/<runId>/events or /v1/teams/<teamId>/jobs/events", clip(req.Path)))
		return
	}
	ticket, exp := s.tickets.issue(req.Path, principalFrom(r.Context()))
	writeJSON(w, http.StatusCreated, map[string]any{"ticket": ticket, "expires_at": formatTime(exp)})
}

// streamAuth is the middleware of the event streams: a stream ticket in
// ?ticket=, or else a bearer credential. A credential in the URL
// (?access_token=) is refused.
func (s *Server) streamAuth(next http.Handler) http.Handler {
	bearerAuth := s.auth(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Has("access_token") {
			writeError(w, r, errorf(http.StatusUnauthorized, codeUnauthorized, "credentials are not accepted in URLs: send Authorization: Bearer, or get a stream ticket (POST /v1/stream-tickets)"))
			return
		}
		if !q.Has("ticket") {
			token := bearer(r)
			bearerAuth.ServeHTTP(w, r.WithContext(withRecheck(r.Context(), func(ctx context.Context) (*Principal, error) {
				return s.sessions.auth.Authenticate(ctx, token)
			})))
			return
		}
		p, err := s.tickets.redeem(q.Get("ticket"), r.URL.Path)
		if err != nil {
			writeError(w, r, errorf(http.StatusUnauthorized, codeUnauthorized, errBadTicket.Error()))
			return
		}
		opened := s.now()
		ctx := withRecheck(withPrincipal(r.Context(), p), func(context.Context) (*Principal, error) {
			if s.now().Sub(opened) >= ticketStreamMaxAge {
				return nil, errUnauthenticated
			}
			return p, nil
		})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// StreamTicketKey derives the key of stream tickets from a secret the
// replicas share (such as the HS256 JWT secret), for a purpose of its own:
// a ticket is never a valid JWT, nor a JWT a valid ticket.
func StreamTicketKey(secret []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("jobrun stream tickets v1"))
	return m.Sum(nil)
}
