package apiserver

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testrun"
)

// TestRunIndexFollowsUpdates feeds the index as the informer would: a run's
// progress update replaces it in place, a status change moves it between
// status trees, a delete removes it from every tree.
func TestRunIndexFollowsUpdates(t *testing.T) {
	x := NewRunIndex()
	run := testrun.Make("ns", "r1").JobType("demo_sync").Team("t1").Project("p1").
		CreatedAt(time.Date(2024, 1, 15, 10, 30, 0, 0, time.UTC)).Phase(jobsv1alpha1.JobRunRunning).Obj()
	list := func(status string) []*jobsv1alpha1.JobRun {
		t.Helper()
		runs, _ := x.list(RunQuery{Namespace: "ns", TeamID: "t1", Status: status, Limit: 50})
		return runs
	}
	x.set(run)

	progressed := run.DeepCopy()
	progressed.Status.Progress = jobsv1alpha1.NewProgress(5, 10, "half")
	x.set(progressed)
	if got := list("running"); len(got) != 1 || got[0] != progressed {
		t.Fatalf("after a progress update: %v, want the updated object", got)
	}

	done := progressed.DeepCopy()
	done.Status.Phase = jobsv1alpha1.JobRunCompleted
	x.set(done)
	if got := list("running"); len(got) != 0 {
		t.Errorf("a completed run is still listed as running: %v", got)
	}
	if got := list("completed"); len(got) != 1 || got[0] != done {
		t.Errorf("completed: %v", got)
	}
	if got := list(""); len(got) != 1 {
		t.Errorf("team list after updates: %d runs, want 1", len(got))
	}

	x.remove(types.NamespacedName{Namespace: "ns", Name: "r1"})
	if got := list(""); len(got) != 0 || len(x.trees) != 0 {
		t.Errorf("after delete: %d runs listed, %d trees left", len(got), len(x.trees))
	}
}
