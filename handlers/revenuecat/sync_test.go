package revenuecat_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/handlers/revenuecat"
	"jobrun.dev/jobrun/handlers/revenuecat/rcfake"
	"jobrun.dev/jobrun/sdk"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

const (
	apiKey        = "sk_test_0123456789abcdefSECRET"
	signingSecret = "whsec-0123456789abcdef0123456789abcdef"
	rcProject     = "proj1ab2c3d4"
	project       = "project-1"
)

// fixture is one project's integration with a fake RevenueCat and a fake
// ingest endpoint, and the namespaces of its runs and integration Secrets.
type fixture struct {
	t                  *testing.T
	rc                 *rcfake.RevenueCat
	dest               *rcfake.Destination
	ns, integrationsNS string
	logs               *bytes.Buffer
	logMu              sync.Mutex
}

func newFixture(t *testing.T, key string) *fixture {
	f := &fixture{t: t, rc: rcfake.NewRevenueCat(apiKey, rcProject), dest: rcfake.NewDestination([]byte(signingSecret)),
		ns: env.Namespace(t), integrationsNS: env.Namespace(t), logs: &bytes.Buffer{}}
	t.Cleanup(f.rc.Close)
	t.Cleanup(f.dest.Close)
	f.secret("int-1", project, key)
	return f
}

func (f *fixture) secret(id, project, key string) {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.integrationsNS, Name: revenuecat.SecretPrefix + id, Labels: map[string]string{
			jobsv1alpha1.LabelProject: project, revenuecat.LabelIntegration: "revenuecat",
		}},
		StringData: map[string]string{
			revenuecat.KeyAPIKey: key, revenuecat.KeyRCProjectID: rcProject, revenuecat.KeyBaseURL: f.rc.URL(),
			revenuecat.KeyDestinationURL: f.dest.URL(), revenuecat.KeySigningSecret: signingSecret,
			revenuecat.KeyRequestsPerMinute: "60000",
		},
	}
	if err := env.Client.Create(context.Background(), s); err != nil {
		f.t.Fatal(err)
	}
}

// customers puts n customers c-000..., every tenth anonymous, each seen at
// seenAt, with one entitlement expiring in a day.
func (f *fixture) customers(n int, seenAt time.Time) {
	for i := range n {
		id := fmt.Sprintf("c-%04d", i)
		if i%10 == 9 {
			id = fmt.Sprintf("$RCAnonymousID:%04d", i)
		}
		exp := seenAt.Add(24 * time.Hour).UnixMilli()
		f.rc.Put(revenuecat.Customer{ID: id, FirstSeenAt: seenAt.Add(-time.Hour).UnixMilli(), LastSeenAt: seenAt.UnixMilli(), LastSeenPlatform: "ios", LastSeenCountry: "DE"},
			revenuecat.ActiveEntitlement{EntitlementID: "pro", ExpiresAt: &exp})
	}
}

func (f *fixture) newRun(params string) *jobsv1alpha1.JobRun {
	f.t.Helper()
	jr := testrun.Make(f.ns, "").GenerateName("sync-").JobType(revenuecat.JobType).Team("team-1").Project(project).TriggerLabels().
		TriggeredBy("manual:user:u1").Params(params).Obj()
	if err := env.Client.Create(context.Background(), jr); err != nil {
		f.t.Fatal(err)
	}
	if err := testrun.RecordAttempt(context.Background(), env.Client, jr, 1); err != nil {
		f.t.Fatal(err)
	}
	return jr
}

// serve runs jr through the real runner (sdk.Serve) with the handler, and
// returns the exit code and the run as it ends.
func (f *fixture) serve(ctx context.Context, jr *jobsv1alpha1.JobRun, pageSize int) (int, *jobsv1alpha1.JobRun) {
	f.t.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		f.t.Fatal(err)
	}
	log := funcr.New(func(prefix, args string) {
		f.logMu.Lock()
		defer f.logMu.Unlock()
		fmt.Fprintln(f.logs, prefix, args)
	}, funcr.Options{Verbosity: 10})
	code := sdk.Serve(ctx, sdk.Config{
		Client: c, Namespace: jr.Namespace, Name: jr.Name, Attempt: 1,
		Handlers:         map[string]sdk.Handler{revenuecat.JobType: revenuecat.Handler(revenuecat.Options{IntegrationsNamespace: f.integrationsNS, PageSize: pageSize})},
		ProgressInterval: 20 * time.Millisecond, CancelPollInterval: 100 * time.Millisecond, Log: log,
	})
	got := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(jr), got); err != nil {
		f.t.Fatal(err)
	}
	f.noSecrets(got)
	return code, got
}

