package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/benchstat"
)

// lists fills the team bench-list to each size and measures list latency
// through the REST API against a label-selected LIST from the API server,
// and the API-only manager's resident memory.
func (b *bench) lists(ctx context.Context, sizes []int) error {
	rssBase, err := b.rss()
	if err != nil {
		return err
	}
	heapBase, err := b.liveHeap()
	if err != nil {
		return err
	}
	have := 0
	base := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Millisecond)
	for _, size := range sizes {
		b.log("list: creating runs up to %d", size)
		from := have
		if err := parallel(32, size-from, func(i int) error {
			k := from + i
			at := metav1.NewMicroTime(base.Add(time.Duration(k) * time.Second))
			project := fmt.Sprintf("lp-%03d", k%100)
			return b.c.Create(ctx, &jobsv1alpha1.JobRun{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "l-", Labels: map[string]string{jobsv1alpha1.LabelTeam: "bench-list", jobsv1alpha1.LabelProject: project, jobsv1alpha1.LabelJobType: "demo_sync"}},
				Spec:       jobsv1alpha1.JobRunSpec{JobType: "demo_sync", TeamID: "bench-list", ProjectID: project, TriggeredBy: "manual:user:bench", CreatedAt: &at},
			})
		}); err != nil {
			return err
		}
		have = size
		// The cache has caught up when the oldest run is listed (until is
		// exclusive).
		if err := b.waitListed(base); err != nil {
			return err
		}
		time.Sleep(2 * time.Second)

		label := fmt.Sprintf("%dk runs", size/1000)
		first := b.latency("/v1/teams/bench-list/jobs", 300)
		filtered := b.latency("/v1/teams/bench-list/jobs?project_id=lp-042&job_type=demo_sync", 300)
		deep, err := b.deepPage(100)
		if err != nil {
			return err
		}
		deepLat := b.latency(deep, 300)
		ceiling := b.directList(ctx, 300)
		for _, x := range []struct {
			name string
			d    []time.Duration
		}{{"first page", first}, {"project+type filter, first page", filtered}, {"page 100 via cursor", deepLat}} {
			p99 := benchstat.Millis(benchstat.Percentile(x.d, 0.99))
			b.add(Figure{Scenario: "list", Name: fmt.Sprintf("GET jobs %s p50, %s", x.name, label), Value: benchstat.Millis(benchstat.Percentile(x.d, 0.5)), Unit: "ms", Ceiling: benchstat.Millis(benchstat.Percentile(ceiling, 0.5))})
			f := Figure{Scenario: "list", Name: fmt.Sprintf("GET jobs %s p99, %s", x.name, label), Value: p99, Unit: "ms", Ceiling: benchstat.Millis(benchstat.Percentile(ceiling, 0.99))}
			if size >= 50000 {
				f.Target, f.Met = "p99 < 5 ms at 50k", met(p99 < 5)
			}
			b.add(f)
		}
		if size == sizes[len(sizes)-1] {
			if err := b.readLoad(label); err != nil {
				return err
			}
		}
		rss, err := b.rss()
		if err != nil {
			return err
		}
		b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("API-only manager RSS with %s cached (%.0f MiB before)", label, rssBase), Value: rss, Unit: "MiB"})
		b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("RSS per 10,000 cached runs (%s)", label), Value: (rss - rssBase) / (float64(size) / 10000), Unit: "MiB"})
		heap, err := b.liveHeap()
		if err != nil {
			return err
		}
		b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("live Go heap (after a GC) with %s cached (%.0f MiB before)", label, heapBase/(1<<20)), Value: heap / (1 << 20), Unit: "MiB"})
		b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("live heap per cached run (%s)", label), Value: (heap - heapBase) / float64(size), Unit: "bytes", Target: "<= 2 KiB", Met: met((heap-heapBase)/float64(size) <= 2048)})
	}
	return nil
}

func (b *bench) waitListed(oldest time.Time) error {
	if !waitFor(5*time.Minute, 500*time.Millisecond, func() bool {
		status, body, err := b.do(http.MethodGet, "/v1/teams/bench-list/jobs?limit=1&until="+oldest.Add(time.Millisecond).UTC().Format("2006-01-02T15:04:05.000Z"), nil)
		return err == nil && status == http.StatusOK && bytes.Contains(body, []byte(`"id"`))
	}) {
		return fmt.Errorf("the REST API's cache did not get the runs within 5 minutes")
	}
	return nil
}

func (b *bench) latency(path string, n int) []time.Duration {
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		status, _, err := b.do(http.MethodGet, path, nil)
		if err != nil || status != http.StatusOK {
			b.log("GET %s: %d %v", path, status, err)
			continue
		}
		out = append(out, time.Since(start))
	}
	return out
}

// deepPage follows the cursor to page n and returns that page's path.
func (b *bench) deepPage(n int) (string, error) {
	path := "/v1/teams/bench-list/jobs"
	for range n - 1 {
		status, body, err := b.do(http.MethodGet, path, nil)
		if err != nil || status != http.StatusOK {
			return "", fmt.Errorf("paging: %d %v", status, err)
		}
		var page struct {
			Cursor string `json:"cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil || page.Cursor == "" {
			return "", fmt.Errorf("paging: no cursor")
		}
		path = "/v1/teams/bench-list/jobs?cursor=" + page.Cursor
	}
	return path, nil
}

// directList times a label-selected LIST of 50 runs from the API server.
func (b *bench) directList(ctx context.Context, n int) []time.Duration {
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		l := &jobsv1alpha1.JobRunList{}
		if err := b.c.List(ctx, l, client.InNamespace(ns), client.MatchingLabels{jobsv1alpha1.LabelTeam: "bench-list"}, client.Limit(50)); err != nil {
			b.log("LIST: %v", err)
			continue
		}
		out = append(out, time.Since(start))
	}
	return out
}
