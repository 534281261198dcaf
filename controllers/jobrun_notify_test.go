package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	clocktesting "k8s.io/utils/clock/testing"

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

func TestNotificationSentExactlyOnce(t *testing.T) {
	ns := env.Namespace(t)
	mail := testenv.StartMailServer(t, 0)
	clock := clocktesting.NewFakeClock(time.Now())
	stop := startManager(t, ns, clock, WithNotifier(notifier(mail)))
	createJobType(t, ns)
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

	// Reconciles and a controller restart send nothing more.
	poke(t, ns, "run-mail")
	stop()
	startManager(t, ns, clock, WithNotifier(notifier(mail)))
	poke(t, ns, "run-mail")
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-mail")
		if err != nil || jr.Annotations["test.jobrun.dev/poke"] == "" {
			return errors.New("not poked yet")
		}
		return nil
	})
	if n := len(mail.Received()); n != 1 {
		t.Errorf("%d emails after a restart, want still 1", n)
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
