package sdk

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// watchCancel blocks until the run carries the cancel-requested annotation
// (true) or ctx ends (false).
func watchCancel(ctx context.Context, c client.WithWatch, key client.ObjectKey, poll time.Duration) bool {
	return watchUntil(ctx, c, key, poll, (*jobsv1alpha1.JobRun).IsCancelRequested) != nil
}

// watchUntil blocks until the run is in a state cond accepts, and returns
// it, or until ctx ends (nil). It watches the one run and, because a watch
// can drop events or break, also re-reads it every poll.
func watchUntil(ctx context.Context, c client.WithWatch, key client.ObjectKey, poll time.Duration, cond func(*jobsv1alpha1.JobRun) bool) *jobsv1alpha1.JobRun {
	found := make(chan *jobsv1alpha1.JobRun, 1)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for ctx.Err() == nil {
			if jr := watchOnce(ctx, c, key, cond); jr != nil {
				found <- jr
				return
			}
			// The watch ended (timeout, dropped connection): start another
			// after a short pause, so a broken API server is not hammered.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case jr := <-found:
			return jr
		case <-ticker.C:
			jr := &jobsv1alpha1.JobRun{}
			if err := c.Get(ctx, key, jr); err == nil && cond(jr) {
				return jr
			}
		}
	}
}

// watchOnce watches the run until cond accepts it (the run) or the watch
// ends (nil). A watch from no version starts with the run as it is.
func watchOnce(ctx context.Context, c client.WithWatch, key client.ObjectKey, cond func(*jobsv1alpha1.JobRun) bool) *jobsv1alpha1.JobRun {
	w, err := c.Watch(ctx, &jobsv1alpha1.JobRunList{}, client.InNamespace(key.Namespace),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", key.Name)})
	if err != nil {
		return nil
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type != watch.Added && ev.Type != watch.Modified {
			continue
		}
		if jr, ok := ev.Object.(*jobsv1alpha1.JobRun); ok && cond(jr) {
			return jr
		}
	}
	return nil
}
