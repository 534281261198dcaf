package revenuecat

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// An integration is a Secret named revenuecat-<integration id> in the
// integrations namespace, labelled with the project it belongs to.
const (
	SecretPrefix = "revenuecat-"
	// LabelIntegration marks integration Secrets with their kind.
	LabelIntegration = "jobs.jobrun.dev/integration"

	KeyAPIKey            = "api_key"             // RevenueCat secret API key (v2)
	KeyRCProjectID       = "revenuecat_project"  // RevenueCat project id
	KeyDestinationURL    = "destination_url"     // the product's ingest endpoint
	KeySigningSecret     = "signing_secret"      // HMAC-SHA256 key of the deliveries
	KeyBaseURL           = "base_url"            // optional: RevenueCat API base
	KeyRequestsPerMinute = "requests_per_minute" // optional: the client-side limit
)

var integrationIDPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$`)

// Integration is one project's RevenueCat integration.
type Integration struct {
	ID, ProjectID     string
	APIKey            string
	RCProjectID       string
	BaseURL           string
	DestinationURL    string
	SigningSecret     []byte
	RequestsPerMinute int
}

// secrets returns the values that must never appear in logs, status,
// results or errors.
func (in *Integration) secrets() []string {
	return []string{in.APIKey, string(in.SigningSecret)}
}

// LoadIntegration reads integration id of project from namespace. An
// integration of another project is reported exactly like a missing one.
func LoadIntegration(ctx context.Context, c client.Reader, namespace, project, id string) (*Integration, error) {
	if !integrationIDPattern.MatchString(id) {
		return nil, fmt.Errorf("integration_id %q is not a valid id (lowercase letters, digits and '-', at most 52)", id)
	}
	notFound := fmt.Errorf("RevenueCat integration %s of project %s not found", id, project)
	s := &corev1.Secret{}
	err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: SecretPrefix + id}, s)
	if apierrors.IsNotFound(err) {
		return nil, notFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading RevenueCat integration %s: %w", id, err)
	}
	if s.Labels[jobsv1alpha1.LabelProject] != project || s.Labels[LabelIntegration] != "revenuecat" {
		return nil, notFound
	}
	in := &Integration{
		ID: id, ProjectID: project,
		APIKey:         strings.TrimSpace(string(s.Data[KeyAPIKey])),
		RCProjectID:    strings.TrimSpace(string(s.Data[KeyRCProjectID])),
		BaseURL:        strings.TrimSpace(string(s.Data[KeyBaseURL])),
		DestinationURL: strings.TrimSpace(string(s.Data[KeyDestinationURL])),
		SigningSecret:  s.Data[KeySigningSecret],
	}
	for key, v := range map[string]string{KeyAPIKey: in.APIKey, KeyRCProjectID: in.RCProjectID, KeyDestinationURL: in.DestinationURL, KeySigningSecret: string(in.SigningSecret)} {
		if v == "" {
			return nil, fmt.Errorf("RevenueCat integration %s lacks %s", id, key)
		}
	}
	if len(in.SigningSecret) < 32 {
		return nil, fmt.Errorf("RevenueCat integration %s: %s must be at least 32 bytes", id, KeySigningSecret)
	}
	if v := strings.TrimSpace(string(s.Data[KeyRequestsPerMinute])); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("RevenueCat integration %s: %s=%q is not a positive number", id, KeyRequestsPerMinute, v)
		}
		in.RequestsPerMinute = n
	}
	return in, nil
}
