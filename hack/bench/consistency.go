package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"jobrun.dev/jobrun/internal/benchstat"
)

// readLoad sends consistent reads from 200 clients, lists and then gets,
// and counts what they cost the API server: the REST API's consistency
// rounds (one marker write each) and all of the manager's API-server
// requests, per 1,000 reads. Before consistent reads a list cost none (and
// could miss runs) and a get one GET.
func (b *bench) readLoad(label string) error {
	status, body, err := b.do(http.MethodGet, "/v1/teams/bench-list/jobs?limit=200", nil)
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("listing ids for gets: %d %v", status, err)
	}
	var page struct {
		JobRuns []struct {
			ID string `json:"id"`
		} `json:"job_runs"`
	}
	if err := json.Unmarshal(body, &page); err != nil || len(page.JobRuns) == 0 {
		return fmt.Errorf("listing ids for gets: %v", err)
	}
	for _, x := range []struct {
		name, today string
		path        func(w, i int) string
	}{
		{"list (first page)", "0, not read-your-writes", func(w, i int) string { return "/v1/teams/bench-list/jobs" }},
		{"get", "1,000", func(w, i int) string { return "/v1/jobs/" + page.JobRuns[(w*7+i)%len(page.JobRuns)].ID }},
	} {
		const clients, seconds = 200, 10
		rounds0, err := b.metricSum("jobrun_api_consistency_rounds_total")
		if err != nil {
			return err
		}
		requests0, err := b.metricSum("rest_client_requests_total")
		if err != nil {
			return err
		}
		var mu sync.Mutex
		var lat []time.Duration
		var failed atomic.Int64
		end := time.Now().Add(seconds * time.Second)
		var wg sync.WaitGroup
		for w := range clients {
			wg.Go(func() {
				for i := 0; time.Now().Before(end); i++ {
					start := time.Now()
					status, _, err := b.do(http.MethodGet, x.path(w, i), nil)
					d := time.Since(start)
					if err != nil || status != http.StatusOK {
						failed.Add(1)
						continue
					}
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		rounds1, _ := b.metricSum("jobrun_api_consistency_rounds_total")
		requests1, _ := b.metricSum("rest_client_requests_total")
		n := float64(len(lat))
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s: reads/s from %d clients, %s (%d failed)", x.name, clients, label, failed.Load()), Value: n / seconds, Unit: "req/s"})
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s under load p50 / p99 = %.1f ms /", x.name, benchstat.Millis(benchstat.Percentile(lat, 0.5))), Value: benchstat.Millis(benchstat.Percentile(lat, 0.99)), Unit: "ms"})
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s: consistency rounds (marker writes) per 1,000 (before: %s)", x.name, x.today), Value: (rounds1 - rounds0) / n * 1000, Unit: "req"})
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s: all manager API-server requests per 1,000", x.name), Value: (requests1 - requests0) / n * 1000, Unit: "req"})
	}
	return nil
}
