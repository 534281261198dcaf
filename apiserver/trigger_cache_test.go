package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// The trigger reads JobTypes and Projects from the manager's cache and
// confirms a miss live. These tests hold the cache in a known state: stale
// (cut off from the API server) or caught up (waited for).

// waitCached waits until the server's cache holds the object named like obj
// with the given UID, or, for an empty uid, no such object.
func (a *api) waitCached(obj client.Object, uid string) {
	a.t.Helper()
	key := client.ObjectKeyFromObject(obj)
	testenv.Eventually(a.t, time.Minute, func(ctx context.Context) error {
		got := obj.DeepCopyObject().(client.Object)
		err := a.cache.Get(ctx, key, got)
		switch {
		case uid == "" && apierrors.IsNotFound(err):
			return nil
		case uid == "" && err == nil:
			return fmt.Errorf("the cache still holds %s", key)
		case err != nil:
			return err
		case string(got.GetUID()) != uid:
			return fmt.Errorf("the cache holds %s with UID %s, want %s", key, got.GetUID(), uid)
		}
		return nil
	})
}

// trigger POSTs a trigger of jobType for project in team.
func (a *api) trigger(tok, team, jobType, project string) (int, map[string]any) {
	a.t.Helper()
	return a.do(http.MethodPost, "/v1/teams/"+team+"/jobs/trigger", tok, map[string]any{"job_type": jobType, "project_id": project})
}

func jobTypeObj(ns, jobType string, scope jobsv1alpha1.JobTypeScope) *jobsv1alpha1.JobType {
	return &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jobsv1alpha1.JobTypeObjectName(jobType)},
		Spec: jobsv1alpha1.JobTypeSpec{JobType: jobType, Scope: scope,
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "handler", Image: "jobrun:dev"}}}}},
	}
}

func projectObj(ns, name, team string) *jobsv1alpha1.Project {
	return &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: jobsv1alpha1.ProjectSpec{TeamID: team}}
}

// TestTriggerConfirmsCacheMissesLive: a JobType and a Project created after
// the cache last heard from the API server are missing from it, and the
// trigger finds them live instead of refusing them. Only the cache goes
// through a proxy, and the proxy is cut: the cache is stale for certain,
// while reads and writes around it work.
func TestTriggerConfirmsCacheMissesLive(t *testing.T) {
	proxy, cacheCfg := testenv.NewProxy(t, env.Config)
	a := startAPIVia(t, env.Namespace(t), env.Config, cacheCfg)
	a.seed()
	tok := userToken(t)
	// The first trigger starts the cache's JobType and Project informers
	// and waits until they have listed the seed.
	if status, body := a.trigger(tok, "team-1", "revenuecat_sync", "project-1"); status != http.StatusCreated {
		t.Fatalf("trigger before the cut: %d %v", status, body)
	}

	proxy.Cut()
	ctx := context.Background()
	for _, o := range []client.Object{jobTypeObj(a.ns, "fresh_sync", ""), projectObj(a.ns, "project-new", "team-1")} {
		if err := env.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		if err := a.cache.Get(ctx, client.ObjectKeyFromObject(o), o.DeepCopyObject().(client.Object)); !apierrors.IsNotFound(err) {
			t.Fatalf("the cut-off cache answers %v for %s, want not found: this test would prove nothing", err, o.GetName())
		}
	}
	for _, tt := range []struct{ name, jobType, project string }{
		{"new job type, cached project", "fresh_sync", "project-1"},
		{"cached job type, new project", "revenuecat_sync", "project-new"},
		{"new job type, new project", "fresh_sync", "project-new"},
	} {
		if status, body := a.trigger(tok, "team-1", tt.jobType, tt.project); status != http.StatusCreated {
			t.Errorf("%s: %d %v, want 201 (a cache miss is confirmed live)", tt.name, status, body)
		}
	}
	// A miss that the API server confirms is still refused.
	if status, body := a.trigger(tok, "team-1", "no_such_type", "project-1"); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "no such job type") {
		t.Errorf("unknown job type: %d %v, want 400", status, body)
	}
	if status, body := a.trigger(tok, "team-1", "revenuecat_sync", "project-404"); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "does not belong") {
		t.Errorf("unknown project: %d %v, want 400", status, body)
	}
}

