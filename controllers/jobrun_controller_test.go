package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// These tests run the controller against a real API server. No kubelet runs
// here: the tests play its part and write pod status, as a kubelet would.

func createJobType(t testing.TB, ns string, mutate ...func(*jobsv1alpha1.JobType)) *jobsv1alpha1.JobType {
	t.Helper()
	jt := &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-sync"},
		Spec: jobsv1alpha1.JobTypeSpec{
			JobType: "demo_sync",
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "handler", Image: "jobrun:dev", Args: []string{"runner"}}},
			}},
			CancelGracePeriodSeconds: ptr.To[int64](10),
		},
	}
	for _, m := range mutate {
		m(jt)
	}
	if err := env.Client.Create(context.Background(), jt); err != nil {
		t.Fatal(err)
	}
	return jt
}

func createRun(t *testing.T, ns, name string) *jobsv1alpha1.JobRun {
	t.Helper()
	return createRunWith(t, ns, name, nil)
}

func createRunWith(t *testing.T, ns, name string, mutate func(*jobsv1alpha1.JobRun)) *jobsv1alpha1.JobRun {
	t.Helper()
	jr := testrun.Make(ns, name).JobType("demo_sync").Team("team-1").Project("project-1").
		TriggeredBy("manual:user:u1").Params(`{"items":10}`).Obj()
	if mutate != nil {
		mutate(jr)
	}
	if err := env.Client.Create(context.Background(), jr); err != nil {
		t.Fatal(err)
	}
	return jr
}

func getRun(ctx context.Context, ns, name string) (*jobsv1alpha1.JobRun, error) {
	jr := &jobsv1alpha1.JobRun{}
	return jr, env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, jr)
}

// waitPhase waits until the run reaches phase and returns it.
func waitPhase(t *testing.T, ns, name string, phase jobsv1alpha1.JobRunPhase) *jobsv1alpha1.JobRun {
	t.Helper()
	var jr *jobsv1alpha1.JobRun
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		var err error
		if jr, err = getRun(ctx, ns, name); err != nil {
			return err
		}
		if jr.Status.Phase != phase {
			return fmt.Errorf("run %s is %q (%s), want %q", name, jr.Status.Phase, jr.Status.Error, phase)
		}
		return nil
	})
	return jr
}

func waitPod(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	return waitPodWithin(t, ns, name, 30*time.Second)
}

// waitPodWithin waits up to bound until pod name exists and returns it.
func waitPodWithin(t *testing.T, ns, name string, bound time.Duration) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{}
	testenv.Eventually(t, bound, func(ctx context.Context) error {
		return env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, pod)
	})
	return pod
}

// waitPodGone waits until the pod no longer exists; what names it in the
// failure.
func waitPodGone(t *testing.T, pod *corev1.Pod, what string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), &corev1.Pod{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("%s (%v)", what, err)
		}
		return nil
	})
}

// kubelet writes a pod's status as a kubelet would.
func kubelet(t *testing.T, pod *corev1.Pod, phase corev1.PodPhase, exitCode int32, reason string) {
	t.Helper()
	ctx := context.Background()
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = phase
	state := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
	if phase == corev1.PodSucceeded || phase == corev1.PodFailed {
		state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Reason: reason, FinishedAt: metav1.Now()}}
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "handler", Image: "jobrun:dev", State: state}}
	if err := env.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
}

// runnerWrites patches the run's status as the runner in the pod would.
func runnerWrites(t *testing.T, jr *jobsv1alpha1.JobRun, patch string) {
	t.Helper()
	if err := env.Client.Status().Patch(context.Background(), jr.DeepCopy(), client.RawPatch("application/merge-patch+json", []byte(patch))); err != nil {
		t.Fatal(err)
	}
}

// poke changes an annotation so the controller reconciles the run now, after
// a test moved the clock.
func poke(t *testing.T, ns, name string) {
	t.Helper()
	env.Annotate(t, &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, "test.jobrun.dev/poke", time.Now().Format(time.RFC3339Nano))
}

