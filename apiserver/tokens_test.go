package apiserver

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"jobrun.dev/jobrun/test/testenv"
)

const (
	testIssuer   = "https://idp.example"
	testAudience = "jobrun-api"
)

// idp is a loopback identity provider whose key set can be rotated; it
// counts the fetches of its set.
type idp struct {
	srv     *httptest.Server
	mu      sync.Mutex
	keys    map[string]*rsa.PrivateKey
	fetches atomic.Int64
}

func newIDP(t *testing.T, kid string) *idp {
	t.Helper()
	p := &idp{keys: map[string]*rsa.PrivateKey{}}
	p.rotate(t, kid)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		p.fetches.Add(1)
		p.mu.Lock()
		set := []map[string]any{}
		for kid, k := range p.keys {
			set = append(set, map[string]any{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())})
		}
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": set})
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// rotate replaces the provider's keys by a new one named kid.
func (p *idp) rotate(t *testing.T, kid string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.keys = map[string]*rsa.PrivateKey{kid: k}
	p.mu.Unlock()
}

// token signs claims (those of a valid token for this API, changed by
// mutate) with the provider's key kid.
func (p *idp) token(t *testing.T, kid string, mutate func(jwt.MapClaims)) string {
	t.Helper()
	p.mu.Lock()
	k := p.keys[kid]
	p.mu.Unlock()
	if k == nil {
		var err error
		if k, err = rsa.GenerateKey(rand.Reader, 1024); err != nil { //nolint:gosec // a junk key
			t.Fatal(err)
		}
	}
	now := time.Now()
	c := jwt.MapClaims{"sub": "user-1", "teams": []string{"team-1"}, "role": "admin", "iss": testIssuer, "aud": testAudience,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	if mutate != nil {
		mutate(c)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// apiWithIDP starts an identity provider serving key k1 and an API server
// that checks JWTs against its key set, with testIssuer and testAudience.
func apiWithIDP(t *testing.T) (*idp, *api) {
	t.Helper()
	p := newIDP(t, "k1")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	auth, err := JWKS(ctx, p.srv.URL, JWTChecks{Issuer: testIssuer, Audience: testAudience})
	if err != nil {
		t.Fatal(err)
	}
	return p, startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{jwt: auth})
}

// TestJWTIssuerAudienceTimes: with a JWKS, a token the same provider
// issued for another application (another aud), or that another issuer
// signed with a key in the set, is refused; so are tokens not yet valid
// (nbf, iat in the future beyond the leeway) and tokens that live too long.
func TestJWTIssuerAudienceTimes(t *testing.T) {
	p, a := apiWithIDP(t)
	now := time.Now()
	tests := []struct {
		name   string
		mutate func(jwt.MapClaims)
		want   int
	}{
		{"valid", nil, http.StatusOK},
		{"audience among several", func(c jwt.MapClaims) { c["aud"] = []string{"other-app", testAudience} }, http.StatusOK},
		{"nbf within the leeway", func(c jwt.MapClaims) { c["nbf"] = now.Add(10 * time.Second).Unix() }, http.StatusOK},
		{"lives 23 h", func(c jwt.MapClaims) { c["exp"] = now.Add(23 * time.Hour).Unix() }, http.StatusOK},
		{"another application's token", func(c jwt.MapClaims) { c["aud"] = "billing-app" }, http.StatusUnauthorized},
		{"no audience", func(c jwt.MapClaims) { delete(c, "aud") }, http.StatusUnauthorized},
		{"another issuer", func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }, http.StatusUnauthorized},
		{"no issuer", func(c jwt.MapClaims) { delete(c, "iss") }, http.StatusUnauthorized},
		{"not valid before an hour from now", func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() }, http.StatusUnauthorized},
		{"issued in the future", func(c jwt.MapClaims) { c["iat"] = now.Add(time.Hour).Unix() }, http.StatusUnauthorized},
		{"exp-iat 48 h", func(c jwt.MapClaims) {
			c["iat"] = now.Add(-47 * time.Hour).Unix()
			c["exp"] = now.Add(time.Hour).Unix()
		}, http.StatusUnauthorized},
		{"expires in 30 days, no iat", func(c jwt.MapClaims) {
			delete(c, "iat")
			c["exp"] = now.Add(30 * 24 * time.Hour).Unix()
		}, http.StatusUnauthorized},
		{"expired a second ago (within the leeway)", func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Second).Unix() }, http.StatusOK},
		{"expired 5 minutes ago", func(c jwt.MapClaims) { c["exp"] = now.Add(-5 * time.Minute).Unix() }, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := a.get("/v1/teams/team-1/jobs", p.token(t, "k1", tt.mutate))
			if status != tt.want {
				t.Errorf("%d %v, want %d", status, body, tt.want)
			}
		})
	}
	// HS256 checks iss and aud too when they are configured.
	ctx := context.Background()
	hs := HS256(secret, JWTChecks{Issuer: testIssuer, Audience: testAudience})
	if _, err := hs.Authenticate(ctx, userToken(t)); err == nil {
		t.Error("HS256 with an issuer and audience accepted a token without them")
	}
	if _, err := hs.Authenticate(ctx, token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["iss"], c["aud"] = testIssuer, testAudience })); err != nil {
		t.Errorf("HS256 with an issuer and audience refused a token with them: %v", err)
	}
}

