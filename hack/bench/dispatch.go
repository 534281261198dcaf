package main

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/watch"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/benchstat"
)

// dispatch triggers demo_sync runs (one item, no wait) through the REST API
// at 50/s and times, from a watch in this process, trigger -> pod created,
// trigger -> running, and the completion rate.
func (b *bench) dispatch(ctx context.Context, seconds int, scenario string) error {
	b.log("%s: 50 triggers/s for %d s", scenario, seconds)
	n := 50 * seconds
	// Without a node (the controller scenario) no run ends: its pods are
	// what it waits for.
	d, err := b.triggerAtRate(ctx, n, scenario == "controller")
	if err != nil {
		return err
	}
	var toPod, toRunning []time.Duration
	var last time.Time
	for id, at := range d.triggeredAt {
		if p, ok := d.podAt[id]; ok {
			toPod = append(toPod, p.Sub(at))
		}
		if r, ok := d.runningAt[id]; ok {
			toRunning = append(toRunning, r.Sub(at))
		}
		if d.endAt[id].After(last) {
			last = d.endAt[id]
		}
	}
	b.add(Figure{Scenario: scenario, Name: "trigger -> pod created p50 (50 triggers/s)", Value: benchstat.Millis(benchstat.Percentile(toPod, 0.5)), Unit: "ms"})
	b.add(Figure{Scenario: scenario, Name: "trigger -> pod created p99", Value: benchstat.Millis(benchstat.Percentile(toPod, 0.99)), Unit: "ms"})
	if scenario == "controller" {
		return nil
	}
	b.add(Figure{Scenario: "dispatch", Name: "trigger -> running p50", Value: benchstat.Millis(benchstat.Percentile(toRunning, 0.5)), Unit: "ms"})
	b.add(Figure{Scenario: "dispatch", Name: "trigger -> running p99", Value: benchstat.Millis(benchstat.Percentile(toRunning, 0.99)), Unit: "ms"})
	rate := float64(n) / last.Sub(d.start).Seconds()
	b.add(Figure{Scenario: "end-to-end", Name: fmt.Sprintf("demo_sync runs completed per second (%d runs, %d not completed)", n, d.failed), Value: rate, Unit: "runs/s", Ceiling: 50, Target: "the trigger rate (50/s)", Met: met(rate >= 49)})
	return nil
}

// dispatched is what triggerAtRate saw of its runs, by run id: when each
// was triggered, its pod created, it ran, it ended.
type dispatched struct {
	start                                time.Time
	triggeredAt, podAt, runningAt, endAt map[string]time.Time
	// failed is how many ended other than completed.
	failed int64
}

// triggerAtRate triggers n demo_sync runs (one item, no wait) through the
// REST API at 50/s, each for a bench project of its own, and waits until
// every run ended (podsOnly: until every run has a pod), timing each step
// from a watch in this process.
func (b *bench) triggerAtRate(ctx context.Context, n int, podsOnly bool) (*dispatched, error) {
	projects, err := b.projects.take(n)
	if err != nil {
		return nil, err
	}
	// The API server ends a watch now and then under a burst of pod
	// events: watchAll watches again from the last event.
	wctx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	var mu sync.Mutex
	d := &dispatched{triggeredAt: make(map[string]time.Time, n), podAt: map[string]time.Time{}, runningAt: map[string]time.Time{}, endAt: map[string]time.Time{}}
	var failed atomic.Int64
	if _, err := b.watchAll(wctx, &corev1.PodList{}, func(ev watch.Event) {
		if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type == watch.Added {
			run := p.Labels[jobsv1alpha1.LabelRun]
			mu.Lock()
			if _, seen := d.podAt[run]; !seen {
				d.podAt[run] = time.Now()
			}
			mu.Unlock()
		}
	}); err != nil {
		return nil, err
	}
	if _, err := b.watchAll(wctx, &jobsv1alpha1.JobRunList{}, func(ev watch.Event) {
		jr, ok := ev.Object.(*jobsv1alpha1.JobRun)
		if !ok {
			return
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		phase := jr.CurrentPhase()
		if _, seen := d.runningAt[jr.Name]; !seen && (phase == jobsv1alpha1.JobRunRunning || phase.IsTerminal() && jr.Status.StartedAt != nil) {
			d.runningAt[jr.Name] = now
		}
		if _, seen := d.endAt[jr.Name]; !seen && phase.IsTerminal() {
			d.endAt[jr.Name] = now
			if phase != jobsv1alpha1.JobRunCompleted {
				failed.Add(1)
			}
		}
	}); err != nil {
		return nil, err
	}

	var tmu sync.Mutex
	var terr atomic.Value
	d.start = time.Now()
	benchstat.AtRate(20*time.Millisecond, n, func(i int) {
		at := time.Now()
		id, err := b.trigger(projects, i, map[string]any{"items": 1, "item_ms": 0})
		if err != nil {
			terr.Store(err)
			return
		}
		tmu.Lock()
		d.triggeredAt[id] = at
		tmu.Unlock()
	})
	if err, _ := terr.Load().(error); err != nil {
		return nil, err
	}
	var done int
	if !waitFor(10*time.Minute, 200*time.Millisecond, func() bool {
		mu.Lock()
		defer mu.Unlock()
		done = len(d.endAt)
		if podsOnly {
			done = len(d.podAt)
		}
		return done >= n
	}) {
		return nil, fmt.Errorf("dispatch: only %d of %d runs ended within 10 minutes", done, n)
	}
	// The watches' goroutines may still write: hand out copies.
	mu.Lock()
	defer mu.Unlock()
	d.podAt, d.runningAt, d.endAt = maps.Clone(d.podAt), maps.Clone(d.runningAt), maps.Clone(d.endAt)
	d.failed = failed.Load()
	return d, nil
}
