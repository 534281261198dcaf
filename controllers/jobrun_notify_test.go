package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/notify"
	"jobrun.dev/jobrun/test/testenv"
)

func notifier(m *testenv.MailServer) notify.SMTP {
	return notify.SMTP{Host: m.Host, Port: m.Port, From: "jobrun@example.com", TLS: "none", Timeout: 5 * time.Second}
}

func notifyingRun(t *testing.T, ns, name string) {
	t.Helper()
	createRunWith(t, ns, name, func(jr *jobsv1alpha1.JobRun) {
		jr.Spec.Notify, jr.Spec.NotifyEmail = true, "owner@example.com"
	})
}

// notifyTTL is the TTL of the notifying runs' JobType: a finished run is
// deleted after it, which its controller does only once its notify step has
// nothing left to send (see waitNotifyDone).
const notifyTTL = time.Hour

func createNotifyJobType(t *testing.T, ns string) {
	t.Helper()
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) {
		jt.Spec.TTLSecondsAfterFinished = ptr.To(int32(notifyTTL / time.Second))
	})
}

// waitNotifyDone moves the clock past the finished run's TTL, nudges the
// controller and waits until it has deleted the run. It does that only
// after its notify step returned with nothing left to send, so the emails
// counted afterwards are all it will ever send for the run.
func waitNotifyDone(t *testing.T, clock *clocktesting.FakeClock, ns, name string) {
	t.Helper()
	clock.Step(notifyTTL + time.Minute)
	poke := fmt.Sprintf(`{"metadata":{"annotations":{"test.jobrun.dev/poke":%q}}}`, time.Now().Format(time.RFC3339Nano))
	jr := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := env.Client.Patch(context.Background(), jr, client.RawPatch(types.MergePatchType, []byte(poke))); client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, name)
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("run %s not deleted after its TTL (notification %+v, %v)", name, jr.Status.Notification, err)
		}
		return nil
	})
}

// notificationSeen records, for each message the mail server receives, the
// run's notification state at that moment.
type notificationSeen struct {
	mu     sync.Mutex
	states []string
}

func (n *notificationSeen) hook(t *testing.T, ns, name string) func(string) {
	return func(string) {
		jr, err := getRun(context.Background(), ns, name)
		state := fmt.Sprintf("error: %v", err)
		if err == nil && jr.Status.Notification != nil {
			state = fmt.Sprintf("%s/%d", jr.Status.Notification.State, jr.Status.Notification.Attempts)
		} else if err == nil {
			state = "none"
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		n.states = append(n.states, state)
	}
}

func (n *notificationSeen) get() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.states)
}

func TestNotificationSentExactlyOnce(t *testing.T) {
	ns := env.Namespace(t)
	var seen notificationSeen
	mail := testenv.StartMailServerWith(t, testenv.MailOptions{OnMessage: seen.hook(t, ns, "run-mail")})
	clock := clocktesting.NewFakeClock(time.Now())
	stop := startManager(t, ns, clock, WithNotifier(notifier(mail)))
	createNotifyJobType(t, ns)
	notifyingRun(t, ns, "run-mail")
	pod := waitPod(t, ns, "run-mail-1")
	kubelet(t, pod, corev1.PodRunning, 0, "")
	waitPhase(t, ns, "run-mail", jobsv1alpha1.JobRunRunning)
	clock.Step(90 * time.Second)
	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	waitPhase(t, ns, "run-mail", jobsv1alpha1.JobRunCompleted)

	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-mail")
		if err != nil || jr.Status.Notification == nil || jr.Status.Notification.State != jobsv1alpha1.NotificationSent {
			return fmt.Errorf("notification %+v (%v)", jr.Status.Notification, err)
		}
		return nil
	})
	msgs := mail.Received()
	if len(msgs) != 1 {
		t.Fatalf("%d emails, want 1", len(msgs))
	}
	for _, want := range []string{"Subject: [jobrun] demo_sync completed for project project-1", "To: <owner@example.com>", "Job type:  demo_sync", "Project:   project-1", "Status:    completed", "Duration:  1m30s"} {
		if !strings.Contains(msgs[0], want) {
			t.Errorf("email lacks %q:\n%s", want, msgs[0])
		}
	}
	// The attempt was on record before the mail server was contacted: a
	// controller that dies during the send knows to send again.
	if got := seen.get(); !slices.Equal(got, []string{"Sending/1"}) {
		t.Errorf("notification state when the mail server got the email: %v, want [Sending/1]", got)
	}

	// A new manager (fresh cache, the email on record as sent) sends
	// nothing more before it deletes the run.
	stop()
	startManager(t, ns, clock, WithNotifier(notifier(mail)))
	waitNotifyDone(t, clock, ns, "run-mail")
	if n := len(mail.Received()); n != 1 {
		t.Errorf("%d emails after a restart, want still 1", n)
	}
}

