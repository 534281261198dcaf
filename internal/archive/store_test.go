package archive

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/apiserver/view"
)

// apiJSON is the API's bytes for run.
func apiJSON(t testing.TB, run *jobsv1alpha1.JobRun) string {
	t.Helper()
	b, err := json.Marshal(view.Of(run))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var t0 = time.Date(2026, 11, 20, 10, 30, 1, 123456789, time.UTC)

func micro(t time.Time) *metav1.MicroTime {
	m := metav1.NewMicroTime(t.Truncate(time.Microsecond)) // as the API server keeps it
	return &m
}

func raw(s string) *runtime.RawExtension { return &runtime.RawExtension{Raw: []byte(s)} }

// finished is a completed run of team-a's project p1.
func finished(id string, created time.Time) *jobsv1alpha1.JobRun {
	run := jobsv1alpha1.NewJobRun("ns", id, jobsv1alpha1.JobRunSpec{
		JobType: "revenuecat_sync", TeamID: "team-a", ProjectID: "p1",
		Params: raw(`{"full":true}`), TriggeredBy: "manual:user:u1",
	}, created)
	run.Status = jobsv1alpha1.JobRunStatus{
		Phase:       jobsv1alpha1.JobRunCompleted,
		StartedAt:   micro(created.Add(1500 * time.Microsecond)),
		CompletedAt: micro(created.Add(time.Minute + 7*time.Microsecond)),
		Progress:    jobsv1alpha1.NewProgress(10, 10, "done"),
		Result:      raw(`{"synced":10}`),
		Attempts:    1,
		Conditions: []metav1.Condition{{Type: jobsv1alpha1.JobRunConditionFinished, Status: metav1.ConditionTrue,
			Reason: jobsv1alpha1.ReasonCompleted}},
	}
	run.Labels[jobsv1alpha1.LabelStatus] = string(jobsv1alpha1.JobRunCompleted)
	return run
}

func countRows(t testing.TB, s *Store) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM archived_runs").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestUpsertOverwrites(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	first := finished("r1", t0)
	if err := s.Upsert(ctx, first); err != nil {
		t.Fatal(err)
	}
	second := first.DeepCopy()
	second.Status.Phase = jobsv1alpha1.JobRunFailed
	second.Status.Error = "second"
	second.Status.Result = nil
	second.Status.Attempts = 2
	second.Status.Conditions[0].Reason = jobsv1alpha1.ReasonPodLost
	if err := s.Upsert(ctx, second); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
	got, err := s.Get(ctx, "ns", "r1")
	if err != nil || got == nil {
		t.Fatalf("Get: %v, %v", got, err)
	}
	if diff := cmp.Diff(apiJSON(t, second), apiJSON(t, got)); diff != "" {
		t.Errorf("Get after the second upsert (-want +got):\n%s", diff)
	}
	if got.Status.Attempts != 2 || got.Status.Conditions[0].Reason != jobsv1alpha1.ReasonPodLost {
		t.Errorf("attempts %d, conditions %v", got.Status.Attempts, got.Status.Conditions)
	}
	if got, err := s.Get(ctx, "ns", "r2"); got != nil || err != nil {
		t.Errorf("Get of a run not archived: %v, %v", got, err)
	}
	if got, err := s.Get(ctx, "other", "r1"); got != nil || err != nil {
		t.Errorf("Get in another namespace: %v, %v", got, err)
	}
}

