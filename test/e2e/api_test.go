package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// apiCall sends a request to the Jobs API as a member of demo-team.
func apiCall(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "e2e-user", "email": "e2e@example.com", "teams": []string{"demo-team"}, "role": "admin",
		"exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(cluster.JWTSecret))
	if err != nil {
		t.Fatal(err)
	}
	var rd *bytes.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, "http://"+apiAddr+path, rd)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]any{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode, out
}

// pollRun GETs the run until cond accepts its job_run.
func pollRun(t *testing.T, id string, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	var last map[string]any
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		status, body := apiCall(t, http.MethodGet, "/v1/jobs/"+id, nil)
		last, _ = body["job_run"].(map[string]any)
		if status != http.StatusOK || !cond(last) {
			return fmt.Errorf("GET /v1/jobs/%s: %d %v, waiting for %s", id, status, body, what)
		}
		return nil
	})
	return last
}

// demoProject makes sure the project demo-project of demo-team exists in ns.
func demoProject(t *testing.T, ns string) {
	t.Helper()
	project := &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-project"}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "demo-team"}}
	if err := cluster.Client.Create(testenv.Context(t), project); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// TestThroughTheRESTAPI drives runs the way a product does: trigger, poll
// progress, cancel, trigger again.
func TestThroughTheRESTAPI(t *testing.T) {
	const ns = "jobrun-system"
	createJobType(t, ns)
	demoProject(t, ns)
	trigger := func(params map[string]any) (int, map[string]any) {
		return apiCall(t, http.MethodPost, "/v1/teams/demo-team/jobs/trigger", map[string]any{"job_type": "demo_sync", "project_id": "demo-project", "params": params})
	}

	status, body := trigger(map[string]any{"items": 10, "item_ms": 100})
	if status != http.StatusCreated {
		t.Fatalf("trigger: %d %v", status, body)
	}
	id := body["job_run"].(map[string]any)["id"].(string)
	if status, body := trigger(map[string]any{"items": 1}); status != http.StatusConflict {
		t.Errorf("second trigger while the first runs: %d %v, want 409", status, body)
	}
	pollRun(t, id, "progress", func(jr map[string]any) bool {
		p, _ := jr["progress"].(map[string]any)
		return jr["status"] == "running" && p != nil
	})
	done := pollRun(t, id, "completed", func(jr map[string]any) bool { return jr["status"] == "completed" })
	if p := done["progress"].(map[string]any); p["processed"] != float64(10) || p["total"] != float64(10) {
		t.Errorf("progress %v", p)
	}
	if r, _ := done["result"].(map[string]any); r["processed"] != float64(10) || done["started_at"] == nil || done["completed_at"] == nil {
		t.Errorf("completed run: %v", done)
	}

	// The pair is free again: trigger a long run and cancel it.
	status, body = trigger(map[string]any{"items": 2000, "item_ms": 50})
	if status != http.StatusCreated {
		t.Fatalf("trigger after completion: %d %v", status, body)
	}
	id = body["job_run"].(map[string]any)["id"].(string)
	// Cancel once the handler has made progress, to see the run keep it.
	pollRun(t, id, "progress", func(jr map[string]any) bool {
		p, _ := jr["progress"].(map[string]any)
		return jr["status"] == "running" && p != nil && p["processed"].(float64) > 0
	})
	if status, body := apiCall(t, http.MethodPost, "/v1/jobs/"+id+"/cancel", nil); status != http.StatusOK || body["cancelled"] != true {
		t.Fatalf("cancel: %d %v", status, body)
	}
	cancelled := pollRun(t, id, "cancelled", func(jr map[string]any) bool { return jr["status"] == "cancelled" })
	if p, _ := cancelled["progress"].(map[string]any); p == nil || p["processed"] == float64(0) || p["processed"] == float64(2000) {
		t.Errorf("cancelled run's progress = %v, want its last partial progress", p)
	}
	if status, body := apiCall(t, http.MethodPost, "/v1/jobs/"+id+"/cancel", nil); status != http.StatusBadRequest {
		t.Errorf("cancel of a cancelled run: %d %v, want 400", status, body)
	}

	// The team's list, newest first, from the manager's cache.
	testenv.Eventually(t, 10*time.Second, func(context.Context) error {
		status, body := apiCall(t, http.MethodGet, "/v1/teams/demo-team/jobs?job_type=demo_sync", nil)
		runs, _ := body["job_runs"].([]any)
		if status != http.StatusOK || len(runs) != 2 {
			return fmt.Errorf("list: %d %v", status, body)
		}
		if first := runs[0].(map[string]any); first["id"] != id || first["status"] != "cancelled" {
			return fmt.Errorf("newest run listed first: %v", first)
		}
		return nil
	})
}
