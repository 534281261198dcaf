// Package testrun builds JobRun objects for tests, one field at a time:
//
//	testrun.Make(ns, "run-1").JobType("demo_sync").Team("team-1").Project("project-1").Obj()
//
// It is for tests only: nothing that jobrun's binary links may import it.
package testrun

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// Wrapper holds a JobRun being built.
type Wrapper struct{ run jobsv1alpha1.JobRun }

// Make starts a run named name in namespace ns, with nothing else set.
func Make(ns, name string) *Wrapper {
	return &Wrapper{run: jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}}
}

// Obj returns the run built so far.
func (w *Wrapper) Obj() *jobsv1alpha1.JobRun { return &w.run }

// GenerateName has the API server name the run: prefix and a random suffix.
func (w *Wrapper) GenerateName(prefix string) *Wrapper {
	w.run.Name, w.run.GenerateName = "", prefix
	return w
}

// JobType sets the run's job type.
func (w *Wrapper) JobType(jobType string) *Wrapper {
	w.run.Spec.JobType = jobType
	return w
}

// Team sets the run's team.
func (w *Wrapper) Team(id string) *Wrapper {
	w.run.Spec.TeamID = id
	return w
}

// Project sets the run's project.
func (w *Wrapper) Project(id string) *Wrapper {
	w.run.Spec.ProjectID = id
	return w
}

// TriggeredBy sets who or what started the run ("manual:user:u1",
// "schedule:nightly").
func (w *Wrapper) TriggeredBy(by string) *Wrapper {
	w.run.Spec.TriggeredBy = by
	return w
}

// Params sets the run's params to the JSON text params.
func (w *Wrapper) Params(params string) *Wrapper {
	w.run.Spec.Params = &runtime.RawExtension{Raw: []byte(params)}
	return w
}

// CreatedAt sets the run's createdAt.
func (w *Wrapper) CreatedAt(t time.Time) *Wrapper {
	w.run.Spec.CreatedAt = ptr.To(metav1.NewMicroTime(t))
	return w
}

// TriggerLabels sets the labels the REST trigger puts on a run: its job type,
// team and project, as its spec has them.
func (w *Wrapper) TriggerLabels() *Wrapper {
	return w.Label(jobsv1alpha1.LabelJobType, w.run.Spec.JobType).
		Label(jobsv1alpha1.LabelTeam, w.run.Spec.TeamID).
		Label(jobsv1alpha1.LabelProject, w.run.Spec.ProjectID)
}

// Label sets one label.
func (w *Wrapper) Label(key, value string) *Wrapper {
	if w.run.Labels == nil {
		w.run.Labels = map[string]string{}
	}
	w.run.Labels[key] = value
	return w
}

// Notify asks for the completion email, to email.
func (w *Wrapper) Notify(email string) *Wrapper {
	w.run.Spec.Notify, w.run.Spec.NotifyEmail = true, email
	return w
}

// UID sets metadata.uid, as the API server would.
func (w *Wrapper) UID(uid types.UID) *Wrapper {
	w.run.UID = uid
	return w
}

// Generation sets metadata.generation, as the API server would.
func (w *Wrapper) Generation(n int64) *Wrapper {
	w.run.Generation = n
	return w
}

// ResourceVersion sets metadata.resourceVersion, as the API server would.
func (w *Wrapper) ResourceVersion(rv string) *Wrapper {
	w.run.ResourceVersion = rv
	return w
}

// Phase sets status.phase.
func (w *Wrapper) Phase(phase jobsv1alpha1.JobRunPhase) *Wrapper {
	w.run.Status.Phase = phase
	return w
}

// RecordAttempt writes attempt n into run's status as the controller does
// once the attempt's pod runs (phase running, the attempt, its pod's name):
// the runner (sdk.Serve) starts no handler before that. For tests and
// benchmarks that run the runner without the controller.
func RecordAttempt(ctx context.Context, c client.Client, run *jobsv1alpha1.JobRun, n int32) error {
	patch := fmt.Sprintf(`{"status":{"phase":%q,"attempts":%d,"podName":%q}}`, jobsv1alpha1.JobRunRunning, n, jobsv1alpha1.PodName(run.Name, n))
	return c.Status().Patch(ctx, run.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(patch)))
}
