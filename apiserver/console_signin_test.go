package apiserver

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// signInLink asks for a sign-in link with tok: its path and expiry.
func (a *api) signInLink(tok string) (string, time.Time) {
	a.t.Helper()
	status, body := a.do(http.MethodPost, "/v1/sign-in-links", tok, nil)
	path, _ := body["url"].(string)
	exp, err := time.Parse(time.RFC3339Nano, str(body["expires_at"]))
	if status != http.StatusCreated || !strings.HasPrefix(path, "/ui/sign-in?link=") || err != nil {
		a.t.Fatalf("POST /v1/sign-in-links: %d %v", status, body)
	}
	return path, exp
}

func str(v any) string { s, _ := v.(string); return s }

// TestConsoleSignInLink: a link signs in with the credential that asked
// for it, once, within its 15 minutes, through its page's button only; the
// URL does not show the credential.
func TestConsoleSignInLink(t *testing.T) {
	clk := &clock{t: time.Now()}
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{jwt: HS256(secret, JWTChecks{Now: clk.now}), now: clk.now})
	tok := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["exp"] = clk.now().Add(time.Hour).Unix() })
	path, exp := a.signInLink(tok)
	if d := exp.Sub(clk.now()); d < 14*time.Minute || d > 15*time.Minute {
		t.Errorf("the link expires in %s, want 15 min", d)
	}
	link, _ := url.Parse(path)
	value := link.Query().Get("link")
	for _, part := range strings.Split(tok, ".") {
		if strings.Contains(value, part[:min(len(part), 16)]) {
			t.Fatalf("the link shows the credential: %s", path)
		}
	}

	// Opening it shows whom it signs in as, and signs in no one; opening it
	// again (a link preview, say) does not use it up.
	b := a.browser()
	for range 2 {
		resp := b.get(path)
		if resp.status != http.StatusOK || !strings.Contains(resp.body, `<strong id="link-as">user-1</strong>, a member of <strong>team-1</strong>`) || !strings.Contains(resp.body, "Continue as user-1") {
			t.Fatalf("the link's page: %d\n%s", resp.status, resp.body)
		}
		if strings.Contains(resp.header.Get("Set-Cookie"), sessionCookie) || b.sessionValue() != "" {
			t.Fatal("opening a link signed in")
		}
	}
	// Its button from another site is refused.
	if resp := b.signInWith("?link="+url.QueryEscape(value), url.Values{"link": {value}}, map[string]string{"Origin": "https://evil.example"}); resp.status != http.StatusForbidden {
		t.Errorf("the link's button from another site: %d, want 403", resp.status)
	}
	// The button signs in, to the team's runs.
	resp := b.signInWith("?link="+url.QueryEscape(value), url.Values{"link": {value}}, nil)
	if resp.status != http.StatusSeeOther || resp.header.Get("Location") != "/ui/teams/team-1/runs" {
		t.Fatalf("the link's button: %d to %q\n%s", resp.status, resp.header.Get("Location"), resp.body)
	}
	if resp := b.get("/ui/teams/team-1/runs"); resp.status != http.StatusOK || !strings.Contains(resp.body, "Signed in as user-1") {
		t.Fatalf("the runs page after the link: %d", resp.status)
	}

	// invalid checks that a link signs in no one: its page is the credential
	// form; its button is answered buttonStatus.
	invalidAs := func(what, value string, buttonStatus int) {
		t.Helper()
		b := a.browser()
		if resp := b.get("/ui/sign-in?link=" + url.QueryEscape(value)); resp.status != http.StatusBadRequest || !strings.Contains(resp.body, "invalid, expired or already used") || strings.Contains(resp.body, "Continue as") {
			t.Errorf("%s: opened with %d, want 400 and the credential form\n%s", what, resp.status, resp.body)
		}
		if resp := b.signInWith("", url.Values{"link": {value}}, nil); resp.status != buttonStatus || b.sessionValue() != "" {
			t.Errorf("%s: its button: %d, session %v; want %d and no session", what, resp.status, b.sessionValue() != "", buttonStatus)
		}
	}
	invalid := func(what, value string) { t.Helper(); invalidAs(what, value, http.StatusBadRequest) }
	invalid("a used link", value)
	flipped := []byte(value)
	flipped[len(flipped)/2] ^= 1
	invalid("a changed link", string(flipped))
	invalid("a session cookie as a link", b.sessionValue())

	later, _ := a.signInLink(tok)
	clk.add(signInLinkTTL + time.Second)
	laterURL, _ := url.Parse(later)
	invalid("an expired link", laterURL.Query().Get("link"))

	// A link is no better than its credential: the JWT expires, the link
	// stops working.
	short := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["exp"] = clk.now().Add(time.Minute).Unix() })
	shortPath, _ := a.signInLink(short)
	clk.add(time.Minute + DefaultJWTLeeway + time.Second)
	shortURL, _ := url.Parse(shortPath)
	invalidAs("a link of an expired JWT", shortURL.Query().Get("link"), http.StatusUnauthorized)

	if status, _ := a.do(http.MethodPost, "/v1/sign-in-links", "", nil); status != http.StatusUnauthorized {
		t.Errorf("a link without a credential: %d, want 401", status)
	}
}
