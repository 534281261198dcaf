package apiserver

import (
	"context"
	"maps"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testrun"
)

// statsRun creates a run of team created at at, in phase, that ran for took
// (if not 0) from 5 s after its creation.
func (a *api) statsRun(name, team, jobType string, at time.Time, phase jobsv1alpha1.JobRunPhase, took time.Duration) {
	a.t.Helper()
	jr := testrun.Make(a.ns, name).JobType(jobType).Team(team).Project("project-1").TriggeredBy("manual:user:u").CreatedAt(at).Obj()
	if err := env.Client.Create(context.Background(), jr); err != nil {
		a.t.Fatal(err)
	}
	jr.Status.Phase = phase
	if took != 0 {
		started := metav1.NewMicroTime(at.Add(5 * time.Second))
		completed := metav1.NewMicroTime(started.Add(took))
		jr.Status.StartedAt, jr.Status.CompletedAt = &started, &completed
	}
	if err := env.Client.Status().Update(context.Background(), jr); err != nil {
		a.t.Fatal(err)
	}
}

// shownStats is what a stats page shows of one job type: its totals, its
// runs and failures by hour (UTC start), its percentiles in ms.
type shownStats struct {
	runs, failed int
	hours        map[string][2]int
	percentiles  map[int]int64
}

var (
	statsSection    = regexp.MustCompile(`(?s)<section class="job-type" data-job-type="([^"]+)".*?</section>`)
	statsTotal      = regexp.MustCompile(`data-stat="(runs|failed)">(\d+)<`)
	statsHour       = regexp.MustCompile(`<tr data-hour="([^"]+)"><td><time>[^<]*</time></td><td>(\d+)</td><td>(\d+)</td></tr>`)
	statsPercentile = regexp.MustCompile(`<tr data-percentile="(\d+)"><td>p\d+</td><td data-ms="(\d+)">`)
)

// parseStats reads a stats page: job type to what it shows.
func parseStats(t *testing.T, body string) map[string]shownStats {
	t.Helper()
	out := map[string]shownStats{}
	for _, sec := range statsSection.FindAllStringSubmatch(body, -1) {
		s := shownStats{hours: map[string][2]int{}, percentiles: map[int]int64{}}
		for _, m := range statsTotal.FindAllStringSubmatch(sec[0], -1) {
			n, _ := strconv.Atoi(m[2])
			if m[1] == "runs" {
				s.runs = n
			} else {
				s.failed = n
			}
		}
		for _, m := range statsHour.FindAllStringSubmatch(sec[0], -1) {
			runs, _ := strconv.Atoi(m[2])
			failed, _ := strconv.Atoi(m[3])
			s.hours[m[1]] = [2]int{runs, failed}
		}
		for _, m := range statsPercentile.FindAllStringSubmatch(sec[0], -1) {
			p, _ := strconv.Atoi(m[1])
			ms, _ := strconv.ParseInt(m[2], 10, 64)
			s.percentiles[p] = ms
		}
		if len(s.hours) != statsHours {
			t.Fatalf("job type %s shows %d hours, want %d\n%s", sec[1], len(s.hours), statsHours, sec[0])
		}
		out[sec[1]] = s
	}
	return out
}

