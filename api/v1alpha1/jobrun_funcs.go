package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NewJobRun is the pending run name in namespace that spec asks for,
// triggered at now: the one constructor of a run, for the REST trigger and
// JobSchedule.NewRun alike. spec.createdAt is now at the millisecond the REST
// API shows; the labels are its job type, phase and, for a team's run, its
// team and project.
func NewJobRun(namespace, name string, spec JobRunSpec, now time.Time) *JobRun {
	createdAt := metav1.NewMicroTime(now.UTC().Truncate(time.Millisecond))
	spec.CreatedAt = &createdAt
	labels := map[string]string{LabelJobType: spec.JobType, LabelStatus: string(JobRunPending)}
	if spec.TeamID != "" {
		labels[LabelTeam], labels[LabelProject] = spec.TeamID, spec.ProjectID
	}
	return &JobRun{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec:       spec,
	}
}

// IsTerminal reports whether a run in phase p has ended; a terminal phase
// never changes again.
func (p JobRunPhase) IsTerminal() bool {
	switch p {
	case JobRunCompleted, JobRunFailed, JobRunCancelled:
		return true
	}
	return false
}

// CurrentPhase is the run's phase, pending when nobody has written a status
// yet.
func (r *JobRun) CurrentPhase() JobRunPhase {
	if r.Status.Phase == "" {
		return JobRunPending
	}
	return r.Status.Phase
}

// CreatedAt is when the run was triggered: spec.createdAt, or the object's
// creation time for runs created without one.
func (r *JobRun) CreatedAt() time.Time {
	if r.Spec.CreatedAt != nil {
		return r.Spec.CreatedAt.Time
	}
	return r.CreationTimestamp.Time
}

// IsCancelRequested reports whether someone asked the run to stop.
func (r *JobRun) IsCancelRequested() bool {
	_, ok := r.Annotations[AnnotationCancelRequested]
	return ok
}

// RequestCancel marks the run as asked to stop at now (the annotation the
// runner and the controller act on). It reports false when the run already
// carried a request, which is kept.
func (r *JobRun) RequestCancel(now time.Time) bool {
	if r.IsCancelRequested() {
		return false
	}
	if r.Annotations == nil {
		r.Annotations = map[string]string{}
	}
	r.Annotations[AnnotationCancelRequested] = now.UTC().Format(time.RFC3339)
	return true
}

// NewProgress returns a progress report with its summary filled in.
func NewProgress(processed, total int64, message string) *JobRunProgress {
	return &JobRunProgress{
		Processed: processed,
		Total:     total,
		Message:   message,
		Summary:   strconv.FormatInt(processed, 10) + "/" + strconv.FormatInt(total, 10),
	}
}

// GuardName is the name of the Lease that allows one pending or running run
// per (job type, project): a REST trigger or a project JobSchedule creates
// it with create-if-absent semantics before it creates a run, so concurrent
// starters on any number of replicas yield exactly one run; the controller
// deletes it when the run ends. internal/guard holds the protocol. Job types
// hold underscores and ids may be long, so the name is a hash.
func GuardName(jobType, projectID string) string {
	sum := sha256.Sum256([]byte(jobType + "\x00" + projectID))
	return "jobrun-guard-" + hex.EncodeToString(sum[:12])
}

// IsConsistencyMarker says whether o is the REST API's consistency marker
// (ConsistencyMarkerName), which is not a run.
func IsConsistencyMarker(o metav1.Object) bool {
	return o.GetName() == ConsistencyMarkerName
}

// PodName is the deterministic name of a run's pod for one attempt: a
// restarted controller or a stale cache can never create a second pod for the
// same attempt, because the API server refuses the duplicate name. The
// runner policy relies on it too (the pod of attempt N of run R is R-N).
func PodName(runName string, attempt int32) string {
	return fmt.Sprintf("%s-%d", runName, attempt)
}
