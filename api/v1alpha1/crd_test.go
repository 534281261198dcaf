package v1alpha1_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

func sampleFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(env.Root, "config", "samples", "jobs_v1alpha1_*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples found: %v", err)
	}
	return files
}

func TestSamplesAreAccepted(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)
	kinds := map[string]bool{}
	for _, file := range sampleFiles(t) {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &obj.Object); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		obj.SetNamespace(ns)
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Errorf("%s rejected: %v", filepath.Base(file), err)
		}
		kinds[obj.GetKind()] = true
	}
	want := map[string]bool{"JobType": true, "JobRun": true, "JobSchedule": true, "Project": true}
	if diff := cmp.Diff(want, kinds); diff != "" {
		t.Errorf("samples should hold one of each kind (-want +got):\n%s", diff)
	}

	// The two job types the next issues' handlers serve, with the scopes the
	// REST API relies on.
	for name, scope := range map[string]jobsv1alpha1.JobTypeScope{
		"demo-sync":        jobsv1alpha1.JobTypeScopeProject,
		"demo-maintenance": jobsv1alpha1.JobTypeScopeSystem,
	} {
		jt := &jobsv1alpha1.JobType{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, jt); err != nil {
			t.Fatalf("sample JobType %s: %v", name, err)
		}
		if jt.Spec.Scope != scope {
			t.Errorf("JobType %s: scope %q, want %q", name, jt.Spec.Scope, scope)
		}
	}
}

func TestSamplesApplyWithKubectl(t *testing.T) {
	ns := env.Namespace(t)
	// Server-side apply: the JobType CRD embeds a pod template and is too big
	// for client-side apply's last-applied annotation.
	out := env.Kubectl(t, "apply", "--server-side", "-n", ns, "-k", filepath.Join(env.Root, "config", "samples"))
	for _, want := range []string{"project.jobs.jobrun.dev/demo-project", "jobtype.jobs.jobrun.dev/demo-sync", "jobschedule.jobs.jobrun.dev/nightly-maintenance"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl apply output lacks %q:\n%s", want, out)
		}
	}
	// Applying the same manifests again changes nothing: defaults live in the
	// schema, so GitOps tools see no drift.
	out = env.Kubectl(t, "diff", "--server-side", "-n", ns, "-k", filepath.Join(env.Root, "config", "samples"))
	if strings.TrimSpace(out) != "" {
		t.Errorf("kubectl diff after apply shows drift:\n%s", out)
	}
}

func TestSchemaDefaults(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)

	jt := newJobType(ns, "plain_job")
	if err := env.Client.Create(ctx, jt); err != nil {
		t.Fatal(err)
	}
	want := jobsv1alpha1.JobTypeSpec{
		JobType:                  "plain_job",
		Scope:                    jobsv1alpha1.JobTypeScopeProject,
		Template:                 jt.Spec.Template,
		ActiveDeadlineSeconds:    ptr.To[int64](3600),
		StartTimeoutSeconds:      ptr.To[int64](600),
		CancelGracePeriodSeconds: ptr.To[int64](30),
		RetryLimit:               ptr.To[int32](0),
		TTLSecondsAfterFinished:  ptr.To[int32](604800),
		HistoryLimit:             ptr.To[int32](100),
	}
	if diff := cmp.Diff(want, jt.Spec); diff != "" {
		t.Errorf("JobType defaults (-want +got):\n%s", diff)
	}

	js := &jobsv1alpha1.JobSchedule{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hourly"},
		Spec:       jobsv1alpha1.JobScheduleSpec{Schedule: "@hourly", JobType: "plain_job"},
	}
	if err := env.Client.Create(ctx, js); err != nil {
		t.Fatal(err)
	}
	wantSchedule := jobsv1alpha1.JobScheduleSpec{
		Schedule:                   "@hourly",
		JobType:                    "plain_job",
		ConcurrencyPolicy:          jobsv1alpha1.ConcurrencyForbid,
		Suspend:                    ptr.To(false),
		SuccessfulRunsHistoryLimit: ptr.To[int32](3),
		FailedRunsHistoryLimit:     ptr.To[int32](1),
	}
	if diff := cmp.Diff(wantSchedule, js.Spec); diff != "" {
		t.Errorf("JobSchedule defaults (-want +got):\n%s", diff)
	}
}

