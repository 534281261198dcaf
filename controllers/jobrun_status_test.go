package controllers

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testrun"
)

var t0 = time.Date(2026, 1, 15, 10, 30, 0, 0, time.UTC)

func testJobType() *jobsv1alpha1.JobType {
	return &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-sync"},
		Spec: jobsv1alpha1.JobTypeSpec{
			JobType: "demo_sync", ActiveDeadlineSeconds: ptr.To[int64](600),
			CancelGracePeriodSeconds: ptr.To[int64](10), RetryLimit: ptr.To[int32](1),
		},
	}
}

// startingWithin is testJobType with a start timeout of seconds.
func startingWithin(seconds int64) *jobsv1alpha1.JobType {
	jt := testJobType()
	jt.Spec.StartTimeoutSeconds = ptr.To(seconds)
	return jt
}

type runOpt func(*jobsv1alpha1.JobRun)

func testRun(opts ...runOpt) *jobsv1alpha1.JobRun {
	r := testrun.Make("ns", "r1").Generation(1).JobType("demo_sync").TriggeredBy("manual:user:u").CreatedAt(t0).Obj()
	for _, o := range opts {
		o(r)
	}
	return r
}

func attempt(n int32) runOpt { return func(r *jobsv1alpha1.JobRun) { r.Status.Attempts = n } }
func running(at time.Time) runOpt {
	return func(r *jobsv1alpha1.JobRun) {
		r.Status.Phase = jobsv1alpha1.JobRunRunning
		r.Status.StartedAt = ptr.To(metav1.NewMicroTime(at))
	}
}

// cancelRequested puts a cancel request on the run that the controller has
// not seen yet.
func cancelRequested(at time.Time) runOpt {
	return func(r *jobsv1alpha1.JobRun) {
		r.Annotations = map[string]string{jobsv1alpha1.AnnotationCancelRequested: at.Format(time.RFC3339)}
	}
}

// cancelSeen is a cancel request the controller saw at at, as the API server
// stores it: status.cancelRequestedAt to the microsecond, the condition's
// lastTransitionTime to the second.
func cancelSeen(at time.Time) runOpt {
	return func(r *jobsv1alpha1.JobRun) {
		legacyCancelSeen(at)(r)
		r.Status.CancelRequestedAt = ptr.To(metav1.NewMicroTime(at))
	}
}

// legacyCancelSeen is a cancel request seen before status.cancelRequestedAt
// existed: only the condition says when.
func legacyCancelSeen(at time.Time) runOpt {
	return func(r *jobsv1alpha1.JobRun) {
		cancelRequested(at)(r)
		meta.SetStatusCondition(&r.Status.Conditions, metav1.Condition{Type: jobsv1alpha1.JobRunConditionCancelRequested, Status: metav1.ConditionTrue, Reason: "CancelRequested", LastTransitionTime: metav1.NewTime(at.Truncate(time.Second))})
	}
}
func runnerError(msg string) runOpt { return func(r *jobsv1alpha1.JobRun) { r.Status.Error = msg } }

func testPod(phase corev1.PodPhase, exitCode int32, reason string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "r1-1"}, Status: corev1.PodStatus{Phase: phase}}
	if phase == corev1.PodFailed || phase == corev1.PodSucceeded {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "handler", State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Reason: reason},
		}}}
	}
	return p
}

