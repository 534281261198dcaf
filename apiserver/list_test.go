package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

func TestParseListQuery(t *testing.T) {
	now := time.Date(2024, 1, 15, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		query string
		want  string // in the error; "" for valid
	}{
		{"", ""},
		{"status=running&job_type=revenuecat_sync&project_id=p1&since=7d&until=2024-01-15T11:00:00.000Z&limit=200", ""},
		{"since=30m", ""},
		{"since=2024-01-15", ""},
		{"cursor=2024-01-15T10:30:00.000Z|abc", ""},
		{"status=done", `invalid status "done"`},
		{"job_type=Bad!", `invalid job_type "Bad!"`},
		{"limit=0", `invalid limit "0"`},
		{"limit=201", `invalid limit "201"`},
		{"limit=ten", `invalid limit "ten"`},
		{"since=yesterday", `invalid since "yesterday"`},
		{"until=5x", `invalid until "5x"`},
		{"since=1h&until=2h", "since must be before until"},
		{"cursor=nonsense", `invalid cursor "nonsense"`},
		{"cursor=2024-01-15T10:30:00.000Z|", `invalid cursor`},
		{"sort=asc", `unknown query parameter "sort"`},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/v1/teams/t/jobs?"+strings.ReplaceAll(tt.query, "|", "%7C"), nil)
			_, err := parseListQuery(r, now)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
	q, _ := parseListQuery(httptest.NewRequest(http.MethodGet, "/x?since=7d", nil), now)
	if !q.Since.Equal(now.Add(-7*24*time.Hour)) || q.Limit != 50 {
		t.Errorf("since=7d -> %v, limit %d", q.Since, q.Limit)
	}
}

// runAt creates a run of team with createdAt at.
func (a *api) runAt(name, team, project, jobType string, at time.Time, phase jobsv1alpha1.JobRunPhase) {
	a.t.Helper()
	jr := testrun.Make(a.ns, name).JobType(jobType).Team(team).Project(project).TriggeredBy("manual:user:u").CreatedAt(at).Obj()
	if err := env.Client.Create(context.Background(), jr); err != nil {
		a.t.Fatal(err)
	}
	if phase != "" {
		jr.Status.Phase = phase
		if err := env.Client.Status().Update(context.Background(), jr); err != nil {
			a.t.Fatal(err)
		}
	}
}

// list GETs one page and returns the ids, cursor and has_more.
func (a *api) list(tok, team, query string) (int, []string, string, bool, map[string]any) {
	a.t.Helper()
	status, body := a.do(http.MethodGet, "/v1/teams/"+team+"/jobs?"+query, tok, nil)
	var ids []string
	runs, _ := body["job_runs"].([]any)
	for _, r := range runs {
		ids = append(ids, r.(map[string]any)["id"].(string))
	}
	cursor, _ := body["cursor"].(string)
	hasMore, _ := body["has_more"].(bool)
	return status, ids, cursor, hasMore, body
}

// waitListed waits until team-1's list, every page of it, shows each run
// of want (id to status) in that status. The list is served from the cache,
// which catches up with a write a moment after it: a test that lists what it
// just wrote waits here first.
func (a *api) waitListed(want map[string]string) {
	a.t.Helper()
	tok := userToken(a.t)
	testenv.Eventually(a.t, time.Minute, func(context.Context) error {
		listed, q := map[string]string{}, "limit=200"
		for {
			status, body := a.get("/v1/teams/team-1/jobs?"+q, tok)
			if status != http.StatusOK {
				return fmt.Errorf("list: %d %v", status, body)
			}
			runs, _ := body["job_runs"].([]any)
			for _, r := range runs {
				run, _ := r.(map[string]any)
				id, _ := run["id"].(string)
				listed[id], _ = run["status"].(string)
			}
			if hasMore, _ := body["has_more"].(bool); !hasMore {
				break
			}
			cursor, _ := body["cursor"].(string)
			q = "limit=200&cursor=" + url.QueryEscape(cursor)
		}
		for id, status := range want {
			if listed[id] != status {
				return fmt.Errorf("the list shows %d runs; run %s is %q in it, want %q", len(listed), id, listed[id], status)
			}
		}
		return nil
	})
}

func TestList(t *testing.T) {
	a := newAPI(t)
	base := time.Date(2024, 1, 15, 10, 0, 0, 0, time.UTC)
	a.runAt("r1", "team-1", "p1", "revenuecat_sync", base.Add(1*time.Minute), jobsv1alpha1.JobRunCompleted)
	a.runAt("r2", "team-1", "p2", "revenuecat_sync", base.Add(2*time.Minute), jobsv1alpha1.JobRunRunning)
	a.runAt("r3", "team-1", "p1", "cleanup_project", base.Add(3*time.Minute), jobsv1alpha1.JobRunFailed)
	a.runAt("r4", "team-1", "p1", "revenuecat_sync", base.Add(4*time.Minute), "")
	a.runAt("other-team", "team-2", "px", "revenuecat_sync", base.Add(5*time.Minute), "")
	a.runAt("system", "", "", "maintenance", base.Add(6*time.Minute), "")
	a.waitListed(map[string]string{"r1": "completed", "r2": "running", "r3": "failed", "r4": "pending"})

	tok := userToken(t)
	tests := []struct {
		query string
		want  []string
	}{
		{"", []string{"r4", "r3", "r2", "r1"}},
		{"status=running", []string{"r2"}},
		{"status=pending", []string{"r4"}},
		{"job_type=revenuecat_sync", []string{"r4", "r2", "r1"}},
		{"project_id=p1", []string{"r4", "r3", "r1"}},
		{"project_id=p1&job_type=revenuecat_sync&status=completed", []string{"r1"}},
		{"since=2024-01-15T10:02:00Z", []string{"r4", "r3", "r2"}},
		{"until=2024-01-15T10:02:00Z", []string{"r1"}},
		{"since=2024-01-15T10:02:00Z&until=2024-01-15T10:04:00Z", []string{"r3", "r2"}},
		{"limit=2", []string{"r4", "r3"}},
		{"project_id=nope", nil},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			status, ids, _, _, body := a.list(tok, "team-1", tt.query)
			if status != http.StatusOK || strings.Join(ids, ",") != strings.Join(tt.want, ",") {
				t.Errorf("%d %v, want %v (%v)", status, ids, tt.want, body)
			}
		})
	}

	_, _, cursor, hasMore, body := a.list(tok, "team-1", "limit=2")
	if cursor != "2024-01-15T10:03:00.000Z|r3" || !hasMore {
		t.Errorf("cursor %q has_more %v (%v)", cursor, hasMore, body)
	}
	_, ids, _, hasMore, _ := a.list(tok, "team-1", "limit=2&cursor="+url.QueryEscape(cursor))
	if strings.Join(ids, ",") != "r2,r1" || hasMore {
		t.Errorf("second page %v has_more %v", ids, hasMore)
	}
	if _, ids, cursor, hasMore, body := a.list(tok, "team-1", "project_id=nope"); ids != nil || cursor != "" || hasMore || body["cursor"] != nil {
		t.Errorf("empty page: %v", body)
	}

	noRead := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["permissions"] = []string{PermJobsWrite} })
	if status, _, _, _, body := a.list(noRead, "team-1", ""); status != http.StatusForbidden {
		t.Errorf("without jobs:read: %d %v", status, body)
	}
	if status, _, _, _, body := a.list(tok, "team-2", ""); status != http.StatusNotFound {
		t.Errorf("other team: %d %v", status, body)
	}
	if status, _, _, _, body := a.list(tok, "team-1", "limit=500"); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "limit") {
		t.Errorf("bad limit: %d %v", status, body)
	}
}

