package controllers

import (
	"fmt"
	"regexp"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// observation is what the reconciler saw of one active run and its world.
type observation struct {
	run *jobsv1alpha1.JobRun
	// jobType is nil when no JobType serves the run's job type (confirmed
	// against the API server, not only the cache).
	jobType *jobsv1alpha1.JobType
	// pod is the pod of the run's current attempt; nil when it does not
	// exist (confirmed against the API server).
	pod *corev1.Pod
	// paramsErr is why the run's params fail its JobType's paramsSchema.
	paramsErr error
	// kueue: runs go through Kueue (WithKueue); workload is the run's
	// Workload before its first pod (nil: none seen yet).
	kueue    bool
	workload *workloadObs
	// position is where the queued run stands in Kueue's queues, as last
	// read (nil: not read, or behind the positions read).
	position *queuePosition
	now      time.Time
}

// runEvent is an Event for people about a transition.
type runEvent struct {
	eventType, reason, message string
}

// decision is what to do about one active run: the status it should have,
// and the actions that get it there.
type decision struct {
	status jobsv1alpha1.JobRunStatus
	// createAttempt is the attempt whose pod to create (0: none).
	createAttempt int32
	// createWorkload asks for the run's Kueue Workload (decision.queued).
	createWorkload bool
	// quietWorkload: the run's Workload is younger than kueueQuietGrace
	// and Kueue has not said anything about it yet.
	quietWorkload bool
	// deletePod asks to stop the current attempt's pod.
	deletePod bool
	// requeueAfter is when time alone changes the decision (deadline, grace).
	requeueAfter time.Duration
	events       []runEvent
	// started and finished mark the transitions that metrics count.
	started, finished bool
}

// decide is the pure heart of the JobRun controller: observed world in,
// desired status and actions out. It never moves a terminal run.
func decide(o observation) decision {
	run := o.run
	d := decision{status: *run.Status.DeepCopy()}
	st := &d.status
	st.ObservedGeneration = run.Generation
	now := metav1.NewTime(o.now)

	if run.DeletionTimestamp != nil {
		// Deleted before it finished, and held by a finalizer (the
		// archive's): it ends here, cancelled, its pod stopped.
		d.deletePod = o.pod != nil
		d.finish(jobsv1alpha1.JobRunCancelled, jobsv1alpha1.ReasonDeleted, "the run was deleted before it finished", o.now)
		return d
	}
	if o.jobType == nil {
		d.setCondition(jobsv1alpha1.JobRunConditionAccepted, metav1.ConditionFalse, jobsv1alpha1.ReasonJobTypeNotFound,
			fmt.Sprintf("no JobType serves job type %q (looked for JobType %q in namespace %s)", run.Spec.JobType, jobsv1alpha1.JobTypeObjectName(run.Spec.JobType), run.Namespace), now)
		d.finish(jobsv1alpha1.JobRunFailed, jobsv1alpha1.ReasonJobTypeNotFound, fmt.Sprintf("job type %q does not exist", run.Spec.JobType), o.now)
		return d
	}
	if o.paramsErr != nil && st.Attempts == 0 {
		msg := "invalid params: " + o.paramsErr.Error()
		d.setCondition(jobsv1alpha1.JobRunConditionAccepted, metav1.ConditionFalse, jobsv1alpha1.ReasonInvalidParams, msg, now)
		d.finish(jobsv1alpha1.JobRunFailed, jobsv1alpha1.ReasonInvalidParams, msg, o.now)
		return d
	}
	d.setCondition(jobsv1alpha1.JobRunConditionAccepted, metav1.ConditionTrue, jobsv1alpha1.ReasonAccepted, "JobType "+o.jobType.Name+" found", now)

	cancel := run.IsCancelRequested()
	if cancel && meta.FindStatusCondition(st.Conditions, jobsv1alpha1.JobRunConditionCancelRequested) == nil {
		st.CancelRequestedAt = ptr.To(metav1.NewMicroTime(o.now))
		d.setCondition(jobsv1alpha1.JobRunConditionCancelRequested, metav1.ConditionTrue, jobsv1alpha1.ReasonCancelRequested, "cancel requested; the handler is asked to stop", now)
		d.events = append(d.events, runEvent{corev1.EventTypeNormal, jobsv1alpha1.ReasonCancelRequested, "Cancel requested"})
	}

	if st.Attempts == 0 {
		if cancel {
			if o.pod == nil && meta.IsStatusConditionTrue(st.Conditions, jobsv1alpha1.JobRunConditionQueued) {
				d.finish(jobsv1alpha1.JobRunCancelled, jobsv1alpha1.ReasonCancelledWhileQueued, "cancelled while queued for admission; it never ran", o.now)
				return d
			}
			if o.pod != nil {
				// A first pod not recorded yet has not run the handler
				// (its runner records the attempt first): stop it now.
				d.startAttempt(run, 1, now)
				d.createAttempt = 0
				d.deletePod = true
			}
			d.finish(jobsv1alpha1.JobRunCancelled, jobsv1alpha1.ReasonCancelled, "cancelled before it started", o.now)
			return d
		}
		if o.pod == nil {
			if o.kueue && (o.workload == nil || !o.workload.admitted) {
				d.queued(run, o, now)
				return d
			}
			if meta.IsStatusConditionTrue(st.Conditions, jobsv1alpha1.JobRunConditionQueued) {
				d.setCondition(jobsv1alpha1.JobRunConditionQueued, metav1.ConditionFalse, jobsv1alpha1.ReasonAdmitted, "Kueue admitted the run's Workload", now)
			}
			if d.startTimedOut(o) {
				return d
			}
			d.startAttempt(run, 1, now)
			st.Phase = jobsv1alpha1.JobRunPending
			return d
		}
		// The first attempt's pod exists but the status does not record it
		// yet (see firstAttemptUnrecorded): record it with what its pod says.
		d.startAttempt(run, 1, now)
		d.createAttempt = 0
		st.Phase = jobsv1alpha1.JobRunPending
	}

	pod := o.pod
	switch {
	case pod == nil:
		if cancel {
			d.finish(jobsv1alpha1.JobRunCancelled, jobsv1alpha1.ReasonCancelled, "pod deleted after the cancel request", o.now)
			return d
		}
		d.attemptFailed(run, o.jobType, jobsv1alpha1.ReasonPodLost, fmt.Sprintf("pod %s disappeared before the handler finished", jobsv1alpha1.PodName(run.Name, st.Attempts)), now)
		return d
	case pod.Status.Phase == corev1.PodSucceeded:
		d.startedFromPod(pod)
		d.finish(jobsv1alpha1.JobRunCompleted, jobsv1alpha1.ReasonCompleted, "handler returned a result", o.now)
		return d
	case pod.Status.Phase == corev1.PodFailed:
		d.startedFromPod(pod)
		code, reason, message := podFailure(pod)
		if cancel {
			d.finish(jobsv1alpha1.JobRunCancelled, jobsv1alpha1.ReasonCancelled, "handler stopped after the cancel request", o.now)
			return d
		}
		if code == jobsv1alpha1.ExitCodeCancelled {
			// The runner stopped its handler, but nobody asked: its pod was
			// terminated (deleted, drained, preempted). An interrupted
			// attempt, retried if the job type allows, never a cancel.
			reason, message = jobsv1alpha1.ReasonPodLost, fmt.Sprintf("pod %s was terminated while the handler ran (no cancel was requested)", jobsv1alpha1.PodName(run.Name, st.Attempts))
		}
		d.attemptFailed(run, o.jobType, reason, message, now)
		return d
	case pod.Status.Phase == corev1.PodRunning && st.Phase != jobsv1alpha1.JobRunRunning:
		st.Phase = jobsv1alpha1.JobRunRunning
		if st.StartedAt == nil {
			st.StartedAt = ptr.To(metav1.NewMicroTime(o.now))
			d.started = true
		}
		d.setCondition(jobsv1alpha1.JobRunConditionRunning, metav1.ConditionTrue, jobsv1alpha1.ReasonHandlerRunning, "pod "+pod.Name+" is running the handler", now)
		d.events = append(d.events, runEvent{corev1.EventTypeNormal, "Started", fmt.Sprintf("Handler started in pod %s (attempt %d)", pod.Name, st.Attempts)})
	}

	// Still active: time decides the rest.
	if st.StartedAt == nil && d.startTimedOut(o) {
		return d
	}
	if st.StartedAt != nil && o.jobType.Spec.ActiveDeadlineSeconds != nil {
		deadline := time.Duration(*o.jobType.Spec.ActiveDeadlineSeconds) * time.Second
		if left := st.StartedAt.Add(deadline).Sub(o.now); left <= 0 {
			d.deletePod = true
			d.finish(jobsv1alpha1.JobRunFailed, jobsv1alpha1.ReasonDeadlineExceeded, fmt.Sprintf("run exceeded its deadline of %s", deadline), o.now)
			return d
		} else {
			d.requeue(left)
		}
	}
	if cancel {
		grace := time.Duration(ptr.Deref(o.jobType.Spec.CancelGracePeriodSeconds, 30)) * time.Second
		if left := cancelSeenAt(st).Add(grace).Sub(o.now); left <= 0 {
			d.deletePod = true
			d.finish(jobsv1alpha1.JobRunCancelled, jobsv1alpha1.ReasonCancelGracePeriodExceeded,
				fmt.Sprintf("handler ignored the cancel request for %s; its pod was deleted", grace), o.now)
			return d
		} else {
			d.requeue(left)
		}
	}
	return d
}

// cancelSeenAt is when the controller first saw the run's cancel request,
// which starts the grace period: status.cancelRequestedAt, or, for a run
// whose request was seen before that field existed, the CancelRequested
// condition's lastTransitionTime (whole seconds, the best there is).
func cancelSeenAt(st *jobsv1alpha1.JobRunStatus) time.Time {
	if st.CancelRequestedAt != nil {
		return st.CancelRequestedAt.Time
	}
	return meta.FindStatusCondition(st.Conditions, jobsv1alpha1.JobRunConditionCancelRequested).LastTransitionTime.Time
}

// startTimeout is how long the run may take from its creation (or its
// admission by Kueue) to running.
func startTimeout(jt *jobsv1alpha1.JobType) time.Duration {
	return time.Duration(ptr.Deref(jt.Spec.StartTimeoutSeconds, 600)) * time.Second
}

// startClock is when a run's start timeout began: when Kueue admitted it
// (the time it waited in its queue is by design), else its creation.
func startClock(run *jobsv1alpha1.JobRun, st *jobsv1alpha1.JobRunStatus) time.Time {
	if c := meta.FindStatusCondition(st.Conditions, jobsv1alpha1.JobRunConditionQueued); c != nil && c.Reason == jobsv1alpha1.ReasonAdmitted && c.LastTransitionTime.After(run.CreatedAt()) {
		return c.LastTransitionTime.Time
	}
	return run.CreatedAt()
}

// startTimedOut fails a run that has not started within its JobType's start
// timeout, with what held it (its pod deleted), and reports whether it did;
// otherwise it asks to look again when the timeout ends.
func (d *decision) startTimedOut(o observation) bool {
	timeout := startTimeout(o.jobType)
	if left := startClock(o.run, &d.status).Add(timeout).Sub(o.now); left > 0 {
		d.requeue(left)
		return false
	}
	reason, why := startProblem(o.pod, &d.status)
	d.deletePod = o.pod != nil
	d.finish(jobsv1alpha1.JobRunFailed, reason, fmt.Sprintf("run did not start within its start timeout of %s: %s", timeout, why), o.now)
	return true
}

// startProblem says what kept a run from starting: the API server's refusal
// of its pod, the pod's scheduling condition, or a container's waiting
// reason (ImagePullBackOff, ...).
func startProblem(pod *corev1.Pod, st *jobsv1alpha1.JobRunStatus) (reason, message string) {
	if pod == nil {
		if c := meta.FindStatusCondition(st.Conditions, jobsv1alpha1.JobRunConditionRunning); c != nil && c.Reason == jobsv1alpha1.ReasonPodForbidden {
			return jobsv1alpha1.ReasonPodForbidden, c.Message
		}
		return jobsv1alpha1.ReasonStartTimeout, "no pod was created"
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse &&
			(c.Reason != corev1.PodReasonSchedulingGated || len(pod.Spec.SchedulingGates) > 0) { // not a gate since lifted
			return conditionReason(c.Reason, corev1.PodReasonUnschedulable), fmt.Sprintf("pod %s was not scheduled: %s", pod.Name, c.Message)
		}
	}
	for _, cs := range append(append([]corev1.ContainerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" && w.Reason != "PodInitializing" {
			return conditionReason(w.Reason, jobsv1alpha1.ReasonStartTimeout), fmt.Sprintf("container %s of pod %s is waiting: %s: %s", cs.Name, pod.Name, w.Reason, w.Message)
		}
	}
	return jobsv1alpha1.ReasonStartTimeout, fmt.Sprintf("pod %s did not start (phase %q)", pod.Name, pod.Status.Phase)
}

// conditionReason is reason if a condition may carry it (CamelCase, as the
// kubelet's and scheduler's are), else fallback.
func conditionReason(reason, fallback string) string {
	if reasonPattern.MatchString(reason) && len(reason) <= 1024 {
		return reason
	}
	return fallback
}

// reasonPattern is metav1.Condition's rule for reasons.
var reasonPattern = regexp.MustCompile(`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`)

// podRefused is the decision when the API server refused the pod that d
// asked for (Pod Security, a quota, an admission webhook): such refusals can
// pass (a quota frees up, a policy changes), so the run stays as it was,
// says why in its Running condition, and tries again with a backoff that
// grows with its age, never past its start timeout, which then fails it.
func podRefused(o observation, d decision, err error) decision {
	st := o.run.Status.DeepCopy()
	refusal := decision{status: *st}
	refusal.status.ObservedGeneration = o.run.Generation
	refusal.status.Phase = o.run.CurrentPhase()
	// Keep what the decision recorded besides the attempt: the Accepted and
	// CancelRequested conditions, cancelRequestedAt.
	refusal.status.Conditions = d.status.Conditions
	refusal.status.CancelRequestedAt = d.status.CancelRequestedAt
	msg := clipTo(err.Error(), 4096)
	prev := meta.FindStatusCondition(o.run.Status.Conditions, jobsv1alpha1.JobRunConditionRunning)
	if prev == nil || prev.Reason != jobsv1alpha1.ReasonPodForbidden || prev.Message != msg {
		refusal.events = append(refusal.events, runEvent{corev1.EventTypeWarning, jobsv1alpha1.ReasonPodForbidden, "Pod refused, retrying until the start timeout: " + msg})
	}
	refusal.setCondition(jobsv1alpha1.JobRunConditionRunning, metav1.ConditionFalse, jobsv1alpha1.ReasonPodForbidden, msg, metav1.NewTime(o.now))
	backoff := min(max(o.now.Sub(o.run.CreatedAt())/2, time.Second), time.Minute)
	refusal.requeue(backoff)
	if left := o.run.CreatedAt().Add(startTimeout(o.jobType)).Sub(o.now); left > 0 {
		refusal.requeue(left)
	}
	return refusal
}

// startedFromPod records the start of a run whose pod ran and ended between
// two looks of the controller: the pod says when its container started.
func (d *decision) startedFromPod(pod *corev1.Pod) {
	if d.status.StartedAt != nil {
		return
	}
	var started *metav1.Time
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil && !t.StartedAt.IsZero() {
			started = &t.StartedAt
			break
		}
	}
	if started == nil {
		started = pod.Status.StartTime
	}
	if started != nil {
		d.status.StartedAt = ptr.To(metav1.NewMicroTime(started.Time))
		d.started = true
	}
}

