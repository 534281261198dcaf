package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	clocktesting "k8s.io/utils/clock/testing"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/notify"
	"jobrun.dev/jobrun/test/testenv"
)

// mailServer is a real SMTP server on loopback that keeps what it receives
// and can refuse the first few messages.
type mailServer struct {
	mu       sync.Mutex
	messages []string
	refuse   int
	addr     string
}

func (m *mailServer) NewSession(*smtp.Conn) (smtp.Session, error) { return &mailSession{m: m}, nil }

type mailSession struct{ m *mailServer }

func (s *mailSession) Reset()        {}
func (s *mailSession) Logout() error { return nil }
func (s *mailSession) Mail(string, *smtp.MailOptions) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if s.m.refuse > 0 {
		s.m.refuse--
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
	}
	return nil
}
func (s *mailSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *mailSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.messages = append(s.m.messages, string(data))
	return nil
}

func (m *mailServer) received() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.messages...)
}

func startMailServer(t *testing.T, refuse int) *mailServer {
	t.Helper()
	m := &mailServer{refuse: refuse}
	srv := smtp.NewServer(m)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = l.Addr().String()
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return m
}

func (m *mailServer) notifier(t *testing.T) notify.SMTP {
	host, port, _ := net.SplitHostPort(m.addr)
	var p int
	fmt.Sscan(port, &p)
	return notify.SMTP{Host: host, Port: p, From: "jobrun@example.com", TLS: "none", Timeout: 5 * time.Second}
}

func notifyingRun(t *testing.T, ns, name string) {
	t.Helper()
	createRunWith(t, ns, name, func(jr *jobsv1alpha1.JobRun) {
		jr.Spec.Notify, jr.Spec.NotifyEmail = true, "owner@example.com"
	})
}

func TestNotificationSentExactlyOnce(t *testing.T) {
	ns := env.Namespace(t)
	mail := startMailServer(t, 0)
	clock := clocktesting.NewFakeClock(time.Now())
	stop := startManager(t, clock, WithNotifier(mail.notifier(t)))
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
	msgs := mail.received()
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
	startManager(t, clock, WithNotifier(mail.notifier(t)))
	poke(t, ns, "run-mail")
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-mail")
		if err != nil || jr.Annotations["test.jobrun.dev/poke"] == "" {
			return errors.New("not poked yet")
		}
		return nil
	})
	if n := len(mail.received()); n != 1 {
		t.Errorf("%d emails after a restart, want still 1", n)
	}
}

func TestNotificationRetriedWhenTheMailServerFails(t *testing.T) {
	ns := env.Namespace(t)
	mail := startMailServer(t, 2) // refuses the first two
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, clock, WithNotifier(mail.notifier(t)))
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
	if msgs := mail.received(); len(msgs) != 1 || !strings.Contains(msgs[0], "Status:    failed") || !strings.Contains(msgs[0], "Error:") {
		t.Errorf("emails: %v", msgs)
	}
}

func TestNotificationWithoutSMTP(t *testing.T) {
	ns := env.Namespace(t)
	startManager(t, clocktesting.NewFakeClock(time.Now()))
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
