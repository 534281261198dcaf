package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// namespace makes a namespace for one test with the runner's service account
// and the demo_sync JobType of createJobType.
func namespace(t *testing.T, mutate ...func(*jobsv1alpha1.JobType)) string {
	t.Helper()
	ns := "e2e-" + strings.ToLower(rand.String(6))
	if err := cluster.InstallRunner(testenv.Context(t), ns); err != nil {
		t.Fatal(err)
	}
	createJobType(t, ns, mutate...)
	return ns
}

// createJobType creates the demo_sync JobType of demoSyncJobType in ns.
func createJobType(t *testing.T, ns string, mutate ...func(*jobsv1alpha1.JobType)) {
	t.Helper()
	if err := cluster.Client.Create(testenv.Context(t), demoSyncJobType(t, ns, mutate...)); err != nil {
		t.Fatal(err)
	}
}

// demoSyncJobType is the demo_sync JobType for ns, with the sample's params
// schema, no retries and a 3 s cancel grace period; mutate adjusts it.
func demoSyncJobType(t *testing.T, ns string, mutate ...func(*jobsv1alpha1.JobType)) *jobsv1alpha1.JobType {
	t.Helper()
	jt := &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-sync"},
		Spec: jobsv1alpha1.JobTypeSpec{
			JobType: "demo_sync",
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				// A short grace period: the dev node kills ignored SIGTERMs fast.
				TerminationGracePeriodSeconds: ptr.To[int64](2),
				Containers:                    []corev1.Container{{Name: "handler", Image: "jobrun:dev", Args: []string{"runner", "--cancel-poll-interval=2s"}}},
			}},
			CancelGracePeriodSeconds: ptr.To[int64](3),
			RetryLimit:               ptr.To[int32](0),
			ParamsSchema:             &runtime.RawExtension{Raw: demoSyncSchema(t)},
		},
	}
	for _, m := range mutate {
		m(jt)
	}
	return jt
}

// trigger creates a demo_sync run of project-1 in ns, as the REST API
// would; mutate adjusts it before it is created.
func trigger(t *testing.T, ns, params string, mutate ...func(*jobsv1alpha1.JobRun)) *jobsv1alpha1.JobRun {
	t.Helper()
	jr := testrun.Make(ns, uuid.NewString()).JobType("demo_sync").Team("team-1").Project("project-1").TriggerLabels().
		TriggeredBy("manual:user:e2e").Params(params).CreatedAt(time.Now()).Obj()
	for _, m := range mutate {
		m(jr)
	}
	if err := cluster.Client.Create(testenv.Context(t), jr); err != nil {
		t.Fatal(err)
	}
	return jr
}

func get(ctx context.Context, jr *jobsv1alpha1.JobRun) (*jobsv1alpha1.JobRun, error) {
	got := &jobsv1alpha1.JobRun{}
	return got, cluster.Client.Get(ctx, client.ObjectKeyFromObject(jr), got)
}

// waitFor polls the run until cond accepts it.
func waitFor(t *testing.T, jr *jobsv1alpha1.JobRun, timeout time.Duration, what string, cond func(*jobsv1alpha1.JobRun) bool) *jobsv1alpha1.JobRun {
	t.Helper()
	var got *jobsv1alpha1.JobRun
	testenv.Eventually(t, timeout, func(ctx context.Context) error {
		var err error
		if got, err = get(ctx, jr); err != nil {
			return err
		}
		if !cond(got) {
			return fmt.Errorf("run %s is %q (progress %+v, error %q), waiting for %s", jr.Name, got.Status.Phase, got.Status.Progress, got.Status.Error, what)
		}
		return nil
	})
	return got
}

func phase(p jobsv1alpha1.JobRunPhase) func(*jobsv1alpha1.JobRun) bool {
	return func(jr *jobsv1alpha1.JobRun) bool { return jr.Status.Phase == p }
}

func progressed(jr *jobsv1alpha1.JobRun) bool {
	return jr.Status.Phase == jobsv1alpha1.JobRunRunning && jr.Status.Progress != nil && jr.Status.Progress.Processed > 0
}

