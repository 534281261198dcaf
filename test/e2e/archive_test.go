package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/archive"
	"jobrun.dev/jobrun/internal/archive/archivetest"
	"jobrun.dev/jobrun/internal/localcluster"
	"jobrun.dev/jobrun/internal/pgtest"
	"jobrun.dev/jobrun/test/testenv"
)

// TestManagerKilledWhileArchiving SIGKILLs the leading manager, with the run
// archive on (a real PostgreSQL) and a live TTL of 3 s, four times while
// batches of runs triggered through the REST API finish and are archived
// (each kill once the leader has archived a run of its batch). Afterwards
// every run has left the API server, has exactly one row in the archive,
// completed with its full progress, and the REST API lists and reads every
// one of them — from the archive — exactly once.
func TestManagerKilledWhileArchiving(t *testing.T) {
	tn := newTenant(t)
	dsn := pgtest.Start(t)
	args := append([]string{"--archive-dsn=" + dsn, "--archive-live-ttl=3s"}, fastLease...)
	t.Cleanup(func() { restartDefaultManager(t) })
	cluster.StopManager()
	if err := cluster.StartManager(args...); err != nil {
		t.Fatal(err)
	}
	archivedBy := func(m *localcluster.Manager) float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		text, err := m.Metrics(ctx)
		if err != nil {
			return -1
		}
		v, _ := localcluster.MetricValue(text, `jobrun_archive_writes_total{result="ok"}`)
		return v
	}
	const kills, batch = 4, 5
	// One active run per (job type, project): a project per run of a batch.
	projects := []string{tn.project}
	for i := 1; i < batch; i++ {
		p := &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: apiNamespace, Name: fmt.Sprintf("%s-%d", tn.project, i)}, Spec: jobsv1alpha1.ProjectSpec{TeamID: tn.team}}
		if err := cluster.Client.Create(testenv.Context(t), p); err != nil {
			t.Fatal(err)
		}
		projects = append(projects, p.Name)
	}
	var ids []string
	for i := range kills {
		leader := cluster.Manager()
		before := archivedBy(leader)
		for _, project := range projects {
			// Each waits for the project's previous run (the last batch's)
			// to end: a 409 names it until then.
			testenv.Eventually(t, 60*time.Second, func(context.Context) error {
				status, body := tn.call(t, http.MethodPost, "/v1/teams/"+tn.team+"/jobs/trigger", map[string]any{"job_type": "demo_sync", "project_id": project, "params": map[string]any{"items": 5, "item_ms": 20}})
				if status != http.StatusCreated {
					return fmt.Errorf("trigger for %s: %d %v", project, status, body)
				}
				ids = append(ids, body["job_run"].(map[string]any)["id"].(string))
				return nil
			})
		}
		testenv.Eventually(t, 120*time.Second, func(context.Context) error {
			if v := archivedBy(leader); v <= before {
				return fmt.Errorf("kill %d: the leader (pid %d) has archived no run of its batch yet (%v)", i+1, leader.PID(), v)
			}
			return nil
		})
		t.Logf("kill %d: leader pid %d had archived %v runs", i+1, leader.PID(), archivedBy(leader))
		cluster.KillManager()
		if err := cluster.StartManager(args...); err != nil {
			t.Fatal(err)
		}
	}
	// Every run archived and gone from the API server.
	testenv.Eventually(t, 180*time.Second, func(ctx context.Context) error {
		list := &jobsv1alpha1.JobRunList{}
		if err := cluster.Client.List(ctx, list, client.InNamespace(apiNamespace), client.MatchingLabels{jobsv1alpha1.LabelTeam: tn.team}); err != nil {
			return err
		}
		if len(list.Items) > 0 {
			jr := list.Items[0]
			return fmt.Errorf("%d of %d runs still in the API server, e.g. %s (%s, finalizers %v)", len(list.Items), len(ids), jr.Name, jr.Status.Phase, jr.Finalizers)
		}
		return nil
	})
	store := archivetest.Open(t, dsn)
	rows, more, err := store.List(context.Background(), archive.Query{Namespace: apiNamespace, TeamID: tn.team, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var archived []string
	for _, row := range rows {
		archived = append(archived, row.Name)
		if row.Status.Phase != jobsv1alpha1.JobRunCompleted || row.Status.Progress == nil || row.Status.Progress.Processed != 5 {
			t.Errorf("run %s archived as %s with progress %+v, want completed 5/5", row.Name, row.Status.Phase, row.Status.Progress)
		}
	}
	if more || !sameSet(archived, ids) {
		t.Fatalf("the archive holds %d rows %v (more: %v), want each of the %d runs once", len(archived), archived, more, len(ids))
	}
	// Through the REST API, from the archive alone.
	status, body := tn.call(t, http.MethodGet, "/v1/teams/"+tn.team+"/jobs?limit=200", nil)
	if status != http.StatusOK {
		t.Fatalf("list: %d %v", status, body)
	}
	var listed []string
	for _, r := range body["job_runs"].([]any) {
		run := r.(map[string]any)
		listed = append(listed, run["id"].(string))
		if run["status"] != "completed" {
			t.Errorf("listed run %s is %v", run["id"], run["status"])
		}
	}
	if !sameSet(listed, ids) || body["has_more"] != false {
		t.Fatalf("the REST API lists %v (has_more %v), want each of %v once", listed, body["has_more"], ids)
	}
	for _, id := range ids {
		if status, body := tn.call(t, http.MethodGet, "/v1/jobs/"+id, nil); status != http.StatusOK {
			t.Fatalf("GET %s: %d %v", id, status, body)
		}
	}
}

// sameSet reports whether a and b hold the same strings, each once.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b) && len(slices.Compact(a)) == len(b)
}