// TestConsoleStats: per job type, the team's runs and failures per hour of
// the last day and the durations' percentiles, counted from what the list
// endpoint serves: only the team's runs, only the day's.
func TestConsoleStats(t *testing.T) {
	now := time.Date(2026, 11, 29, 15, 40, 0, 0, time.UTC)
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{now: func() time.Time { return now }})
	start := time.Date(2026, 11, 28, 16, 0, 0, 0, time.UTC) // the first of the 24 hours
	hour := func(i int) string { return formatTime(start.Add(time.Duration(i) * time.Hour)) }

	a.statsRun("sync-before", "team-1", "sync", start.Add(-time.Millisecond), jobsv1alpha1.JobRunFailed, time.Minute)
	a.statsRun("sync-first", "team-1", "sync", start, jobsv1alpha1.JobRunPending, 0)
	a.statsRun("sync-cancelled", "team-1", "sync", start.Add(5*time.Hour+time.Minute), jobsv1alpha1.JobRunCancelled, time.Hour)
	a.statsRun("sync-a", "team-1", "sync", now.Add(-30*time.Minute), jobsv1alpha1.JobRunCompleted, time.Second)
	a.statsRun("sync-b", "team-1", "sync", now.Add(-20*time.Minute), jobsv1alpha1.JobRunCompleted, 2*time.Second)
	a.statsRun("sync-c", "team-1", "sync", now.Add(-10*time.Minute), jobsv1alpha1.JobRunFailed, 10*time.Second)
	a.statsRun("cleanup-a", "team-1", "cleanup", start.Add(10*time.Hour), jobsv1alpha1.JobRunFailed, 0)
	a.statsRun("cleanup-b", "team-1", "cleanup", start.Add(10*time.Hour+59*time.Minute), jobsv1alpha1.JobRunRunning, 0)
	a.statsRun("theirs", "team-2", "sync", now.Add(-5*time.Minute), jobsv1alpha1.JobRunFailed, time.Hour)
	a.statsRun("theirs-only", "team-2", "report", now.Add(-5*time.Minute), jobsv1alpha1.JobRunCompleted, time.Hour)

	b := a.browser()
	b.signIn(userToken(t))
	resp := b.get("/ui/teams/team-1/stats")
	if resp.status != http.StatusOK {
		t.Fatalf("the stats page: %d\n%s", resp.status, resp.body)
	}
	got := parseStats(t, resp.body)
	if len(got) != 2 {
		t.Fatalf("job types shown: %v, want cleanup and sync (not team-2's report)", got)
	}
	sync, cleanup := got["sync"], got["cleanup"]
	if sync.runs != 5 || sync.failed != 1 {
		t.Errorf("sync: %d runs, %d failed; want 5 and 1 (the run before the day not counted, team-2's not)", sync.runs, sync.failed)
	}
	for i, want := range map[int][2]int{0: {1, 0}, 5: {1, 0}, 23: {3, 1}, 10: {0, 0}} {
		if sync.hours[hour(i)] != want {
			t.Errorf("sync at %s: %v, want %v (runs, failed)", hour(i), sync.hours[hour(i)], want)
		}
	}
	// Completed and failed runs are timed (1 s, 2 s, 10 s); the cancelled
	// one is not. Nearest rank: p50 the 2nd, p90 and p99 the 3rd.
	if want := map[int]int64{50: 2000, 90: 10000, 99: 10000}; !maps.Equal(sync.percentiles, want) {
		t.Errorf("sync's percentiles: %v, want %v", sync.percentiles, want)
	}
	if cleanup.runs != 2 || cleanup.failed != 1 || cleanup.hours[hour(10)] != [2]int{2, 1} || len(cleanup.percentiles) != 0 {
		t.Errorf("cleanup: %+v, want 2 runs, 1 failed, both at %s, no durations", cleanup, hour(10))
	}
	if !strings.Contains(resp.body, `aria-label="Runs of sync per hour over the last day: 5 in all, 1 failed, 3 in the busiest hour"`) ||
		!strings.Contains(resp.body, `aria-label="Durations of sync: p50 2.0s p90 10.0s p99 10.0s"`) {
		t.Errorf("the charts are not labelled with what they show\n%s", resp.body)
	}

	one := b.get("/ui/teams/team-1/stats?job_type=cleanup")
	if got := parseStats(t, one.body); one.status != http.StatusOK || len(got) != 1 || got["cleanup"].runs != 2 {
		t.Errorf("job_type=cleanup: %d, %v", one.status, got)
	}
	if resp := b.get("/ui/teams/team-1/stats?job_type=Bad-Type"); resp.status != http.StatusBadRequest || !strings.Contains(resp.body, "invalid job_type") {
		t.Errorf("job_type=Bad-Type: %d, want 400\n%s", resp.status, resp.body)
	}
	if resp := b.get("/ui/teams/team-2/stats"); resp.status != http.StatusNotFound || strings.Contains(resp.body, "report") {
		t.Errorf("another team's stats: %d, want 404 without its job types\n%s", resp.status, resp.body)
	}

	// Past maxRuns, only the newest count, and the page says so.
	d, err := a.server.teamStats(context.Background(), "team-1", "sync", now, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Truncated || len(d.JobTypes) != 1 || d.JobTypes[0].Runs != 2 || d.JobTypes[0].Hours[23].Runs != 2 {
		t.Errorf("at most 2 runs: truncated %v, %+v; want the 2 newest, truncated", d.Truncated, d.JobTypes)
	}
}
