package apiserver

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The fuzz targets run their seeds in every `go test`; `make fuzz` (part of
// `make test`) fuzzes each for a bounded time. None may panic, and every
// refusal must be a 4xx apiError.

func wantClientError(t *testing.T, err error, statuses ...int) {
	t.Helper()
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an API error (it would be a 500)", err)
	}
	for _, s := range statuses {
		if ae.status == s {
			return
		}
	}
	t.Fatalf("status %d for %v, want one of %v", ae.status, err, statuses)
}

func FuzzParseListQuery(f *testing.F) {
	for _, seed := range []string{
		"", "limit=200", "status=running&job_type=revenuecat_sync&project_id=p1&since=7d&until=2024-01-15T11:00:00.000Z",
		"cursor=2024-01-15T10:30:00.000Z|abc", "limit=99999999999999999999", "since=999999w", "cursor=%00|", "x=1", "since=1h&until=2h",
		"since=999999w", "until=15251w", "since=15250w", "until=999999d",
	} {
		f.Add(seed)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/v1/teams/t/jobs", RawQuery: raw}}
		q, err := parseListQuery(r, now)
		if err != nil {
			wantClientError(t, err, http.StatusBadRequest)
			return
		}
		if q.Limit < 1 || q.Limit > 200 {
			t.Fatalf("accepted limit %d", q.Limit)
		}
		// A relative time is that long before now: never after it (as an
		// overflowing duration would make it).
		v := r.URL.Query()
		for _, p := range []struct {
			name string
			got  time.Time
		}{{"since", q.Since}, {"until", q.Until}} {
			if relativeTime.MatchString(v.Get(p.name)) && p.got.After(now) {
				t.Fatalf("%s=%q read as %v, after now", p.name, v.Get(p.name), p.got)
			}
		}
		if q.After != nil {
			again, err := parseCursor(q.After.String())
			if err != nil || !again.CreatedAt.Equal(q.After.CreatedAt) || again.ID != q.After.ID {
				t.Fatalf("cursor %q does not round-trip: %v %v", q.After.String(), again, err)
			}
		}
	})
}

