package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/archive/archivetest"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// These tests serve the API over a real API server and a real PostgreSQL
// holding the archive (internal/pgtest), as the manager wires them.

// archivedRun is a finished run as the archive holds it, never in the API
// server.
func archivedRun(ns, name, team, project, jobType string, at time.Time, phase jobsv1alpha1.JobRunPhase) *jobsv1alpha1.JobRun {
	run := testrun.Make(ns, name).JobType(jobType).Team(team).Project(project).TriggeredBy("manual:user:u").
		Params(`{"n":1}`).CreatedAt(at).Phase(phase).Obj()
	run.Status.StartedAt = &metav1.MicroTime{Time: at.Add(time.Second)}
	run.Status.CompletedAt = &metav1.MicroTime{Time: at.Add(2 * time.Second)}
	run.Status.Progress = &jobsv1alpha1.JobRunProgress{Processed: 1, Total: 1, Message: "archived", Summary: "1/1"}
	run.Status.Result = &runtime.RawExtension{Raw: []byte(`{"ok":true}`)}
	if phase == jobsv1alpha1.JobRunFailed {
		run.Status.Result, run.Status.Error = nil, "it failed"
	}
	return run
}

// listAll walks every page of query (limit per page) and returns the ids
// in order, failing on a has_more that is not exact.
func (a *api) listAll(tok, team, query string, limit int) ([]string, []map[string]any) {
	a.t.Helper()
	var ids []string
	var runs []map[string]any
	cursor := ""
	for page := 0; ; page++ {
		q := query + fmt.Sprintf("&limit=%d", limit)
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		status, body := a.get("/v1/teams/"+team+"/jobs?"+q, tok)
		if status != http.StatusOK {
			a.t.Fatalf("list %s: %d %v", q, status, body)
		}
		items, _ := body["job_runs"].([]any)
		for _, it := range items {
			m := it.(map[string]any)
			ids = append(ids, m["id"].(string))
			runs = append(runs, m)
		}
		hasMore, _ := body["has_more"].(bool)
		if !hasMore {
			return ids, runs
		}
		if len(items) != limit {
			a.t.Fatalf("list %s: has_more with a short page of %d", q, len(items))
		}
		cursor, _ = body["cursor"].(string)
		if page > 1000 {
			a.t.Fatal("more than 1000 pages")
		}
	}
}

