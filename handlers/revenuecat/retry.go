package revenuecat

import (
	"context"
	"fmt"

	"github.com/cenkalti/backoff/v5"
)

// retry calls op until it succeeds, returns a permanent error
// (backoff.Permanent) or has been called tries times, waiting between calls
// as b says, or as long as a backoff.RetryAfterError in op's error says. A
// cancel of ctx ends any wait. The error is op's permanent one as op gave
// it, op's last one with "(after N attempts)" when the tries ran out, or
// ctx.Err() when ctx ended a wait.
func retry(ctx context.Context, tries int, b backoff.BackOff, op func() error) error {
	tries = max(1, tries)
	calls := 0
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		calls++
		return struct{}{}, op()
	}, backoff.WithBackOff(b), backoff.WithMaxTries(uint(tries)), backoff.WithMaxElapsedTime(0))
	if err == nil {
		return nil
	}
	if calls < tries {
		if cause := context.Cause(ctx); cause != nil && err == cause {
			return ctx.Err() // not the cause, which the library returns
		}
		return err // permanent: the library has unwrapped it
	}
	// The last call's error, as op gave it: the library checks the tries
	// before it looks for a permanent error.
	if p, ok := err.(*backoff.PermanentError); ok {
		return p.Err
	}
	return afterAttempts(err, calls)
}

// afterAttempts says in err how many attempts there were, if more than one.
func afterAttempts(err error, attempts int) error {
	if attempts < 2 {
		return err
	}
	return fmt.Errorf("%w (after %d attempts)", err, attempts)
}

// retryAfter is a retryable error that came with the time to wait before
// the next try: errors.As finds the error and the backoff library's
// RetryAfterError in it, and its message is the error's.
type retryAfter struct {
	err  error
	wait *backoff.RetryAfterError
}

func (e *retryAfter) Error() string   { return e.err.Error() }
func (e *retryAfter) Unwrap() []error { return []error{e.err, e.wait} }
