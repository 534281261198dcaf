// Package notify sends the email a run triggered with notify: true asks for
// when it completes or fails.
package notify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/wneessen/go-mail"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// SMTP is the mail server the notifications go through.
type SMTP struct {
	Host string
	Port int
	// From is the sender address.
	From string
	// Username and Password authenticate (PLAIN over TLS); empty: none.
	Username, Password string
	// TLS is "starttls" (required; the default), "tls" (implicit) or
	// "none" (loopback and tests only).
	TLS string
	// RootCAs are the authorities the mail server's certificate must chain
	// to, for a server with a private CA; nil: the host's. The certificate
	// must name Host either way.
	RootCAs *x509.CertPool
	// Timeout bounds one send (default 30 s).
	Timeout time.Duration
	// RetryWindow is how long a run's email is retried while the mail server
	// fails, from the run's end (default DefaultRetryWindow).
	RetryWindow time.Duration
}

// DefaultRetryWindow outlasts an hour-long mail server outage.
const DefaultRetryWindow = 3 * time.Hour

// RetryFor returns how long a failing email is retried: RetryWindow, or
// DefaultRetryWindow when unset.
func (s SMTP) RetryFor() time.Duration { return orDefault(s.RetryWindow, DefaultRetryWindow) }

// Send mails the notification of a finished run. The Message-ID is derived
// from the run, so a resend after a crash is recognisable as the same
// message.
func (s SMTP) Send(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	m := mail.NewMsg()
	if err := m.From(s.From); err != nil {
		return fmt.Errorf("sender %q: %w", s.From, err)
	}
	if err := m.To(run.Spec.NotifyEmail); err != nil {
		return fmt.Errorf("recipient %q: %w", run.Spec.NotifyEmail, err)
	}
	m.SetMessageIDWithValue(string(run.UID) + "@jobrun.dev")
	subject, body := Compose(run)
	m.Subject(subject)
	m.SetBodyString(mail.TypeTextPlain, body)

	opts := []mail.Option{mail.WithPort(s.Port), mail.WithTimeout(orDefault(s.Timeout, 30*time.Second))}
	switch s.TLS {
	case "none":
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	case "tls":
		opts = append(opts, mail.WithSSL())
	default:
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory))
	}
	if s.TLS != "none" {
		// go-mail's default configuration, with the authorities.
		opts = append(opts, mail.WithTLSConfig(&tls.Config{ServerName: s.Host, RootCAs: s.RootCAs, MinVersion: tls.VersionTLS12}))
	}
	if s.Username != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthPlain), mail.WithUsername(s.Username), mail.WithPassword(s.Password))
	}
	c, err := mail.NewClient(s.Host, opts...)
	if err != nil {
		return err
	}
	return c.DialAndSendWithContext(ctx, m)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Compose writes the subject and body: job type, project, status, duration,
// result or error.
func Compose(run *jobsv1alpha1.JobRun) (string, string) {
	phase := run.CurrentPhase()
	subject := fmt.Sprintf("[jobrun] %s %s", run.Spec.JobType, phase)
	if run.Spec.ProjectID != "" {
		subject += " for project " + run.Spec.ProjectID
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Job type:  %s\n", run.Spec.JobType)
	if run.Spec.ProjectID != "" {
		fmt.Fprintf(&b, "Project:   %s\n", run.Spec.ProjectID)
	}
	fmt.Fprintf(&b, "Run:       %s\n", run.Name)
	fmt.Fprintf(&b, "Status:    %s\n", phase)
	if run.Status.CompletedAt != nil {
		from := run.CreatedAt()
		if run.Status.StartedAt != nil {
			from = run.Status.StartedAt.Time
		}
		fmt.Fprintf(&b, "Duration:  %s\n", run.Status.CompletedAt.Sub(from).Round(time.Millisecond))
	}
	if p := run.Status.Progress; p != nil {
		fmt.Fprintf(&b, "Progress:  %d/%d %s\n", p.Processed, p.Total, p.Message)
	}
	switch {
	case run.Status.Error != "":
		fmt.Fprintf(&b, "\nError:\n%s\n", run.Status.Error)
	case run.Status.Result != nil:
		var pretty any
		if json.Unmarshal(run.Status.Result.Raw, &pretty) == nil {
			out, _ := json.MarshalIndent(pretty, "", "  ")
			fmt.Fprintf(&b, "\nResult:\n%s\n", out)
		}
	}
	return subject, b.String()
}
