package apiserver

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// The REST API watches the API-key Secrets of its own namespace (a label
// selected cache: RBAC cannot narrow list and watch to a label, the cache
// does).
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch,namespace=system

// API keys look like jrk_<id>_<secret>. The Secret jobrun-apikey-<id> holds
// only the SHA-256 of the secret part, the team the key is bound to, its
// permissions and a notification address.
const (
	apiKeyPrefix       = "jrk_"
	apiKeySecretPrefix = "jobrun-apikey-"
	// LabelAPIKey marks the Secrets that hold API keys.
	LabelAPIKey = "jobs.jobrun.dev/api-key"
)

var apiKeyPattern = regexp.MustCompile(`^jrk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$`)

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewAPIKey makes a new API key for team and the Secret (named, labelled,
// not yet stored) that lets the REST API in namespace accept it. The key
// itself is not in the Secret: it cannot be shown again.
func NewAPIKey(namespace, team string, permissions []string, email string) (string, *corev1.Secret, error) {
	if team == "" {
		return "", nil, errors.New("an API key is bound to one team: team is required")
	}
	if email != "" && (len(email) > maxEmail || !emailPattern.MatchString(email)) {
		return "", nil, fmt.Errorf("email %q is not an email address (name@domain, at most %d bytes)", email, maxEmail)
	}
	for _, p := range permissions {
		if p != PermJobsRead && p != PermJobsWrite {
			return "", nil, fmt.Errorf("unknown permission %q (known: %s, %s)", p, PermJobsRead, PermJobsWrite)
		}
	}
	idBytes, secretBytes := make([]byte, 8), make([]byte, 32)
	if _, err := rand.Read(idBytes); err != nil {
		return "", nil, err
	}
	if _, err := rand.Read(secretBytes); err != nil {
		return "", nil, err
	}
	id, secret := hex.EncodeToString(idBytes), base64.RawURLEncoding.EncodeToString(secretBytes)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: apiKeySecretPrefix + id, Labels: map[string]string{
			LabelAPIKey: "true", jobsv1alpha1.LabelTeam: team,
		}},
		Type: "jobs.jobrun.dev/api-key",
		StringData: map[string]string{
			"sha256": hashSecret(secret), "team": team, "permissions": strings.Join(permissions, ","), "email": email,
		},
	}
	return apiKeyPrefix + id + "_" + secret, s, nil
}

// APIKeyID is the id part of a Secret made by NewAPIKey.
func APIKeyID(s *corev1.Secret) string { return strings.TrimPrefix(s.Name, apiKeySecretPrefix) }

// CreateAPIKey stores a new API key for team in namespace and returns the
// key.
func CreateAPIKey(ctx context.Context, c client.Client, namespace, team string, permissions []string, email string) (string, error) {
	key, s, err := NewAPIKey(namespace, team, permissions, email)
	if err != nil {
		return "", err
	}
	if err := c.Create(ctx, s); err != nil {
		return "", fmt.Errorf("storing the API key: %w", err)
	}
	return key, nil
}

// APIKeySecretsCache is how the manager's cache holds Secrets when the REST
// API is served: only those of namespace labelled as API keys
// (cache.Options.ByObject for &corev1.Secret{}). No other Secret is cached,
// and nothing else in the manager reads Secrets.
func APIKeySecretsCache(namespace string) cache.ByObject {
	return cache.ByObject{
		Namespaces: map[string]cache.Config{namespace: {}},
		Label:      labels.SelectorFromSet(labels.Set{LabelAPIKey: "true"}),
	}
}

// APIKeyAuthenticator accepts API keys stored by CreateAPIKey. It reads
// their Secrets from a cache set up with APIKeySecretsCache (an informer), so
// that no key, known or made up, costs a request to the Kubernetes API
// server. A key becomes valid once the informer has its Secret: as soon as
// the watch event arrives, normally well under a second after the create.
type APIKeyAuthenticator struct {
	Reader    client.Reader
	Namespace string
	// synced reports whether the informer has listed (nil: always).
	synced func() bool
}

// Synced reports whether the API-key cache has listed the Secrets, for
// readiness: before, a key lookup waits for it.
func (a APIKeyAuthenticator) Synced(context.Context) bool { return a.synced == nil || a.synced() }

// NewAPIKeyAuthenticator starts (with c) the informer of the API-key Secrets
// in namespace and returns an authenticator that reads them from c. c must
// hold Secrets as APIKeySecretsCache says.
func NewAPIKeyAuthenticator(ctx context.Context, c cache.Cache, namespace string) (APIKeyAuthenticator, error) {
	// Ask for the informer now, so that it lists while the manager starts
	// rather than on the first request.
	inf, err := c.GetInformer(ctx, &corev1.Secret{}, cache.BlockUntilSynced(false))
	if err != nil {
		return APIKeyAuthenticator{}, fmt.Errorf("watching API-key Secrets: %w", err)
	}
	return APIKeyAuthenticator{Reader: c, Namespace: namespace, synced: inf.HasSynced}, nil
}

// Authenticate looks the key's Secret up and compares hashes in constant
// time.
func (a APIKeyAuthenticator) Authenticate(ctx context.Context, token string) (*Principal, error) {
	m := apiKeyPattern.FindStringSubmatch(token)
	if m == nil {
		return nil, errors.Join(errUnauthenticated, errors.New("malformed API key"))
	}
	s := &corev1.Secret{}
	err := a.Reader.Get(ctx, client.ObjectKey{Namespace: a.Namespace, Name: apiKeySecretPrefix + m[1]}, s)
	if apierrors.IsNotFound(err) {
		return nil, errors.Join(errUnauthenticated, errors.New("unknown API key"))
	}
	if err != nil {
		return nil, err
	}
	want := s.Data["sha256"]
	if s.Labels[LabelAPIKey] != "true" || subtle.ConstantTimeCompare([]byte(hashSecret(m[2])), want) != 1 {
		return nil, errors.Join(errUnauthenticated, errors.New("wrong API key"))
	}
	var perms []string
	if p := string(s.Data["permissions"]); p != "" {
		perms = strings.Split(p, ",")
	}
	return &Principal{Kind: "api_key", ID: m[1], Email: string(s.Data["email"]), Teams: []string{string(s.Data["team"])}, Permissions: perms}, nil
}

// Authenticators tries API keys for tokens that look like one, and JWTs
// otherwise.
type Authenticators struct {
	JWT    Authenticator
	APIKey Authenticator
}

// Authenticate dispatches on the token's shape.
func (a Authenticators) Authenticate(ctx context.Context, token string) (*Principal, error) {
	if strings.HasPrefix(token, apiKeyPrefix) {
		if a.APIKey == nil {
			return nil, errors.Join(errUnauthenticated, errors.New("API keys are not enabled"))
		}
		return a.APIKey.Authenticate(ctx, token)
	}
	return a.JWT.Authenticate(ctx, token)
}