// TestDecide walks the run's state machine: what status and actions follow
// from each observed world.
func TestDecide(t *testing.T) {
	type want struct {
		phase         jobsv1alpha1.JobRunPhase
		attempts      int32
		createAttempt int32
		deletePod     bool
		finished      bool
		started       bool
		reason        string // reason of the Finished condition, when finished
		errorText     string
		requeueAfter  time.Duration
		// cancelRequestedAt is status.cancelRequestedAt; zero when unset.
		cancelRequestedAt time.Time
		// recordLater: the status is not written (firstAttemptUnrecorded).
		recordLater bool
	}
	tests := []struct {
		name    string
		run     *jobsv1alpha1.JobRun
		jobType *jobsv1alpha1.JobType
		pod     *corev1.Pod
		params  error
		now     time.Time
		want    want
		// startedAt is the start recorded when the decision starts the run;
		// zero means now.
		startedAt time.Time
	}{
		{
			name: "new run gets its first pod", run: testRun(), jobType: testJobType(), now: t0,
			want: want{phase: jobsv1alpha1.JobRunPending, attempts: 1, createAttempt: 1, requeueAfter: 10 * time.Minute, recordLater: true},
		},
		{
			name: "first pod found before the status records it, pending: nothing to record yet", run: testRun(), jobType: testJobType(), pod: testPod(corev1.PodPending, 0, ""), now: t0.Add(time.Second),
			want: want{phase: jobsv1alpha1.JobRunPending, attempts: 1, requeueAfter: 10*time.Minute - time.Second, recordLater: true},
		},
		{
			name: "first pod runs before the status records it: one write records both", run: testRun(), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(time.Second),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, started: true, requeueAfter: 600 * time.Second},
		},
		{
			name: "unrecorded first pod never scheduled: start timeout fails the run and records the attempt", run: testRun(), jobType: testJobType(), pod: unschedulablePod(), now: t0.Add(11 * time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 1, deletePod: true, finished: true, reason: corev1.PodReasonUnschedulable,
				errorText: "run did not start within its start timeout of 10m0s: pod r1-1 was not scheduled: 0/3 nodes are available: 3 Insufficient cpu."},
		},
		{
			name: "unrecorded first pod failed: the attempt counts, retried", run: testRun(), jobType: testJobType(), pod: testPod(corev1.PodFailed, 1, "Error"), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunPending, attempts: 2, createAttempt: 2},
		},
		{
			name: "cancel while the first pod is unrecorded: its handler never started, pod deleted at once", run: testRun(cancelRequested(t0)), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0,
			want: want{phase: jobsv1alpha1.JobRunCancelled, attempts: 1, deletePod: true, finished: true, reason: jobsv1alpha1.ReasonCancelled, cancelRequestedAt: t0},
		},
		{
			name: "missing job type fails the run", run: testRun(), jobType: nil, now: t0,
			want: want{phase: jobsv1alpha1.JobRunFailed, finished: true, reason: jobsv1alpha1.ReasonJobTypeNotFound, errorText: `job type "demo_sync" does not exist`},
		},
		{
			name: "invalid params fail the run before any pod", run: testRun(), jobType: testJobType(), params: errors.New("params.items: Invalid value: -1"), now: t0,
			want: want{phase: jobsv1alpha1.JobRunFailed, finished: true, reason: jobsv1alpha1.ReasonInvalidParams, errorText: "invalid params: params.items: Invalid value: -1"},
		},
		{
			name: "cancelled before start needs no pod", run: testRun(cancelRequested(t0)), jobType: testJobType(), now: t0,
			want: want{phase: jobsv1alpha1.JobRunCancelled, finished: true, reason: jobsv1alpha1.ReasonCancelled, cancelRequestedAt: t0},
		},
		{
			name: "pending pod keeps the run pending", run: testRun(attempt(1), func(r *jobsv1alpha1.JobRun) { r.Status.Phase = jobsv1alpha1.JobRunPending }),
			jobType: testJobType(), pod: testPod(corev1.PodPending, 0, ""), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunPending, attempts: 1, requeueAfter: 9 * time.Minute},
		},
		{
			name: "start timeout: a pod never scheduled fails the run with the scheduler's reason", run: testRun(attempt(1), func(r *jobsv1alpha1.JobRun) { r.Status.Phase = jobsv1alpha1.JobRunPending }),
			jobType: testJobType(), pod: unschedulablePod(), now: t0.Add(10 * time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 1, deletePod: true, finished: true, reason: corev1.PodReasonUnschedulable,
				errorText: "run did not start within its start timeout of 10m0s: pod r1-1 was not scheduled: 0/3 nodes are available: 3 Insufficient cpu."},
		},
		{
			name: "start timeout: an image that cannot be pulled", run: testRun(attempt(1), func(r *jobsv1alpha1.JobRun) { r.Status.Phase = jobsv1alpha1.JobRunPending }),
			jobType: testJobType(), pod: waitingPod("ImagePullBackOff", `Back-off pulling image "registry.example/jobrun:nope"`), now: t0.Add(10*time.Minute + time.Second),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 1, deletePod: true, finished: true, reason: "ImagePullBackOff",
				errorText: `run did not start within its start timeout of 10m0s: container handler of pod r1-1 is waiting: ImagePullBackOff: Back-off pulling image "registry.example/jobrun:nope"`},
		},
		{
			name: "start timeout: a pod the API server kept refusing", run: testRun(refused(`pods "r1-1" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, limited: pods=0`)),
			jobType: testJobType(), now: t0.Add(10 * time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, finished: true, reason: jobsv1alpha1.ReasonPodForbidden,
				errorText: `run did not start within its start timeout of 10m0s: pods "r1-1" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, limited: pods=0`},
		},
		{
			name: "start timeout: a run that never got a pod, for no known reason", run: testRun(), jobType: testJobType(), now: t0.Add(11 * time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, finished: true, reason: jobsv1alpha1.ReasonStartTimeout,
				errorText: "run did not start within its start timeout of 10m0s: no pod was created"},
		},
		{
			name: "start timeout of the JobType, not the default", run: testRun(attempt(1), func(r *jobsv1alpha1.JobRun) { r.Status.Phase = jobsv1alpha1.JobRunPending }),
			jobType: startingWithin(30), pod: testPod(corev1.PodPending, 0, ""), now: t0.Add(30 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 1, deletePod: true, finished: true, reason: jobsv1alpha1.ReasonStartTimeout,
				errorText: `run did not start within its start timeout of 30s: pod r1-1 did not start (phase "Pending")`},
		},
		{
			name: "a running run is past its start timeout for good", run: testRun(attempt(1), running(t0.Add(9*time.Minute))),
			jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(15 * time.Minute),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, requeueAfter: 4 * time.Minute},
		},
		{
			name: "running pod starts the run", run: testRun(attempt(1)), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0,
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, started: true, requeueAfter: 600 * time.Second},
		},
		{
			name: "running run waits for its deadline", run: testRun(attempt(1), running(t0)), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(590 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, requeueAfter: 10 * time.Second},
		},
		{
			name: "deadline passed: pod deleted, run failed", run: testRun(attempt(1), running(t0)), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(600 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 1, deletePod: true, finished: true, reason: jobsv1alpha1.ReasonDeadlineExceeded, errorText: "run exceeded its deadline of 10m0s"},
		},
		{
			name: "succeeded pod completes the run", run: testRun(attempt(1), running(t0)), jobType: testJobType(), pod: testPod(corev1.PodSucceeded, 0, "Completed"), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunCompleted, attempts: 1, finished: true, reason: jobsv1alpha1.ReasonCompleted},
		},
		{
			name: "pod that ran and ended between two looks: start taken from the pod", run: testRun(attempt(1)), jobType: testJobType(),
			pod: func() *corev1.Pod {
				p := testPod(corev1.PodSucceeded, 0, "Completed")
				p.Status.ContainerStatuses[0].State.Terminated.StartedAt = metav1.NewTime(t0.Add(-2 * time.Second))
				return p
			}(), now: t0,
			want:      want{phase: jobsv1alpha1.JobRunCompleted, attempts: 1, finished: true, started: true, reason: jobsv1alpha1.ReasonCompleted},
			startedAt: t0.Add(-2 * time.Second),
		},
		{
			name: "failed first attempt is retried", run: testRun(attempt(1), running(t0), runnerError("boom")), jobType: testJobType(), pod: testPod(corev1.PodFailed, 1, "Error"), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 2, createAttempt: 2},
		},
		{
			name: "failed last attempt fails the run with the runner's error", run: testRun(attempt(2), running(t0), runnerError("boom")), jobType: testJobType(), pod: testPod(corev1.PodFailed, 1, "Error"), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 2, finished: true, reason: jobsv1alpha1.ReasonHandlerFailed, errorText: "boom"},
		},
		{
			name: "OOMKilled without a runner error says so", run: testRun(attempt(2), running(t0)), jobType: testJobType(), pod: testPod(corev1.PodFailed, 137, "OOMKilled"), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 2, finished: true, reason: jobsv1alpha1.ReasonHandlerFailed, errorText: "container handler ran out of memory and was killed (OOMKilled, exit code 137)"},
		},
		{
			name: "vanished pod on the last attempt: pod lost", run: testRun(attempt(2), running(t0)), jobType: testJobType(), pod: nil, now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 2, finished: true, reason: jobsv1alpha1.ReasonPodLost, errorText: "pod r1-2 disappeared before the handler finished"},
		},
		{
			name: "runner exit code for cancellation", run: testRun(attempt(1), running(t0), cancelSeen(t0.Add(time.Minute))), jobType: testJobType(), pod: testPod(corev1.PodFailed, jobsv1alpha1.ExitCodeCancelled, "Error"), now: t0.Add(61 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunCancelled, attempts: 1, finished: true, reason: jobsv1alpha1.ReasonCancelled, cancelRequestedAt: t0.Add(time.Minute)},
		},
		{
			name: "runner stopped without a cancel request (pod terminated): retried", run: testRun(attempt(1), running(t0)), jobType: testJobType(), pod: testPod(corev1.PodFailed, jobsv1alpha1.ExitCodeCancelled, "Error"), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 2, createAttempt: 2},
		},
		{
			name: "runner stopped without a cancel request on the last attempt: pod lost, not cancelled", run: testRun(attempt(2), running(t0)), jobType: testJobType(), pod: testPod(corev1.PodFailed, jobsv1alpha1.ExitCodeCancelled, "Error"), now: t0.Add(time.Minute),
			want: want{phase: jobsv1alpha1.JobRunFailed, attempts: 2, finished: true, reason: jobsv1alpha1.ReasonPodLost, errorText: "pod r1-2 was terminated while the handler ran (no cancel was requested)"},
		},
		{
			name: "cancel request first seen: its time kept to the microsecond, the grace period begins", run: testRun(attempt(1), running(t0), cancelRequested(t0)), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(60*time.Second + 700*time.Millisecond),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, requeueAfter: 10 * time.Second, cancelRequestedAt: t0.Add(60*time.Second + 700*time.Millisecond)},
		},
		{
			name: "cancel requested: wait out the grace period", run: testRun(attempt(1), running(t0), cancelSeen(t0.Add(time.Minute))), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(65 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, requeueAfter: 5 * time.Second, cancelRequestedAt: t0.Add(time.Minute)},
		},
		{
			name: "grace period over: pod deleted, run cancelled", run: testRun(attempt(1), running(t0), cancelSeen(t0.Add(time.Minute))), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(70 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunCancelled, attempts: 1, deletePod: true, finished: true, reason: jobsv1alpha1.ReasonCancelGracePeriodExceeded, cancelRequestedAt: t0.Add(time.Minute)},
		},
		{
			// The condition says 10:31:00, a second-truncated 10:31:00.7:
			// measured from it, the grace period would end 0.7 s early.
			name: "grace period measured from cancelRequestedAt, not the condition's whole second: 300 ms left", run: testRun(attempt(1), running(t0), cancelSeen(t0.Add(60*time.Second+700*time.Millisecond))), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(70*time.Second + 400*time.Millisecond),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, requeueAfter: 300 * time.Millisecond, cancelRequestedAt: t0.Add(60*time.Second + 700*time.Millisecond)},
		},
		{
			name: "grace period over to the millisecond", run: testRun(attempt(1), running(t0), cancelSeen(t0.Add(60*time.Second+700*time.Millisecond))), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(70*time.Second + 700*time.Millisecond),
			want: want{phase: jobsv1alpha1.JobRunCancelled, attempts: 1, deletePod: true, finished: true, reason: jobsv1alpha1.ReasonCancelGracePeriodExceeded, cancelRequestedAt: t0.Add(60*time.Second + 700*time.Millisecond)},
		},
		{
			name: "cancel seen before cancelRequestedAt existed: the condition's time starts the grace period", run: testRun(attempt(1), running(t0), legacyCancelSeen(t0.Add(time.Minute))), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(65 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunRunning, attempts: 1, requeueAfter: 5 * time.Second},
		},
		{
			name: "cancel seen before cancelRequestedAt existed: grace period over", run: testRun(attempt(1), running(t0), legacyCancelSeen(t0.Add(time.Minute))), jobType: testJobType(), pod: testPod(corev1.PodRunning, 0, ""), now: t0.Add(70 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunCancelled, attempts: 1, deletePod: true, finished: true, reason: jobsv1alpha1.ReasonCancelGracePeriodExceeded},
		},
		{
			name: "cancelled run whose pod is gone", run: testRun(attempt(1), running(t0), cancelSeen(t0.Add(time.Minute))), jobType: testJobType(), pod: nil, now: t0.Add(70 * time.Second),
			want: want{phase: jobsv1alpha1.JobRunCancelled, attempts: 1, finished: true, reason: jobsv1alpha1.ReasonCancelled, cancelRequestedAt: t0.Add(time.Minute)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(observation{run: tt.run, jobType: tt.jobType, pod: tt.pod, paramsErr: tt.params, now: tt.now})
			got := want{
				phase: d.status.Phase, attempts: d.status.Attempts, createAttempt: d.createAttempt,
				deletePod: d.deletePod, finished: d.finished, started: d.started,
				errorText: d.status.Error, requeueAfter: d.requeueAfter, recordLater: d.firstAttemptUnrecorded(tt.run),
			}
			if d.status.CancelRequestedAt != nil {
				got.cancelRequestedAt = d.status.CancelRequestedAt.Time
			}
			if c := meta.FindStatusCondition(d.status.Conditions, jobsv1alpha1.JobRunConditionFinished); c != nil {
				got.reason = c.Reason
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(want{})); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
			if d.finished && (d.status.CompletedAt == nil || !d.status.CompletedAt.Time.Equal(tt.now)) {
				t.Errorf("completedAt = %v, want %v", d.status.CompletedAt, tt.now)
			}
			wantStart := tt.startedAt
			if wantStart.IsZero() {
				wantStart = tt.now
			}
			if d.started && !d.status.StartedAt.Time.Equal(wantStart) {
				t.Errorf("startedAt = %v, want %v", d.status.StartedAt, wantStart)
			}
		})
	}
}