// noSecrets fails when a secret of the integration is in the run's status
// or the runner's log.
func (f *fixture) noSecrets(jr *jobsv1alpha1.JobRun) {
	f.t.Helper()
	status, _ := json.Marshal(jr.Status)
	f.logMu.Lock()
	logs := f.logs.String()
	f.logMu.Unlock()
	for _, secret := range []string{apiKey, signingSecret, "SECRET"} {
		if strings.Contains(string(status), secret) || strings.Contains(logs, secret) {
			f.t.Errorf("a secret (%q...) leaked into the status or the log", secret[:4])
		}
	}
}

// complete marks a run completed as the controller would (status.phase and
// startedAt are the controller's to write).
func complete(t *testing.T, jr *jobsv1alpha1.JobRun, startedAt time.Time) {
	t.Helper()
	patch := client.MergeFrom(jr.DeepCopy())
	jr.Status.Phase = jobsv1alpha1.JobRunCompleted
	jr.Status.StartedAt = ptr.To(metav1.NewMicroTime(startedAt))
	jr.Status.CompletedAt = ptr.To(metav1.NowMicro())
	if err := env.Client.Status().Patch(context.Background(), jr, patch); err != nil {
		t.Fatal(err)
	}
	jr.Labels[jobsv1alpha1.LabelStatus] = string(jobsv1alpha1.JobRunCompleted)
	if err := env.Client.Update(context.Background(), jr); err != nil {
		t.Fatal(err)
	}
}