// waitReconciled removes the run's status label, which only the controller
// puts back, and waits until it has: evidence that the controller finished
// a pass over the run that began after everything the test did before the
// call (the label goes back at the end of an active run's pass, at the start
// of a finished run's).
func waitReconciled(t *testing.T, ns, name string) {
	t.Helper()
	jr := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	unlabel := fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, jobsv1alpha1.LabelStatus)
	if err := env.Client.Patch(context.Background(), jr, client.RawPatch(types.MergePatchType, []byte(unlabel))); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, name)
		if err != nil {
			return err
		}
		if jr.Labels[jobsv1alpha1.LabelStatus] == "" {
			return fmt.Errorf("the controller has not reconciled run %s since its status label was removed (phase %q, attempts %d, pods %v)",
				name, jr.Status.Phase, jr.Status.Attempts, podNames(t, ns, name))
		}
		return nil
	})
}

func podNames(t *testing.T, ns, run string) []string {
	t.Helper()
	var names []string
	for _, p := range podsOf(t, ns, run) {
		names = append(names, p.Name)
	}
	return names
}

func requestCancel(t *testing.T, ns, name string) {
	t.Helper()
	env.Annotate(t, &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, jobsv1alpha1.AnnotationCancelRequested, time.Now().UTC().Format(time.RFC3339))
}

func podsOf(t *testing.T, ns, run string) []corev1.Pod {
	t.Helper()
	pods := &corev1.PodList{}
	if err := env.Client.List(context.Background(), pods, client.InNamespace(ns), client.MatchingLabels{jobsv1alpha1.LabelRun: run}); err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

func finishedReason(jr *jobsv1alpha1.JobRun) string {
	if c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); c != nil {
		return c.Reason
	}
	return ""
}

func TestRunLifecycle(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns)
	createRun(t, ns, "run-ok")

	pod := waitPod(t, ns, "run-ok-1")
	jr := waitPhase(t, ns, "run-ok", jobsv1alpha1.JobRunPending)
	if ref := metav1.GetControllerOf(pod); ref == nil || ref.Kind != "JobRun" || ref.Name != "run-ok" || ref.UID != jr.UID {
		t.Errorf("pod's controller = %+v, want the run", ref)
	}
	if pod.Spec.ServiceAccountName != DefaultRunnerServiceAccount || pod.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("pod service account %q, restart policy %q", pod.Spec.ServiceAccountName, pod.Spec.RestartPolicy)
	}
	// Until its pod runs, the pod records the attempt, not the status.
	if jr.Status.Attempts != 0 || len(jr.Status.Conditions) != 0 {
		t.Errorf("status before the pod runs: %+v, want nothing written yet", jr.Status)
	}

	kubelet(t, pod, corev1.PodRunning, 0, "")
	jr = waitPhase(t, ns, "run-ok", jobsv1alpha1.JobRunRunning)
	if jr.Status.Attempts != 1 || jr.Status.PodName != "run-ok-1" || !meta.IsStatusConditionTrue(jr.Status.Conditions, jobsv1alpha1.JobRunConditionAccepted) {
		t.Errorf("status attempts %d pod %q conditions %+v", jr.Status.Attempts, jr.Status.PodName, jr.Status.Conditions)
	}
	if jr.Status.StartedAt == nil || !jr.Status.StartedAt.Time.Equal(clock.Now().Truncate(time.Microsecond)) {
		t.Errorf("startedAt = %v, want the controller's clock %v", jr.Status.StartedAt, clock.Now())
	}
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-ok")
		if err != nil || jr.Labels[jobsv1alpha1.LabelStatus] != "running" {
			return fmt.Errorf("status label %q (%v)", jr.Labels[jobsv1alpha1.LabelStatus], err)
		}
		return nil
	})

	// The REST API's trigger guard for the run's (job type, project).
	guard := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jobsv1alpha1.GuardName("demo_sync", "project-1")},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("run-ok")},
	}
	if err := env.Client.Create(context.Background(), guard); err != nil {
		t.Fatal(err)
	}

	runnerWrites(t, jr, `{"status":{"progress":{"processed":10,"total":10,"message":"done","summary":"10/10"},"result":{"processed":10}}}`)
	clock.Step(3 * time.Second)
	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	jr = waitPhase(t, ns, "run-ok", jobsv1alpha1.JobRunCompleted)
	if jr.Status.CompletedAt == nil || !jr.Status.CompletedAt.Time.Equal(clock.Now().Truncate(time.Microsecond)) {
		t.Errorf("completedAt = %v, want %v", jr.Status.CompletedAt, clock.Now())
	}
	if string(jr.Status.Result.Raw) != `{"processed":10}` || jr.Status.Progress.Summary != "10/10" {
		t.Errorf("the runner's result and progress were not kept: %s %+v", jr.Status.Result.Raw, jr.Status.Progress)
	}
	if finishedReason(jr) != jobsv1alpha1.ReasonCompleted {
		t.Errorf("Finished condition reason %q", finishedReason(jr))
	}

	// The run ended: its guard is released, so the pair may run again.
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(guard), &coordinationv1.Lease{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("guard still there (%v)", err)
		}
		return nil
	})

	// People can read what happened in the run's events.
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		evs := &eventsv1.EventList{}
		if err := env.Client.List(ctx, evs, client.InNamespace(ns)); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, e := range evs.Items {
			if e.Regarding.Name == "run-ok" {
				seen[e.Reason] = true
			}
		}
		if !seen["Started"] || !seen[jobsv1alpha1.ReasonCompleted] {
			return fmt.Errorf("events for the run: %v", seen)
		}
		return nil
	})
}