func FuzzDecodeTrigger(f *testing.F) {
	for _, seed := range []string{
		`{"job_type":"revenuecat_sync","project_id":"p1","params":{"integration_id":"i"},"notify":true}`,
		`{"job_type":"x"}`, `{`, `[]`, `{"job_type":"x","params":[1]}`, `{"job_type":"x"}{"job_type":"y"}`,
		`{"job_type":"x","params":null}`, "{\"job_type\":\"\xff\"}", `{"job_type":"x","extra":1}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, "/v1/teams/t/jobs/trigger", bytes.NewReader(body))
		req, err := decodeTrigger(httptest.NewRecorder(), r)
		if err != nil {
			wantClientError(t, err, http.StatusBadRequest, http.StatusRequestEntityTooLarge)
			return
		}
		var params map[string]any
		if req.JobType == "" || json.Unmarshal(req.Params, &params) != nil || params == nil {
			t.Fatalf("accepted %q as job type %q with params %s", body, req.JobType, req.Params)
		}
	})
}

func FuzzJWT(f *testing.F) {
	key := []byte("fuzz-secret-of-enough-length-for-hs256")
	sign := func(m jwt.SigningMethod, k any, claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, claims).SignedString(k)
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	now := time.Now()
	valid := jwt.MapClaims{"sub": "u1", "teams": []string{"t1"}, "exp": now.Add(time.Hour).Unix()}
	withIss := func(mutate func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "u1", "teams": []string{"t1"}, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "iss": "https://idp.example", "aud": "jobrun-api"}
		if mutate != nil {
			mutate(c)
		}
		return c
	}
	f.Add(sign(jwt.SigningMethodHS256, key, valid))
	f.Add(sign(jwt.SigningMethodHS512, key, valid))
	f.Add(sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, valid))
	f.Add(sign(jwt.SigningMethodHS256, key, jwt.MapClaims{"sub": "u1", "exp": now.Add(-time.Hour).Unix()}))
	f.Add(sign(jwt.SigningMethodHS256, key, jwt.MapClaims{"exp": now.Add(time.Hour).Unix()}))
	f.Add(sign(jwt.SigningMethodHS256, key, jwt.MapClaims{"sub": "u1"}))
	f.Add(sign(jwt.SigningMethodHS256, []byte("another-secret-of-enough-length-for-hs256"), valid))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(nil)))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["aud"] = []string{"x", "jobrun-api"} })))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["aud"] = "jobrun-api-2" })))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["iss"] = "https://idp.example/" })))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() })))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["iat"] = now.Add(-48 * time.Hour).Unix() })))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["exp"] = now.Add(90 * 24 * time.Hour).Unix() })))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["email"] = "no address" })))
	f.Add(sign(jwt.SigningMethodHS256, key, withIss(func(c jwt.MapClaims) { c["sub"] = strings.Repeat("s", 245) })))
	f.Add("a.b.c")
	f.Add("")
	plain := HS256(key)
	strict := HS256(key, JWTChecks{Issuer: "https://idp.example", Audience: "jobrun-api"})
	f.Fuzz(func(t *testing.T, token string) {
		for _, c := range []struct {
			auth     JWTAuthenticator
			iss, aud string
		}{{plain, "", ""}, {strict, "https://idp.example", "jobrun-api"}} {
			p, err := c.auth.Authenticate(context.Background(), token)
			if err != nil {
				var ae *apiError
				if errors.As(err, &ae) && ae.status != http.StatusUnauthorized {
					t.Fatalf("refused %q with %d, want 401", token, ae.status)
				}
				continue
			}
			// Accepted: it must really be an HS256 token signed with the
			// key, within its times, for this issuer and audience, with
			// claims a run can store, by a check that shares no code with
			// the authenticator.
			if err := verifyHS256(token, key, time.Now(), c.iss, c.aud); err != nil || p.ID == "" || p.Kind != "user" {
				t.Fatalf("accepted %q as %+v (independent check: %v)", token, p, err)
			}
		}
	})
}

// verifyHS256 is a second implementation of what the HS256 authenticator
// may accept, written from RFC 7515 and 7519 with the standard library only:
// three base64url parts, alg HS256, the HMAC-SHA256 of header.payload, a
// non-empty sub of at most 244 bytes, an email (if any) with one @ and no
// space, exp after now and at most a day (plus a minute of leeway) ahead,
// nbf and iat (if any) not after now plus a minute, exp-iat at most a day,
// and the issuer and audience when asked.
func verifyHS256(token string, key []byte, now time.Time, iss, aud string) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return fmt.Errorf("%d parts, want 3", len(parts))
	}
	rawHeader, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	var header struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(rawHeader, &header); err != nil || header.Alg != "HS256" {
		return fmt.Errorf("header %s: alg is not HS256 (%v)", rawHeader, err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	if !hmac.Equal(sig, mac.Sum(nil)) {
		return errors.New("signature is not the HMAC-SHA256 of header.payload with the key")
	}
	rawPayload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	var payload struct {
		Sub   *string         `json:"sub"`
		Email string          `json:"email"`
		Exp   *float64        `json:"exp"`
		Nbf   *float64        `json:"nbf"`
		Iat   *float64        `json:"iat"`
		Iss   string          `json:"iss"`
		Aud   json.RawMessage `json:"aud"`
	}
	if err := json.Unmarshal(rawPayload, &payload); err != nil {
		return fmt.Errorf("payload %s: %w", rawPayload, err)
	}
	if payload.Sub == nil || *payload.Sub == "" || len(*payload.Sub) > 244 {
		return fmt.Errorf("payload %s: no sub, or too long", rawPayload)
	}
	if e := payload.Email; e != "" && (strings.Count(e, "@") != 1 || strings.ContainsAny(e, " \t\r\n\f") || strings.HasPrefix(e, "@") || strings.HasSuffix(e, "@") || len(e) > 254) {
		return fmt.Errorf("payload %s: email is no address", rawPayload)
	}
	unix := float64(now.UnixNano()) / 1e9
	const minute, day = 60.0, 24 * 3600.0
	if payload.Exp == nil || *payload.Exp <= unix-minute || *payload.Exp > unix+day+minute {
		return fmt.Errorf("payload %s: exp not within [now-1m, now+1d+1m]", rawPayload)
	}
	if payload.Nbf != nil && *payload.Nbf > unix+minute {
		return fmt.Errorf("payload %s: nbf after now", rawPayload)
	}
	if payload.Iat != nil && (*payload.Iat > unix+minute || *payload.Exp-*payload.Iat > day) {
		return fmt.Errorf("payload %s: iat after now, or exp-iat over a day", rawPayload)
	}
	if iss != "" && payload.Iss != iss {
		return fmt.Errorf("payload %s: iss is not %s", rawPayload, iss)
	}
	if aud != "" {
		var one string
		var many []string
		if json.Unmarshal(payload.Aud, &one) != nil || one != aud {
			if json.Unmarshal(payload.Aud, &many) != nil || !slices.Contains(many, aud) {
				return fmt.Errorf("payload %s: aud lacks %s", rawPayload, aud)
			}
		}
	}
	return nil
}

// keyReader is a client.Reader holding one API-key Secret; it counts reads.
type keyReader struct {
	client.Reader
	secret *corev1.Secret
	reads  int
}

func (k *keyReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	k.reads++
	if key.Name != k.secret.Name || key.Namespace != k.secret.Namespace {
		return apierrors.NewNotFound(corev1.Resource("secrets"), key.Name)
	}
	s := k.secret.DeepCopy()
	s.Data = map[string][]byte{}
	for k, v := range s.StringData {
		s.Data[k] = []byte(v)
	}
	*obj.(*corev1.Secret) = *s
	return nil
}

// FuzzAPIKey: any bearer token through the API-key authenticator: a
// malformed one never reaches the Secret reader, and only the real key is
// accepted, as its team with its permissions.
func FuzzAPIKey(f *testing.F) {
	key, s, err := NewAPIKey("ns", "team-1", []string{PermJobsRead}, "ci@example.com")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{key, key[:len(key)-1] + "A", "jrk_", "jrk_0123456789abcdef_" + strings.Repeat("A", 43), key + "x",
		strings.ToUpper(key), "jrk_" + strings.Repeat("g", 16) + "_" + strings.Repeat("A", 43), key + "\n"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		r := &keyReader{secret: s}
		p, err := Authenticators{JWT: HS256([]byte("fuzz-secret-of-enough-length-for-hs256")), APIKey: APIKeyAuthenticator{Reader: r, Namespace: "ns"}}.Authenticate(context.Background(), token)
		if !apiKeyPattern.MatchString(token) && r.reads != 0 {
			t.Fatalf("malformed key %q was looked up", token)
		}
		if err != nil {
			if !errors.Is(err, errUnauthenticated) {
				t.Fatalf("%q refused with %v, want a 401", token, err)
			}
			return
		}
		if token != key || p.Kind != "api_key" || !slices.Equal(p.Teams, []string{"team-1"}) || !slices.Equal(p.Permissions, []string{PermJobsRead}) {
			t.Fatalf("accepted %q as %+v", token, p)
		}
	})
}

// FuzzRouting sends any method, path and Origin to the router (without a
// credential, with and without CORS): never a 5xx or a panic, every error
// JSON, method labels from the fixed set only, and CORS headers only for
// the allowed origin (case-insensitively, as go-chi/cors compares) of the
// server that has one.
func FuzzRouting(f *testing.F) {
	for _, seed := range [][3]string{
		{"GET", "/v1/jobs/x", ""}, {"OPTIONS", "/v1/jobs/x", "https://app.example.com"}, {"BREW", "/v1/teams/t/jobs", "null"},
		{"HEAD", "/healthz", ""}, {"DELETE", "/v1/jobs/x/cancel", "https://evil.example"}, {"POST", "/v1/teams/t/jobs/trigger", "*"},
		{"GET", "/v1/../../etc/passwd", ""}, {"X" + strings.Repeat("Y", 300), "/" + strings.Repeat("a/", 300), ""},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	const allowed = "https://app.example.com"
	plain, err := New(Options{Auth: HS256([]byte("fuzz-secret-of-enough-length-for-hs256")), Lister: NewRunIndex()})
	if err != nil {
		f.Fatal(err)
	}
	withCORS, err := New(Options{Auth: HS256([]byte("fuzz-secret-of-enough-length-for-hs256")), Lister: NewRunIndex(), CORSAllowedOrigins: []string{allowed}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, path, origin string) {
		if method == "" || strings.ContainsAny(method, " \t\r\n") || !strings.HasPrefix(path, "/") {
			return // net/http never hands such a request line to a handler
		}
		switch l := methodLabel(method); l {
		case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other":
		default:
			t.Fatalf("method %q labelled %q", method, l)
		}
		for _, s := range []*Server{plain, withCORS} {
			for _, preflight := range []bool{false, true} {
				r := &http.Request{Method: method, URL: &url.URL{Path: path}, RequestURI: path, Header: http.Header{}, Body: http.NoBody, Host: "jobrun"}
				r = r.WithContext(context.Background())
				if origin != "" {
					r.Header.Set("Origin", origin)
				}
				if preflight {
					r.Header.Set("Access-Control-Request-Method", http.MethodGet)
				}
				rec := httptest.NewRecorder()
				s.Handler().ServeHTTP(rec, r)
				if rec.Code >= 500 || rec.Code < 200 {
					t.Fatalf("%q %q: %d %s", method, path, rec.Code, rec.Body)
				}
				if rec.Code >= 400 && method != http.MethodHead && (rec.Header().Get("Content-Type") != "application/json" || !strings.Contains(rec.Body.String(), `"error"`)) {
					t.Fatalf("%q %q: %d not a JSON error: %q", method, path, rec.Code, rec.Body)
				}
				acao := rec.Header().Get("Access-Control-Allow-Origin")
				if (s == plain && acao != "") || (s == withCORS && acao != "" && (acao != origin || !strings.EqualFold(origin, allowed))) {
					t.Fatalf("origin %q on %q %q got Access-Control-Allow-Origin %q", origin, method, path, acao)
				}
			}
		}
	})
}