// TestJWKSRotationUnderJunk: while clients send tokens with made-up key ids
// as fast as they can, the provider rotates its key; the first request with
// a token of the new key is accepted (it waits for one fresh fetch), and
// the junk costs the provider at most about one fetch per second.
func TestJWKSRotationUnderJunk(t *testing.T) {
	p, a := apiWithIDP(t)
	if status, body := a.get("/v1/teams/team-1/jobs", p.token(t, "k1", nil)); status != http.StatusOK {
		t.Fatalf("before the rotation: %d %v", status, body)
	}
	junk := p.token(t, "junk", nil) // signed by a key the provider never had

	start := time.Now()
	fetchesBefore := p.fetches.Load()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var junkSent, junkAccepted atomic.Int64
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	defer c.CloseIdleConnections()
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(w), 3))
			for {
				select {
				case <-stop:
					return
				default:
				}
				// The same junk token under a fresh key id each time.
				parts := strings.SplitN(junk, ".", 2)
				hdr := b64(fmt.Appendf(nil, `{"alg":"RS256","kid":"junk-%d","typ":"JWT"}`, rng.Int64()))
				status, _, _ := rawRequest(t, c, http.MethodGet, a.url+"/v1/teams/team-1/jobs", http.Header{"Authorization": {"Bearer " + hdr + "." + parts[1]}})
				junkSent.Add(1)
				if status != http.StatusUnauthorized {
					junkAccepted.Add(1)
				}
			}
		}()
	}
	// Let the junk get going: some of it answered.
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		if junkSent.Load() < 50 {
			return fmt.Errorf("%d junk requests answered", junkSent.Load())
		}
		return nil
	})

	p.rotate(t, "k2")
	rotated := time.Now()
	status, body := a.get("/v1/teams/team-1/jobs", p.token(t, "k2", nil))
	took := time.Since(rotated)
	if status != http.StatusOK {
		t.Errorf("the first request with the rotated key: %d %v (after %v), want 200", status, body, took)
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	fetches := p.fetches.Load() - fetchesBefore
	t.Logf("new key accepted after %v; %d junk requests in %v cost %d key-set fetches", took, junkSent.Load(), elapsed.Round(time.Millisecond), fetches)
	if junkAccepted.Load() != 0 {
		t.Errorf("%d junk tokens accepted", junkAccepted.Load())
	}
	if limit := int64(elapsed/jwksMinInterval) + 2; fetches > limit {
		t.Errorf("%d key-set fetches in %v, want at most %d (one per %v)", fetches, elapsed, limit, jwksMinInterval)
	}
}

