package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

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

// credentialRefused reports whether err, from an Authenticator, says the
// credential is no good (errUnauthenticated, or a 401 apiError), rather than
// that it could not be checked now.
func credentialRefused(err error) bool {
	var ae *apiError
	return errors.Is(err, errUnauthenticated) || errors.As(err, &ae) && ae.status == http.StatusUnauthorized
}

// claims are the JWT claims the API reads.
type claims struct {
	jwt.RegisteredClaims
	Email       string   `json:"email"`
	Teams       []string `json:"teams"`
	Role        string   `json:"role"`
	Permissions []string `json:"permissions"`
}

// Defaults of JWTChecks.
const (
	// DefaultMaxTokenLifetime bounds exp-iat (and exp-now) of a JWT.
	DefaultMaxTokenLifetime = 24 * time.Hour
	// DefaultJWTLeeway is the clock skew allowed around exp, nbf and iat.
	DefaultJWTLeeway = 30 * time.Second
)

// Bounds of the claims the API stores in a run (the JobRun CRD's).
const (
	// maxSubject: triggeredBy is "manual:user:<sub>", at most 256 bytes.
	maxSubject = 256 - len("manual:user:")
	maxEmail   = 254
)

// emailPattern is the JobRun CRD's notifyEmail pattern.
var emailPattern = regexp.MustCompile(`^[^@\s]+@[^@\s]+$`)

// JWTChecks are what a JWT must satisfy beyond its signature and algorithm.
type JWTChecks struct {
	// Issuer, if set, must equal the iss claim.
	Issuer string
	// Audience, if set, must be in the aud claim.
	Audience string
	// MaxLifetime bounds exp-iat and exp-now (default
	// DefaultMaxTokenLifetime): a token minted to last for months is
	// refused.
	MaxLifetime time.Duration
	// Leeway is the clock skew allowed (default DefaultJWTLeeway).
	Leeway time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c JWTChecks) withDefaults() JWTChecks {
	if c.MaxLifetime <= 0 {
		c.MaxLifetime = DefaultMaxTokenLifetime
	}
	if c.Leeway <= 0 {
		c.Leeway = DefaultJWTLeeway
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// JWTAuthenticator accepts JWTs signed with one of its algorithms by one of
// its keys. exp and sub are required; nbf and iat, when present, are
// checked (with a small leeway); iss and aud when configured; every other
// algorithm, alg none included, is refused.
type JWTAuthenticator struct {
	// keyfunc returns the jwt.Keyfunc of a request that arrived at arrived.
	keyfunc func(ctx context.Context, arrived time.Time) jwt.Keyfunc
	methods []string
	checks  JWTChecks
}

// HS256 accepts JWTs signed with HS256 and a shared secret: for development
// and tests. Issuer and audience are checked when checks set them.
func HS256(secret []byte, checks ...JWTChecks) JWTAuthenticator {
	var c JWTChecks
	if len(checks) > 0 {
		c = checks[0]
	}
	return JWTAuthenticator{
		keyfunc: func(context.Context, time.Time) jwt.Keyfunc {
			return func(*jwt.Token) (any, error) { return secret, nil }
		},
		methods: []string{jwt.SigningMethodHS256.Alg()},
		checks:  c.withDefaults(),
	}
}

// Authenticate checks the token's signature, algorithm, times, issuer and
// audience, and that its claims can be stored in a run.
func (a JWTAuthenticator) Authenticate(ctx context.Context, token string) (*Principal, error) {
	now := a.checks.Now()
	c := &claims{}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(a.methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(a.checks.Leeway),
		jwt.WithTimeFunc(a.checks.Now),
	}
	if a.checks.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(a.checks.Issuer))
	}
	if a.checks.Audience != "" {
		opts = append(opts, jwt.WithAudience(a.checks.Audience))
	}
	if _, err := jwt.ParseWithClaims(token, c, a.keyfunc(ctx, time.Now()), opts...); err != nil {
		return nil, errors.Join(errUnauthenticated, err)
	}
	exp := c.ExpiresAt.Time
	if c.IssuedAt != nil && exp.Sub(c.IssuedAt.Time) > a.checks.MaxLifetime {
		return nil, errors.Join(errUnauthenticated, fmt.Errorf("token lifetime exp-iat %s exceeds %s", exp.Sub(c.IssuedAt.Time), a.checks.MaxLifetime))
	}
	if exp.Sub(now) > a.checks.MaxLifetime+a.checks.Leeway {
		return nil, errors.Join(errUnauthenticated, fmt.Errorf("token expires in %s, more than %s", exp.Sub(now), a.checks.MaxLifetime))
	}
	if c.Subject == "" {
		return nil, errors.Join(errUnauthenticated, errors.New("token has no sub claim"))
	}
	// Claims a run must store, refused here with a message rather than by
	// the API server's validation later (which would be a 500).
	if len(c.Subject) > maxSubject {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, fmt.Sprintf("the token's sub claim is %d bytes long; at most %d are accepted", len(c.Subject), maxSubject))
	}
	if c.Email != "" && (len(c.Email) > maxEmail || !emailPattern.MatchString(c.Email)) {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "the token's email claim is not an email address (name@domain, at most 254 bytes)")
	}
	return &Principal{Kind: "user", ID: c.Subject, Email: c.Email, Teams: c.Teams, Role: c.Role, Permissions: c.Permissions}, nil
}

// principalKey is the context key of the authenticated Principal.
type principalKey struct{}

func withPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

func principalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// bearer is r's bearer credential, or "".
func bearer(r *http.Request) string {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// authenticate is the middleware that requires a valid bearer credential.
func authenticate(auth Authenticator) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token := bearer(r)
			if token == "" {
				writeError(w, r, errorf(http.StatusUnauthorized, codeUnauthorized, "missing bearer credential (Authorization: Bearer <token>)"))
				return
			}
			p, err := auth.Authenticate(r.Context(), token)
			if err != nil {
				if errors.Is(err, errUnauthenticated) {
					writeError(w, r, errorf(http.StatusUnauthorized, codeUnauthorized, "invalid or expired credential"))
					return
				}
				writeError(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(withPrincipal(r.Context(), p)))
		})
	}
}