// TestListMergesLiveAndArchive: runs only live (any status), only archived
// (finished, gone from the API server) and in both (finished, not yet gone:
// the live copy wins), with creation times that collide to the millisecond;
// every filter and time bound, walked page by page at several page sizes,
// lists each run once, newest first (ties by id), with has_more exact, as a
// reference merge in Go says.
func TestListMergesLiveAndArchive(t *testing.T) {
	store, _, _ := archivetest.Start(t, false)
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{archive: store})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(17, 29))
	base := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	phases := []jobsv1alpha1.JobRunPhase{jobsv1alpha1.JobRunCompleted, jobsv1alpha1.JobRunFailed, jobsv1alpha1.JobRunCancelled}
	type ref struct {
		id, project, jobType, status, where string
		at                                  time.Time
	}
	var all []ref
	var archived []*jobsv1alpha1.JobRun
	for i := range 90 {
		id := fmt.Sprintf("run-%02d-%c", i, "abcxyz"[rng.IntN(6)])
		at := base.Add(time.Duration(rng.IntN(40)) * time.Millisecond * 500)
		project, jobType := []string{"p1", "p2"}[rng.IntN(2)], []string{"sync_a", "sync_b"}[rng.IntN(2)]
		phase := phases[rng.IntN(3)]
		where := []string{"live", "archived", "both"}[rng.IntN(3)]
		if where == "live" && rng.IntN(2) == 0 {
			phase = []jobsv1alpha1.JobRunPhase{jobsv1alpha1.JobRunPending, jobsv1alpha1.JobRunRunning}[rng.IntN(2)]
		}
		if i%10 == 0 {
			at = base // many at the same millisecond
		}
		if where == "live" && phase == jobsv1alpha1.JobRunRunning && rng.IntN(2) == 0 {
			// A row written for an end that did not land (its status write
			// lost a race): the live copy, running, is the truth.
			where = "stale row"
			archived = append(archived, archivedRun(a.ns, id, "team-1", project, jobType, at, jobsv1alpha1.JobRunCompleted))
		}
		if where != "live" && where != "stale row" {
			archived = append(archived, archivedRun(a.ns, id, "team-1", project, jobType, at, phase))
		}
		all = append(all, ref{id, project, jobType, string(phase), where, at})
		if where != "archived" {
			a.runAt(id, "team-1", project, jobType, at, phase)
			if where == "both" {
				jr := &jobsv1alpha1.JobRun{}
				if err := env.Client.Get(ctx, client.ObjectKey{Namespace: a.ns, Name: id}, jr); err != nil {
					t.Fatal(err)
				}
				jr.Status.Progress = &jobsv1alpha1.JobRunProgress{Processed: 2, Total: 2, Message: "live", Summary: "2/2"}
				if err := env.Client.Status().Update(ctx, jr); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// Another team's archived runs are never listed.
	archived = append(archived, archivedRun(a.ns, "other-team-run", "team-2", "px", "sync_a", base, jobsv1alpha1.JobRunCompleted))
	if err := store.Upsert(ctx, archived...); err != nil {
		t.Fatal(err)
	}
	tok := userToken(t)
	queries := []string{"", "status=completed", "status=running", "status=pending", "job_type=sync_a", "project_id=p2",
		"project_id=p1&status=failed", "since=" + base.Add(5*time.Second).Format(time.RFC3339Nano),
		"until=" + base.Add(10*time.Second).Format(time.RFC3339Nano), "job_type=sync_b&since=" + base.Add(time.Second).Format(time.RFC3339Nano)}
	for _, query := range queries {
		v, _ := url.ParseQuery(query)
		var want []ref
		for _, r := range all {
			since, _ := time.Parse(time.RFC3339Nano, v.Get("since"))
			until, _ := time.Parse(time.RFC3339Nano, v.Get("until"))
			if (v.Get("status") != "" && r.status != v.Get("status")) || (v.Get("job_type") != "" && r.jobType != v.Get("job_type")) ||
				(v.Get("project_id") != "" && r.project != v.Get("project_id")) ||
				(!since.IsZero() && r.at.Before(since)) || (!until.IsZero() && !r.at.Before(until)) {
				continue
			}
			want = append(want, r)
		}
		sort.Slice(want, func(i, j int) bool {
			if !want[i].at.Equal(want[j].at) {
				return want[i].at.After(want[j].at)
			}
			return want[i].id > want[j].id
		})
		var wantIDs []string
		for _, r := range want {
			wantIDs = append(wantIDs, r.id)
		}
		for _, limit := range []int{1, 3, 7, 50, 200} {
			if limit == 1 && len(wantIDs) > 40 {
				continue // a page per run: slow, and 3 covers the same
			}
			got, runs := a.listAll(tok, "team-1", query, limit)
			if !slices.Equal(got, wantIDs) {
				t.Fatalf("query %q limit %d:\n got %v\nwant %v", query, limit, got, wantIDs)
			}
			for i, run := range runs {
				p, _ := run["progress"].(map[string]any)
				msg := p["message"]
				if want[i].where == "both" && msg != "live" || want[i].where == "archived" && msg != "archived" {
					t.Fatalf("query %q: run %s (%s) shows progress %q: the live copy must win", query, want[i].id, want[i].where, msg)
				}
			}
		}
	}
}

// TestGetAndCancelArchived: a run only in the archive reads exactly as it
// did live; another team's is a 404; cancelling it is a 400, as for any
// finished run; a run nowhere is a 404; a triggered run carries the
// archive's finalizer.
func TestGetAndCancelArchived(t *testing.T) {
	store, _, _ := archivetest.Start(t, false)
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{archive: store})
	ctx := context.Background()
	live := a.createRun("run-1", "team-1", func(jr *jobsv1alpha1.JobRun) {
		jr.Status.Phase = jobsv1alpha1.JobRunCompleted
		jr.Status.StartedAt = &metav1.MicroTime{Time: time.Date(2024, 1, 15, 10, 30, 1, 123456000, time.UTC)}
		jr.Status.CompletedAt = &metav1.MicroTime{Time: time.Date(2024, 1, 15, 10, 31, 0, 0, time.UTC)}
		jr.Status.Progress = &jobsv1alpha1.JobRunProgress{Processed: 5, Total: 5, Message: "done ✓", Summary: "5/5"}
		jr.Status.Result = &runtime.RawExtension{Raw: []byte(`{"synced":5,"names":["a","b"]}`)}
	})
	tok := userToken(t)
	status, whileLive := a.get("/v1/jobs/run-1", tok)
	if status != http.StatusOK {
		t.Fatalf("GET of the live run: %d %v", status, whileLive)
	}
	if err := store.Upsert(ctx, live); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(ctx, live); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func(context.Context) error {
		if a.cacheHas("run-1") {
			return fmt.Errorf("run-1 still in the cache")
		}
		return nil
	})
	status, archived := a.get("/v1/jobs/run-1", tok)
	if status != http.StatusOK {
		t.Fatalf("GET of the archived run: %d %v", status, archived)
	}
	gotJSON, _ := json.Marshal(archived)
	wantJSON, _ := json.Marshal(whileLive)
	if string(gotJSON) != string(wantJSON) {
		t.Fatalf("archived run reads differently:\n got %s\nwant %s", gotJSON, wantJSON)
	}
	if status, body := a.do(http.MethodPost, "/v1/jobs/run-1/cancel", tok, nil); status != http.StatusBadRequest || errorCode(body) != codeInvalidRequest {
		t.Fatalf("cancel of an archived run: %d %v, want 400", status, body)
	}
	other := archivedRun(a.ns, "run-2", "team-2", "px", "sync_a", time.Now(), jobsv1alpha1.JobRunCompleted)
	if err := store.Upsert(ctx, other); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"run-2", "no-such-run"} {
		if status, body := a.get("/v1/jobs/"+id, tok); status != http.StatusNotFound {
			t.Fatalf("GET %s: %d %v, want 404", id, status, body)
		}
		if status, body := a.do(http.MethodPost, "/v1/jobs/"+id+"/cancel", tok, nil); status != http.StatusNotFound {
			t.Fatalf("cancel %s: %d %v, want 404", id, status, body)
		}
	}
}