// TestInvalidObjectsAreRejected checks that the API server itself refuses bad
// objects, with a message that names the problem.
func TestInvalidObjectsAreRejected(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)

	tests := []struct {
		name string
		obj  client.Object
		want string // a regexp the API server's message must match
	}{
		{
			name: "job type with uppercase letters",
			obj:  withJobType(newJobType(ns, "sync_a"), "Sync_A", "sync-a"),
			want: `spec.jobType: Invalid value: "Sync_A": spec.jobType in body should match`,
		},
		{
			name: "job type whose name does not match",
			obj:  withJobType(newJobType(ns, "sync_b"), "sync_b", "other-name"),
			want: `spec.jobType: Invalid value: metadata.name must be spec.jobType with underscores replaced by hyphens`,
		},
		{
			name: "job type with an unknown scope",
			obj:  func() client.Object { jt := newJobType(ns, "sync_c"); jt.Spec.Scope = "Team"; return jt }(),
			want: `spec.scope: Unsupported value: "Team": supported values: "Project", "System"`,
		},
		{
			name: "job type without a pod template",
			obj: &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "jobs.jobrun.dev/v1alpha1", "kind": "JobType",
				"metadata": map[string]any{"name": "sync-d", "namespace": ns},
				"spec":     map[string]any{"jobType": "sync_d"},
			}},
			want: `spec.template: Required value`,
		},
		{
			name: "job type with too many retries",
			obj: func() client.Object {
				jt := newJobType(ns, "sync_e")
				jt.Spec.RetryLimit = ptr.To[int32](11)
				return jt
			}(),
			want: `spec.retryLimit: Invalid value: 11: spec.retryLimit in body should be less than or equal to 10`,
		},
		{
			name: "job type with a zero deadline",
			obj: func() client.Object {
				jt := newJobType(ns, "sync_f")
				jt.Spec.ActiveDeadlineSeconds = ptr.To[int64](0)
				return jt
			}(),
			want: `spec.activeDeadlineSeconds: Invalid value: 0: spec.activeDeadlineSeconds in body should be greater than or equal to 1`,
		},
		{
			name: "run without a job type",
			obj: &jobsv1alpha1.JobRun{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "run-a"},
				Spec:       jobsv1alpha1.JobRunSpec{TriggeredBy: "manual:user:u1"},
			},
			want: `spec.jobType: Invalid value: "": spec.jobType in body should be at least 1 chars long`,
		},
		{
			name: "run without triggeredBy",
			obj: &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "jobs.jobrun.dev/v1alpha1", "kind": "JobRun",
				"metadata": map[string]any{"name": "run-b", "namespace": ns},
				"spec":     map[string]any{"jobType": "demo_sync"},
			}},
			want: `spec.triggeredBy: Required value`,
		},
		{
			name: "run with a team but no project",
			obj:  withProject(newJobRun(ns, "run-c"), "team-1", ""),
			want: `teamID and projectID are set together`,
		},
		{
			name: "run with a team id that cannot be a label value",
			obj:  withProject(newJobRun(ns, "run-d"), "team one", "project-1"),
			want: `spec.teamID: Invalid value: "team one": spec.teamID in body should match`,
		},
		{
			name: "run with params that are not an object",
			obj: &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "jobs.jobrun.dev/v1alpha1", "kind": "JobRun",
				"metadata": map[string]any{"name": "run-e", "namespace": ns},
				"spec":     map[string]any{"jobType": "demo_sync", "triggeredBy": "manual:user:u1", "params": []any{1, 2}},
			}},
			want: `spec.params: Invalid value: "array": spec.params in body must be of type object`,
		},
		{
			name: "schedule that is not cron",
			obj:  newSchedule(ns, "js-a", "every day at three"),
			want: `schedule must be five cron fields`,
		},
		{
			name: "schedule with four fields",
			obj:  newSchedule(ns, "js-b", "0 3 * *"),
			want: `schedule must be five cron fields`,
		},
		{
			name: "schedule with a TZ prefix",
			obj:  newSchedule(ns, "js-c", "TZ=Europe/Berlin 0 3 * * *"),
			want: `schedule must be five cron fields`,
		},
		{
			name: "schedule with an unknown concurrency policy",
			obj: func() client.Object {
				js := newSchedule(ns, "js-d", "*/5 * * * *")
				js.Spec.ConcurrencyPolicy = "Sometimes"
				return js
			}(),
			want: `spec.concurrencyPolicy: Unsupported value: "Sometimes": supported values: "Allow", "Forbid", "Replace"`,
		},
		{
			name: "schedule with a negative starting deadline",
			obj: func() client.Object {
				js := newSchedule(ns, "js-e", "@daily")
				js.Spec.StartingDeadlineSeconds = ptr.To[int64](-5)
				return js
			}(),
			want: `spec.startingDeadlineSeconds: Invalid value: -5: spec.startingDeadlineSeconds in body should be greater than or equal to 1`,
		},
		{
			name: "schedule with a malformed time zone",
			obj: func() client.Object {
				js := newSchedule(ns, "js-f", "@daily")
				js.Spec.TimeZone = "Europe/../etc"
				return js
			}(),
			want: `spec.timeZone: Invalid value: "Europe/../etc": spec.timeZone in body should match`,
		},
		{
			name: "project without a team",
			obj: &jobsv1alpha1.Project{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p-a"},
			},
			want: `spec.teamID: Invalid value: "": spec.teamID in body should be at least 1 chars long`,
		},
		{
			name: "project whose id is too long for a label",
			obj: &jobsv1alpha1.Project{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: strings.Repeat("p", 64)},
				Spec:       jobsv1alpha1.ProjectSpec{TeamID: "team-1"},
			},
			want: `metadata.name \(the project id\) must be at most 63 characters`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := env.Client.Create(ctx, tt.obj)
			expectInvalid(t, err, tt.want)
		})
	}
}