// firstAttemptUnrecorded reports whether d would write nothing but the first
// attempt's bookkeeping (attempts 1, its pod's name, the Accepted and
// Running=PodPending conditions, phase pending) into a status the controller
// never wrote: then it is not written. The attempt's pod records it (its
// name is deterministic, and the next pass finds it in the cache), and the
// runner records its attempt itself before the handler starts (sdk.Serve;
// the runner policy lets it write exactly that), so a pod that vanishes
// unrecorded ran nothing and is simply created again.
// The status is written when it says more: the pod runs or fails, the start
// timeout ends it, a cancel request comes. Dispatch then costs the API server
// one write (the pod) instead of two.
func (d *decision) firstAttemptUnrecorded(run *jobsv1alpha1.JobRun) bool {
	return statusNeverWritten(run) && d.status.Attempts == 1 && d.status.Phase == jobsv1alpha1.JobRunPending &&
		!d.finished && !d.deletePod && len(d.events) == 0 && d.status.Progress == nil &&
		meta.FindStatusCondition(d.status.Conditions, jobsv1alpha1.JobRunConditionQueued) == nil // a queued run says so
}

// statusNeverWritten reports whether the controller never wrote run's
// status (firstAttemptUnrecorded, workloadUnrecorded).
func statusNeverWritten(run *jobsv1alpha1.JobRun) bool {
	return run.Status.Attempts == 0 && len(run.Status.Conditions) == 0
}