// TestJWKSURLAndFirstFetch: only https (plain http to loopback), and a key
// set that cannot be fetched at start is an error naming the URL.
func TestJWKSURLAndFirstFetch(t *testing.T) {
	for _, u := range []string{"https://idp.example/jwks", "http://127.0.0.1:9/jwks", "http://[::1]:9/jwks", "http://localhost:9/jwks"} {
		if err := CheckJWKSURL(u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for _, u := range []string{"http://idp.example/jwks", "http://10.0.0.1/jwks", "ftp://idp.example/jwks", "idp.example/jwks", "http://127.0.0.1.evil.example/jwks"} {
		if err := CheckJWKSURL(u); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
	ctx := context.Background()
	checks := JWTChecks{Issuer: testIssuer, Audience: testAudience}
	if _, err := JWKS(ctx, "http://idp.example/jwks", checks); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("plain http to another host: %v", err)
	}
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusBadGateway) }))
	defer broken.Close()
	if _, err := JWKS(ctx, broken.URL, checks); err == nil || !strings.Contains(err.Error(), broken.URL) || !strings.Contains(err.Error(), "502") {
		t.Errorf("a key set answering 502: %v", err)
	}
	notJSON := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>")) }))
	defer notJSON.Close()
	if _, err := JWKS(ctx, notJSON.URL, checks); err == nil {
		t.Error("a key set that is not JSON was accepted")
	}
	p := newIDP(t, "k1")
	if _, err := JWKS(ctx, p.srv.URL, JWTChecks{Audience: testAudience}); err == nil {
		t.Error("JWKS without an issuer was accepted")
	}
	if _, err := JWKS(ctx, p.srv.URL, JWTChecks{Issuer: testIssuer}); err == nil {
		t.Error("JWKS without an audience was accepted")
	}
}

// TestClaimsThatCannotBeStored: a token whose email or sub a run could not
// hold is refused with a message (401), and a team id no run can have is a
// 4xx; never a 500 from the API server's validation.
func TestClaimsThatCannotBeStored(t *testing.T) {
	a := newAPI(t)
	a.seed()
	body := map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"}
	tests := []struct {
		name   string
		mutate func(jwt.MapClaims)
		team   string
		want   int
	}{
		{"email without @", func(c jwt.MapClaims) { c["email"] = "not-an-address" }, "team-1", http.StatusUnauthorized},
		{"email with a space", func(c jwt.MapClaims) { c["email"] = "a b@example.com" }, "team-1", http.StatusUnauthorized},
		{"email of 300 bytes", func(c jwt.MapClaims) { c["email"] = strings.Repeat("a", 290) + "@example.com" }, "team-1", http.StatusUnauthorized},
		{"sub of 300 bytes", func(c jwt.MapClaims) { c["sub"] = strings.Repeat("s", 300) }, "team-1", http.StatusUnauthorized},
		{"team id a run cannot have", func(c jwt.MapClaims) { c["teams"] = []string{"-team-"} }, "-team-", http.StatusBadRequest},
		{"team id of 100 bytes", func(c jwt.MapClaims) { c["teams"] = []string{strings.Repeat("t", 100)} }, strings.Repeat("t", 100), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, resp := a.do(http.MethodPost, "/v1/teams/"+tt.team+"/jobs/trigger", token(t, jwt.SigningMethodHS256, secret, tt.mutate), body)
			e, _ := resp["error"].(map[string]any)
			if status != tt.want || e["message"] == "" || e["message"] == nil {
				t.Errorf("%d %v, want %d with a message", status, resp, tt.want)
			}
		})
	}
	// The longest sub and email that fit are stored.
	status, resp := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) {
		c["sub"] = strings.Repeat("s", maxSubject)
		c["email"] = strings.Repeat("e", maxEmail-len("@example.com")) + "@example.com"
	}), body)
	if status != http.StatusCreated {
		t.Errorf("longest sub and email: %d %v", status, resp)
	}
}