// refused is a run whose pod the API server refused with msg.
func refused(msg string) runOpt {
	return func(r *jobsv1alpha1.JobRun) {
		meta.SetStatusCondition(&r.Status.Conditions, metav1.Condition{Type: jobsv1alpha1.JobRunConditionRunning, Status: metav1.ConditionFalse, Reason: jobsv1alpha1.ReasonPodForbidden, Message: msg})
	}
}

func unschedulablePod() *corev1.Pod {
	p := testPod(corev1.PodPending, 0, "")
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable, Message: "0/3 nodes are available: 3 Insufficient cpu."}}
	return p
}

func waitingPod(reason, message string) *corev1.Pod {
	p := testPod(corev1.PodPending, 0, "")
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "handler", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}}}
	return p
}

// TestPodRefused: a refused pod leaves the run as it was (no attempt, no
// pod name), says why, and is tried again with a backoff that grows with
// the run's age, never past the start timeout.
func TestPodRefused(t *testing.T) {
	err := errors.New(`pods "r1-1" is forbidden: violates PodSecurity "restricted:latest"`)
	for _, tt := range []struct {
		name  string
		now   time.Time
		retry time.Duration
	}{
		{"at once: a second", t0, time.Second},
		{"after 10 s: 5 s", t0.Add(10 * time.Second), 5 * time.Second},
		{"after 5 min: a minute", t0.Add(5 * time.Minute), time.Minute},
		{"20 s before the start timeout: at the timeout", t0.Add(9*time.Minute + 40*time.Second), 20 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := observation{run: testRun(), jobType: testJobType(), now: tt.now}
			d := podRefused(o, decide(o), err)
			c := meta.FindStatusCondition(d.status.Conditions, jobsv1alpha1.JobRunConditionRunning)
			if d.status.Attempts != 0 || d.status.PodName != "" || d.status.Phase != jobsv1alpha1.JobRunPending || d.createAttempt != 0 || d.finished {
				t.Errorf("refused: attempts %d, pod %q, phase %q, create %d, finished %v; want the run as it was", d.status.Attempts, d.status.PodName, d.status.Phase, d.createAttempt, d.finished)
			}
			if c == nil || c.Reason != jobsv1alpha1.ReasonPodForbidden || c.Message != err.Error() {
				t.Errorf("Running condition %+v, want PodForbidden with the API server's message", c)
			}
			if d.requeueAfter != tt.retry {
				t.Errorf("retry after %s, want %s", d.requeueAfter, tt.retry)
			}
			if len(d.events) != 1 || d.events[0].reason != jobsv1alpha1.ReasonPodForbidden {
				t.Errorf("events %+v, want one PodForbidden", d.events)
			}
		})
	}
	// The same refusal again is not news.
	o := observation{run: testRun(refused(err.Error())), jobType: testJobType(), now: t0.Add(time.Minute)}
	if d := podRefused(o, decide(o), err); len(d.events) != 0 {
		t.Errorf("a repeated refusal announced again: %+v", d.events)
	}
}

