package controllers

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/notify"
	"jobrun.dev/jobrun/test/testenv"
)

// outage is a mail server that is unreachable while down says so: its sends
// go to a port nothing listens on (connection refused), the others to the
// live server. Its retry window is the live server's.
type outage struct {
	notify.SMTP
	dead notify.SMTP
	down func() bool
}

func (o outage) Send(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	if o.down() {
		return o.dead.Send(ctx, run)
	}
	return o.SMTP.Send(ctx, run)
}

func newOutage(t *testing.T, live notify.SMTP, down func() bool) outage {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := live
	dead.Port = l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return outage{SMTP: live, dead: dead, down: down}
}

// finishRun plays the kubelet for the run's first pod until the run has
// completed.
func finishRun(t *testing.T, ns, name string) {
	t.Helper()
	pod := waitPod(t, ns, name+"-1")
	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	waitPhase(t, ns, name, jobsv1alpha1.JobRunCompleted)
}

// waitNotification waits until the run's notification is in one of states
// after attempts sends, and returns it.
func waitNotification(t *testing.T, ns, name string, attempts int32, states ...jobsv1alpha1.NotificationState) *jobsv1alpha1.JobRun {
	t.Helper()
	var jr *jobsv1alpha1.JobRun
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		var err error
		if jr, err = getRun(ctx, ns, name); err != nil {
			return err
		}
		n := jr.Status.Notification
		for _, s := range states {
			if n != nil && n.State == s && n.Attempts == attempts {
				return nil
			}
		}
		return fmt.Errorf("run %s: notification %+v, want %v after attempt %d", name, n, states, attempts)
	})
	return jr
}

// waitPassDone waits until the controller has finished a whole pass over
// the run that began after everything the test did before the call: passes
// over one run never overlap, so the second pass waitReconciled sees begins
// only after the first one ended.
func waitPassDone(t *testing.T, ns, name string) {
	t.Helper()
	waitReconciled(t, ns, name)
	waitReconciled(t, ns, name)
}

// TestHistoryLimitKeepsRunWhoseEmailIsOwed: a newer run's pass over the
// (project, job type) history does not delete an older run whose email is
// still being retried; the older run goes once its email is sent.
func TestHistoryLimitKeepsRunWhoseEmailIsOwed(t *testing.T) {
	ns := env.Namespace(t)
	mail := testenv.StartMailServer(t, 0)
	var down atomic.Bool
	down.Store(true)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock, WithNotifier(newOutage(t, notifier(mail), down.Load)))
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.HistoryLimit = ptr.To[int32](1) })

	notifyingRun(t, ns, "run-old")
	finishRun(t, ns, "run-old")
	waitNotification(t, ns, "run-old", 1, jobsv1alpha1.NotificationRetrying)

	clock.Step(time.Second) // the next run finishes later
	createRun(t, ns, "run-new")
	finishRun(t, ns, "run-new")
	// run-new's pass pruned the history, in which run-old is beyond the
	// limit of 1; its email is owed, so it stays.
	waitPassDone(t, ns, "run-new")
	jr, err := getRun(context.Background(), ns, "run-old")
	if err != nil || jr.DeletionTimestamp != nil {
		t.Fatalf("run-old, whose email is still being retried, was deleted by the history limit (%v)", err)
	}
	if n := jr.Status.Notification; n == nil || n.State != jobsv1alpha1.NotificationRetrying {
		t.Fatalf("run-old notification %+v, want Retrying", n)
	}

	// The mail server is back: run-old's email goes out, then its own pass
	// prunes it.
	down.Store(false)
	clock.Step(10 * time.Minute)
	poke(t, ns, "run-old")
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-old")
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("run-old not deleted after its email (notification %+v, %v)", jr.Status.Notification, err)
		}
		return nil
	})
	if msgs := mail.Received(); len(msgs) != 1 || !strings.Contains(msgs[0], "Run:       run-old") {
		t.Errorf("emails: %q, want run-old's only", msgs)
	}
	if _, err := getRun(context.Background(), ns, "run-new"); err != nil {
		t.Errorf("run-new, within the history limit: %v", err)
	}
}