// cacheHas reports whether the server's run cache holds run name.
func (a *api) cacheHas(name string) bool {
	err := a.cache.Get(context.Background(), client.ObjectKey{Namespace: a.ns, Name: name}, &jobsv1alpha1.JobRun{})
	return err == nil
}

// TestArchiveDownOrSlow: with the archive unreachable, a list that needs it
// and a get of a run not live answer 503 JSON with Retry-After, never a page
// without archived runs; a list of active runs and a get of a live run do
// not need it and answer; the server stays ready. A slow archive (its table
// locked) answers 503 within the read bound. Back, everything answers.
func TestArchiveDownOrSlow(t *testing.T) {
	store, proxy, dsn := archivetest.Start(t, true)
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{archive: store})
	ctx := context.Background()
	if err := store.Upsert(ctx, archivedRun(a.ns, "old-run", "team-1", "p1", "sync_a", time.Now().Add(-time.Hour), jobsv1alpha1.JobRunCompleted)); err != nil {
		t.Fatal(err)
	}
	a.runAt("live-run", "team-1", "p1", "sync_a", time.Now(), jobsv1alpha1.JobRunRunning)
	a.waitListed(map[string]string{"live-run": "running", "old-run": "completed"})
	tok := userToken(t)

	unavailable := func(what, path string) {
		t.Helper()
		start := time.Now()
		resp, err := http.Get(a.url + path) // for the header; the body below
		if err == nil {
			resp.Body.Close()
		}
		status, body := a.get(path, tok)
		if status != http.StatusServiceUnavailable || errorCode(body) != codeUnavailable {
			t.Fatalf("%s: %d %v, want 503 unavailable", what, status, body)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Fatalf("%s took %s", what, took)
		}
		req, _ := http.NewRequest(http.MethodGet, a.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%s: 503 without Retry-After", what)
		}
	}
	available := func() {
		t.Helper()
		if status, body := a.get("/v1/teams/team-1/jobs?status=running", tok); status != http.StatusOK {
			t.Fatalf("list of running runs: %d %v", status, body)
		}
		if status, body := a.get("/v1/jobs/live-run", tok); status != http.StatusOK {
			t.Fatalf("GET of a live run: %d %v", status, body)
		}
		if status, body := a.get("/readyz", ""); status != http.StatusOK {
			t.Fatalf("/readyz: %d %v", status, body)
		}
	}

	proxy.Cut()
	unavailable("list while the archive is down", "/v1/teams/team-1/jobs")
	unavailable("completed list while the archive is down", "/v1/teams/team-1/jobs?status=completed")
	unavailable("GET of an archived run while the archive is down", "/v1/jobs/old-run")
	available()
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	a.waitListed(map[string]string{"live-run": "running", "old-run": "completed"})

	// Slow: the archive's table locked by another session.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE archived_runs IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	unavailable("list while the archive is slow", "/v1/teams/team-1/jobs")
	available()
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	status, ids, _, _, body := a.list(tok, "team-1", "")
	if status != http.StatusOK || !slices.Equal(ids, []string{"live-run", "old-run"}) {
		t.Fatalf("list after the archive is back: %d %v %v", status, ids, body)
	}
}

// TestTriggerWithArchiveSetsFinalizer: with an archive, a triggered run is
// created with the archive's finalizer (no later write adds it).
func TestTriggerWithArchiveSetsFinalizer(t *testing.T) {
	store, _, _ := archivetest.Start(t, false)
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{archive: store})
	a.seed()
	status, body := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1", "params": map[string]any{"integration_id": "int-1"}})
	if status != http.StatusCreated {
		t.Fatalf("trigger: %d %v", status, body)
	}
	id := body["job_run"].(map[string]any)["id"].(string)
	jr := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: a.ns, Name: id}, jr); err != nil {
		t.Fatal(err)
	}
	if !controllerutil.ContainsFinalizer(jr, jobsv1alpha1.FinalizerArchive) {
		t.Fatalf("triggered run's finalizers %v, want %s", jr.Finalizers, jobsv1alpha1.FinalizerArchive)
	}
}
