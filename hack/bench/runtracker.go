package main

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/watch"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/kueue"
)

// runSeen is what the bench's watches saw of one run, each time on this
// process's clock when the event arrived (zero: not seen yet).
type runSeen struct {
	// team and schedule are the run's team and JobSchedule labels.
	team, schedule string
	// created is the run's spec.createdAt (the manager's or REST API's
	// clock, the same machine's).
	created time.Time
	// pod is when its first pod was seen, admitted when a pod of it was
	// first seen without Kueue's scheduling gate (jobrun creates a run's
	// pod once Kueue admitted its Workload: with or without Kueue, the
	// pod's creation; gates were Kueue's plain-Pod integration's), running when the run was first seen running (or ended
	// having started), end when it was first seen in a final phase.
	pod, admitted, running, end time.Time
	// failed is whether it ended other than completed.
	failed bool
}

// runTracker watches the namespace's pods and runs and records, per run
// name, what runSeen holds.
type runTracker struct {
	mu   sync.Mutex
	runs map[string]*runSeen
}

// trackRuns starts a runTracker; its watches end with ctx. The API server
// ends a watch now and then under a burst of pod events: watchAll watches
// again from the last event.
func (b *bench) trackRuns(ctx context.Context) (*runTracker, error) {
	t := &runTracker{runs: map[string]*runSeen{}}
	if _, err := b.watchAll(ctx, &corev1.PodList{}, func(ev watch.Event) {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || ev.Type == watch.Deleted || p.Labels[jobsv1alpha1.LabelRun] == "" {
			return
		}
		now := time.Now()
		gated := slices.ContainsFunc(p.Spec.SchedulingGates, func(g corev1.PodSchedulingGate) bool { return g.Name == kueue.AdmissionGate })
		t.mu.Lock()
		defer t.mu.Unlock()
		r := t.run(p.Labels[jobsv1alpha1.LabelRun])
		if r.pod.IsZero() {
			r.pod = now
		}
		if r.admitted.IsZero() && !gated {
			r.admitted = now
		}
	}); err != nil {
		return nil, err
	}
	if _, err := b.watchAll(ctx, &jobsv1alpha1.JobRunList{}, func(ev watch.Event) {
		jr, ok := ev.Object.(*jobsv1alpha1.JobRun)
		if !ok || ev.Type == watch.Deleted {
			return
		}
		now := time.Now()
		t.mu.Lock()
		defer t.mu.Unlock()
		r := t.run(jr.Name)
		r.team, r.schedule, r.created = jr.Spec.TeamID, jr.Labels[jobsv1alpha1.LabelSchedule], jr.CreatedAt()
		phase := jr.CurrentPhase()
		if r.running.IsZero() && (phase == jobsv1alpha1.JobRunRunning || phase.IsTerminal() && jr.Status.StartedAt != nil) {
			r.running = now
		}
		if r.end.IsZero() && phase.IsTerminal() {
			r.end = now
			r.failed = phase != jobsv1alpha1.JobRunCompleted
		}
	}); err != nil {
		return nil, err
	}
	return t, nil
}

// run is name's record, made on first use; t.mu is held.
func (t *runTracker) run(name string) *runSeen {
	r := t.runs[name]
	if r == nil {
		r = &runSeen{}
		t.runs[name] = r
	}
	return r
}

// count is how many of the runs named satisfy f.
func (t *runTracker) count(names []string, f func(runSeen) bool) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, name := range names {
		if r := t.runs[name]; r != nil && f(*r) {
			n++
		}
	}
	return n
}

// snapshot copies what the watches saw so far.
func (t *runTracker) snapshot() map[string]runSeen {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]runSeen, len(t.runs))
	for name, r := range t.runs {
		out[name] = *r
	}
	return out
}

// find is the name of the first run seen satisfying f, or "".
func (t *runTracker) find(f func(runSeen) bool) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(t.runs)) {
		if f(*t.runs[name]) {
			return name
		}
	}
	return ""
}
