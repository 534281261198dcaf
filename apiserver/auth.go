package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
)

// Permissions of the Jobs API.
const (
	PermJobsRead  = "jobs:read"
	PermJobsWrite = "jobs:write"
)

// Principal is the authenticated caller.
type Principal struct {
	// Kind is "user" (a JWT) or "api_key".
	Kind string
	// ID is the JWT's sub, or the API key's id.
	ID string
	// Email is where notifications go.
	Email string
	// Teams are the teams the caller belongs to.
	Teams []string
	// Role is the JWT's role; admin grants jobs:read and jobs:write.
	Role string
	// Permissions are the granted permissions, such as jobs:read.
	Permissions []string
}

// InTeam reports whether the caller belongs to team.
func (p *Principal) InTeam(team string) bool {
	return team != "" && slices.Contains(p.Teams, team)
}

// Can reports whether the caller holds perm in team: a member with the
// permission listed, or with role admin.
func (p *Principal) Can(team, perm string) bool {
	return p.InTeam(team) && (p.Role == "admin" || slices.Contains(p.Permissions, perm))
}

// TriggeredBy is how runs record who started them.
func (p *Principal) TriggeredBy() string {
	if p.Kind == "api_key" {
		return "manual:api_key:" + p.ID
	}
	return "manual:user:" + p.ID
}

// Authenticator turns a bearer token into a Principal. It returns
// errUnauthenticated (wrapped) for any credential it does not accept.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*Principal, error)
}

var errUnauthenticated = errors.New("invalid credential")

// claims are the JWT claims the API reads.
type claims struct {
	jwt.RegisteredClaims
	Email       string   `json:"email"`
	Teams       []string `json:"teams"`
	Role        string   `json:"role"`
	Permissions []string `json:"permissions"`
}

// JWTAuthenticator accepts JWTs signed with one of its algorithms by one of
// its keys. exp and sub are required; every other algorithm, alg none
// included, is refused.
type JWTAuthenticator struct {
	keyfunc jwt.Keyfunc
	methods []string
}

// HS256 accepts JWTs signed with HS256 and a shared secret: for development
// and tests.
func HS256(secret []byte) JWTAuthenticator {
	return JWTAuthenticator{
		keyfunc: func(*jwt.Token) (any, error) { return secret, nil },
		methods: []string{jwt.SigningMethodHS256.Alg()},
	}
}

// JWKS accepts JWTs signed with RS256 or ES256 by a key of the JSON Web Key
// Set at url, the way identity providers publish theirs. The set is fetched
// now and refreshed in the background (and when a token names an unknown
// key) until ctx ends.
func JWKS(ctx context.Context, url string) (JWTAuthenticator, error) {
	k, err := keyfunc.NewDefaultCtx(ctx, []string{url})
	if err != nil {
		return JWTAuthenticator{}, fmt.Errorf("loading the JWKS at %s: %w", url, err)
	}
	return JWTAuthenticator{
		keyfunc: k.Keyfunc,
		methods: []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg()},
	}, nil
}

// Authenticate checks the token's signature, algorithm and expiry.
func (a JWTAuthenticator) Authenticate(_ context.Context, token string) (*Principal, error) {
	c := &claims{}
	_, err := jwt.ParseWithClaims(token, c, a.keyfunc,
		jwt.WithValidMethods(a.methods),
		jwt.WithExpirationRequired(),
	)
	if err != nil {
		return nil, errors.Join(errUnauthenticated, err)
	}
	if c.Subject == "" {
		return nil, errors.Join(errUnauthenticated, errors.New("token has no sub claim"))
	}
	return &Principal{Kind: "user", ID: c.Subject, Email: c.Email, Teams: c.Teams, Role: c.Role, Permissions: c.Permissions}, nil
}

// principalKey is the context key of the authenticated Principal.
type principalKey struct{}

func principalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// authenticate is the middleware that requires a valid bearer credential.
func authenticate(auth Authenticator) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
			if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
				writeError(w, r, errorf(http.StatusUnauthorized, codeUnauthorized, "missing bearer credential (Authorization: Bearer <token>)"))
				return
			}
			p, err := auth.Authenticate(r.Context(), strings.TrimSpace(token))
			if err != nil {
				if errors.Is(err, errUnauthenticated) {
					writeError(w, r, errorf(http.StatusUnauthorized, codeUnauthorized, "invalid or expired credential"))
					return
				}
				writeError(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
		})
	}
}