// TestNotificationOutlastsAnHourLongOutage: with the default retry window,
// an email whose mail server is down for an hour is sent, once, when it is
// back.
func TestNotificationOutlastsAnHourLongOutage(t *testing.T) {
	ns := env.Namespace(t)
	mail := testenv.StartMailServer(t, 0)
	clock := clocktesting.NewFakeClock(time.Now())
	back := clock.Now().Add(time.Hour)
	startManager(t, ns, clock, WithNotifier(newOutage(t, notifier(mail), func() bool { return clock.Now().Before(back) })))
	createJobType(t, ns)
	notifyingRun(t, ns, "run-outage")
	finishRun(t, ns, "run-outage")

	attempt := int32(1)
	for ; clock.Now().Before(back); attempt++ {
		waitNotification(t, ns, "run-outage", attempt, jobsv1alpha1.NotificationRetrying)
		clock.Step(notifyBackoff(attempt) + time.Second)
		poke(t, ns, "run-outage")
	}
	jr := waitNotification(t, ns, "run-outage", attempt, jobsv1alpha1.NotificationSent)
	if c := meta.FindStatusCondition(jr.Status.Conditions, JobRunConditionNotified); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Notified condition %+v, want True", c)
	}
	// Nothing more goes out: the email is on record as sent.
	poke(t, ns, "run-outage")
	waitPassDone(t, ns, "run-outage")
	if msgs := mail.Received(); len(msgs) != 1 {
		t.Errorf("%d emails after a 1 h outage and %d attempts, want 1", len(msgs), attempt)
	}
	t.Logf("sent at attempt %d, %s after the first", attempt, clock.Since(back.Add(-time.Hour)))
}

// TestNotificationFailsAfterTheRetryWindow: a mail server that stays down
// is retried until the configured window since the run ended has passed;
// the first failure after it is final, said in the status, the Notified
// condition and an Event, and nothing more is tried.
func TestNotificationFailsAfterTheRetryWindow(t *testing.T) {
	ns := env.Namespace(t)
	mail := testenv.StartMailServer(t, 0)
	clock := clocktesting.NewFakeClock(time.Now())
	live := notifier(mail)
	live.RetryWindow = 20 * time.Minute
	startManager(t, ns, clock, WithNotifier(newOutage(t, live, func() bool { return true })))
	createJobType(t, ns)
	notifyingRun(t, ns, "run-giveup")
	finishRun(t, ns, "run-giveup")
	ended := clock.Now()

	var jr *jobsv1alpha1.JobRun
	attempt := int32(1)
	for ; ; attempt++ {
		jr = waitNotification(t, ns, "run-giveup", attempt, jobsv1alpha1.NotificationRetrying, jobsv1alpha1.NotificationFailed)
		// Only the test moves the clock: the attempt was made now.
		since := clock.Since(ended)
		if jr.Status.Notification.State == jobsv1alpha1.NotificationFailed {
			if since < live.RetryWindow {
				t.Fatalf("Failed after attempt %d, %s after the run ended, within the retry window of %s", attempt, since, live.RetryWindow)
			}
			break
		}
		if since >= live.RetryWindow {
			t.Fatalf("still Retrying after attempt %d, %s after the run ended, past the retry window", attempt, since)
		}
		clock.Step(notifyBackoff(attempt) + time.Second)
		poke(t, ns, "run-giveup")
	}
	n := jr.Status.Notification
	if !strings.Contains(n.Message, "gave up after") || !strings.Contains(n.Message, "20m0s") || !strings.Contains(n.Message, "connection refused") {
		t.Errorf("notification message %q, want why it gave up and the last error", n.Message)
	}
	if c := meta.FindStatusCondition(jr.Status.Conditions, JobRunConditionNotified); c == nil || c.Status != metav1.ConditionFalse || c.Reason != string(jobsv1alpha1.NotificationFailed) || c.Message != n.Message {
		t.Errorf("Notified condition %+v", c)
	}
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		evs := &eventsv1.EventList{}
		if err := env.Client.List(ctx, evs, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == "run-giveup" && e.Reason == "NotificationFailed" && strings.Contains(e.Note, "gave up") {
				return nil
			}
		}
		return fmt.Errorf("no NotificationFailed event saying it gave up among %d events", len(evs.Items))
	})
	// Nothing more is tried.
	clock.Step(time.Hour)
	poke(t, ns, "run-giveup")
	waitPassDone(t, ns, "run-giveup")
	if jr, err := getRun(context.Background(), ns, "run-giveup"); err != nil || jr.Status.Notification.Attempts != attempt {
		t.Errorf("after Failed: notification %+v (%v), want %d attempts still", jr.Status.Notification, err, attempt)
	}
	if n := len(mail.Received()); n != 0 {
		t.Errorf("%d emails through a server that was down", n)
	}
}
