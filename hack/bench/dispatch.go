package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
// was triggered, its pod created, admitted by Kueue (without Kueue: its pod
// created), it ran, it ended.
type dispatched struct {
	start                                            time.Time
	triggeredAt, podAt, admittedAt, runningAt, endAt map[string]time.Time
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
	wctx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	t, err := b.trackRuns(wctx)
	if err != nil {
		return nil, err
	}

	d := &dispatched{triggeredAt: make(map[string]time.Time, n), podAt: map[string]time.Time{}, admittedAt: map[string]time.Time{}, runningAt: map[string]time.Time{}, endAt: map[string]time.Time{}}
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
	ids := slices.Collect(maps.Keys(d.triggeredAt))
	var done int
	if !waitFor(10*time.Minute, 200*time.Millisecond, func() bool {
		done = t.count(ids, func(r runSeen) bool { return !r.end.IsZero() || podsOnly && !r.pod.IsZero() })
		return done >= n
	}) {
		return nil, fmt.Errorf("dispatch: only %d of %d runs ended within 10 minutes", done, n)
	}
	seen := t.snapshot()
	for _, id := range ids {
		r := seen[id]
		setSeen(d.podAt, id, r.pod)
		setSeen(d.admittedAt, id, r.admitted)
		setSeen(d.runningAt, id, r.running)
		setSeen(d.endAt, id, r.end)
		if r.failed {
			d.failed++
		}
	}
	return d, nil
}

// setSeen records at as id's time in m if it was seen (not zero).
func setSeen(m map[string]time.Time, id string, at time.Time) {
	if !at.IsZero() {
		m[id] = at
	}
}