// TestTriggerFollowsTheCache: once the cache has caught up, a project moved
// to another team (deleted and created again: teamID is immutable), a
// deleted project, a JobType made a system one and a deleted JobType are
// answered as the API server now holds them, not as they were when the
// trigger last read them.
func TestTriggerFollowsTheCache(t *testing.T) {
	a := newAPI(t)
	a.seed()
	ctx := context.Background()
	if err := env.Client.Create(ctx, jobTypeObj(a.ns, "other_sync", "")); err != nil {
		t.Fatal(err)
	}
	tok := userToken(t)
	team2 := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["teams"] = []string{"team-2"} })
	// Before the changes each of them works (and the first trigger starts
	// the cache's informers). other_sync keeps these runs' guards off the
	// pairs triggered below.
	for _, tt := range []struct{ tok, team, jobType, project string }{
		{tok, "team-1", "other_sync", "project-2"},
		{team2, "team-2", "other_sync", "project-x"},
		{tok, "team-1", "other_sync", "project-1"},
	} {
		if status, body := a.trigger(tt.tok, tt.team, tt.jobType, tt.project); status != http.StatusCreated {
			t.Fatalf("%s %s before the changes: %d %v", tt.jobType, tt.project, status, body)
		}
	}

	// project-2 moves from team-1 to team-2.
	if err := env.Client.Delete(ctx, projectObj(a.ns, "project-2", "")); err != nil {
		t.Fatal(err)
	}
	moved := projectObj(a.ns, "project-2", "team-2")
	if err := env.Client.Create(ctx, moved); err != nil {
		t.Fatal(err)
	}
	a.waitCached(moved, string(moved.UID))
	if status, body := a.trigger(tok, "team-1", "revenuecat_sync", "project-2"); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "does not belong to team team-1") {
		t.Errorf("team-1 triggers its former project: %d %v, want 400", status, body)
	}
	if status, body := a.trigger(team2, "team-2", "revenuecat_sync", "project-2"); status != http.StatusCreated {
		t.Errorf("team-2 triggers its new project: %d %v, want 201", status, body)
	}

	// project-x is deleted.
	if err := env.Client.Delete(ctx, projectObj(a.ns, "project-x", "")); err != nil {
		t.Fatal(err)
	}
	a.waitCached(projectObj(a.ns, "project-x", ""), "")
	if status, body := a.trigger(team2, "team-2", "revenuecat_sync", "project-x"); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "does not belong to team team-2") {
		t.Errorf("deleted project: %d %v, want 400", status, body)
	}

	// other_sync becomes a system job type (scope is immutable: it is
	// deleted and created again), and then is deleted.
	if err := env.Client.Delete(ctx, jobTypeObj(a.ns, "other_sync", "")); err != nil {
		t.Fatal(err)
	}
	system := jobTypeObj(a.ns, "other_sync", jobsv1alpha1.JobTypeScopeSystem)
	if err := env.Client.Create(ctx, system); err != nil {
		t.Fatal(err)
	}
	a.waitCached(system, string(system.UID))
	if status, body := a.trigger(tok, "team-1", "other_sync", "project-1"); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "is a system job type") {
		t.Errorf("job type made a system one: %d %v, want 400", status, body)
	}
	if err := env.Client.Delete(ctx, system); err != nil {
		t.Fatal(err)
	}
	a.waitCached(system, "")
	if status, body := a.trigger(tok, "team-1", "other_sync", "project-1"); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "no such job type") {
		t.Errorf("deleted job type: %d %v, want 400", status, body)
	}
}
