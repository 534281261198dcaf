package revenuecat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/sdk"
)

// JobType is the job type string of the sync.
const JobType = "revenuecat_sync"

// EnvIntegrationsNamespace names the namespace of integration Secrets in
// the handler's environment (set in the JobType's pod template).
const EnvIntegrationsNamespace = "JOBRUN_INTEGRATIONS_NAMESPACE"

// anonymousPrefix marks RevenueCat's anonymous app user ids.
const anonymousPrefix = "$RCAnonymousID:"

// Params are revenuecat_sync's params.
type Params struct {
	// ProjectID, if given, must be the run's project.
	ProjectID string `json:"project_id,omitempty"`
	// IntegrationID names the project's integration.
	IntegrationID string `json:"integration_id"`
	// Full syncs every customer, also those unchanged since the last
	// successful sync.
	Full bool `json:"full,omitempty"`
}

// Result is the run's result: synced + skipped = total.
type Result struct {
	Synced  int64 `json:"synced"`
	Total   int64 `json:"total"`
	Skipped int64 `json:"skipped"`
}

// Options configure the handler.
type Options struct {
	// IntegrationsNamespace holds the integration Secrets.
	IntegrationsNamespace string
	// HTTPClient talks to RevenueCat and the destination (default: 30 s
	// timeout).
	HTTPClient *http.Client
	// PageSize is the customers per list page (default 100).
	PageSize int
}