func TestImmutableFields(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)

	run := withProject(newJobRun(ns, "immutable-run"), "team-1", "project-1")
	jt := newJobType(ns, "immutable_type")
	project := &jobsv1alpha1.Project{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "project-1"},
		Spec:       jobsv1alpha1.ProjectSpec{TeamID: "team-1"},
	}
	for _, obj := range []client.Object{run, jt, project} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name   string
		obj    client.Object
		mutate func()
		want   string
	}{
		{"run spec", run, func() { run.Spec.Notify = true }, `spec: Invalid value: spec is immutable`},
		{"job type string", jt, func() { jt.Spec.JobType = "other_type" }, `jobType is immutable`},
		{"job type scope", jt, func() { jt.Spec.Scope = jobsv1alpha1.JobTypeScopeSystem }, `scope is immutable`},
		{"project team", project, func() { project.Spec.TeamID = "team-2" }, `teamID is immutable`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := tt.obj.DeepCopyObject().(client.Object)
			tt.mutate()
			expectInvalid(t, env.Client.Update(ctx, tt.obj), tt.want)
			// Put the object back as stored for the next case.
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(orig), tt.obj); err != nil {
				t.Fatal(err)
			}
		})
	}

	// A change that is allowed still goes through.
	jt.Spec.Description = "now described"
	if err := env.Client.Update(ctx, jt); err != nil {
		t.Errorf("updating a mutable JobType field: %v", err)
	}
}

