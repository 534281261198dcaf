package apiserver

import (
	"context"
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

func TestAPIKeys(t *testing.T) {
	a := newAPI(t)
	a.seed()
	ctx := context.Background()
	rw, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead, PermJobsWrite}, "ci@example.com")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead}, "")
	if err != nil {
		t.Fatal(err)
	}
	other, err := CreateAPIKey(ctx, env.Client, a.ns, "team-2", []string{PermJobsRead, PermJobsWrite}, "")
	if err != nil {
		t.Fatal(err)
	}

	// Only the hash is stored.
	secrets := &corev1.SecretList{}
	if err := env.Client.List(ctx, secrets, client.InNamespace(a.ns), client.MatchingLabels{LabelAPIKey: "true"}); err != nil || len(secrets.Items) != 3 {
		t.Fatalf("%d key secrets (%v)", len(secrets.Items), err)
	}
	for _, s := range secrets.Items {
		for k, v := range s.Data {
			if strings.Contains(rw, string(v)) && k != "team" && k != "permissions" && k != "email" {
				t.Errorf("secret %s stores part of the key in %s", s.Name, k)
			}
		}
	}

	body := map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"}
	status, resp := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", rw, body)
	if status != http.StatusCreated {
		t.Fatalf("trigger with a read-write key: %d %v", status, resp)
	}
	jr := jobRunOf(resp)
	id := strings.Split(strings.TrimPrefix(rw, apiKeyPrefix), "_")[0]
	if jr["triggered_by"] != "manual:api_key:"+id {
		t.Errorf("triggered_by %v, want manual:api_key:%s", jr["triggered_by"], id)
	}
	stored := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: a.ns, Name: jr["id"].(string)}, stored); err != nil || stored.Spec.NotifyEmail != "ci@example.com" {
		t.Errorf("notify email %q (%v)", stored.Spec.NotifyEmail, err)
	}
	runID := jr["id"].(string)

	// A key with its last character changed, and rw's secret under another
	// id (the secret may itself contain '_').
	last := byte('A')
	if rw[len(rw)-1] == last {
		last = 'B'
	}
	tampered := rw[:len(rw)-1] + string(last)
	rwSecret := rw[len("jrk_0123456789abcdef_"):]
	tests := []struct {
		name, method, path, key string
		want                    int
	}{
		{"read-only key reads", http.MethodGet, "/v1/jobs/" + runID, ro, http.StatusOK},
		{"read-only key lists", http.MethodGet, "/v1/teams/team-1/jobs", ro, http.StatusOK},
		{"read-only key cannot trigger", http.MethodPost, "/v1/teams/team-1/jobs/trigger", ro, http.StatusForbidden},
		{"read-only key cannot cancel", http.MethodPost, "/v1/jobs/" + runID + "/cancel", ro, http.StatusForbidden},
		{"another team's key does not see the run", http.MethodGet, "/v1/jobs/" + runID, other, http.StatusNotFound},
		{"another team's key does not see the team", http.MethodGet, "/v1/teams/team-1/jobs", other, http.StatusNotFound},
		{"tampered key", http.MethodGet, "/v1/jobs/" + runID, tampered, http.StatusUnauthorized},
		{"unknown key id", http.MethodGet, "/v1/jobs/" + runID, "jrk_0000000000000000_" + rwSecret, http.StatusUnauthorized},
		{"malformed key", http.MethodGet, "/v1/jobs/" + runID, "jrk_short", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b any
			if tt.method == http.MethodPost && strings.HasSuffix(tt.path, "trigger") {
				b = map[string]any{"job_type": "revenuecat_sync", "project_id": "project-2"}
			}
			if status, resp := a.do(tt.method, tt.path, tt.key, b); status != tt.want {
				t.Errorf("%d %v, want %d", status, resp, tt.want)
			}
		})
	}

	if _, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{"jobs:admin"}, ""); err == nil {
		t.Error("a key with an unknown permission was created")
	}
}