// queued keeps a run whose Workload Kueue has not admitted pending, with
// condition Queued: Kueue's reason and message, after where the run stands;
// no start timeout (it waits by design). A run without a Workload gets one.
func (d *decision) queued(run *jobsv1alpha1.JobRun, o observation, now metav1.Time) {
	d.status.Phase = jobsv1alpha1.JobRunPending
	lq := LocalQueueName(run)
	where := "LocalQueue " + lq
	if p := o.position; p != nil {
		where = fmt.Sprintf("position %d in LocalQueue %s (%d in its ClusterQueue)", p.local+1, lq, p.cluster+1)
	}
	reason, msg := jobsv1alpha1.ReasonWaitingForAdmission, where+": waiting for Kueue to admit the run's Workload"
	switch {
	case o.workload == nil:
		d.createWorkload = true
		if c := meta.FindStatusCondition(d.status.Conditions, jobsv1alpha1.JobRunConditionQueued); c != nil && c.Reason == jobsv1alpha1.ReasonWorkloadRefused {
			return // says why until the next try succeeds
		}
		if statusNeverWritten(run) {
			d.requeue(kueueQuietGrace)
		}
	case o.workload.reason == "" && statusNeverWritten(run):
		// Kueue has not said anything yet: a Workload it admits at once
		// costs no status write; one it does not look at (a Workload
		// deep in a backlog, or set aside with others of its shape) is
		// recorded as queued once kueueQuietGrace has passed.
		if quiet := o.now.Sub(o.workload.created); quiet < kueueQuietGrace {
			d.quietWorkload = true
			// (At most the grace: a clock behind the API server's.)
			d.requeue(min(kueueQuietGrace-quiet, kueueQuietGrace))
		}
	case o.workload.reason != "":
		reason = conditionReason(o.workload.reason, reason)
		msg = clipTo(where+": "+o.workload.message, 1024)
	}
	d.setCondition(jobsv1alpha1.JobRunConditionQueued, metav1.ConditionTrue, reason, msg, now)
}