// TestRunStatus checks the status subresource and the rules on a run's
// status: only the status endpoint writes it, a finished run stays finished,
// and the progress summary matches the counts.
func TestRunStatus(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)

	run := withProject(newJobRun(ns, "status-run"), "team-1", "project-1")
	run.Status.Phase = jobsv1alpha1.JobRunCompleted // dropped: status is a subresource
	if err := env.Client.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	// The API server shows a status nobody wrote yet as pending (the
	// schema's defaults, applied on every read): kubectl's STATUS column and
	// selectors on it need no write of the controller's.
	if run.Status.Phase != jobsv1alpha1.JobRunPending || run.Status.Attempts != 0 || len(run.Status.Conditions) != 0 {
		t.Errorf("create stored status %+v; status must only be written through /status, and read as pending", run.Status)
	}
	got := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(run), got); err != nil || got.Status.Phase != jobsv1alpha1.JobRunPending {
		t.Errorf("a new run reads with status.phase %q (%v), want pending", got.Status.Phase, err)
	}

	// An update of the main resource ignores status.
	run.Status.Phase = jobsv1alpha1.JobRunRunning
	run.Labels = map[string]string{jobsv1alpha1.LabelStatus: "running"}
	if err := env.Client.Update(ctx, run); err != nil {
		t.Fatal(err)
	}
	if run.Status.Phase != jobsv1alpha1.JobRunPending {
		t.Errorf("update of the main resource stored status.phase %q", run.Status.Phase)
	}

	// Wrong enum through /status.
	run.Status.Phase = "done"
	expectInvalid(t, env.Client.Status().Update(ctx, run), `status.phase: Unsupported value: "done": supported values: "pending", "running", "completed", "failed", "cancelled"`)

	// A progress summary that does not match the counts.
	bad := run.DeepCopy()
	bad.Status.Phase = jobsv1alpha1.JobRunRunning
	bad.Status.Progress = jobsv1alpha1.NewProgress(45, 200, "")
	bad.Status.Progress.Summary = "1/2"
	expectInvalid(t, env.Client.Status().Update(ctx, bad), `summary must be processed/total`)

	// A valid running status.
	started := metav1.NewMicroTime(time.Date(2026, 1, 15, 10, 30, 1, 123_000_000, time.UTC))
	run.Status.Phase = jobsv1alpha1.JobRunRunning
	run.Status.StartedAt = &started
	run.Status.Progress = jobsv1alpha1.NewProgress(45, 200, "Synced 38 users, 7 skipped")
	if err := env.Client.Status().Update(ctx, run); err != nil {
		t.Fatalf("writing a running status: %v", err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(run), got); err != nil {
		t.Fatal(err)
	}
	if !got.Status.StartedAt.Time.Equal(started.Time) {
		t.Errorf("startedAt stored as %v, want %v (millisecond precision must survive)", got.Status.StartedAt.Time, started.Time)
	}

	// Finish the run; its phase can then never change again.
	run.Status.Phase = jobsv1alpha1.JobRunCompleted
	run.Status.Result = &runtime.RawExtension{Raw: []byte(`{"synced":180,"total":200,"skipped":20}`)}
	if err := env.Client.Status().Update(ctx, run); err != nil {
		t.Fatalf("completing the run: %v", err)
	}
	run.Status.Phase = jobsv1alpha1.JobRunRunning
	expectInvalid(t, env.Client.Status().Update(ctx, run), `a finished run's phase cannot change`)
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(run), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != jobsv1alpha1.JobRunCompleted {
		t.Errorf("phase after a refused flip = %q, want completed", got.Status.Phase)
	}
	if diff := cmp.Diff(`{"skipped":20,"synced":180,"total":200}`, string(got.Status.Result.Raw)); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
}

