package apiserver

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"time"
)

// Console sessions. Signing in turns a credential (a JWT or an API key) into
// the cookie jobrun_session, which holds the credential itself, sealed with
// AES-GCM under a key derived from the stream-ticket key (tickets.derive):
// stateless, so any replica that shares the ticket key opens it. Every
// request opens the cookie and authenticates the credential again with the
// API's Authenticator, so the console never sees more than the credential
// could through the API, and stops working the moment the credential does
// (a JWT's exp, a revoked API key).
//
// The cookie is HttpOnly, SameSite=Strict, Path=/ui (a browser never sends
// it to /v1, and /v1 never reads cookies), and Secure when the request came
// over TLS. A session also ends sessionMaxAge after sign-in.
//
// Every POST but the sign-in carries a CSRF token: the HMAC of the cookie's
// value under a second derived key, in a hidden form field; a POST whose
// Origin header (when present) is not this server's is refused too.

const (
	sessionCookie = "jobrun_session"
	// sessionMaxAge bounds a session, whatever its credential's lifetime.
	sessionMaxAge = 12 * time.Hour
	// maxCredential bounds a credential to seal: the cookie must stay under
	// browsers' 4 KB.
	maxCredential = 2500
	// csrfField is the form field of the CSRF token.
	csrfField = "csrf"
)

// sessionAAD binds a sealed value to its use.
var sessionAAD = []byte("jobrun console session v1")

// sessions seals credentials into cookies and sign-in links, and checks
// CSRF tokens.
type sessions struct {
	aead     cipher.AEAD
	linkAEAD cipher.AEAD
	csrfKey  []byte
	auth     Authenticator
	now      func() time.Time
	// usedLinks are the nonces of the sign-in links used here.
	usedLinks usedNonces
}

func newSessions(t *tickets, auth Authenticator, now func() time.Time) *sessions {
	return &sessions{aead: newAEAD(t.derive("console sessions v1")), linkAEAD: newAEAD(t.derive("console sign-in links v1")),
		csrfKey: t.derive("console csrf v1"), auth: auth, now: now}
}

// newAEAD is AES-256-GCM under a 32-byte key.
func newAEAD(key []byte) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return aead
}

// sealValue seals payload for aad with aead: base64url of nonce and box.
func sealValue(aead cipher.AEAD, payload, aad []byte) string {
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, payload, aad))
}

// openValue opens what sealValue sealed with aead for aad.
func openValue(aead cipher.AEAD, value string, aad []byte) ([]byte, bool) {
	data, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(data) < aead.NonceSize() {
		return nil, false
	}
	payload, err := aead.Open(nil, data[:aead.NonceSize()], data[aead.NonceSize():], aad)
	return payload, err == nil
}

// sealedSession is what a cookie holds: the credential and when the session
// began (Unix seconds).
type sealedSession struct {
	Credential string `json:"c"`
	Since      int64  `json:"s"`
}

// seal returns the cookie value of a session of credential.
func (ss *sessions) seal(credential string) string {
	payload, _ := json.Marshal(sealedSession{Credential: credential, Since: ss.now().Unix()})
	return sealValue(ss.aead, payload, sessionAAD)
}

var errNoSession = errors.New("no session")

// open returns the credential of a cookie value sealed by seal, unless the
// session has ended.
func (ss *sessions) open(value string) (string, error) {
	payload, ok := openValue(ss.aead, value, sessionAAD)
	if !ok {
		return "", errNoSession
	}
	var s sealedSession
	if json.Unmarshal(payload, &s) != nil || s.Credential == "" {
		return "", errNoSession
	}
	age := ss.now().Sub(time.Unix(s.Since, 0))
	if age < -time.Minute || age > sessionMaxAge {
		return "", errNoSession
	}
	return s.Credential, nil
}

// csrfToken is the CSRF token of the session whose cookie value is value.
func (ss *sessions) csrfToken(value string) string {
	m := hmac.New(sha256.New, ss.csrfKey)
	m.Write([]byte(value))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkCSRF says whether the POST r of the session value carries its token.
func (ss *sessions) checkCSRF(r *http.Request, value string) bool {
	got := r.PostFormValue(csrfField)
	return got != "" && hmac.Equal([]byte(got), []byte(ss.csrfToken(value)))
}

// sameOrigin says whether r's Origin header, when it has one, is this
// server's own: the origin a page of the console would send.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true // not sent (older browsers, non-browser clients): the token decides
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false // "null" (sandboxed frames, some redirects) included
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return u.Scheme == scheme && u.Host == r.Host
}

// setSessionCookie sets (value non-empty) or clears the session cookie.
func setSessionCookie(w http.ResponseWriter, r *http.Request, value string) {
	c := &http.Cookie{Name: sessionCookie, Value: value, Path: "/ui", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode}
	if value == "" {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}

// sessionKey is the context key of the request's session cookie value.
type sessionKey struct{}

func sessionFrom(ctx context.Context) string {
	v, _ := ctx.Value(sessionKey{}).(string)
	return v
}

// authenticateSession opens r's session cookie and authenticates its
// credential: the principal, and the cookie's value. An error wrapping
// errNoSession means there is no (valid) session; another is the
// Authenticator's (such as a 503 while API keys load).
func (ss *sessions) authenticateSession(r *http.Request) (*Principal, string, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil, "", errNoSession
	}
	credential, err := ss.open(c.Value)
	if err != nil {
		return nil, "", err
	}
	p, err := ss.auth.Authenticate(r.Context(), credential)
	if credentialRefused(err) {
		return nil, "", errors.Join(errNoSession, err)
	}
	if err != nil {
		return nil, "", err
	}
	return p, c.Value, nil
}