// workloadUnrecorded reports whether d would write nothing but the
// bookkeeping of a new run whose Workload Kueue has not looked at yet (or
// which it creates) into a status the controller never wrote: then it is
// not written (as firstAttemptUnrecorded). Kueue admits the Workload or
// says why not, and either brings the next pass; a run admitted at once
// costs no status write before its pod.
func (d *decision) workloadUnrecorded(run *jobsv1alpha1.JobRun) bool {
	c := meta.FindStatusCondition(d.status.Conditions, jobsv1alpha1.JobRunConditionQueued)
	return statusNeverWritten(run) && !d.finished && len(d.events) == 0 &&
		(d.createWorkload || d.quietWorkload) &&
		c != nil && c.Status == metav1.ConditionTrue && c.Reason == jobsv1alpha1.ReasonWaitingForAdmission
}

// kueueQuietGrace is how long a new run's Workload may go without a word
// from Kueue (admitted, or why not) before the run's status records it as
// queued: Kueue admits a Workload with room within about a second, and
// Kueue does not write why it waits for every Workload it has not tried
// yet (nor, with SchedulingEquivalenceHashing, for those set aside with
// another of their shape); without this such runs had no Queued condition.
const kueueQuietGrace = 2 * time.Second

// startAttempt asks for the pod of attempt n.
func (d *decision) startAttempt(run *jobsv1alpha1.JobRun, n int32, now metav1.Time) {
	d.createAttempt = n
	d.status.Attempts = n
	d.status.PodName = jobsv1alpha1.PodName(run.Name, n)
	d.setCondition(jobsv1alpha1.JobRunConditionRunning, metav1.ConditionFalse, jobsv1alpha1.ReasonPodPending, "pod "+d.status.PodName+" is starting", now)
}

