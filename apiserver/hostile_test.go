package apiserver

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"jobrun.dev/jobrun/test/testenv"
)

// TestHostileRequests: every hostile request gets a 4xx JSON error — never a
// 5xx, a hang or a crash — and nothing is created.
func TestHostileRequests(t *testing.T) {
	a := newAPI(t)
	a.seed()
	run := a.createRun("run-1", "team-1", nil)
	user := userToken(t)
	otherTeam := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["teams"] = []string{"team-2"} })
	expired := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() })
	none := token(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, nil)
	trigger := "/v1/teams/team-1/jobs/trigger"
	deep := strings.Repeat("[", 5000) + strings.Repeat("]", 5000)

	tests := []struct {
		name, method, path, tok, body string
		want                          int
	}{
		{"oversized body", http.MethodPost, trigger, user, `{"job_type":"revenuecat_sync","project_id":"project-1","params":{"integration_id":"` + strings.Repeat("x", 70<<10) + `"}}`, 413},
		{"deeply nested params", http.MethodPost, trigger, user, `{"job_type":"revenuecat_sync","project_id":"project-1","params":{"integration_id":` + deep + `}}`, 400},
		{"deeply nested body", http.MethodPost, trigger, user, deep, 400},
		{"invalid UTF-8", http.MethodPost, trigger, user, "{\"job_type\":\"revenuecat_sync\xff\xfe\",\"project_id\":\"project-1\"}", 400},
		{"NUL in job type", http.MethodPost, trigger, user, `{"job_type":"revenuecat_sync\u0000","project_id":"project-1"}`, 400},
		{"SQL in job type", http.MethodPost, trigger, user, `{"job_type":"x'; DROP TABLE jobs;--","project_id":"project-1"}`, 400},
		{"SQL in project", http.MethodPost, trigger, user, `{"job_type":"revenuecat_sync","project_id":"1' OR '1'='1"}`, 400},
		{"shell in project", http.MethodPost, trigger, user, `{"job_type":"revenuecat_sync","project_id":"$(rm -rf /)"}`, 400},
		{"path in project", http.MethodPost, trigger, user, `{"job_type":"revenuecat_sync","project_id":"../project-x"}`, 400},
		{"huge limit", http.MethodGet, "/v1/teams/team-1/jobs?limit=99999999999999999999", user, "", 400},
		{"negative limit", http.MethodGet, "/v1/teams/team-1/jobs?limit=-1", user, "", 400},
		{"SQL in status", http.MethodGet, "/v1/teams/team-1/jobs?status=running'%20OR%20'1'%3D'1", user, "", 400},
		{"huge since", http.MethodGet, "/v1/teams/team-1/jobs?since=99999999999d", user, "", 400},
		{"since that overflows", http.MethodGet, "/v1/teams/team-1/jobs?since=999999w", user, "", 400},
		{"until that overflows", http.MethodGet, "/v1/teams/team-1/jobs?until=999999d", user, "", 400},
		{"made-up method", "PROPFIND", "/v1/jobs/" + run.Name, user, "", 405},
		{"64 KiB method", strings.Repeat("X", 64<<10), "/v1/teams/team-1/jobs", user, "", 405},
		{"made-up method, unknown path", "BREW", "/v1/coffee", "", "", 404},
		{"OPTIONS without CORS", http.MethodOptions, trigger, "", "", 405},
		{"garbage cursor", http.MethodGet, "/v1/teams/team-1/jobs?cursor=%00%01%02", user, "", 400},
		{"long cursor", http.MethodGet, "/v1/teams/team-1/jobs?cursor=" + strings.Repeat("9", 20000), user, "", 400},
		{"traversal in run id", http.MethodGet, "/v1/jobs/..%2F..%2Fsecrets", user, "", 404},
		{"dot-dot run id", http.MethodGet, "/v1/jobs/..", user, "", 404},
		{"traversal in cancel", http.MethodPost, "/v1/jobs/%2e%2e%2fkube-system/cancel", user, "", 404},
		{"traversal in team", http.MethodGet, "/v1/teams/..%2Fteam-2/jobs", user, "", 404},
		{"very long run id", http.MethodGet, "/v1/jobs/" + strings.Repeat("a", 10000), user, "", 404},
		{"other team's list", http.MethodGet, "/v1/teams/team-1/jobs", otherTeam, "", 404},
		{"other team's run", http.MethodGet, "/v1/jobs/" + run.Name, otherTeam, "", 404},
		{"other team's trigger", http.MethodPost, trigger, otherTeam, `{"job_type":"revenuecat_sync","project_id":"project-1"}`, 404},
		{"expired token", http.MethodPost, trigger, expired, `{"job_type":"revenuecat_sync","project_id":"project-1"}`, 401},
		{"alg none", http.MethodPost, trigger, none, `{"job_type":"revenuecat_sync","project_id":"project-1"}`, 401},
		{"sub of 10 KiB", http.MethodPost, trigger, token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["sub"] = strings.Repeat("s", 10<<10) }), `{"job_type":"revenuecat_sync","project_id":"project-1"}`, 401},
		{"email that is no address", http.MethodPost, trigger, token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["email"] = "<script>@" }), `{"job_type":"revenuecat_sync","project_id":"project-1"}`, 401},
		{"team id no run can have", http.MethodPost, "/v1/teams/" + strings.Repeat("t", 64) + "/jobs/trigger", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["teams"] = []string{strings.Repeat("t", 64)} }), `{"job_type":"revenuecat_sync","project_id":"project-1"}`, 400},
		{"not valid before tomorrow", http.MethodGet, "/v1/teams/team-1/jobs", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(24 * time.Hour).Unix() }), "", 401},
		{"issued tomorrow", http.MethodGet, "/v1/teams/team-1/jobs", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["iat"] = time.Now().Add(24 * time.Hour).Unix() }), "", 401},
		{"a token for a year", http.MethodGet, "/v1/teams/team-1/jobs", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(365 * 24 * time.Hour).Unix() }), "", 401},
		{"made-up API key", http.MethodGet, "/v1/teams/team-1/jobs", "jrk_0123456789abcdef_" + strings.Repeat("A", 43), "", 401},
		{"API key with a huge secret", http.MethodGet, "/v1/teams/team-1/jobs", "jrk_0123456789abcdef_" + strings.Repeat("A", 100<<10), "", 401},
		{"token with a newline", http.MethodGet, "/v1/teams/team-1/jobs", user + "%0a", "", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			// Longer than the server's own 20 s bound on a request's work:
			// a hang fails here, a slow machine does not.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, tt.method, a.url+tt.path, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+tt.tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(data), `"error"`) {
				t.Errorf("%d %s %q, want %d with a JSON error", resp.StatusCode, resp.Header.Get("Content-Type"), truncate(string(data)), tt.want)
			}
		})
	}

	leases := &coordinationv1.LeaseList{}
	if runs, err := testenv.Runs(context.Background(), env.Client, a.ns); err != nil || len(runs) != 1 {
		t.Errorf("hostile requests left %d runs, want only run-1 (%v)", len(runs), err)
	}
	if err := env.Client.List(context.Background(), leases, client.InNamespace(a.ns)); err != nil || len(leases.Items) != 0 {
		t.Errorf("hostile requests left %d trigger guards (%v)", len(leases.Items), err)
	}
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
