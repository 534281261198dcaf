package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/utils/ptr"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// apiNamespace is where the suite's manager serves the REST API from.
const apiNamespace = "jobrun-system"

// tenant is a team with a project of its own in the REST API's namespace:
// each REST test makes one, so no test sees another's runs or guards.
type tenant struct{ team, project string }

// newTenant creates the project (and the demo_sync JobType all REST tests
// share, if no test made it yet).
func newTenant(t *testing.T) tenant {
	t.Helper()
	suffix := strings.ToLower(rand.String(6))
	tn := tenant{team: "team-" + suffix, project: "project-" + suffix}
	ctx := testenv.Context(t)
	project := &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: apiNamespace, Name: tn.project}, Spec: jobsv1alpha1.ProjectSpec{TeamID: tn.team}}
	if err := cluster.Client.Create(ctx, project); err != nil {
		t.Fatal(err)
	}
	// Every REST test gets the same JobType, whichever test creates it. A
	// long cancel grace period: a run whose handler finishes right after a
	// cancel must not be cut short by it on a slow machine.
	jt := demoSyncJobType(t, apiNamespace, func(jt *jobsv1alpha1.JobType) { jt.Spec.CancelGracePeriodSeconds = ptr.To[int64](60) })
	if err := cluster.Client.Create(ctx, jt); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return tn
}

// call sends a request to the Jobs API as an admin of the tenant's team.
func (tn tenant) call(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	return apiCall(t, tn.team, method, path, body)
}

// trigger starts a demo_sync run of the tenant's project.
func (tn tenant) trigger(t *testing.T, params map[string]any) (int, map[string]any) {
	t.Helper()
	return tn.call(t, http.MethodPost, "/v1/teams/"+tn.team+"/jobs/trigger", map[string]any{"job_type": "demo_sync", "project_id": tn.project, "params": params})
}

// mustTrigger triggers and returns the new run's id.
func (tn tenant) mustTrigger(t *testing.T, params map[string]any) string {
	t.Helper()
	status, body := tn.trigger(t, params)
	if status != http.StatusCreated {
		t.Fatalf("trigger %v: %d %v", params, status, body)
	}
	return body["job_run"].(map[string]any)["id"].(string)
}

// rawCall is call that also returns the Retry-After header.
func (tn tenant) rawCall(t *testing.T, method, path string, body any) (code int, retryAfter string, out map[string]any) {
	t.Helper()
	resp, out := send(t, tn.team, method, path, body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), out
}

// apiCall sends a request to the Jobs API as an admin of team.
func apiCall(t *testing.T, team, method, path string, body any) (int, map[string]any) {
	t.Helper()
	resp, out := send(t, team, method, path, body)
	return resp.StatusCode, out
}

// send sends a request to the Jobs API as an admin of team and decodes the
// JSON answer.
func send(t *testing.T, team, method, path string, body any) (*http.Response, map[string]any) {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "e2e-user", "email": "e2e@example.com", "teams": []string{team}, "role": "admin",
		"exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(cluster.JWTSecret))
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	req, _ := http.NewRequest(method, "http://"+apiAddr+path, bytes.NewReader(data))
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
	return resp, out
}

// pollRun GETs the run until cond accepts its job_run.
func (tn tenant) pollRun(t *testing.T, id string, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	var last map[string]any
	testenv.Eventually(t, 90*time.Second, func(context.Context) error {
		status, body := tn.call(t, http.MethodGet, "/v1/jobs/"+id, nil)
		last, _ = body["job_run"].(map[string]any)
		if status != http.StatusOK || !cond(last) {
			return fmt.Errorf("GET /v1/jobs/%s: %d %v, waiting for %s", id, status, body, what)
		}
		return nil
	})
	return last
}

// hasStatus accepts a job_run in one of the statuses.
func hasStatus(statuses ...string) func(map[string]any) bool {
	return func(jr map[string]any) bool {
		for _, s := range statuses {
			if jr["status"] == s {
				return true
			}
		}
		return false
	}
}

// hasProgressed accepts a running job_run whose handler reported at least
// one item.
func hasProgressed(jr map[string]any) bool {
	p, _ := jr["progress"].(map[string]any)
	return jr["status"] == "running" && p != nil && p["processed"].(float64) > 0
}

// TestThroughTheRESTAPI drives runs the way a product does: trigger, a
// second trigger refused while the first runs, poll progress, cancel,
// trigger again, list.
func TestThroughTheRESTAPI(t *testing.T) {
	tn := newTenant(t)

	// A long run: it is certainly still going when the second trigger comes.
	first := tn.mustTrigger(t, map[string]any{"items": 2000, "item_ms": 50})
	status, body := tn.trigger(t, map[string]any{"items": 1})
	if errBody, _ := body["error"].(map[string]any); status != http.StatusConflict || errBody["existing_run_id"] != first {
		t.Errorf("second trigger while the first runs: %d %v, want 409 with existing_run_id %s", status, body, first)
	}
	// Cancel once the handler has made progress, to see the run keep it.
	tn.pollRun(t, first, "progress", hasProgressed)
	if status, body := tn.call(t, http.MethodPost, "/v1/jobs/"+first+"/cancel", nil); status != http.StatusOK || body["cancelled"] != true {
		t.Fatalf("cancel: %d %v", status, body)
	}
	cancelled := tn.pollRun(t, first, "cancelled", hasStatus("cancelled"))
	if p, _ := cancelled["progress"].(map[string]any); p == nil || p["processed"] == float64(0) || p["processed"] == float64(2000) {
		t.Errorf("cancelled run's progress = %v, want its last partial progress", p)
	}
	if status, body := tn.call(t, http.MethodPost, "/v1/jobs/"+first+"/cancel", nil); status != http.StatusBadRequest {
		t.Errorf("cancel of a cancelled run: %d %v, want 400", status, body)
	}

	// The pair is free again: a short run completes with its result.
	second := tn.mustTrigger(t, map[string]any{"items": 10, "item_ms": 20})
	done := tn.pollRun(t, second, "completed", hasStatus("completed", "failed", "cancelled"))
	if done["status"] != "completed" {
		t.Fatalf("second run: %v", done)
	}
	if p := done["progress"].(map[string]any); p["processed"] != float64(10) || p["total"] != float64(10) {
		t.Errorf("progress %v", p)
	}
	if r, _ := done["result"].(map[string]any); r["processed"] != float64(10) || done["started_at"] == nil || done["completed_at"] == nil {
		t.Errorf("completed run: %v", done)
	}

	// The team's list, newest first: exactly this tenant's two runs.
	testenv.Eventually(t, 30*time.Second, func(context.Context) error {
		status, body := tn.call(t, http.MethodGet, "/v1/teams/"+tn.team+"/jobs?job_type=demo_sync", nil)
		runs, _ := body["job_runs"].([]any)
		if status != http.StatusOK || len(runs) != 2 {
			return fmt.Errorf("list: %d %v", status, body)
		}
		newest, oldest := runs[0].(map[string]any), runs[1].(map[string]any)
		if newest["id"] != second || newest["status"] != "completed" || oldest["id"] != first || oldest["status"] != "cancelled" {
			return fmt.Errorf("list, newest first: %v", runs)
		}
		return nil
	})
}
