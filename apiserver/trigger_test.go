package apiserver

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// seed creates the JobTypes and Projects a trigger is checked against.
func (a *api) seed() {
	a.t.Helper()
	ctx := context.Background()
	tmpl := corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "handler", Image: "jobrun:dev"}}}}
	objs := []client.Object{
		&jobsv1alpha1.JobType{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "revenuecat-sync"}, Spec: jobsv1alpha1.JobTypeSpec{
			JobType: "revenuecat_sync", Template: tmpl,
			ParamsSchema: &runtime.RawExtension{Raw: []byte(`{"type":"object","properties":{"integration_id":{"type":"string"}},"additionalProperties":false}`)},
		}},
		&jobsv1alpha1.JobType{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "cleanup"}, Spec: jobsv1alpha1.JobTypeSpec{
			JobType: "cleanup", Scope: jobsv1alpha1.JobTypeScopeSystem, Template: tmpl,
		}},
		&jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "project-1"}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "team-1"}},
		&jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "project-2"}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "team-1"}},
		&jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: "project-x"}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "team-2"}},
	}
	for _, o := range objs {
		if err := env.Client.Create(ctx, o); err != nil {
			a.t.Fatal(err)
		}
	}
}

func jobRunOf(body map[string]any) map[string]any {
	jr, _ := body["job_run"].(map[string]any)
	return jr
}

func TestTrigger(t *testing.T) {
	a := newAPI(t)
	a.seed()
	status, body := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t),
		map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1", "params": map[string]any{"integration_id": "int-1"}, "notify": true})
	if status != http.StatusCreated {
		t.Fatalf("trigger: %d %v", status, body)
	}
	jr := jobRunOf(body)
	for field, want := range map[string]any{
		"job_type": "revenuecat_sync", "status": "pending", "team_id": "team-1", "project_id": "project-1",
		"triggered_by": "manual:user:user-1", "notify": true, "result": nil, "error": nil, "progress": nil,
		"started_at": nil, "completed_at": nil,
	} {
		if jr[field] != want {
			t.Errorf("job_run.%s = %v, want %v", field, jr[field], want)
		}
	}
	if p, _ := jr["params"].(map[string]any); p["integration_id"] != "int-1" {
		t.Errorf("params = %v", jr["params"])
	}
	if c, _ := jr["created_at"].(string); len(c) != len("2024-01-15T10:30:00.000Z") || !strings.HasSuffix(c, "Z") {
		t.Errorf("created_at = %q, want RFC 3339 UTC with milliseconds", c)
	}
	id, _ := jr["id"].(string)

	// The run as stored, and GET sees it at once.
	run := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: a.ns, Name: id}, run); err != nil {
		t.Fatal(err)
	}
	if run.Labels[jobsv1alpha1.LabelTeam] != "team-1" || run.Labels[jobsv1alpha1.LabelProject] != "project-1" || run.Spec.NotifyEmail != "u1@example.com" {
		t.Errorf("stored run: labels %v notifyEmail %q", run.Labels, run.Spec.NotifyEmail)
	}
	if status, _ := a.do(http.MethodGet, "/v1/jobs/"+id, userToken(t), nil); status != http.StatusOK {
		t.Errorf("GET right after trigger: %d", status)
	}
	guard := &coordinationv1.Lease{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: a.ns, Name: jobsv1alpha1.GuardName("revenuecat_sync", "project-1")}, guard); err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(guard.Spec.HolderIdentity, "") != id {
		t.Errorf("guard holder %v, want the run %s", guard.Spec.HolderIdentity, id)
	}

	// A second trigger for the pair: 409 naming the first run.
	status, body = a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"})
	if e, _ := body["error"].(map[string]any); status != http.StatusConflict || e["existing_run_id"] != id {
		t.Errorf("second trigger: %d %v, want 409 with existing_run_id %s", status, body, id)
	}
	// Another project of the team is independent.
	if status, body := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-2"}); status != http.StatusCreated {
		t.Errorf("other project: %d %v", status, body)
	}

	// Once the run has ended, the pair may run again (here the guard was
	// not released: the API takes over the stale guard).
	run.Status.Phase = jobsv1alpha1.JobRunCompleted
	if err := env.Client.Status().Update(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	status, body = a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"})
	if status != http.StatusCreated || jobRunOf(body)["id"] == id {
		t.Errorf("trigger after the run ended: %d %v", status, body)
	}
}