func result(t *testing.T, jr *jobsv1alpha1.JobRun) revenuecat.Result {
	t.Helper()
	var r revenuecat.Result
	if jr.Status.Result == nil {
		t.Fatalf("run has no result; error %q, progress %+v", jr.Status.Error, jr.Status.Progress)
	}
	dec := json.NewDecoder(bytes.NewReader(jr.Status.Result.Raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("result %s is not the spec's shape: %v", jr.Status.Result.Raw, err)
	}
	return r
}

// TestSyncPagesRetriesAndCounts: 230 customers over five pages, a 429 with
// Retry-After, a retryable 500, a destination that fails once; the run's
// result and progress are exact and the destination holds every named
// customer once, with valid signatures.
func TestSyncPagesRetriesAndCounts(t *testing.T) {
	f := newFixture(t, apiKey)
	seen := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	f.customers(230, seen)
	f.rc.Inject(
		rcfake.Fault{Path: "/customers?", Status: 429, Type: "rate_limit_error", Retryable: true, RetryAfter: 1, BackoffMS: 1000},
		rcfake.Fault{Path: "/active_entitlements", Status: 500, Type: "internal_error", Retryable: true, BackoffMS: 50},
	)
	f.dest.FailNext(1)
	jr := f.newRun(`{"project_id":"project-1","integration_id":"int-1"}`)

	start := time.Now()
	code, got := f.serve(testenv.Context(t), jr, 50)
	if code != 0 {
		t.Fatalf("exit %d, error %q", code, got.Status.Error)
	}
	if elapsed := time.Since(start); elapsed < time.Second {
		t.Errorf("finished in %s: the 429's Retry-After of 1 s was not respected", elapsed)
	}
	if r := result(t, got); r != (revenuecat.Result{Synced: 207, Total: 230, Skipped: 23}) {
		t.Errorf("result %+v, want synced 207 + skipped 23 (anonymous) = total 230", r)
	}
	p := got.Status.Progress
	if p == nil || p.Processed != 230 || p.Total != 230 || p.Message != "Synced 207 users, 23 skipped" {
		t.Errorf("progress %+v", p)
	}
	if n := f.rc.Requests("list"); n != 5 {
		t.Errorf("%d list pages answered, want 5 (230 customers, 50 a page)", n)
	}
	if f.rc.Requests("fault:429") != 1 || f.rc.Requests("fault:500") != 1 {
		t.Errorf("faults not all hit: 429 %d, 500 %d", f.rc.Requests("fault:429"), f.rc.Requests("fault:500"))
	}
	st := f.dest.Stats()
	if st.Customers != 207 || st.BadSignatures != 0 || st.Duplicates != 0 {
		t.Errorf("destination %+v, want 207 customers, no bad signature, no duplicate", st)
	}
	rec, ok := f.dest.Record("c-0000")
	if !ok || len(rec.Entitlements) != 1 || rec.Entitlements[0].ID != "pro" || rec.Entitlements[0].ExpiresAt == nil ||
		!rec.LastSeenAt.Equal(seen) || rec.Platform != "ios" || rec.Country != "DE" {
		t.Errorf("record of c-0000: %+v", rec)
	}
	if _, ok := f.dest.Record("$RCAnonymousID:0009"); ok {
		t.Error("an anonymous customer was delivered")
	}
}

// TestSyncSkipsUnchanged: after a completed sync, only customers seen since
// it started are synced again; full: true syncs all.
func TestSyncSkipsUnchanged(t *testing.T) {
	f := newFixture(t, apiKey)
	old := time.Now().Add(-2 * time.Hour)
	f.customers(40, old)
	first := f.newRun(`{"integration_id":"int-1"}`)
	if code, got := f.serve(testenv.Context(t), first, 100); code != 0 {
		t.Fatalf("first sync: exit %d, %q", code, got.Status.Error)
	}
	complete(t, first, time.Now().Add(-time.Hour))

	for i := range 5 { // five customers come back
		f.rc.Put(revenuecat.Customer{ID: fmt.Sprintf("c-%04d", i), FirstSeenAt: old.UnixMilli(), LastSeenAt: time.Now().UnixMilli()})
	}
	code, got := f.serve(testenv.Context(t), f.newRun(`{"integration_id":"int-1"}`), 100)
	if code != 0 {
		t.Fatalf("second sync: exit %d, %q", code, got.Status.Error)
	}
	if r := result(t, got); r != (revenuecat.Result{Synced: 5, Total: 40, Skipped: 35}) {
		t.Errorf("second sync %+v, want 5 synced, 35 skipped (31 unchanged + 4 anonymous)", r)
	}
	code, got = f.serve(testenv.Context(t), f.newRun(`{"integration_id":"int-1","full":true}`), 100)
	if r := result(t, got); code != 0 || r != (revenuecat.Result{Synced: 36, Total: 40, Skipped: 4}) {
		t.Errorf("full sync: exit %d %+v, want 36 synced, 4 anonymous skipped", code, r)
	}
}

// TestSyncCancelThenRerun: a cancel mid-sync stops it between customers,
// with progress that says how far it got; a re-run completes, and the
// destination holds each customer once (re-sent records are recognised by
// their idempotency key).
func TestSyncCancelThenRerun(t *testing.T) {
	f := newFixture(t, apiKey)
	f.customers(120, time.Now().Add(-time.Hour))
	jr := f.newRun(`{"integration_id":"int-1"}`)
	var once sync.Once
	f.rc.OnEntitlements(func(n int) {
		if n == 30 {
			once.Do(func() {
				cancelled := jr.DeepCopy()
				cancelled.RequestCancel(time.Now())
				if err := env.Client.Patch(context.Background(), cancelled, client.MergeFrom(jr)); err != nil {
					t.Errorf("requesting cancel: %v", err)
				}
			})
		}
		if n > 30 {
			time.Sleep(20 * time.Millisecond) // give the cancel time to arrive
		}
	})
	code, got := f.serve(testenv.Context(t), jr, 50)
	if code != jobsv1alpha1.ExitCodeCancelled {
		t.Fatalf("exit %d, want cancelled (%d); error %q", code, jobsv1alpha1.ExitCodeCancelled, got.Status.Error)
	}
	p := got.Status.Progress
	delivered := f.dest.Stats().Customers
	if p == nil || !strings.Contains(p.Message, "cancelled after") || p.Processed >= 120 || p.Processed != p.Total || delivered == 0 {
		t.Fatalf("cancelled progress %+v, %d delivered", p, delivered)
	}
	if want := fmt.Sprintf("Synced %d users", delivered); !strings.HasPrefix(p.Message, want) {
		t.Errorf("progress says %q, the destination holds %d", p.Message, delivered)
	}

	f.rc.OnEntitlements(nil)
	code, got = f.serve(testenv.Context(t), f.newRun(`{"integration_id":"int-1"}`), 50)
	if r := result(t, got); code != 0 || r != (revenuecat.Result{Synced: 108, Total: 120, Skipped: 12}) {
		t.Errorf("re-run: exit %d %+v", code, r)
	}
	if st := f.dest.Stats(); st.Customers != 108 || st.Duplicates != delivered {
		t.Errorf("destination %+v: want 108 customers, and the %d re-sent records recognised as duplicates", st, delivered)
	}
}

// TestSyncFailures: a wrong key fails the run at once with RevenueCat's
// message and no secret; another project's integration is not found.
func TestSyncFailures(t *testing.T) {
	f := newFixture(t, "sk_wrong_key_SECRET")
	f.customers(10, time.Now())
	code, got := f.serve(testenv.Context(t), f.newRun(`{"integration_id":"int-1"}`), 50)
	if code != jobsv1alpha1.ExitCodeFailed || !strings.Contains(got.Status.Error, "401 authentication_error: Invalid API key.") {
		t.Errorf("wrong key: exit %d, error %q", code, got.Status.Error)
	}
	if n := f.rc.Requests("unauthorized"); n != 1 {
		t.Errorf("%d unauthorized requests: a 401 must not be retried", n)
	}

	f.secret("other", "project-2", apiKey)
	code, got = f.serve(testenv.Context(t), f.newRun(`{"integration_id":"other"}`), 50)
	if code != jobsv1alpha1.ExitCodeFailed || got.Status.Error != "RevenueCat integration other of project project-1 not found" {
		t.Errorf("another project's integration: exit %d, error %q", code, got.Status.Error)
	}
	code, got = f.serve(testenv.Context(t), f.newRun(`{"integration_id":"int-1","project_id":"project-2"}`), 50)
	if code != jobsv1alpha1.ExitCodeFailed || !strings.Contains(got.Status.Error, "not the run's project") {
		t.Errorf("params for another project: exit %d, error %q", code, got.Status.Error)
	}
}

// TestClientWaitsAreCancellable: a cancel ends a 30 s Retry-After wait.
func TestClientWaitsAreCancellable(t *testing.T) {
	rc := rcfake.NewRevenueCat(apiKey, rcProject)
	defer rc.Close()
	rc.Inject(rcfake.Fault{Path: "/customers?", Status: 429, Type: "rate_limit_error", Retryable: true, RetryAfter: 30})
	c, err := revenuecat.NewClient(rc.URL(), apiKey, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err = c.ListCustomers(ctx, rcProject, 10, "")
	if !errors.Is(err, context.Canceled) || time.Since(start) > 20*time.Second {
		t.Errorf("got %v after %s; want context.Canceled long before the 30 s wait", err, time.Since(start))
	}
}

// TestClientRateLimit: 40 requests at 600 a minute (10/s, burst 10) take
// at least 3 s: the client-side limit holds.
func TestClientRateLimit(t *testing.T) {
	rc := rcfake.NewRevenueCat(apiKey, rcProject)
	defer rc.Close()
	c, err := revenuecat.NewClient(rc.URL(), apiKey, 600, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 40 {
		if _, err := c.ListCustomers(context.Background(), rcProject, 10, ""); err != nil {
			t.Fatal(err)
		}
	}
	if elapsed := time.Since(start); elapsed < 2900*time.Millisecond {
		t.Errorf("40 requests in %s at 600/min", elapsed)
	}
}
