package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"jobrun.dev/jobrun/test/testenv"
)

// TestAPIServerOutage cuts the REST server off the Kubernetes API server
// (every connection dropped, new ones refused, as in a restart) in the
// middle of traffic: calls that need it answer 503 with a JSON error and
// Retry-After, fast — the list and the get too: the cache cannot show that
// it is current, and a stale page is never served; nothing is half-written;
// after the cut everything works again.
func TestAPIServerOutage(t *testing.T) {
	proxy, cfg := testenv.NewProxy(t, env.Config)
	a := startAPIVia(t, env.Namespace(t), cfg, nil)
	a.seed()
	tok := userToken(t)
	trigger := func(project string) (int, map[string]any) {
		return a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", tok, map[string]any{"job_type": "revenuecat_sync", "project_id": project})
	}
	status, body := trigger("project-1")
	if status != http.StatusCreated {
		t.Fatalf("trigger before the cut: %d %v", status, body)
	}
	id := jobRunOf(body)["id"].(string)
	testenv.Eventually(t, 60*time.Second, func(context.Context) error { // in the list cache before the cut
		if status, body := a.get("/v1/teams/team-1/jobs", tok); status != http.StatusOK || len(body["job_runs"].([]any)) != 1 {
			return fmt.Errorf("list: %d %v", status, body)
		}
		return nil
	})

	proxy.Cut()
	for _, call := range []struct {
		name string
		do   func() (int, map[string]any)
	}{
		{"get", func() (int, map[string]any) { return a.get("/v1/jobs/"+id, tok) }},
		{"list", func() (int, map[string]any) { return a.get("/v1/teams/team-1/jobs", tok) }},
		{"trigger", func() (int, map[string]any) { return trigger("project-2") }},
		{"cancel", func() (int, map[string]any) { return a.do(http.MethodPost, "/v1/jobs/"+id+"/cancel", tok, nil) }},
	} {
		start := time.Now()
		status, body := call.do()
		if status != http.StatusServiceUnavailable || errorCode(body) != codeUnavailable {
			t.Errorf("%s during the cut: %d %v, want 503 unavailable", call.name, status, body)
		}
		if took := time.Since(start); took > 25*time.Second {
			t.Errorf("%s during the cut took %s: past the 20 s request timeout", call.name, took)
		}
	}

	proxy.Restore()
	// The trigger refused during the cut left nothing behind: project-2's
	// first trigger after it succeeds (no stale guard), once reachable.
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		if status, body := trigger("project-2"); status != http.StatusCreated {
			return fmt.Errorf("trigger after the cut: %d %v", status, body)
		}
		return nil
	})
	if status, body := a.get("/v1/jobs/"+id, tok); status != http.StatusOK {
		t.Errorf("get after the cut: %d %v", status, body)
	}
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		if status, body := a.get("/v1/teams/team-1/jobs", tok); status != http.StatusOK || len(body["job_runs"].([]any)) != 2 {
			return fmt.Errorf("list after the cut: %d %v, want both runs", status, body)
		}
		return nil
	})
}