// TestNotificationResentAfterRestartWhileSending: a manager recorded the
// attempt (Sending) and died before it recorded the outcome; whether the
// email went out is unknown. The next controller sends it again, once, with
// the same Message-ID, so the recipient's mail system can recognise a
// duplicate.
func TestNotificationResentAfterRestartWhileSending(t *testing.T) {
	ns := env.Namespace(t)
	mail := testenv.StartMailServer(t, 0)
	clock := clocktesting.NewFakeClock(time.Now())
	createNotifyJobType(t, ns)
	notifyingRun(t, ns, "run-sending")
	jr, err := getRun(context.Background(), ns, "run-sending")
	if err != nil {
		t.Fatal(err)
	}
	// What the dead manager left: the run finished, its email being sent.
	orig := jr.DeepCopy()
	now := metav1.NewMicroTime(clock.Now())
	jr.Status = jobsv1alpha1.JobRunStatus{
		Phase: jobsv1alpha1.JobRunCompleted, Attempts: 1, PodName: "run-sending-1", CompletedAt: &now,
		Notification: &jobsv1alpha1.JobRunNotification{State: jobsv1alpha1.NotificationSending, Attempts: 1, LastAttemptTime: ptr.To(metav1.NewTime(clock.Now()))},
	}
	if err := env.Client.Status().Patch(context.Background(), jr, client.MergeFrom(orig)); err != nil {
		t.Fatal(err)
	}

	startManager(t, ns, clock, WithNotifier(notifier(mail)))
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-sending")
		if err != nil || jr.Status.Notification == nil || jr.Status.Notification.State != jobsv1alpha1.NotificationSent || jr.Status.Notification.Attempts != 2 {
			return fmt.Errorf("notification %+v (%v), want Sent after attempt 2", jr.Status.Notification, err)
		}
		return nil
	})
	waitNotifyDone(t, clock, ns, "run-sending")
	msgs := mail.Received()
	if len(msgs) != 1 {
		t.Fatalf("%d emails, want exactly 1", len(msgs))
	}
	if want := "Message-ID: <" + string(jr.UID) + "@jobrun.dev>"; !strings.Contains(msgs[0], want) {
		t.Errorf("email lacks %q:\n%s", want, msgs[0])
	}
}

func TestNotificationRetriedWhenTheMailServerFails(t *testing.T) {
	ns := env.Namespace(t)
	mail := testenv.StartMailServer(t, 2) // refuses the first two
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock, WithNotifier(notifier(mail)))
	createJobType(t, ns)
	notifyingRun(t, ns, "run-retry-mail")
	pod := waitPod(t, ns, "run-retry-mail-1")
	kubelet(t, pod, corev1.PodFailed, 1, "Error")
	waitPhase(t, ns, "run-retry-mail", jobsv1alpha1.JobRunFailed)

	// Each failure is recorded, with the condition saying so; time moves
	// past the backoff and the next attempt goes out.
	for attempt := int32(1); attempt <= 2; attempt++ {
		testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
			jr, err := getRun(ctx, ns, "run-retry-mail")
			if err != nil {
				return err
			}
			n := jr.Status.Notification
			c := meta.FindStatusCondition(jr.Status.Conditions, JobRunConditionNotified)
			if n == nil || n.State != jobsv1alpha1.NotificationRetrying || n.Attempts != attempt || c == nil || c.Status != "False" || !strings.Contains(n.Message, "try again later") {
				return fmt.Errorf("notification %+v condition %+v", n, c)
			}
			return nil
		})
		clock.Step(notifyBackoff(attempt) + time.Second)
		poke(t, ns, "run-retry-mail")
	}
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-retry-mail")
		if err != nil || jr.Status.Notification == nil || jr.Status.Notification.State != jobsv1alpha1.NotificationSent || jr.Status.Notification.Attempts != 3 {
			return fmt.Errorf("notification %+v (%v)", jr.Status.Notification, err)
		}
		return nil
	})
	if msgs := mail.Received(); len(msgs) != 1 || !strings.Contains(msgs[0], "Status:    failed") || !strings.Contains(msgs[0], "Error:") {
		t.Errorf("emails: %v", msgs)
	}
}

func TestNotificationWithoutSMTP(t *testing.T) {
	ns := env.Namespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	createJobType(t, ns)
	notifyingRun(t, ns, "run-nomail")
	pod := waitPod(t, ns, "run-nomail-1")
	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-nomail")
		if err != nil || jr.Status.Notification == nil || jr.Status.Notification.State != jobsv1alpha1.NotificationSkipped || jr.Status.Notification.Message != "no SMTP server is configured" {
			return fmt.Errorf("notification %+v (%v)", jr.Status.Notification, err)
		}
		return nil
	})
}