func TestUpsertMany(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	runs := make([]*jobsv1alpha1.JobRun, 500)
	for i := range runs {
		runs[i] = finished(fmt.Sprintf("r%03d", i), t0.Add(time.Duration(i)*time.Millisecond))
	}
	if err := s.Upsert(ctx, runs...); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s); n != 500 {
		t.Fatalf("%d rows, want 500", n)
	}
	// Again, with runs given twice in one call: the later copy wins.
	again := runs[0].DeepCopy()
	again.Status.Error = "later"
	if err := s.Upsert(ctx, append(runs, again)...); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, s); n != 500 {
		t.Fatalf("%d rows after the second upsert, want 500", n)
	}
	got, err := s.Get(ctx, "ns", "r000")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Error != "later" {
		t.Errorf("error %q, want the later copy's", got.Status.Error)
	}
	if err := s.Upsert(ctx); err != nil {
		t.Errorf("Upsert of nothing: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	big := `{"items":[` + strings.Repeat(`{"id":12345,"name":"a name","tags":["x","y"]},`, 5000) + `{"id":0}]}`
	cases := map[string]func(*jobsv1alpha1.JobRun){
		"complete": func(*jobsv1alpha1.JobRun) {},
		"nil params, result, progress": func(r *jobsv1alpha1.JobRun) {
			r.Spec.Params, r.Status.Result, r.Status.Progress = nil, nil, nil
		},
		"empty raw params and result": func(r *jobsv1alpha1.JobRun) {
			r.Spec.Params, r.Status.Result = &runtime.RawExtension{}, &runtime.RawExtension{}
		},
		"empty object params, null result": func(r *jobsv1alpha1.JobRun) {
			r.Spec.Params, r.Status.Result = raw(`{}`), raw(`null`)
		},
		"scalar and array results": func(r *jobsv1alpha1.JobRun) { r.Status.Result = raw(`[1,"two",3.5,true,null]`) },
		"string result":            func(r *jobsv1alpha1.JobRun) { r.Status.Result = raw(`"done"`) },
		"numbers": func(r *jobsv1alpha1.JobRun) {
			r.Spec.Params = raw(`{"big":9007199254740993,"f":0.1,"huge":1e+21,"neg":-7,"tiny":1e-7,"zero":0}`)
		},
		"keys jsonb reorders": func(r *jobsv1alpha1.JobRun) {
			r.Spec.Params = raw(`{"aaa":{"b":2,"zz":1},"b":[{"c":2,"yy":1}],"cc":"x"}`)
		},
		"unicode": func(r *jobsv1alpha1.JobRun) {
			r.Spec.TriggeredBy = "manual:user:Zoë-日本"
			r.Spec.Params = raw(`{"html":"\u003cb\u003e \u0026","name":"Zoë 日本 🚀"}`)
			r.Status.Progress = jobsv1alpha1.NewProgress(1, 2, "Synced 1 of 2: Zoë 🚀")
			r.Status.Error = "upstream said: ошибка ✗"
		},
		"big result": func(r *jobsv1alpha1.JobRun) { r.Status.Result = raw(big) },
		"failed with error text": func(r *jobsv1alpha1.JobRun) {
			r.Status.Phase = jobsv1alpha1.JobRunFailed
			r.Status.Result = nil
			r.Status.Error = strings.Repeat("line one\nline \"two\"\t", 100)
			r.Status.Conditions[0].Reason = jobsv1alpha1.ReasonHandlerFailed
		},
		"cancelled before it started": func(r *jobsv1alpha1.JobRun) {
			r.Status = jobsv1alpha1.JobRunStatus{Phase: jobsv1alpha1.JobRunCancelled, CompletedAt: micro(t0.Add(time.Second))}
		},
		"progress zero": func(r *jobsv1alpha1.JobRun) { r.Status.Progress = jobsv1alpha1.NewProgress(0, 0, "") },
		"notify":        func(r *jobsv1alpha1.JobRun) { r.Spec.Notify = true },
		"created at from creationTimestamp": func(r *jobsv1alpha1.JobRun) {
			r.Spec.CreatedAt = nil
			r.CreationTimestamp = metav1.NewTime(t0.Truncate(time.Second))
		},
		"created at sub-millisecond": func(r *jobsv1alpha1.JobRun) {
			r.Spec.CreatedAt = micro(t0.Add(987 * time.Microsecond))
		},
		"system run": func(r *jobsv1alpha1.JobRun) {
			r.Spec.TeamID, r.Spec.ProjectID = "", ""
			r.Spec.TriggeredBy = "schedule:nightly"
			delete(r.Labels, jobsv1alpha1.LabelTeam)
			delete(r.Labels, jobsv1alpha1.LabelProject)
		},
	}
	var runs []*jobsv1alpha1.JobRun
	for name, change := range cases {
		run := finished("run-"+strings.ReplaceAll(name, " ", "-"), t0)
		change(run)
		run.Labels[jobsv1alpha1.LabelStatus] = string(run.CurrentPhase()) // as the controller keeps it
		runs = append(runs, run)
	}
	if err := s.Upsert(ctx, runs...); err != nil {
		t.Fatal(err)
	}
	for _, want := range runs {
		t.Run(want.Name, func(t *testing.T) {
			got, err := s.Get(ctx, want.Namespace, want.Name)
			if err != nil || got == nil {
				t.Fatalf("Get: %v, %v", got, err)
			}
			if diff := cmp.Diff(apiJSON(t, want), apiJSON(t, got)); diff != "" {
				t.Errorf("API view (-original +archived):\n%s", diff)
			}
			if got.Status.Attempts != want.Status.Attempts {
				t.Errorf("attempts %d, want %d", got.Status.Attempts, want.Status.Attempts)
			}
			if c := meta(want.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); c != nil {
				if g := meta(got.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); g == nil || g.Reason != c.Reason {
					t.Errorf("Finished condition %v, want reason %s", g, c.Reason)
				}
			}
			for _, ts := range []struct {
				name      string
				got, want *metav1.MicroTime
			}{{"startedAt", got.Status.StartedAt, want.Status.StartedAt}, {"completedAt", got.Status.CompletedAt, want.Status.CompletedAt}} {
				if (ts.got == nil) != (ts.want == nil) || ts.got != nil && !ts.got.Equal(ts.want) {
					t.Errorf("%s %v, want %v (to the microsecond)", ts.name, ts.got, ts.want)
				}
			}
			if p := got.Status.Progress; p != nil && *p != *jobsv1alpha1.NewProgress(p.Processed, p.Total, p.Message) {
				t.Errorf("progress %+v: summary inconsistent", p)
			}
			if !got.CreatedAt().Equal(want.CreatedAt().Truncate(time.Millisecond)) {
				t.Errorf("created at %v, want %v", got.CreatedAt(), want.CreatedAt())
			}
			if diff := cmp.Diff(want.Labels, got.Labels); diff != "" {
				t.Errorf("labels (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRoundTripNonCanonical: JSON the API server would not have written
// (spaces, unsorted keys) comes back as it would write it: the same value.
func TestRoundTripNonCanonical(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	run := finished("r1", t0)
	run.Spec.Params = raw(` { "b" : 1, "a" : [ 1.50, 2 ] } `)
	if err := s.Upsert(ctx, run); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "ns", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":[1.5,2],"b":1}`; string(got.Spec.Params.Raw) != want {
		t.Errorf("params %s, want %s", got.Spec.Params.Raw, want)
	}
}

// TestUnstorableText: text PostgreSQL refuses (NUL, invalid UTF-8) does not
// stop a run from being archived.
func TestUnstorableText(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	run := finished("r1", t0)
	run.Status.Error = "nul\x00 and bad \xff utf-8"
	run.Status.Progress.Message = "nul\x00"
	run.Spec.Params = raw(`{"k\u0000":"v\u0000","s":"\\u0000 is text"}`)
	if err := s.Upsert(ctx, run); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, "ns", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if want := "nul\uFFFD and bad \uFFFD utf-8"; got.Status.Error != want {
		t.Errorf("error %q, want %q", got.Status.Error, want)
	}
	if want := "nul\uFFFD"; got.Status.Progress.Message != want {
		t.Errorf("message %q, want %q", got.Status.Progress.Message, want)
	}
	if want := `{"k�":"v�","s":"\\u0000 is text"}`; string(got.Spec.Params.Raw) != want {
		t.Errorf("params %s, want %s", got.Spec.Params.Raw, want)
	}
}

func TestDeleteFinishedBefore(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	cut := t0.Add(time.Hour)
	var runs []*jobsv1alpha1.JobRun
	for i := range 10 { // completed before cut
		r := finished(fmt.Sprintf("old-%d", i), t0)
		r.Status.CompletedAt = micro(cut.Add(-time.Duration(i+1) * time.Microsecond))
		runs = append(runs, r)
	}
	for i := range 5 { // at or after cut
		r := finished(fmt.Sprintf("new-%d", i), t0)
		r.Status.CompletedAt = micro(cut.Add(time.Duration(i) * time.Microsecond))
		runs = append(runs, r)
	}
	noEnd := func(id string, created time.Time) *jobsv1alpha1.JobRun {
		r := finished(id, created)
		r.Status.CompletedAt = nil
		return r
	}
	runs = append(runs, noEnd("unfinished-old", cut.Add(-time.Hour)), noEnd("unfinished-new", cut.Add(time.Hour)))
	if err := s.Upsert(ctx, runs...); err != nil {
		t.Fatal(err)
	}

	// One statement deletes one batch.
	n, err := s.deleteBatch(ctx, deleteFinishedSQL, cut, 3)
	if err != nil || n != 3 {
		t.Fatalf("one batch deleted %d (%v), want 3", n, err)
	}
	if left := countRows(t, s); left != len(runs)-3 {
		t.Fatalf("%d rows left after one batch, want %d", left, len(runs)-3)
	}

	s.deleteStatements = 0
	n, err = s.DeleteFinishedBefore(ctx, cut, 3)
	if err != nil {
		t.Fatal(err)
	}
	if n != 8 {
		t.Errorf("deleted %d, want 8 (7 completed, 1 without completion)", n)
	}
	// 7 rows in batches of 3: 3, 3, 1; then the one without completion.
	if s.deleteStatements != 4 {
		t.Errorf("%d DELETE statements, want 4", s.deleteStatements)
	}
	var left []string
	rows, err := s.pool.Query(ctx, "SELECT id FROM archived_runs ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		left = append(left, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"new-0", "new-1", "new-2", "new-3", "new-4", "unfinished-new"}
	if diff := cmp.Diff(want, left); diff != "" {
		t.Errorf("rows left (-want +got):\n%s", diff)
	}
	if _, err := s.DeleteFinishedBefore(ctx, cut, 0); err == nil {
		t.Error("a batch of 0 was accepted")
	}
}

// TestUpsertConcurrentOverlapping: two replicas archiving the same runs at
// once, given in opposite orders, both succeed (no deadlock) and leave one
// row per run.
func TestUpsertConcurrentOverlapping(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	runs := make([]*jobsv1alpha1.JobRun, 300)
	for i := range runs {
		runs[i] = finished(fmt.Sprintf("r%03d", i), t0)
	}
	reversed := slices.Clone(runs)
	slices.Reverse(reversed)
	for round := range 10 {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, batch := range [][]*jobsv1alpha1.JobRun{runs, reversed} {
			wg.Go(func() { errs[i] = s.Upsert(ctx, batch...) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, upsert %d: %v", round, i, err)
			}
		}
	}
	if n := countRows(t, s); n != len(runs) {
		t.Errorf("%d rows, want %d", n, len(runs))
	}
}