func TestRetryThenPodLost(t *testing.T) {
	ns := env.Namespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.RetryLimit = ptr.To[int32](1) })
	jr := createRun(t, ns, "run-retry")

	pod1 := waitPod(t, ns, "run-retry-1")
	kubelet(t, pod1, corev1.PodRunning, 0, "")
	waitPhase(t, ns, "run-retry", jobsv1alpha1.JobRunRunning)
	runnerWrites(t, jr, `{"status":{"error":"upstream returned 503"}}`)
	kubelet(t, pod1, corev1.PodFailed, 1, "Error")

	// The second attempt starts only after the first one failed.
	pod2 := waitPod(t, ns, "run-retry-2")
	jr = waitPhase(t, ns, "run-retry", jobsv1alpha1.JobRunRunning)
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-retry")
		if err != nil || jr.Status.Attempts != 2 || jr.Status.Error != "" {
			return fmt.Errorf("attempts %d error %q (%v); want 2 and the first attempt's error cleared", jr.Status.Attempts, jr.Status.Error, err)
		}
		return nil
	})

	// The second pod vanishes (node lost, deleted by hand): no retries left.
	if err := env.Client.Delete(context.Background(), pod2); err != nil {
		t.Fatal(err)
	}
	jr = waitPhase(t, ns, "run-retry", jobsv1alpha1.JobRunFailed)
	if finishedReason(jr) != jobsv1alpha1.ReasonPodLost || jr.Status.Error != "pod run-retry-2 disappeared before the handler finished" {
		t.Errorf("failed with reason %q error %q", finishedReason(jr), jr.Status.Error)
	}
	if pods := podsOf(t, ns, "run-retry"); len(pods) != 1 || pods[0].Name != "run-retry-1" {
		t.Errorf("pods after the run failed: %d (want only the first attempt's, kept for its logs)", len(pods))
	}
}

func TestDeadline(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.ActiveDeadlineSeconds = ptr.To[int64](60) })
	createRun(t, ns, "run-slow")
	pod := waitPod(t, ns, "run-slow-1")
	kubelet(t, pod, corev1.PodRunning, 0, "")
	waitPhase(t, ns, "run-slow", jobsv1alpha1.JobRunRunning)

	clock.Step(59 * time.Second)
	poke(t, ns, "run-slow")
	clock.Step(2 * time.Second)
	poke(t, ns, "run-slow")
	jr := waitPhase(t, ns, "run-slow", jobsv1alpha1.JobRunFailed)
	if finishedReason(jr) != jobsv1alpha1.ReasonDeadlineExceeded || jr.Status.Error != "run exceeded its deadline of 1m0s" {
		t.Errorf("reason %q error %q", finishedReason(jr), jr.Status.Error)
	}
	waitPodGone(t, pod, "the overdue pod still exists")
}