// pid is the process the dev node runs for the run's current pod.
func pid(t *testing.T, jr *jobsv1alpha1.JobRun) int {
	t.Helper()
	pod := &corev1.Pod{}
	if err := cluster.Client.Get(context.Background(), client.ObjectKey{Namespace: jr.Namespace, Name: jr.Status.PodName}, pod); err != nil {
		t.Fatal(err)
	}
	if len(pod.Status.ContainerStatuses) != 1 {
		t.Fatalf("pod %s has no container status", pod.Name)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "process://"))
	if err != nil {
		t.Fatalf("container id %q: %v", pod.Status.ContainerStatuses[0].ContainerID, err)
	}
	return n
}

// gone reports whether a process no longer exists (or is a zombie awaiting
// its parent).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return true
	}
	return false
}

func finishedReason(jr *jobsv1alpha1.JobRun) string {
	if c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); c != nil {
		return c.Reason
	}
	return ""
}

func TestDemoSyncCompletes(t *testing.T) {
	ns := namespace(t)
	jr := trigger(t, ns, `{"items": 30, "item_ms": 50}`)
	// Not asserted: that the run was seen running. A short run may go from
	// pending to completed between two looks, which is correct.
	done := waitFor(t, jr, 90*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))

	if p := done.Status.Progress; p == nil || p.Processed != 30 || p.Total != 30 || p.Message != "Processed 30 of 30 items" {
		t.Errorf("final progress = %+v, want 30/30", p)
	}
	var result map[string]int
	if err := json.Unmarshal(done.Status.Result.Raw, &result); err != nil || result["processed"] != 30 || result["total"] != 30 {
		t.Errorf("result = %s (%v)", done.Status.Result.Raw, err)
	}
	if done.Status.StartedAt == nil || done.Status.CompletedAt == nil || !done.Status.CompletedAt.After(done.Status.StartedAt.Time) {
		t.Errorf("startedAt %v, completedAt %v", done.Status.StartedAt, done.Status.CompletedAt)
	}
	if done.Status.Error != "" || done.Labels[jobsv1alpha1.LabelStatus] == "" {
		t.Errorf("error %q, status label %q", done.Status.Error, done.Labels[jobsv1alpha1.LabelStatus])
	}
	t.Logf("created→started latency: %s", done.Status.StartedAt.Sub(jr.Spec.CreatedAt.Time))

	// The manager's metrics count the run's start and end.
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		for _, want := range []string{
			`jobrun_runs_started_total{job_type="demo_sync"}`,
			`jobrun_runs_finished_total{job_type="demo_sync",status="completed"}`,
			`jobrun_run_duration_seconds_count{job_type="demo_sync",status="completed"}`,
			`jobrun_run_start_latency_seconds_count{job_type="demo_sync"}`,
		} {
			if !strings.Contains(string(body), want) {
				return fmt.Errorf("manager metrics lack %s", want)
			}
		}
		return nil
	})
}

func TestFailingHandler(t *testing.T) {
	ns := namespace(t)
	jr := trigger(t, ns, `{"items": 10, "item_ms": 20, "fail_at": 4}`)
	done := waitFor(t, jr, 120*time.Second, "failed", phase(jobsv1alpha1.JobRunFailed))
	if done.Status.Error != "item 4 failed (fail_at)" || finishedReason(done) != jobsv1alpha1.ReasonHandlerFailed {
		t.Errorf("error %q reason %q", done.Status.Error, finishedReason(done))
	}
	if p := done.Status.Progress; p == nil || p.Processed != 3 {
		t.Errorf("progress before the failure not kept: %+v", p)
	}
}

// demoSyncSchema is the paramsSchema of the demo_sync sample JobType.
func demoSyncSchema(t *testing.T) []byte {
	t.Helper()
	return sampleJobType(t, "jobs_v1alpha1_jobtype_demo_sync.yaml").Spec.ParamsSchema.Raw
}

// sampleJobType reads a JobType from config/samples.
func sampleJobType(t *testing.T, file string) *jobsv1alpha1.JobType {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.Root(), "config", "samples", file))
	if err != nil {
		t.Fatal(err)
	}
	jt := &jobsv1alpha1.JobType{}
	if err := yaml.UnmarshalStrict(data, jt); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return jt
}

