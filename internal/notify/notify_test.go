package notify

import (
	"context"
	"strings"
	"testing"
	"time"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// These tests send through a real SMTP server on loopback
// (testenv.MailServer) with a self-signed certificate made here.

func finishedRun() *jobsv1alpha1.JobRun {
	return testrun.Make("ns", "run-1").UID("6f1c2a9e-0b7d-4c1e-9a57-3d2f8e4b5c61").JobType("demo_sync").
		Notify("owner@example.com").TriggeredBy("manual:user:u1").Phase(jobsv1alpha1.JobRunCompleted).Obj()
}

func client(m *testenv.MailServer, tls string) SMTP {
	return SMTP{Host: m.Host, Port: m.Port, From: "jobrun@example.com", TLS: tls, Timeout: 5 * time.Second}
}

// TestSendOverTLSWithLogin: the message goes over TLS (STARTTLS or
// implicit), after a PLAIN login with the configured credentials, to a
// server whose certificate chains to RootCAs.
func TestSendOverTLSWithLogin(t *testing.T) {
	serverTLS, roots := testenv.NewTLSCert(t)
	for _, tt := range []struct {
		name, mode string
		implicit   bool
	}{
		{name: "STARTTLS", mode: "starttls"},
		{name: "implicit TLS", mode: "tls", implicit: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := testenv.StartMailServerWith(t, testenv.MailOptions{TLS: serverTLS, ImplicitTLS: tt.implicit, Username: "jobrun", Password: "s3cret"})
			s := client(m, tt.mode)
			s.Username, s.Password, s.RootCAs = "jobrun", "s3cret", roots
			run := finishedRun()
			if err := s.Send(context.Background(), run); err != nil {
				t.Fatal(err)
			}
			got := m.Deliveries()
			if len(got) != 1 {
				t.Fatalf("%d messages delivered, want 1", len(got))
			}
			if !got[0].TLS || got[0].Username != "jobrun" {
				t.Errorf("delivered with TLS %v, login %q; want TLS and login jobrun", got[0].TLS, got[0].Username)
			}
			if want := "Message-ID: <" + string(run.UID) + "@jobrun.dev>"; !strings.Contains(got[0].Raw, want) {
				t.Errorf("message lacks %q:\n%s", want, got[0].Raw)
			}
		})
	}
}

// TestSendFailsClearly: a send that cannot be done safely fails, delivers
// nothing, and its error says why.
func TestSendFailsClearly(t *testing.T) {
	serverTLS, roots := testenv.NewTLSCert(t)
	withLogin := testenv.MailOptions{TLS: serverTLS, Username: "jobrun", Password: "s3cret"}
	tests := []struct {
		name   string
		server testenv.MailOptions
		client func(*SMTP)
		want   string
	}{
		{
			name: "wrong password", server: withLogin,
			client: func(s *SMTP) { s.Username, s.Password, s.RootCAs = "jobrun", "wrong", roots },
			want:   `SMTP AUTH failed: 535 "5.7.8 Authentication failed"`,
		},
		{
			name: "no login where one is required", server: withLogin,
			client: func(s *SMTP) { s.RootCAs = roots },
			want:   "Please authenticate first",
		},
		{
			name: "STARTTLS required, the server offers none", server: testenv.MailOptions{},
			client: func(s *SMTP) {},
			want:   "target host does not support STARTTLS",
		},
		{
			name: "implicit TLS to a server without TLS", server: testenv.MailOptions{},
			client: func(s *SMTP) { s.TLS = "tls" },
			want:   "tls: first record does not look like a TLS handshake",
		},
		{
			name: "certificate from an authority not trusted", server: testenv.MailOptions{TLS: serverTLS},
			client: func(s *SMTP) {},
			want:   "certificate signed by unknown authority",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testenv.StartMailServerWith(t, tt.server)
			s := client(m, "starttls")
			tt.client(&s)
			err := s.Send(context.Background(), finishedRun())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one that says %q", err, tt.want)
			}
			if n := len(m.Deliveries()); n != 0 {
				t.Errorf("%d messages delivered, want none", n)
			}
		})
	}
}
