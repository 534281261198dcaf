package apiserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// TestJWKS serves a key set on loopback, as an identity provider would, and
// checks tokens against it.
func TestJWKS(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := ecKey.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]any{"keys": []map[string]any{
		{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": b64(rsaKey.N.Bytes()), "e": b64(big.NewInt(int64(rsaKey.E)).Bytes())},
		{"kty": "EC", "kid": "ec-1", "alg": "ES256", "use": "sig", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])},
	}}
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	defer idp.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	auth, err := JWKS(ctx, idp.URL, JWTChecks{Issuer: "https://idp.example", Audience: "jobrun-api"})
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	sign := func(method jwt.SigningMethod, kid string, key any) string {
		tok := jwt.NewWithClaims(method, jwt.MapClaims{"sub": "u1", "teams": []string{"team-1"}, "exp": time.Now().Add(time.Hour).Unix(), "iss": "https://idp.example", "aud": "jobrun-api"})
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"RS256 by the provider's key", sign(jwt.SigningMethodRS256, "rsa-1", rsaKey), true},
		{"ES256 by the provider's key", sign(jwt.SigningMethodES256, "ec-1", ecKey), true},
		{"RS256 by another key under the provider's kid", sign(jwt.SigningMethodRS256, "rsa-1", otherKey), false},
		{"unknown kid", sign(jwt.SigningMethodRS256, "rsa-9", otherKey), false},
		{"HS256 keyed with the public modulus (algorithm confusion)", sign(jwt.SigningMethodHS256, "rsa-1", rsaKey.N.Bytes()), false},
		{"alg none", sign(jwt.SigningMethodNone, "rsa-1", jwt.UnsafeAllowNoneSignatureType), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := auth.Authenticate(ctx, tt.token)
			if tt.ok && (err != nil || p.ID != "u1" || !p.InTeam("team-1")) {
				t.Errorf("refused: %v", err)
			}
			if !tt.ok && err == nil {
				t.Error("accepted")
			}
		})
	}
}
