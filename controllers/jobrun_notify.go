package controllers

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

const (
	// maxNotifyAttempts bounds the sends tried for one run's email.
	maxNotifyAttempts = 6
	// JobRunConditionNotified is True once the completion email was sent,
	// False while it cannot be (its reason says why).
	JobRunConditionNotified = "Notified"
)

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
// forgotten. Cancelled runs get no email: the user stopped them. It returns
// how long to wait before the next attempt.
func (r *JobRunReconciler) notify(ctx context.Context, run *jobsv1alpha1.JobRun) (time.Duration, error) {
	if !run.Spec.Notify || run.Status.Phase == jobsv1alpha1.JobRunCancelled {
		return 0, nil
	}
	n := run.Status.Notification
	if n == nil {
		n = &jobsv1alpha1.JobRunNotification{}
	}
	switch n.State {
	case jobsv1alpha1.NotificationSent, jobsv1alpha1.NotificationFailed, jobsv1alpha1.NotificationSkipped:
		return 0, nil
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
	state, wait := jobsv1alpha1.NotificationRetrying, notifyBackoff(attempt)
	if attempt >= maxNotifyAttempts {
		state, wait = jobsv1alpha1.NotificationFailed, 0
	}
	r.recorder.Eventf(run, nil, corev1.EventTypeWarning, "NotificationFailed", "Notify", "Email to %s failed (attempt %d of %d): %v", run.Spec.NotifyEmail, attempt, maxNotifyAttempts, sendErr)
	msg := sendErr.Error()
	if len(msg) > 1000 {
		msg = msg[:1000]
	}
	return wait, r.recordNotification(ctx, run, state, attempt, msg, r.clock.Now())
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
