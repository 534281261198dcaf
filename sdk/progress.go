package sdk

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// maxMessageLength is the CRD's bound on progress.message.
const maxMessageLength = 1024

// progressReporter coalesces Progress calls: set only stores the latest
// value; a single writer sends it at most once per interval, and flush sends
// whatever is still unsent.
type progressReporter struct {
	interval time.Duration
	write    func(ctx context.Context, p *jobsv1alpha1.JobRunProgress) error

	mu      sync.Mutex
	latest  *jobsv1alpha1.JobRunProgress
	pending bool
	wake    chan struct{}

	// writeMu orders writes as their values were taken, so an older value
	// never lands after a newer one.
	writeMu sync.Mutex
}

func newProgressReporter(interval time.Duration, write func(context.Context, *jobsv1alpha1.JobRunProgress) error) *progressReporter {
	return &progressReporter{interval: interval, write: write, wake: make(chan struct{}, 1)}
}

func (r *progressReporter) set(processed, total int64, message string) {
	if processed < 0 {
		processed = 0
	}
	if total < 0 {
		total = 0
	}
	if len(message) > maxMessageLength {
		message = message[:maxMessageLength]
	}
	r.mu.Lock()
	r.latest = jobsv1alpha1.NewProgress(processed, total, message)
	r.pending = true
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run writes pending progress, at most once per interval (a limiter with a
// burst of one), until ctx ends. A failed write is not retried on its own:
// the next set or the final flush carries the value again.
func (r *progressReporter) run(ctx context.Context) {
	limit := rate.NewLimiter(rate.Every(r.interval), 1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		if limit.Wait(ctx) != nil {
			return
		}
		_ = r.flush(ctx)
	}
}

// flush writes the latest value if it has not been written yet.
func (r *progressReporter) flush(ctx context.Context) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	p, pending := r.latest, r.pending
	r.pending = false
	r.mu.Unlock()
	if !pending {
		return nil
	}
	if err := r.write(ctx, p); err != nil {
		r.mu.Lock()
		if !r.pending { // nothing newer arrived: this value is still owed
			r.pending = true
		}
		r.mu.Unlock()
		return err
	}
	return nil
}