func TestCancel(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns) // grace period 10s

	t.Run("cooperative handler", func(t *testing.T) {
		createRun(t, ns, "run-coop")
		pod := waitPod(t, ns, "run-coop-1")
		kubelet(t, pod, corev1.PodRunning, 0, "")
		waitPhase(t, ns, "run-coop", jobsv1alpha1.JobRunRunning)
		requestCancel(t, ns, "run-coop")
		kubelet(t, pod, corev1.PodFailed, jobsv1alpha1.ExitCodeCancelled, "Error")
		jr := waitPhase(t, ns, "run-coop", jobsv1alpha1.JobRunCancelled)
		if finishedReason(jr) != jobsv1alpha1.ReasonCancelled || jr.Status.Error != "" {
			t.Errorf("reason %q error %q", finishedReason(jr), jr.Status.Error)
		}
	})

	t.Run("handler ignoring the request", func(t *testing.T) {
		createRun(t, ns, "run-stubborn")
		pod := waitPod(t, ns, "run-stubborn-1")
		kubelet(t, pod, corev1.PodRunning, 0, "")
		waitPhase(t, ns, "run-stubborn", jobsv1alpha1.JobRunRunning)
		requestCancel(t, ns, "run-stubborn")
		testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
			jr, err := getRun(ctx, ns, "run-stubborn")
			if err != nil || !meta.IsStatusConditionTrue(jr.Status.Conditions, jobsv1alpha1.JobRunConditionCancelRequested) {
				return fmt.Errorf("no CancelRequested condition yet (%v)", err)
			}
			return nil
		})
		clock.Step(11 * time.Second)
		poke(t, ns, "run-stubborn")
		jr := waitPhase(t, ns, "run-stubborn", jobsv1alpha1.JobRunCancelled)
		if finishedReason(jr) != jobsv1alpha1.ReasonCancelGracePeriodExceeded {
			t.Errorf("reason %q", finishedReason(jr))
		}
		waitPodGone(t, pod, "the stubborn handler's pod still exists")
	})
}

// TestCancelGracePeriodEndsToTheMillisecond asks a run to stop at a time
// with a sub-second part: the API server keeps a condition's time to the
// second only, so a grace period measured from it would end up to a second
// early and kill a handler that was still within it.
func TestCancelGracePeriodEndsToTheMillisecond(t *testing.T) {
	ns := env.Namespace(t)
	requestedAt := time.Now().Truncate(time.Second).Add(700 * time.Millisecond)
	clock := clocktesting.NewFakeClock(requestedAt)
	startManager(t, ns, clock)
	jt := createJobType(t, ns)
	grace := time.Duration(*jt.Spec.CancelGracePeriodSeconds) * time.Second
	createRun(t, ns, "run-edge")
	pod := waitPod(t, ns, "run-edge-1")
	kubelet(t, pod, corev1.PodRunning, 0, "")
	waitPhase(t, ns, "run-edge", jobsv1alpha1.JobRunRunning)

	requestCancel(t, ns, "run-edge")
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-edge")
		if err != nil || !meta.IsStatusConditionTrue(jr.Status.Conditions, jobsv1alpha1.JobRunConditionCancelRequested) {
			return fmt.Errorf("no CancelRequested condition yet (%v)", err)
		}
		if at := jr.Status.CancelRequestedAt; at == nil || !at.Time.Equal(requestedAt) {
			return fmt.Errorf("cancelRequestedAt = %v, want %v", at, requestedAt)
		}
		return nil
	})

	// 300 ms before the grace period ends the handler may still stop on its
	// own: its pod stays.
	clock.SetTime(requestedAt.Add(grace - 300*time.Millisecond))
	waitReconciled(t, ns, "run-edge")
	jr, err := getRun(context.Background(), ns, "run-edge")
	if err != nil {
		t.Fatal(err)
	}
	if jr.Status.Phase != jobsv1alpha1.JobRunRunning {
		t.Errorf("300 ms before the grace period ends: run %q (%s), want still running", jr.Status.Phase, finishedReason(jr))
	}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(pod), pod); err != nil || pod.DeletionTimestamp != nil {
		t.Fatalf("300 ms before the grace period ends the pod was deleted (%v)", err)
	}

	// When it ends, the pod goes.
	clock.SetTime(requestedAt.Add(grace))
	poke(t, ns, "run-edge")
	jr = waitPhase(t, ns, "run-edge", jobsv1alpha1.JobRunCancelled)
	if finishedReason(jr) != jobsv1alpha1.ReasonCancelGracePeriodExceeded || !jr.Status.CompletedAt.Time.Equal(requestedAt.Add(grace)) {
		t.Errorf("reason %q, completedAt %v; want %s at %v", finishedReason(jr), jr.Status.CompletedAt, jobsv1alpha1.ReasonCancelGracePeriodExceeded, requestedAt.Add(grace))
	}
	waitPodGone(t, pod, "the pod still exists after the grace period")
}

