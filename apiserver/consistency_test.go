package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// TestListReadsItsWrites: N triggers at once through one replica, all 201,
// then at once a walk through the list, 7 per page, through another
// replica (its own cache): every run that was answered 201 is listed
// exactly once, newest first, and each can be read by id there. Without
// consistent reads the other replica's cache lags behind and runs are
// missing from the pages.
func TestListReadsItsWrites(t *testing.T) {
	a := newAPI(t)
	a.seed()
	b := a.replica()
	const n = 60
	for i := range n {
		if err := env.Client.Create(context.Background(), &jobsv1alpha1.Project{
			ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: fmt.Sprintf("p-%02d", i)}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "team-1"}}); err != nil {
			t.Fatal(err)
		}
	}
	tok := userToken(t)
	for round := range 3 { // each round deletes its runs at the end
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				status, body := a.trigger(tok, "team-1", "revenuecat_sync", fmt.Sprintf("p-%02d", i))
				if status != http.StatusCreated {
					t.Errorf("trigger %d: %d %v", i, status, body)
					return
				}
				ids[i] = jobRunOf(body)["id"].(string)
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}

		seen := map[string]int{}
		var prev map[string]any
		path := "/v1/teams/team-1/jobs?limit=7"
		for pages := 0; ; pages++ {
			status, body := b.get(path, tok)
			if status != http.StatusOK {
				t.Fatalf("round %d, page %d: %d %v", round, pages, status, body)
			}
			for _, r := range body["job_runs"].([]any) {
				run := r.(map[string]any)
				seen[run["id"].(string)]++
				if prev != nil && !newerFirstJSON(prev, run) {
					t.Errorf("round %d: %v listed before %v: not newest first", round, prev, run)
				}
				prev = run
			}
			if body["has_more"] != true {
				break
			}
			path = "/v1/teams/team-1/jobs?limit=7&cursor=" + url.QueryEscape(body["cursor"].(string))
		}
		for i, id := range ids {
			if seen[id] != 1 {
				t.Errorf("round %d: run %d (%s), answered 201, listed %d times by the other replica", round, i, id, seen[id])
			}
		}
		if len(seen) != n {
			t.Errorf("round %d: %d runs listed, want %d", round, len(seen), n)
		}
		for _, id := range ids[:10] {
			if status, body := b.get("/v1/jobs/"+id, tok); status != http.StatusOK {
				t.Errorf("round %d: get %s through the other replica: %d %v", round, id, status, body)
			}
		}
		// The next round triggers the same projects again: free them.
		for _, id := range ids {
			if err := env.Client.Delete(context.Background(), &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: a.ns, Name: id}}); err != nil {
				t.Fatal(err)
			}
		}
		// The deleted runs are gone from every list at once, too.
		if status, body := b.get("/v1/teams/team-1/jobs?limit=1", tok); status != http.StatusOK || len(body["job_runs"].([]any)) != 0 {
			t.Fatalf("round %d: list after deleting every run: %d %v, want no runs", round, status, body)
		}
		seedGuardsFree(t, a.ns)
	}
}

// newerFirstJSON says whether API run x comes before y: newer created_at,
// then the greater id.
func newerFirstJSON(x, y map[string]any) bool {
	tx, _ := time.Parse(time.RFC3339Nano, x["created_at"].(string))
	ty, _ := time.Parse(time.RFC3339Nano, y["created_at"].(string))
	if !tx.Equal(ty) {
		return tx.After(ty)
	}
	return x["id"].(string) > y["id"].(string)
}