func TestBadParamsFailBeforeAnyPod(t *testing.T) {
	ns := namespace(t)
	for params, want := range map[string]string{
		`{"itemz": 10}`: `invalid params: params: Invalid value: "itemz": .itemz in body is a forbidden property`,
		`{"items": -5}`: `invalid params: params.items: Invalid value: -5: items in body should be greater than or equal to 0`,
	} {
		jr := trigger(t, ns, params)
		done := waitFor(t, jr, 120*time.Second, "failed", phase(jobsv1alpha1.JobRunFailed))
		if done.Status.Error != want || finishedReason(done) != jobsv1alpha1.ReasonInvalidParams {
			t.Errorf("params %s: error %q reason %q, want %q", params, done.Status.Error, finishedReason(done), want)
		}
		if c := meta.FindStatusCondition(done.Status.Conditions, jobsv1alpha1.JobRunConditionAccepted); c == nil || c.Status != metav1.ConditionFalse {
			t.Errorf("params %s: Accepted condition %+v", params, c)
		}
		if done.Status.Attempts != 0 {
			t.Errorf("params %s: %d pods started for invalid params", params, done.Status.Attempts)
		}
	}
}

func TestCancelCooperativeHandler(t *testing.T) {
	ns := namespace(t)
	jr := trigger(t, ns, `{"items": 2000, "item_ms": 50}`)
	running := waitFor(t, jr, 120*time.Second, "progress", progressed)
	proc := pid(t, running)

	requested := time.Now()
	requestCancel(t, jr)
	done := waitFor(t, jr, 60*time.Second, "cancelled", phase(jobsv1alpha1.JobRunCancelled))
	t.Logf("cancel request → run cancelled: %s", time.Since(requested))
	if finishedReason(done) != jobsv1alpha1.ReasonCancelled || done.Status.Error != "" {
		t.Errorf("reason %q error %q", finishedReason(done), done.Status.Error)
	}
	if p := done.Status.Progress; p == nil || p.Processed == 0 || p.Processed >= 2000 {
		t.Errorf("cancelled run's progress = %+v, want its last partial progress", p)
	}
	testenv.Eventually(t, 30*time.Second, func(context.Context) error {
		if !gone(proc) {
			return fmt.Errorf("runner process %d still running", proc)
		}
		return nil
	})
}

func TestCancelIgnoredUntilGracePeriod(t *testing.T) {
	ns := namespace(t)
	jr := trigger(t, ns, `{"items": 2000, "item_ms": 50, "ignore_cancel": true}`)
	running := waitFor(t, jr, 120*time.Second, "progress", progressed)
	proc := pid(t, running)

	requested := time.Now()
	requestCancel(t, jr)
	done := waitFor(t, jr, 60*time.Second, "cancelled", phase(jobsv1alpha1.JobRunCancelled))
	elapsed := time.Since(requested)
	if finishedReason(done) != jobsv1alpha1.ReasonCancelGracePeriodExceeded {
		t.Errorf("reason %q, want %s", finishedReason(done), jobsv1alpha1.ReasonCancelGracePeriodExceeded)
	}
	if elapsed < 3*time.Second {
		t.Errorf("cancelled after %s, before the 3s grace period ended", elapsed)
	}
	// The pod was deleted: the dev node sends SIGTERM (ignored by the
	// runner's handler... the runner itself exits on SIGTERM) and SIGKILL
	// after the pod's grace period.
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		if !gone(proc) {
			return fmt.Errorf("the stubborn handler's process %d is still running", proc)
		}
		return nil
	})
}

func TestRunnerKilled(t *testing.T) {
	ns := namespace(t)
	jr := trigger(t, ns, `{"items": 2000, "item_ms": 50}`)
	running := waitFor(t, jr, 120*time.Second, "progress", progressed)
	if err := syscall.Kill(pid(t, running), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	done := waitFor(t, jr, 60*time.Second, "failed", phase(jobsv1alpha1.JobRunFailed))
	if done.Status.Error != "container handler was killed (SIGKILL, exit code 137)" {
		t.Errorf("error %q", done.Status.Error)
	}
}

func TestDeadline(t *testing.T) {
	ns := namespace(t, func(jt *jobsv1alpha1.JobType) { jt.Spec.ActiveDeadlineSeconds = ptr.To[int64](3) })
	jr := trigger(t, ns, `{"items": 2000, "item_ms": 50}`)
	running := waitFor(t, jr, 120*time.Second, "progress", progressed)
	proc := pid(t, running)
	done := waitFor(t, jr, 60*time.Second, "failed", phase(jobsv1alpha1.JobRunFailed))
	if finishedReason(done) != jobsv1alpha1.ReasonDeadlineExceeded || done.Status.Error != "run exceeded its deadline of 3s" {
		t.Errorf("reason %q error %q", finishedReason(done), done.Status.Error)
	}
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		if !gone(proc) {
			return fmt.Errorf("the overdue process %d is still running", proc)
		}
		return nil
	})
}

