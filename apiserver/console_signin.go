package apiserver

import (
	"crypto/hmac"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// Signing in to the console: with a pasted credential, or with a sign-in
// link.
//
// A sign-in link is a one-click way in for a credential's holder (make dev
// prints one for the demo team) that puts no usable long-lived credential
// in a URL. POST /v1/sign-in-links, with the credential as bearer, returns
// the path /ui/sign-in?link=<sealed>: the credential sealed with AES-GCM
// (a key derived from the ticket key, for this purpose only) with an expiry
// (signInLinkTTL) and a nonce. Opening the link shows whom it signs in as
// and one button; the button's POST uses the link up (once per replica, as
// stream tickets are) and signs in as a pasted credential would. A GET never
// uses a link up (link previews), and a link only signs in through that
// button on this origin, so a link sent by someone else cannot sign a
// victim in as them unseen.
//
// The sign-in form has no session to bind a CSRF token to, so it has a
// token of its own: a random value in the cookie jobrun_signin
// (SameSite=Strict, HttpOnly, Path=/ui/sign-in) and in the form; a POST
// without both, equal, or from another Origin is refused. A cross-site
// page therefore cannot sign a browser in, with any credential.

const (
	// signInLinkTTL is how long a sign-in link may be used after its issue.
	signInLinkTTL = 15 * time.Minute
	// signInCookie holds the sign-in form's token.
	signInCookie = "jobrun_signin"
)

// linkAAD binds a sealed link to its use.
var linkAAD = []byte("jobrun console sign-in link v1")

// linkPayload is what a link seals: the credential, its expiry (Unix ms)
// and a nonce.
type linkPayload struct {
	Credential string `json:"c"`
	Expires    int64  `json:"exp"`
	Nonce      string `json:"n"`
}

var errBadLink = errors.New("this sign-in link is invalid, expired or already used")

// badLinkMessage is what the sign-in page says of a link it refuses.
const badLinkMessage = "This sign-in link is invalid, expired or already used: sign in with a credential, or ask for a new link."

// link seals credential into a sign-in link's value, and its expiry.
func (ss *sessions) link(credential string) (string, time.Time) {
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	exp := ss.now().Add(signInLinkTTL)
	payload, _ := json.Marshal(linkPayload{Credential: credential, Expires: exp.UnixMilli(), Nonce: base64.RawURLEncoding.EncodeToString(nonce)})
	return sealValue(ss.linkAEAD, payload, linkAAD), exp
}

// openLink returns the payload of a link's value, if it is unexpired and
// unused here; use uses it up.
func (ss *sessions) openLink(value string, use bool) (linkPayload, error) {
	var lp linkPayload
	payload, ok := openValue(ss.linkAEAD, value, linkAAD)
	if !ok || json.Unmarshal(payload, &lp) != nil || lp.Credential == "" || lp.Nonce == "" {
		return lp, errBadLink
	}
	now := ss.now()
	exp := time.UnixMilli(lp.Expires)
	if !now.Before(exp) || exp.Sub(now) > signInLinkTTL {
		return lp, errBadLink
	}
	if use && !ss.usedLinks.use(lp.Nonce, exp, now) || !use && ss.usedLinks.seen(lp.Nonce) {
		return lp, errBadLink
	}
	return lp, nil
}

// issueSignInLink serves POST /v1/sign-in-links: a link that signs its
// opener in to the console with the request's own credential →
// {"url": "/ui/sign-in?link=...", "expires_at": "..."} (the url is a path
// on this server).
func (s *Server) issueSignInLink(w http.ResponseWriter, r *http.Request) {
	credential := bearer(r)
	if len(credential) > maxCredential {
		writeError(w, r, badRequest("this credential is too long for a console session (at most %d characters)", maxCredential))
		return
	}
	value, exp := s.sessions.link(credential)
	writeJSON(w, http.StatusCreated, map[string]any{"url": "/ui/sign-in?link=" + value, "expires_at": formatTime(exp)})
}

// signInToken is the sign-in form's token of r's browser: its cookie's, or
// a new one set in w.
func signInToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(signInCookie); err == nil && len(c.Value) == 22 {
		return c.Value
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	token := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Value: token, Path: "/ui/sign-in", MaxAge: int(sessionMaxAge / time.Second),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	return token
}

// checkSignInToken says whether the sign-in POST r carries its browser's
// form token and comes from this origin.
func checkSignInToken(r *http.Request) bool {
	c, err := r.Cookie(signInCookie)
	got := r.PostFormValue(csrfField)
	return err == nil && c.Value != "" && got != "" && hmac.Equal([]byte(got), []byte(c.Value)) && sameOrigin(r)
}
