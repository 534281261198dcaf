package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// How the JSON Web Key Set is kept fresh.
const (
	// jwksRefreshInterval: the set is fetched again this often in any case.
	jwksRefreshInterval = 5 * time.Minute
	// jwksMinInterval is the least time between two fetches: a flood of
	// tokens with unknown key ids costs the identity provider at most one
	// fetch per interval, and a rotated key is seen within about as long.
	jwksMinInterval = time.Second
	// jwksWaitMax bounds how long a token with an unknown key id waits for
	// a fetch that started after it arrived.
	jwksWaitMax = 10 * time.Second
	// jwksFetchTimeout and jwksMaxBytes bound one fetch.
	jwksFetchTimeout = 10 * time.Second
	jwksMaxBytes     = 1 << 20
)

// jwks holds the key set of url, fetched again every jwksRefreshInterval
// and whenever a token names a key id the set lacks. Such tokens do not
// each cause a fetch, nor spend a budget that a real new key would then
// lack: they all wait for the next fetch that starts after they arrived,
// and fetches are at least jwksMinInterval apart. A failed fetch keeps the
// previous set.
type jwks struct {
	url    string
	client *http.Client
	kick   chan struct{}

	mu sync.Mutex
	// keys is the last set fetched.
	keys keyfunc.Keyfunc
	// fetchStarted is when the last finished fetch started; fetched is
	// closed (and replaced) when a fetch finishes.
	fetchStarted time.Time
	fetched      chan struct{}
	// fetches counts fetches, for tests.
	fetches int
}

// CheckJWKSURL allows https, and plain http to loopback only: a key set
// fetched over plain http through a network could be replaced on the way.
func CheckJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("--jwks-url %q: %w", raw, err)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return fmt.Errorf("--jwks-url %q: plain http is allowed for loopback addresses only; use https", raw)
	}
	return fmt.Errorf("--jwks-url %q: want an https:// URL", raw)
}

// JWKS accepts JWTs signed with RS256 or ES256 by a key of the JSON Web Key
// Set at url (https; http to loopback only), the way identity providers
// publish theirs, issued by checks.Issuer for checks.Audience (both
// required: the same provider signs tokens for other applications). The set
// is fetched now — a failure is an error — and kept fresh until ctx ends
// (see jwks).
func JWKS(ctx context.Context, url string, checks JWTChecks) (JWTAuthenticator, error) {
	if err := CheckJWKSURL(url); err != nil {
		return JWTAuthenticator{}, err
	}
	if checks.Issuer == "" || checks.Audience == "" {
		return JWTAuthenticator{}, errors.New("with --jwks-url, --jwt-issuer and --jwt-audience are required: the identity provider signs tokens for other applications too")
	}
	k, err := newJWKS(ctx, url, &http.Client{Timeout: jwksFetchTimeout})
	if err != nil {
		return JWTAuthenticator{}, err
	}
	return JWTAuthenticator{
		keyfunc: k.keyfunc,
		methods: []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg()},
		checks:  checks.withDefaults(),
	}, nil
}

func newJWKS(ctx context.Context, url string, client *http.Client) (*jwks, error) {
	k := &jwks{url: url, client: client, kick: make(chan struct{}, 1), fetched: make(chan struct{})}
	start := time.Now()
	keys, err := k.fetch(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading the JWKS at %s: %w", url, err)
	}
	k.keys, k.fetchStarted, k.fetches = keys, start, 1
	go k.refreshLoop(ctx)
	return k, nil
}

// fetch reads and parses the key set.
func (k *jwks) fetch(ctx context.Context) (keyfunc.Keyfunc, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP status %s", resp.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > jwksMaxBytes {
		return nil, fmt.Errorf("the key set is larger than %d bytes", jwksMaxBytes)
	}
	keys, err := keyfunc.NewJWKSetJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	return keys, nil
}

// refreshLoop fetches when kicked or every jwksRefreshInterval, never twice
// within jwksMinInterval.
func (k *jwks) refreshLoop(ctx context.Context) {
	log := logf.FromContext(ctx).WithName("jwks")
	ticker := time.NewTicker(jwksRefreshInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.kick:
		case <-ticker.C:
		}
		k.mu.Lock()
		wait := jwksMinInterval - time.Since(k.fetchStarted)
		k.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		start := time.Now()
		keys, err := k.fetch(ctx)
		if err != nil {
			log.Error(err, "refreshing the JWKS failed; keeping the previous key set", "url", k.url)
		}
		k.mu.Lock()
		if err == nil {
			k.keys = keys
		}
		k.fetchStarted = start
		k.fetches++
		close(k.fetched)
		k.fetched = make(chan struct{})
		k.mu.Unlock()
	}
}

// keyfunc looks a token's key up; for an unknown key id it waits for a
// fetch that started after the request arrived, then looks again.
func (k *jwks) keyfunc(ctx context.Context, arrived time.Time) jwt.Keyfunc {
	return func(token *jwt.Token) (any, error) {
		k.mu.Lock()
		keys := k.keys
		k.mu.Unlock()
		key, err := keys.KeyfuncCtx(ctx)(token)
		if !errors.Is(err, jwkset.ErrKeyNotFound) {
			return key, err
		}
		if werr := k.waitFetchedSince(ctx, arrived); werr != nil {
			return nil, errors.Join(err, werr)
		}
		k.mu.Lock()
		keys = k.keys
		k.mu.Unlock()
		return keys.KeyfuncCtx(ctx)(token)
	}
}

// waitFetchedSince waits until a fetch that started at or after t has
// finished.
func (k *jwks) waitFetchedSince(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(jwksWaitMax)
	defer timer.Stop()
	for {
		k.mu.Lock()
		done, ch := !k.fetchStarted.Before(t), k.fetched
		k.mu.Unlock()
		if done {
			return nil
		}
		select {
		case k.kick <- struct{}{}:
		default: // a fetch is already asked for
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return errors.New("no fresh JWKS in time")
		}
	}
}