func TestMissingJobTypeFailsClearly(t *testing.T) {
	ns := env.Namespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	createRun(t, ns, "run-orphan")
	jr := waitPhase(t, ns, "run-orphan", jobsv1alpha1.JobRunFailed)
	c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionAccepted)
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != jobsv1alpha1.ReasonJobTypeNotFound {
		t.Errorf("Accepted condition = %+v", c)
	}
	if len(podsOf(t, ns, "run-orphan")) != 0 {
		t.Error("a pod was created for a run without a JobType")
	}
}

// TestConsistencyMarkerIsNotARun: the REST API's consistency marker (a
// JobRun whose job type does not exist, changed on every consistent read)
// is left alone; a run like it, created after it, is failed as usual.
func TestConsistencyMarkerIsNotARun(t *testing.T) {
	ns := env.Namespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	createRunWith(t, ns, jobsv1alpha1.ConsistencyMarkerName, func(jr *jobsv1alpha1.JobRun) {
		jr.Spec = jobsv1alpha1.JobRunSpec{JobType: jobsv1alpha1.ConsistencyMarkerJobType, TriggeredBy: "jobrun:consistency-marker"}
	})
	env.Annotate(t, &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jobsv1alpha1.ConsistencyMarkerName}}, jobsv1alpha1.AnnotationMarkerNonce, "2")
	createRunWith(t, ns, "run-orphan", func(jr *jobsv1alpha1.JobRun) { jr.Spec.JobType = jobsv1alpha1.ConsistencyMarkerJobType })
	waitPhase(t, ns, "run-orphan", jobsv1alpha1.JobRunFailed)
	marker, err := getRun(context.Background(), ns, jobsv1alpha1.ConsistencyMarkerName)
	if err != nil {
		t.Fatal(err)
	}
	if marker.Status.Phase != jobsv1alpha1.JobRunPending || len(marker.Status.Conditions) != 0 || marker.Labels[jobsv1alpha1.LabelStatus] != "" {
		t.Errorf("the controller treated the consistency marker as a run: status %+v, labels %v", marker.Status, marker.Labels)
	}
	if pods := podsOf(t, ns, jobsv1alpha1.ConsistencyMarkerName); len(pods) != 0 {
		t.Errorf("%d pods for the consistency marker", len(pods))
	}
}

// TestTerminalRunStaysTerminal: a pod that reports something else after the
// run finished cannot move it. The JobType allows a retry, so a controller
// that looked at a finished run's pod would start a second attempt (a new
// pod, created before any status write the API server could refuse).
func TestTerminalRunStaysTerminal(t *testing.T) {
	ns := env.Namespace(t)
	_, cache := startManagerWithCache(t, ns, clocktesting.NewFakeClock(time.Now()))
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.RetryLimit = ptr.To[int32](1) })
	createRun(t, ns, "run-done")
	pod := waitPod(t, ns, "run-done-1")
	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	done := waitPhase(t, ns, "run-done", jobsv1alpha1.JobRunCompleted)

	kubelet(t, pod, corev1.PodFailed, 1, "Error")
	// The controller's cache has the failed pod; a pass over the run that
	// starts after that sees it if it looks.
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		seen := &corev1.Pod{}
		if err := cache.Get(ctx, client.ObjectKeyFromObject(pod), seen); err != nil {
			return err
		}
		if seen.Status.Phase != corev1.PodFailed {
			return fmt.Errorf("the controller still sees the pod %s", seen.Status.Phase)
		}
		return nil
	})
	waitReconciled(t, ns, "run-done")

	jr, err := getRun(context.Background(), ns, "run-done")
	if err != nil {
		t.Fatal(err)
	}
	if jr.Status.Phase != jobsv1alpha1.JobRunCompleted || jr.Status.Attempts != 1 || !jr.Status.CompletedAt.Equal(done.Status.CompletedAt) || finishedReason(jr) != jobsv1alpha1.ReasonCompleted {
		t.Errorf("after the pod changed its mind: phase %q attempts %d completedAt %v reason %q; want it as it finished",
			jr.Status.Phase, jr.Status.Attempts, jr.Status.CompletedAt, finishedReason(jr))
	}
	if pods := podNames(t, ns, "run-done"); len(pods) != 1 {
		t.Errorf("pods of the finished run: %v, want only its one attempt's", pods)
	}
}