func TestTriggerRejectsBadRequests(t *testing.T) {
	a := newAPI(t)
	a.seed()
	tests := []struct {
		name string
		body any
		want string // in the error message
	}{
		{"unknown job type", map[string]any{"job_type": "nope", "project_id": "project-1"}, `invalid job_type "nope": no such job type`},
		{"malformed job type", map[string]any{"job_type": "Bad Type!", "project_id": "project-1"}, `invalid job_type "Bad Type!"`},
		{"missing job type", map[string]any{"project_id": "project-1"}, "job_type is required"},
		{"system job type", map[string]any{"job_type": "cleanup", "project_id": "project-1"}, `job_type "cleanup" is a system job type`},
		{"missing project", map[string]any{"job_type": "revenuecat_sync"}, "project_id is required"},
		{"project of another team", map[string]any{"job_type": "revenuecat_sync", "project_id": "project-x"}, `project_id "project-x" does not belong to team team-1`},
		{"unknown project", map[string]any{"job_type": "revenuecat_sync", "project_id": "project-404"}, `project_id "project-404" does not belong to team team-1`},
		{"params not an object", map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1", "params": []int{1}}, "params must be a JSON object"},
		{"params failing the schema", map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1", "params": map[string]any{"integration": 1}}, "invalid params: params: Invalid value"},
		{"unknown field", map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1", "priority": 1}, `unknown field "priority"`},
		{"not JSON", "{", "malformed request body"},
		{"notify not a boolean", map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1", "notify": "yes"}, "malformed request body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body any = tt.body
			if s, ok := tt.body.(string); ok {
				body = rawJSON(s)
			}
			status, resp := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), body)
			e, _ := resp["error"].(map[string]any)
			msg, _ := e["message"].(string)
			if status != http.StatusBadRequest || e["code"] != codeInvalidRequest || !strings.Contains(msg, tt.want) {
				t.Errorf("%d %v, want 400 invalid_request containing %q", status, resp, tt.want)
			}
		})
	}
	big := `{"job_type":"revenuecat_sync","project_id":"project-1","params":{"integration_id":"` + strings.Repeat("x", maxTriggerBody) + `"}}`
	if status, resp := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), rawJSON(big)); status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: %d %v, want 413", status, resp)
	}
	if runs, err := testenv.Runs(context.Background(), env.Client, a.ns); err != nil || len(runs) != 0 {
		t.Errorf("refused triggers left %d runs (%v)", len(runs), err)
	}
}

func TestTriggerPermissions(t *testing.T) {
	a := newAPI(t)
	a.seed()
	body := map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"}
	readOnly := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["permissions"] = []string{PermJobsRead} })
	if status, resp := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", readOnly, body); status != http.StatusForbidden || errorCode(resp) != codeForbidden {
		t.Errorf("jobs:read only: %d %v, want 403", status, resp)
	}
	if status, resp := a.do(http.MethodPost, "/v1/teams/team-2/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-x"}); status != http.StatusNotFound {
		t.Errorf("other team: %d %v, want 404", status, resp)
	}
	admin := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["role"] = "admin"; delete(c, "permissions") })
	if status, resp := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", admin, body); status != http.StatusCreated {
		t.Errorf("admin without listed permissions: %d %v, want 201", status, resp)
	}
}

// TestConcurrentTriggersAcrossReplicas sends 50 triggers for one pair at
// once, spread over two API replicas: exactly one 201, and 49 409s naming it.
func TestConcurrentTriggersAcrossReplicas(t *testing.T) {
	a := newAPI(t)
	a.seed()
	b := a.replica()
	const n = 50
	var wg sync.WaitGroup
	statuses := make([]int, n)
	bodies := make([]map[string]any, n)
	tok := userToken(t)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := a
			if i%2 == 1 {
				target = b
			}
			statuses[i], bodies[i] = target.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", tok, map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"})
		}()
	}
	wg.Wait()
	var created string
	for i := range n {
		if statuses[i] == http.StatusCreated {
			if created != "" {
				t.Fatalf("two 201s: %s and %v", created, jobRunOf(bodies[i])["id"])
			}
			created, _ = jobRunOf(bodies[i])["id"].(string)
		}
	}
	if created == "" {
		t.Fatal("no trigger succeeded")
	}
	for i := range n {
		if statuses[i] == http.StatusCreated {
			continue
		}
		e, _ := bodies[i]["error"].(map[string]any)
		if statuses[i] != http.StatusConflict || e["existing_run_id"] != created {
			t.Errorf("trigger %d: %d %v, want 409 with existing_run_id %s", i, statuses[i], bodies[i], created)
		}
	}
	if runs, err := testenv.Runs(context.Background(), env.Client, a.ns); err != nil || len(runs) != 1 {
		t.Errorf("%d runs exist (%v), want exactly 1", len(runs), err)
	}
}
