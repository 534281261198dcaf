package cachetrim

import (
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	toolscache "k8s.io/client-go/tools/cache"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// TestTransformKeepsWhatIsRead: a run with every field set comes out of the
// transform equal to what went in, less managedFields and the last-applied
// annotation; so does a pod's metadata.
func TestTransformKeepsWhatIsRead(t *testing.T) {
	at := metav1.NewMicroTime(time.Date(2024, 1, 15, 10, 30, 1, 0, time.UTC))
	sec := metav1.NewTime(at.Time)
	run := jobsv1alpha1.NewJobRun("ns", "0b7e4a52-3f1c-4a57-9f7e-2a8c1f5d9e01", jobsv1alpha1.JobRunSpec{
		JobType: "revenuecat_sync", TeamID: "team-1", ProjectID: "project-1", TriggeredBy: "manual:user:u1",
		Params: &runtime.RawExtension{Raw: []byte(`{"full":true}`)}, Notify: true, NotifyEmail: "u1@example.com",
	}, at.Time)
	run.GenerateName, run.UID, run.ResourceVersion, run.Generation = "run-", "uid-1", "42", 2
	run.Annotations = map[string]string{jobsv1alpha1.AnnotationCancelRequested: "2024-01-15T10:31:00Z"}
	run.OwnerReferences = []metav1.OwnerReference{{APIVersion: "jobs.jobrun.dev/v1alpha1", Kind: "JobSchedule", Name: "nightly", UID: "uid-s"}}
	run.Finalizers = []string{"jobs.jobrun.dev/guard"}
	run.Status = jobsv1alpha1.JobRunStatus{
		Phase: jobsv1alpha1.JobRunFailed, Progress: jobsv1alpha1.NewProgress(5, 10, "half"),
		Result: &runtime.RawExtension{Raw: []byte(`{"n":5}`)}, Error: "boom",
		StartedAt: &at, CompletedAt: &at, CancelRequestedAt: &at, PodName: "run-1-1", Attempts: 1,
		Notification:       &jobsv1alpha1.JobRunNotification{State: jobsv1alpha1.NotificationSent, Attempts: 1, LastAttemptTime: &sec, Message: "sent"},
		ObservedGeneration: 2,
		Conditions:         []metav1.Condition{{Type: "Started", Status: metav1.ConditionTrue, Reason: "PodRunning", Message: "pod run-1-1 is running", ObservedGeneration: 2, LastTransitionTime: sec}},
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run-1-1",
		Labels: map[string]string{jobsv1alpha1.LabelRun: run.Name}, Annotations: map[string]string{"a": "b"}}}

	for _, want := range []metav1.Object{run, pod} {
		in := want.(runtime.Object).DeepCopyObject().(metav1.Object)
		in.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}})
		a := in.GetAnnotations()
		a[corev1.LastAppliedConfigAnnotation] = `{"apiVersion":"v1"}`
		in.SetAnnotations(a)
		out, err := Transform()(in)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, out); diff != "" {
			t.Errorf("%s: transformed (-want +got):\n%s", want.GetName(), diff)
		}
	}
}

// TestTransformPassesTombstones: a DeletedFinalStateUnknown goes through
// unchanged.
func TestTransformPassesTombstones(t *testing.T) {
	tomb := toolscache.DeletedFinalStateUnknown{Key: "ns/run-1"}
	if out, err := Transform()(tomb); err != nil || out != tomb {
		t.Errorf("Transform(tombstone) = %v, %v", out, err)
	}
}

// TestTransformSharesRunLabels: runs with equal labels share one map, runs
// with other labels (even if their keys and values concatenate alike) do
// not; a pod's labels are its own.
func TestTransformSharesRunLabels(t *testing.T) {
	tr := Transform()
	labelsOf := func(obj metav1.Object) map[string]string {
		t.Helper()
		out, err := tr(obj)
		if err != nil {
			t.Fatal(err)
		}
		return out.(metav1.Object).GetLabels()
	}
	run := func(labels map[string]string) *jobsv1alpha1.JobRun {
		return &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "r", Labels: labels}}
	}
	same := func(a, b map[string]string) bool {
		return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
	}

	a := labelsOf(run(map[string]string{"team": "t1", "project": "p1"}))
	b := labelsOf(run(map[string]string{"project": "p1", "team": "t1"}))
	if !same(a, b) {
		t.Errorf("equal run labels are two maps")
	}
	if c := labelsOf(run(map[string]string{"team": "t1", "project": "p2"})); same(a, c) || c["project"] != "p2" {
		t.Errorf("other run labels share a map: %v", c)
	}
	if d, e := labelsOf(run(map[string]string{"a": "bc"})), labelsOf(run(map[string]string{"ab": "c"})); same(d, e) {
		t.Errorf("labels a=bc and ab=c share a map: %v", e)
	}
	pod := func() *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"team": "t1"}}}
	}
	if same(labelsOf(pod()), labelsOf(pod())) {
		t.Errorf("pods share a label map")
	}
}