// TestPaginationNeverSkipsOrRepeats pages through runs that share
// milliseconds while new runs keep arriving.
func TestPaginationNeverSkipsOrRepeats(t *testing.T) {
	a := newAPI(t)
	base := time.Date(2024, 1, 15, 10, 0, 0, 0, time.UTC)
	const n = 2000
	want := map[string]string{}
	names := make([]string, n)
	for i := range names {
		names[i] = uuid.NewString()
		want[names[i]] = "pending"
	}
	// 40 distinct milliseconds: 50 runs share each.
	createRuns(t, n, func(i int) *jobsv1alpha1.JobRun {
		return testrun.Make(a.ns, names[i]).JobType("revenuecat_sync").Team("team-1").Project("p1").TriggeredBy("manual:user:u").
			CreatedAt(base.Add(time.Duration(i%40) * time.Millisecond)).Obj()
	})
	a.waitListed(want)

	tok := userToken(t)
	seen := map[string]bool{}
	cursor, pages := "", 0
	for {
		q := "limit=47"
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		status, ids, next, hasMore, body := a.list(tok, "team-1", q)
		if status != http.StatusOK {
			t.Fatalf("page %d: %d %v", pages, status, body)
		}
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("run %s repeated on page %d", id, pages)
			}
			seen[id] = true
		}
		pages++
		// New runs arrive while the caller pages: newer than everything,
		// they belong before the first page and must not disturb the rest.
		a.runAt(uuid.NewString(), "team-1", "p1", "revenuecat_sync", base.Add(time.Hour), "")
		if !hasMore {
			break
		}
		cursor = next
	}
	for _, id := range names {
		if !seen[id] {
			t.Errorf("run %s skipped", id)
		}
	}
	if len(seen) != n {
		t.Errorf("paged %d runs in %d pages, want the %d that existed", len(seen), pages, n)
	}
}

// createRuns creates n runs, build(i) each, with 16 workers.
func createRuns(tb testing.TB, n int, build func(i int) *jobsv1alpha1.JobRun) {
	tb.Helper()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := env.Client.Create(context.Background(), build(i)); err != nil {
					tb.Error(err) // not Fatal: this is not the test's goroutine
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}