// attemptFailed retries when the JobType allows another attempt, else fails
// the run, keeping the runner's error when it recorded one.
func (d *decision) attemptFailed(run *jobsv1alpha1.JobRun, jt *jobsv1alpha1.JobType, reason, message string, now metav1.Time) {
	if d.status.Attempts <= ptr.Deref(jt.Spec.RetryLimit, 0) {
		d.events = append(d.events, runEvent{corev1.EventTypeWarning, jobsv1alpha1.ReasonRetrying,
			fmt.Sprintf("Attempt %d failed (%s: %s); starting attempt %d", d.status.Attempts, reason, message, d.status.Attempts+1)})
		d.status.Error = ""
		d.startAttempt(run, d.status.Attempts+1, now)
		return
	}
	if d.status.Error != "" {
		message = d.status.Error
	}
	d.finish(jobsv1alpha1.JobRunFailed, reason, message, now.Time)
}

// finish moves the run to a terminal phase.
func (d *decision) finish(phase jobsv1alpha1.JobRunPhase, reason, message string, now time.Time) {
	st := &d.status
	st.Phase = phase
	st.CompletedAt = ptr.To(metav1.NewMicroTime(now))
	if phase == jobsv1alpha1.JobRunFailed && st.Error == "" {
		st.Error = message
	}
	d.finished = true
	d.requeueAfter = 0
	t := metav1.NewTime(now)
	if meta.FindStatusCondition(st.Conditions, jobsv1alpha1.JobRunConditionRunning) != nil {
		d.setCondition(jobsv1alpha1.JobRunConditionRunning, metav1.ConditionFalse, reason, "the run has ended", t)
	}
	d.setCondition(jobsv1alpha1.JobRunConditionFinished, metav1.ConditionTrue, reason, message, t)
	eventType := corev1.EventTypeNormal
	if phase == jobsv1alpha1.JobRunFailed {
		eventType = corev1.EventTypeWarning
	}
	d.events = append(d.events, runEvent{eventType, reason, fmt.Sprintf("Run %s: %s", phase, message)})
}