// seedGuardsFree deletes the trigger guards of ns (their runs were deleted
// by hand, not ended by a controller that would release them).
func seedGuardsFree(t *testing.T, ns string) {
	t.Helper()
	if err := env.Client.DeleteAllOf(context.Background(), &coordinationv1.Lease{}, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
}

// TestStaleCacheAnswers503: a replica whose cache is cut off from the API
// server (its writes still go through) cannot show that its cache is
// current: a list and a get answer 503 with Retry-After within the
// consistency bound, never a page without the new run; once the cache is
// back, both show it.
func TestStaleCacheAnswers503(t *testing.T) {
	proxy, cacheCfg := testenv.NewProxy(t, env.Config)
	ns := env.Namespace(t)
	a := startAPIWith(t, ns, env.Config, cacheCfg, apiOptions{consistencyTimeout: 2 * time.Second})
	a.seed()
	tok := userToken(t)
	// The cache is current: a listed run.
	first := a.createRun("run-before", "team-1", nil)
	if status, body := a.get("/v1/jobs/"+first.Name, tok); status != http.StatusOK {
		t.Fatalf("get before the cut: %d %v", status, body)
	}

	proxy.Cut()
	a.createRun("run-during", "team-1", func(r *jobsv1alpha1.JobRun) {
		r.Spec.CreatedAt = ptr.To(metav1.NewMicroTime(time.Now().Add(time.Hour)))
	})
	for _, path := range []string{"/v1/teams/team-1/jobs", "/v1/jobs/run-during", "/v1/jobs/run-before"} {
		start := time.Now()
		resp := a.raw(http.MethodGet, path, tok)
		if resp.status != http.StatusServiceUnavailable || errorCode(resp.body) != codeUnavailable || resp.header.Get("Retry-After") == "" {
			t.Errorf("GET %s with the cache cut off: %d %v Retry-After %q, want 503 unavailable with Retry-After", path, resp.status, resp.body, resp.header.Get("Retry-After"))
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("GET %s took %s: the consistency bound is 2 s", path, took)
		}
	}

	proxy.Restore()
	testenv.Eventually(t, time.Minute, func(context.Context) error {
		status, body := a.get("/v1/teams/team-1/jobs", tok)
		if status != http.StatusOK {
			return fmt.Errorf("list after the cut: %d %v", status, body)
		}
		if runs := body["job_runs"].([]any); len(runs) != 2 || runs[0].(map[string]any)["id"] != "run-during" {
			return fmt.Errorf("list after the cut: %v, want run-during then run-before", runs)
		}
		return nil
	})
}

// TestRoundsAreShared: callers that arrive while a round is under way share
// the next one (one marker write for all of them), and none of them is
// answered by the round that was already under way when it arrived.
func TestRoundsAreShared(t *testing.T) {
	var rs rounds
	var calls atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	do := func() error {
		calls.Add(1)
		started <- struct{}{}
		<-release
		return nil
	}
	first := make(chan error, 1)
	go func() { first <- rs.wait(context.Background(), do) }()
	<-started // round 1 is under way

	const late = 50
	var wg sync.WaitGroup
	lateDone := make(chan error, late)
	for range late {
		wg.Go(func() { lateDone <- rs.wait(context.Background(), do) })
	}
	// Wait (bounded) until every late caller has joined the next round.
	deadline := time.Now().Add(time.Minute)
	for {
		rs.mu.Lock()
		joined := 0
		if rs.next != nil {
			joined = rs.next.callers
		}
		rs.mu.Unlock()
		if joined == late {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d late callers joined the next round within a minute", joined, late)
		}
		time.Sleep(time.Millisecond)
	}
	release <- struct{}{} // round 1 ends
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-started // round 2 began
	if len(lateDone) != 0 {
		t.Fatalf("a late caller was answered by the round under way when it arrived")
	}
	close(release)
	wg.Wait()
	if got := calls.Load(); got != 2 {
		t.Errorf("%d rounds for 1 + %d callers, want 2", got, late)
	}

	// A failed round fails its callers, and the next round runs afresh.
	boom := errors.New("boom")
	if err := rs.wait(context.Background(), func() error { return boom }); !errors.Is(err, boom) {
		t.Errorf("failed round: %v, want boom", err)
	}
	if err := rs.wait(context.Background(), func() error { return nil }); err != nil {
		t.Errorf("round after a failed one: %v", err)
	}
}

// response is a raw answer: status, JSON body and headers.
type response struct {
	status int
	body   map[string]any
	header http.Header
}

// raw sends a request and keeps the headers too.
func (a *api) raw(method, path, tok string) response {
	a.t.Helper()
	req, err := http.NewRequest(method, a.url+path, nil)
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	out := response{status: resp.StatusCode, body: map[string]any{}, header: resp.Header}
	if err := json.NewDecoder(resp.Body).Decode(&out.body); err != nil {
		a.t.Errorf("%s %s: %d, body not JSON: %v", method, path, resp.StatusCode, err)
	}
	return out
}

// TestReplayedMarkerIsNotEnough: the informer replays a list (taken at
// resourceVersion 100) and hands the marker (written at 90) to the index
// before run-a (95). Seeing the marker then proves nothing: the round must
// not end until an event past the list (the marker written again, 101),
// by which time run-a is indexed.
func TestReplayedMarkerIsNotEnough(t *testing.T) {
	x := NewRunIndex()
	synced := func() bool { return true }
	x.synced.Store(&synced)
	obj := func(name, rv, team string) *jobsv1alpha1.JobRun {
		return testrun.Make("ns", name).ResourceVersion(rv).JobType("demo_sync").Team(team).Project("p").CreatedAt(time.Now()).Obj()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	x.listed("100")
	x.set(obj(jobsv1alpha1.ConsistencyMarkerName, "90", ""))
	if err := x.waitSeen(ctx, 90); !errors.Is(err, errReplaying) {
		t.Fatalf("the marker seen in the replay of a list: %v, want errReplaying (run-a is not indexed yet)", err)
	}
	x.set(obj("run-a", "95", "t1"))
	if err := x.waitSeen(ctx, 90); !errors.Is(err, errReplaying) {
		t.Fatalf("within the replay: %v, want errReplaying", err)
	}
	done := make(chan error, 1)
	go func() { done <- x.waitSeen(ctx, 101) }()
	x.set(obj(jobsv1alpha1.ConsistencyMarkerName, "101", ""))
	if err := <-done; err != nil {
		t.Fatalf("the marker written after the list: %v", err)
	}
	if runs, _ := x.list(RunQuery{Namespace: "ns", TeamID: "t1", Limit: 10}); len(runs) != 1 {
		t.Errorf("%d runs indexed, want run-a", len(runs))
	}
}

// TestListsAreNoted: the JobRun ListWatch the index wraps tells it the
// resourceVersion of a list, and of a watch-list's initial-events-end
// bookmark, before the informer gets them.
func TestListsAreNoted(t *testing.T) {
	x := NewRunIndex()
	fw := watch.NewFake()
	lw := x.noteLists(&toolscache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return &jobsv1alpha1.JobRunList{ListMeta: metav1.ListMeta{ResourceVersion: "100"}}, nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) { return fw, nil },
	})
	replaying := func() uint64 {
		x.progressMu.Lock()
		defer x.progressMu.Unlock()
		return x.replaying
	}
	if _, err := lw.ListWithContext(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := replaying(); got != 100 {
		t.Errorf("after a list at 100: replaying %d", got)
	}
	w, err := lw.WatchWithContext(context.Background(), metav1.ListOptions{SendInitialEvents: ptr.To(true)})
	if err != nil {
		t.Fatal(err)
	}
	go fw.Action(watch.Bookmark, &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "200",
		Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}})
	ev := <-w.ResultChan()
	if ev.Type != watch.Bookmark || replaying() != 200 {
		t.Errorf("after a watch-list's end bookmark at 200: event %s, replaying %d", ev.Type, replaying())
	}
	w.Stop()
	x.set(&jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "r", ResourceVersion: "201"}})
	if got := replaying(); got != 0 {
		t.Errorf("after an event past the list: replaying %d, want 0", got)
	}
}
