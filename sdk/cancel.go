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
// (true) or ctx ends (false). It watches the one run and, because a watch can
// drop events or break, also re-reads it every poll.
func watchCancel(ctx context.Context, c client.WithWatch, key client.ObjectKey, poll time.Duration) bool {
	found := make(chan struct{}, 1)
	signal := func() {
		select {
		case found <- struct{}{}:
		default:
		}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for ctx.Err() == nil {
			if watchOnce(ctx, c, key) {
				signal()
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
			return false
		case <-found:
			return true
		case <-ticker.C:
			jr := &jobsv1alpha1.JobRun{}
			if err := c.Get(ctx, key, jr); err == nil && jr.IsCancelRequested() {
				return true
			}
		}
	}
}

// watchOnce watches the run until it carries the annotation (true) or the
// watch ends (false).
func watchOnce(ctx context.Context, c client.WithWatch, key client.ObjectKey) bool {
	w, err := c.Watch(ctx, &jobsv1alpha1.JobRunList{}, client.InNamespace(key.Namespace),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", key.Name)})
	if err != nil {
		return false
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type != watch.Added && ev.Type != watch.Modified {
			continue
		}
		if jr, ok := ev.Object.(*jobsv1alpha1.JobRun); ok && jr.IsCancelRequested() {
			return true
		}
	}
	return false
}