func (d *decision) setCondition(t string, status metav1.ConditionStatus, reason, message string, now metav1.Time) {
	meta.SetStatusCondition(&d.status.Conditions, metav1.Condition{
		Type: t, Status: status, Reason: reason, Message: message,
		ObservedGeneration: d.status.ObservedGeneration, LastTransitionTime: now,
	})
}

func (d *decision) requeue(after time.Duration) {
	if d.requeueAfter == 0 || after < d.requeueAfter {
		d.requeueAfter = after
	}
}

// podFailure explains a failed pod: the handler container's exit code, and a
// reason and message a person can read.
func podFailure(pod *corev1.Pod) (exitCode int32, reason, message string) {
	if pod.Status.Reason == "Evicted" {
		return -1, jobsv1alpha1.ReasonPodLost, "pod was evicted: " + pod.Status.Message
	}
	if pod.Status.Reason == "DeadlineExceeded" {
		return -1, jobsv1alpha1.ReasonDeadlineExceeded, "pod exceeded its active deadline"
	}
	for _, cs := range pod.Status.ContainerStatuses {
		term := cs.State.Terminated
		if term == nil || term.ExitCode == 0 {
			continue
		}
		switch {
		case term.Reason == "OOMKilled":
			return term.ExitCode, jobsv1alpha1.ReasonHandlerFailed, fmt.Sprintf("container %s ran out of memory and was killed (OOMKilled, exit code %d)", cs.Name, term.ExitCode)
		case term.ExitCode == 137 || term.Signal == 9:
			return term.ExitCode, jobsv1alpha1.ReasonHandlerFailed, fmt.Sprintf("container %s was killed (SIGKILL, exit code %d)", cs.Name, term.ExitCode)
		default:
			return term.ExitCode, jobsv1alpha1.ReasonHandlerFailed, fmt.Sprintf("container %s exited with code %d", cs.Name, term.ExitCode)
		}
	}
	msg := "pod failed"
	if pod.Status.Message != "" {
		msg += ": " + pod.Status.Message
	}
	return -1, jobsv1alpha1.ReasonHandlerFailed, msg
}
