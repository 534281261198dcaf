package apiserver

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testrun"
)

// BenchmarkList10000 measures GET /v1/teams/{teamId}/jobs (first page, and
// a filtered page deep in the list) with 10,000 runs in one team, through
// HTTP, from the indexed cache. It reports p50 and p99 besides ns/op.
//
//	go test -run XXX -bench List10000 -benchtime 200x ./apiserver
func BenchmarkList10000(b *testing.B) {
	a := newAPI(b)
	const n = 10000
	base := time.Date(2024, 1, 15, 10, 0, 0, 0, time.UTC)
	want := map[string]string{}
	names := make([]string, n)
	for i := range names {
		names[i] = uuid.NewString()
		want[names[i]] = "pending"
	}
	createRuns(b, n, func(i int) *jobsv1alpha1.JobRun {
		return testrun.Make(a.ns, names[i]).JobType([]string{"revenuecat_sync", "cleanup_project"}[i%2]).Team("team-1").
			Project(fmt.Sprintf("p%d", i%10)).TriggeredBy("manual:user:u").CreatedAt(base.Add(time.Duration(i) * time.Second)).Obj()
	})
	a.waitListed(want)
	tok := userToken(b)

	for _, q := range []string{"limit=50", "limit=50&project_id=p3&status=pending&since=" + url.QueryEscape(base.Add(time.Hour).Format(time.RFC3339))} {
		b.Run(q, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				status, body := a.get("/v1/teams/team-1/jobs?"+q, tok)
				lat = append(lat, time.Since(start))
				if status != http.StatusOK {
					b.Fatalf("%d %v", status, body)
				}
			}
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
