package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// triggers measures REST triggers per second (distinct projects) at several
// concurrencies against the raw rate of creating the same JobRuns with a Go
// client (the ceiling), and against creating a guard Lease and then the run
// (the two writes a trigger makes), each for 5 s.
func (b *bench) triggers(ctx context.Context) error {
	projects := b.projects.rest()
	var next atomic.Int64
	for _, workers := range []int{8, 32, 64} {
		b.log("triggers: %d clients", workers)
		rest := b.rate(workers, func() error {
			_, err := b.trigger(projects, int(next.Add(1)-1), map[string]any{"items": 1})
			return err
		})
		raw := b.rate(workers, func() error { return b.c.Create(ctx, rawRun()) })
		// The one-active-run guarantee costs a trigger a second write
		// before its run: the guard Lease (internal/guard). The same two
		// creates, in order, with a Go client are what a trigger can reach.
		pair := b.rate(workers, func() error {
			if err := b.c.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "raw-guard-"}}); err != nil {
				return err
			}
			return b.c.Create(ctx, rawRun())
		})
		b.add(Figure{Scenario: "trigger", Name: fmt.Sprintf("REST triggers/s, %d clients, distinct projects", workers), Value: rest, Unit: "req/s", Ceiling: raw, Target: ">= 0.7 of raw creates", Met: met(rest >= 0.7*raw)})
		b.add(Figure{Scenario: "trigger", Name: fmt.Sprintf("REST triggers/s vs raw guard Lease + run creates, %d clients", workers), Value: rest, Unit: "req/s", Ceiling: pair})
	}
	return nil
}

// rawRun is a run as a trigger makes it, for creating with a Go client.
func rawRun() *jobsv1alpha1.JobRun {
	now := metav1.NewMicroTime(time.Now())
	return &jobsv1alpha1.JobRun{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "raw-", Labels: map[string]string{jobsv1alpha1.LabelTeam: "bench-raw", jobsv1alpha1.LabelProject: "raw", jobsv1alpha1.LabelJobType: "demo_sync"}},
		Spec:       jobsv1alpha1.JobRunSpec{JobType: "demo_sync", TeamID: "bench-raw", ProjectID: "raw", TriggeredBy: "manual:user:bench", Params: &runtime.RawExtension{Raw: []byte(`{"items":1}`)}, CreatedAt: &now},
	}
}
