package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/notify"
)

const (
	// JobRunConditionNotified is True once the completion email was sent,
	// False while it cannot be (its reason says why).
	JobRunConditionNotified = "Notified"
)

// RetryWindowNotifier is a Notifier that says how long a run's email is
// retried while sends fail, counted from the run's end (its first attempt).
// Other Notifiers get notify.DefaultRetryWindow.
type RetryWindowNotifier interface {
	Notifier
	RetryFor() time.Duration
}

// notifyBackoff is the wait after the n-th failed send: 5 s, 10 s, 20 s, …
// up to 5 minutes.
func notifyBackoff(n int32) time.Duration {
	d := 5 * time.Second << max(n-1, 0)
	return min(d, 5*time.Minute)
}

// notify sends a finished run's email once. It records each attempt in the
// run's status before contacting the mail server, so a controller restart,
// a conflict or a retry never sends it silently twice (a restart during a
// send sends again with the same Message-ID), and a failing mail server is
// retried with backoff, shown in the Notified condition and Events, never
// forgotten: until the retry window since the run ended has passed, so an
// outage of an hour loses nothing; the first failure after it is final.
// Cancelled runs get no email: the user stopped them. It returns how long to
// wait before the next attempt.
func (r *JobRunReconciler) notify(ctx context.Context, run *jobsv1alpha1.JobRun) (time.Duration, error) {
	if !notificationOwed(run) {
		return 0, nil
	}
	n := run.Status.Notification
	if n == nil {
		n = &jobsv1alpha1.JobRunNotification{}
	}
	now := r.clock.Now()
	switch {
	case r.notifier == nil:
		return 0, r.recordNotification(ctx, run, jobsv1alpha1.NotificationSkipped, n.Attempts, "no SMTP server is configured", now)
	case run.Spec.NotifyEmail == "":
		return 0, r.recordNotification(ctx, run, jobsv1alpha1.NotificationSkipped, n.Attempts, "the run has no notification address", now)
	}
	if n.State == jobsv1alpha1.NotificationRetrying && n.LastAttemptTime != nil {
		if wait := notifyBackoff(n.Attempts) - now.Sub(n.LastAttemptTime.Time); wait > 0 {
			return wait, nil
		}
	}
	attempt := n.Attempts + 1
	if err := r.recordNotification(ctx, run, jobsv1alpha1.NotificationSending, attempt, "", now); err != nil {
		if apierrors.IsConflict(err) {
			return conflictRetryDelay, nil
		}
		return 0, err
	}
	sendErr := r.notifier.Send(ctx, run)
	if sendErr == nil {
		r.recorder.Eventf(run, nil, corev1.EventTypeNormal, "NotificationSent", "Notify", "Email sent to %s", run.Spec.NotifyEmail)
		return 0, r.recordNotification(ctx, run, jobsv1alpha1.NotificationSent, attempt, "", r.clock.Now())
	}
	logf.FromContext(ctx).Error(sendErr, "sending the completion email", "attempt", attempt)
	msg := clipTo(sendErr.Error(), 900)
	window := r.notifyRetryWindow()
	now = r.clock.Now()
	if giveUp := finishTime(run).Add(window); !now.Before(giveUp) {
		r.recorder.Eventf(run, nil, corev1.EventTypeWarning, "NotificationFailed", "Notify", "Email to %s failed (attempt %d); gave up, the retry window of %s since the run ended has passed: %v", run.Spec.NotifyEmail, attempt, window, sendErr)
		msg = fmt.Sprintf("gave up after %d attempts over the retry window of %s: %s", attempt, window, msg)
		return 0, r.recordNotification(ctx, run, jobsv1alpha1.NotificationFailed, attempt, msg, now)
	}
	r.recorder.Eventf(run, nil, corev1.EventTypeWarning, "NotificationFailed", "Notify", "Email to %s failed (attempt %d; retrying until %s): %v", run.Spec.NotifyEmail, attempt, finishTime(run).Add(window).UTC().Format(time.RFC3339), sendErr)
	return notifyBackoff(attempt), r.recordNotification(ctx, run, jobsv1alpha1.NotificationRetrying, attempt, msg, now)
}

// notifyRetryWindow is how long after its end a run's failing email is
// retried.
func (r *JobRunReconciler) notifyRetryWindow() time.Duration {
	if n, ok := r.notifier.(RetryWindowNotifier); ok && n.RetryFor() > 0 {
		return n.RetryFor()
	}
	return notify.DefaultRetryWindow
}

// notificationOwed reports whether run's completion email is still to be
// sent or retried: retention must not delete the run before it is.
func notificationOwed(run *jobsv1alpha1.JobRun) bool {
	if !run.Spec.Notify || run.Status.Phase == jobsv1alpha1.JobRunCancelled {
		return false
	}
	n := run.Status.Notification
	if n == nil {
		return true
	}
	switch n.State {
	case jobsv1alpha1.NotificationSent, jobsv1alpha1.NotificationFailed, jobsv1alpha1.NotificationSkipped:
		return false
	}
	return true
}

// recordNotification writes the notification state and the Notified
// condition.
func (r *JobRunReconciler) recordNotification(ctx context.Context, run *jobsv1alpha1.JobRun, state jobsv1alpha1.NotificationState, attempts int32, message string, now time.Time) error {
	status := *run.Status.DeepCopy()
	t := metav1.NewTime(now)
	status.Notification = &jobsv1alpha1.JobRunNotification{State: state, Attempts: attempts, LastAttemptTime: &t, Message: message}
	if state == jobsv1alpha1.NotificationSkipped {
		status.Notification.LastAttemptTime = nil
	}
	cond := metav1.Condition{Type: JobRunConditionNotified, Status: metav1.ConditionFalse, Reason: string(state), Message: message, ObservedGeneration: run.Generation, LastTransitionTime: t}
	if state == jobsv1alpha1.NotificationSent {
		cond.Status, cond.Message = metav1.ConditionTrue, "email sent to "+run.Spec.NotifyEmail
	}
	if cond.Message == "" {
		cond.Message = "email " + string(state)
	}
	meta.SetStatusCondition(&status.Conditions, cond)
	return r.patchStatus(ctx, run, status)
}