// TestRestartNeverDuplicatesPods stops the manager while 20 runs are being
// started and starts a new one: every run ends with exactly one pod.
func TestRestartNeverDuplicatesPods(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	createJobType(t, ns)
	const n = 20
	for i := range n {
		createRun(t, ns, fmt.Sprintf("run-%02d", i))
	}
	stop := startManager(t, ns, clock)
	// Stop as soon as some (not necessarily all) pods exist.
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		pods := &corev1.PodList{}
		if err := env.Client.List(ctx, pods, client.InNamespace(ns)); err != nil {
			return err
		}
		if len(pods.Items) == 0 {
			return fmt.Errorf("no pods yet")
		}
		return nil
	})
	stop()
	startManager(t, ns, clock)

	for i := range n {
		name := fmt.Sprintf("run-%02d", i)
		pod := waitPod(t, ns, name+"-1")
		kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	}
	for i := range n {
		name := fmt.Sprintf("run-%02d", i)
		jr := waitPhase(t, ns, name, jobsv1alpha1.JobRunCompleted)
		if jr.Status.Attempts != 1 {
			t.Errorf("%s: %d attempts", name, jr.Status.Attempts)
		}
		if pods := podsOf(t, ns, name); len(pods) != 1 {
			t.Errorf("%s has %d pods, want exactly 1", name, len(pods))
		}
	}
}

func TestRetention(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) {
		jt.Spec.TTLSecondsAfterFinished = ptr.To[int32](3600)
		jt.Spec.HistoryLimit = ptr.To[int32](2)
	})
	names := []string{"run-a", "run-b", "run-c"}
	for _, name := range names {
		createRun(t, ns, name)
		pod := waitPod(t, ns, name+"-1")
		kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
		waitPhase(t, ns, name, jobsv1alpha1.JobRunCompleted)
		clock.Step(time.Minute) // each finishes a minute after the last
	}
	// Beyond the history limit of 2: the oldest goes as soon as the third
	// finishes, with nothing else happening to it.
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		if _, err := getRun(ctx, ns, "run-a"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("run-a (oldest, beyond the limit) still exists: %v", err)
		}
		return nil
	})
	for _, name := range []string{"run-b", "run-c"} {
		if _, err := getRun(context.Background(), ns, name); err != nil {
			t.Errorf("%s within the history limit: %v", name, err)
		}
	}
	// After the TTL, the rest go too.
	clock.Step(time.Hour)
	poke(t, ns, "run-b")
	poke(t, ns, "run-c")
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		list := &jobsv1alpha1.JobRunList{}
		if err := env.Client.List(ctx, list, client.InNamespace(ns)); err != nil {
			return err
		}
		if len(list.Items) != 0 {
			return fmt.Errorf("%d runs left after their TTL", len(list.Items))
		}
		return nil
	})
	// Their pods went with them, deleted by the controller (no garbage
	// collector runs here; in a cluster it deletes only ~10 pods a second).
	pods := &corev1.PodList{}
	if err := env.Client.List(context.Background(), pods, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, pod := range pods.Items {
		if pod.DeletionTimestamp == nil {
			t.Errorf("pod %s of a deleted run is still there", pod.Name)
		}
	}
}