func TestPrinterColumns(t *testing.T) {
	ns := env.Namespace(t)
	ctx := testenv.Context(t)

	run := withProject(newJobRun(ns, "printed-run"), "team-1", "project-1")
	if err := env.Client.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	run.Status.Phase = jobsv1alpha1.JobRunRunning
	run.Status.Progress = jobsv1alpha1.NewProgress(45, 200, "Synced 38 users, 7 skipped")
	run.Status.Conditions = []metav1.Condition{{Type: jobsv1alpha1.JobRunConditionQueued, Status: metav1.ConditionFalse,
		Reason: jobsv1alpha1.ReasonAdmitted, Message: "Kueue admitted pod printed-run-1", LastTransitionTime: metav1.Now()}}
	if err := env.Client.Status().Update(ctx, run); err != nil {
		t.Fatal(err)
	}

	// A run nobody has written the status of yet shows as pending.
	if err := env.Client.Create(ctx, withProject(newJobRun(ns, "new-run"), "team-1", "project-1")); err != nil {
		t.Fatal(err)
	}
	if out := env.Kubectl(t, "get", "jobruns", "new-run", "-n", ns, "--no-headers"); !regexp.MustCompile(`^new-run\s+demo_sync\s+project-1\s+pending\s+\d+s`).MatchString(out) {
		t.Errorf("kubectl get jobruns new-run: %q, want it pending", out)
	}

	tests := []struct {
		args []string
		want []string // header, then row, as whitespace-separated columns
	}{
		{
			args: []string{"get", "jobruns"},
			want: []string{`NAME\s+TYPE\s+PROJECT\s+STATUS\s+PROGRESS\s+AGE`, `printed-run\s+demo_sync\s+project-1\s+running\s+45/200\s+\d+s`},
		},
		{
			args: []string{"get", "jr", "-o", "wide"},
			want: []string{`NAME\s+TYPE\s+PROJECT\s+STATUS\s+PROGRESS\s+TEAM\s+MESSAGE\s+QUEUE\s+AGE`, `printed-run\s+demo_sync\s+project-1\s+running\s+45/200\s+team-1\s+Synced 38 users, 7 skipped\s+Admitted\s+\d+s`},
		},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out := env.Kubectl(t, append(tt.args, "-n", ns)...)
			for _, re := range tt.want {
				if !regexp.MustCompile(re).MatchString(out) {
					t.Errorf("kubectl %s output does not match %q:\n%s", strings.Join(tt.args, " "), re, out)
				}
			}
		})
	}

	// The jobrun-all category lists every kind at once, and does not shadow
	// the kinds' own names: `kubectl get jobrun NAME` still gets one run.
	if err := env.Client.Create(ctx, newJobType(ns, "printed_type")); err != nil {
		t.Fatal(err)
	}
	out := env.Kubectl(t, "get", "jobrun-all", "-n", ns)
	for _, want := range []string{"jobrun.jobs.jobrun.dev/printed-run", "jobtype.jobs.jobrun.dev/printed-type"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl get jobrun-all (the category) lacks %s:\n%s", want, out)
		}
	}
	out = env.Kubectl(t, "get", "jobrun", "printed-run", "-n", ns, "-o", "jsonpath={.status.phase}")
	if out != "running" {
		t.Errorf("kubectl get jobrun printed-run: %q, want its phase", out)
	}
}

func expectInvalid(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want rejection matching %q", want)
	}
	if !apierrors.IsInvalid(err) {
		t.Fatalf("error %v is not Invalid (422)", err)
	}
	if !regexp.MustCompile(want).MatchString(err.Error()) {
		t.Errorf("message %q does not match %q", err.Error(), want)
	}
}

func newJobType(ns, jobType string) *jobsv1alpha1.JobType {
	return &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jobsv1alpha1.JobTypeObjectName(jobType)},
		Spec: jobsv1alpha1.JobTypeSpec{
			JobType: jobType,
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "handler", Image: "jobrun:dev", Args: []string{"runner"}}},
			}},
		},
	}
}

func withJobType(jt *jobsv1alpha1.JobType, jobType, name string) *jobsv1alpha1.JobType {
	jt.Spec.JobType, jt.Name = jobType, name
	return jt
}

func newJobRun(ns, name string) *jobsv1alpha1.JobRun {
	return &jobsv1alpha1.JobRun{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: jobsv1alpha1.JobRunSpec{
			JobType:     "demo_sync",
			TriggeredBy: "manual:user:u1",
			Params:      &runtime.RawExtension{Raw: []byte(`{"items":10}`)},
		},
	}
}

func withProject(run *jobsv1alpha1.JobRun, team, project string) *jobsv1alpha1.JobRun {
	run.Spec.TeamID, run.Spec.ProjectID = team, project
	return run
}

func newSchedule(ns, name, schedule string) *jobsv1alpha1.JobSchedule {
	return &jobsv1alpha1.JobSchedule{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       jobsv1alpha1.JobScheduleSpec{Schedule: schedule, JobType: "demo_maintenance"},
	}
}
