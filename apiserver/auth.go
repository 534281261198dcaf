package apiserver

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"

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

// HS256Authenticator accepts JWTs signed with HS256 and a shared secret:
// for development and tests. exp and sub are required; any other algorithm,
// alg none included, is refused.
type HS256Authenticator struct {
	Secret []byte
}

// Authenticate checks the token's signature, algorithm and expiry.
func (a HS256Authenticator) Authenticate(_ context.Context, token string) (*Principal, error) {
	c := &claims{}
	_, err := jwt.ParseWithClaims(token, c, func(*jwt.Token) (any, error) { return a.Secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
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