// Handler returns the revenuecat_sync handler.
//
// It lists the project's customers page by page; anonymous customers
// ($RCAnonymousID:...) and customers not seen since the start of the last
// completed sync of the same integration are skipped; the others get their
// active entitlements read and are delivered, one signed batch per page.
// The list API gives no total, so total grows as pages are listed (the
// progress message says so) and is exact at the end: synced + skipped.
// Cancellation is checked between customers and between pages; a cancelled
// sync delivers what it has read and says how far it got. Deliveries are
// idempotent per customer state, so a re-run after a cancel or a failure
// sends nothing twice in effect.
func Handler(o Options) sdk.Handler {
	if o.PageSize <= 0 {
		o.PageSize = 100
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	return func(ctx context.Context, run *sdk.Run) (any, error) {
		s, err := newSyncRun(ctx, o, run)
		if err != nil {
			return nil, err
		}
		res, err := s.do(ctx)
		if err != nil {
			return nil, s.redact(err)
		}
		return res, nil
	}
}

// syncRun is one run of the sync: its clients, where it starts, its counts.
// (Not sync: that would shadow the standard library's package.)
type syncRun struct {
	run       *sdk.Run
	in        *Integration
	rc        *Client
	dest      *deliverer
	pageSize  int
	watermark int64 // ms: customers last seen before it are unchanged

	listed, synced, skipped int64
	more                    bool
}

func newSyncRun(ctx context.Context, o Options, run *sdk.Run) (*syncRun, error) {
	var p Params
	if err := run.Params(&p); err != nil {
		return nil, err
	}
	if run.ProjectID == "" {
		return nil, errors.New("revenuecat_sync is a project job: the run has no project")
	}
	if p.ProjectID != "" && p.ProjectID != run.ProjectID {
		return nil, fmt.Errorf("params.project_id %q is not the run's project %q", p.ProjectID, run.ProjectID)
	}
	if p.IntegrationID == "" {
		return nil, errors.New("invalid params: integration_id is required")
	}
	if o.IntegrationsNamespace == "" {
		return nil, fmt.Errorf("%s is not set in the %s job type's pod template: integration Secrets cannot be found", EnvIntegrationsNamespace, JobType)
	}
	if run.Client == nil {
		return nil, errors.New("the runner gave the handler no API client")
	}
	in, err := LoadIntegration(ctx, run.Client, o.IntegrationsNamespace, run.ProjectID, p.IntegrationID)
	if err != nil {
		return nil, err
	}
	s := &syncRun{run: run, in: in, pageSize: o.PageSize, dest: &deliverer{url: in.DestinationURL, secret: in.SigningSecret, http: o.HTTPClient}}
	if s.rc, err = NewClient(in.BaseURL, in.APIKey, in.RequestsPerMinute, o.HTTPClient); err != nil {
		return nil, s.redact(fmt.Errorf("RevenueCat integration %s: %w", in.ID, err))
	}
	if !p.Full {
		if s.watermark, err = lastSyncStart(ctx, run, in.ID); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// lastSyncStart is when the last completed sync of the integration started
// (ms; 0 if none): every customer seen since then was synced by it or will
// be by this run.
func lastSyncStart(ctx context.Context, run *sdk.Run, integration string) (int64, error) {
	runs := &jobsv1alpha1.JobRunList{}
	if err := run.Client.List(ctx, runs, client.InNamespace(run.Namespace), client.MatchingLabels{
		jobsv1alpha1.LabelJobType: JobType, jobsv1alpha1.LabelProject: run.ProjectID, jobsv1alpha1.LabelStatus: string(jobsv1alpha1.JobRunCompleted),
	}); err != nil {
		return 0, fmt.Errorf("reading earlier syncs: %w", err)
	}
	var latest int64
	for _, r := range runs.Items {
		if r.Name == run.ID || r.CurrentPhase() != jobsv1alpha1.JobRunCompleted || r.Status.StartedAt == nil || r.Spec.Params == nil {
			continue
		}
		var p Params
		if json.Unmarshal(r.Spec.Params.Raw, &p) != nil || p.IntegrationID != integration {
			continue
		}
		latest = max(latest, r.Status.StartedAt.UnixMilli())
	}
	return latest, nil
}

func (s *syncRun) do(ctx context.Context) (*Result, error) {
	next := ""
	s.more = true
	s.report("listing customers")
	for s.more {
		if ctx.Err() != nil {
			return nil, s.stopped(ctx)
		}
		page, err := s.rc.ListCustomers(ctx, s.in.RCProjectID, s.pageSize, next)
		if err != nil {
			if ctx.Err() != nil {
				return nil, s.stopped(ctx)
			}
			return nil, s.failed(fmt.Errorf("listing customers: %w", err))
		}
		s.listed += int64(len(page.Customers))
		next, s.more = page.Next, page.Next != ""
		batch := Batch{IntegrationID: s.in.ID, ProjectID: s.in.ProjectID, RunID: s.run.ID}
		var pageSkipped int64
		cut := false // cancelled in the middle of the page
		for _, c := range page.Customers {
			if ctx.Err() != nil {
				cut = true
				break
			}
			if strings.HasPrefix(c.ID, anonymousPrefix) || c.LastSeenAt < s.watermark {
				pageSkipped++
				continue
			}
			ents, err := s.rc.ActiveEntitlements(ctx, s.in.RCProjectID, c.ID)
			if err != nil {
				if ctx.Err() != nil {
					cut = true
					break
				}
				return nil, s.failed(fmt.Errorf("reading the active entitlements of customer %s: %w", c.ID, err))
			}
			batch.Records = append(batch.Records, normalize(c, ents))
		}
		// Deliver what was read, even when cancelled mid-page: on a
		// context of its own, briefly, so that the report is exact.
		if len(batch.Records) > 0 {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			err := s.dest.deliver(dctx, batch)
			cancel()
			if err != nil {
				return nil, s.failed(fmt.Errorf("delivering %d customers: %w", len(batch.Records), err))
			}
		}
		s.synced += int64(len(batch.Records))
		s.skipped += pageSkipped
		if cut {
			s.listed = s.synced + s.skipped
			return nil, s.stopped(ctx)
		}
		s.report("") // after the last page, the final message: more is false
	}
	return &Result{Synced: s.synced, Total: s.synced + s.skipped, Skipped: s.skipped}, nil
}

// report writes progress: processed = synced + skipped of total listed.
func (s *syncRun) report(note string) {
	msg := fmt.Sprintf("Synced %d users, %d skipped", s.synced, s.skipped)
	if s.more {
		msg += fmt.Sprintf("; %d listed so far, the total grows as pages are listed", s.listed)
	}
	if note != "" {
		msg += "; " + note
	}
	s.run.Progress(s.synced+s.skipped, max(s.listed, s.synced+s.skipped), msg)
}

func (s *syncRun) stopped(ctx context.Context) error {
	s.more = false
	s.report(fmt.Sprintf("cancelled after %d customers", s.synced+s.skipped))
	return ctx.Err()
}

func (s *syncRun) failed(err error) error {
	s.report(fmt.Sprintf("failed after %d customers", s.synced+s.skipped))
	return err
}

// redact keeps the integration's secrets out of an error that reaches the
// run's status.
func (s *syncRun) redact(err error) error {
	if s == nil || s.in == nil || err == nil {
		return err
	}
	msg := err.Error()
	for _, secret := range s.in.secrets() {
		if len(secret) >= 4 && strings.Contains(msg, secret) {
			msg = strings.ReplaceAll(msg, secret, "[redacted]")
		}
	}
	if msg == err.Error() {
		return err
	}
	return errors.New(msg)
}