func TestRetentionDeletesOldRuns(t *testing.T) {
	ns := namespace(t, func(jt *jobsv1alpha1.JobType) { jt.Spec.HistoryLimit = ptr.To[int32](2) })
	var runs []*jobsv1alpha1.JobRun
	for range 4 {
		jr := trigger(t, ns, `{"items": 1, "item_ms": 1}`)
		waitFor(t, jr, 120*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
		runs = append(runs, jr)
	}
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		runs, err := testenv.Runs(ctx, cluster.Client, ns)
		if err != nil {
			return err
		}
		if len(runs) != 2 {
			return fmt.Errorf("%d runs kept, want the history limit of 2", len(runs))
		}
		return nil
	})
	for _, jr := range runs[2:] {
		if _, err := get(context.Background(), jr); err != nil {
			t.Errorf("newest run %s: %v", jr.Name, err)
		}
	}
	// The garbage collector takes the deleted runs' pods with them.
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		pods := &corev1.PodList{}
		if err := cluster.Client.List(ctx, pods, client.InNamespace(ns)); err != nil {
			return err
		}
		if len(pods.Items) != 2 {
			return fmt.Errorf("%d pods left, want the 2 of the kept runs", len(pods.Items))
		}
		return nil
	})
}

// requestCancel asks the run to stop, as the REST API's cancel does.
func requestCancel(t *testing.T, jr *jobsv1alpha1.JobRun) {
	t.Helper()
	testenv.Annotate(t, cluster.Client, jr.DeepCopy(), jobsv1alpha1.AnnotationCancelRequested, time.Now().UTC().Format(time.RFC3339))
}

// TestRunnerMayOnlyWriteItsOwnRun uses a real runner's credentials (the
// token the dev node agent requested for its pod) against another run.
func TestRunnerMayOnlyWriteItsOwnRun(t *testing.T) {
	ns := namespace(t)
	own := trigger(t, ns, `{"items": 2000, "item_ms": 50}`)
	other := trigger(t, ns, `{"items": 2000, "item_ms": 50}`)
	t.Cleanup(func() {
		requestCancel(t, own)
		requestCancel(t, other)
	})
	running := waitFor(t, own, 120*time.Second, "progress", progressed)
	waitFor(t, other, 120*time.Second, "progress", progressed)

	cfg, err := clientcmd.BuildConfigFromFlags("", cluster.PodKubeconfig(ns, running.Status.PodName))
	if err != nil {
		t.Fatal(err)
	}
	runner, err := client.New(cfg, client.Options{Scheme: cluster.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testenv.Context(t)
	patch := client.RawPatch(types.MergePatchType, []byte(`{"status":{"error":"written by someone else"}}`))

	err = runner.Status().Patch(ctx, other.DeepCopy(), patch)
	if err == nil || !strings.Contains(err.Error(), "a runner may only write the status of its own run; pod "+running.Status.PodName+" is not a pod of run "+other.Name) {
		t.Errorf("runner of %s writing %s's status: %v, want the admission policy's refusal", own.Name, other.Name, err)
	}
	if err := runner.Status().Patch(ctx, own.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(`{"status":{"progress":{"processed":1,"total":2000,"summary":"1/2000"}}}`))); err != nil {
		t.Errorf("runner writing its own run's status: %v", err)
	}
	specPatch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`))
	if err := runner.Patch(ctx, own.DeepCopy(), specPatch); !apierrors.IsForbidden(err) {
		t.Errorf("runner patching its run's object (not status): %v, want Forbidden by RBAC", err)
	}
	if err := runner.Delete(ctx, other.DeepCopy()); !apierrors.IsForbidden(err) {
		t.Errorf("runner deleting a run: %v, want Forbidden", err)
	}
}