func TestDecideNeverTouchesTheObservedRun(t *testing.T) {
	run := testRun(attempt(1), running(t0))
	before := run.DeepCopy()
	decide(observation{run: run, jobType: testJobType(), pod: testPod(corev1.PodSucceeded, 0, ""), now: t0.Add(time.Minute)})
	if diff := cmp.Diff(before, run); diff != "" {
		t.Errorf("decide changed its input (-before +after):\n%s", diff)
	}
}

func TestBuildPod(t *testing.T) {
	jt := testJobType()
	jt.Spec.Template = corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "sync", "app.kubernetes.io/component": "sync-worker"}},
		Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyAlways, Containers: []corev1.Container{
			{Name: "handler", Image: "jobrun:dev", Env: []corev1.EnvVar{{Name: "LOG", Value: "debug"}}},
		}},
	}
	pod := buildPod(testRun(), jt, 2, "jobrun-runner")
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "r1-2", Namespace: "ns", Labels: map[string]string{
			"app": "sync", jobsv1alpha1.LabelRun: "r1", jobsv1alpha1.LabelJobType: "demo_sync",
			// The template's component stays; the other recommended labels are added.
			"app.kubernetes.io/component": "sync-worker", "app.kubernetes.io/part-of": "jobrun", "app.kubernetes.io/managed-by": "jobrun-manager",
		}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever, ServiceAccountName: "jobrun-runner",
			ActiveDeadlineSeconds: ptr.To[int64](610),
			// The restricted Pod Security Standard, which the template leaves unset.
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{Name: "handler", Image: "jobrun:dev", Env: []corev1.EnvVar{
				{Name: "LOG", Value: "debug"},
				{Name: jobsv1alpha1.EnvRunName, Value: "r1"},
				{Name: jobsv1alpha1.EnvRunNamespace, Value: "ns"},
				{Name: jobsv1alpha1.EnvJobType, Value: "demo_sync"},
				{Name: jobsv1alpha1.EnvAttempt, Value: "2"},
			}, SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr.To(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			}}},
		},
	}
	if diff := cmp.Diff(want, pod); diff != "" {
		t.Errorf("pod (-want +got):\n%s", diff)
	}
	if jt.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyAlways || len(jt.Spec.Template.Spec.Containers[0].Env) != 1 {
		t.Error("buildPod changed the JobType's template")
	}
}
