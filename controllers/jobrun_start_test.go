package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// noPodsQuota forbids pods in ns: a ResourceQuota of zero pods, with the
// status the quota controller would write (none runs here), so the API
// server's quota admission refuses every pod as exceeding it.
func noPodsQuota(t *testing.T, ns string) *corev1.ResourceQuota {
	t.Helper()
	ctx := context.Background()
	zero := corev1.ResourceList{corev1.ResourcePods: resource.MustParse("0")}
	q := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "no-pods"}, Spec: corev1.ResourceQuotaSpec{Hard: zero}}
	if err := env.Client.Create(ctx, q); err != nil {
		t.Fatal(err)
	}
	q.Status = corev1.ResourceQuotaStatus{Hard: zero, Used: zero}
	if err := env.Client.Status().Update(ctx, q); err != nil {
		t.Fatal(err)
	}
	return q
}

// waitRefused waits until the run records the API server's refusal of its
// pod and checks that it is still waiting, without an attempt.
func waitRefused(t *testing.T, ns, name string) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, name)
		if err != nil {
			return err
		}
		c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionRunning)
		if c == nil || c.Reason != jobsv1alpha1.ReasonPodForbidden || !strings.Contains(c.Message, "exceeded quota") {
			return fmt.Errorf("run %s: Running condition %+v, want the quota's refusal", name, c)
		}
		if jr.CurrentPhase() != jobsv1alpha1.JobRunPending || jr.Status.Attempts != 0 {
			return fmt.Errorf("refused run %s is %q with %d attempts, want pending with none", name, jr.CurrentPhase(), jr.Status.Attempts)
		}
		return nil
	})
}

// TestRefusedPodFailsAtTheStartTimeout: a pod the API server refuses (here
// a quota) is retried, and when the start timeout ends the run fails with
// the API server's message and its trigger guard is released — instead of
// staying pending, and holding its (job type, project), forever.
func TestRefusedPodFailsAtTheStartTimeout(t *testing.T) {
	ns := env.Namespace(t)
	noPodsQuota(t, ns)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.StartTimeoutSeconds = ptr.To[int64](60) })
	guard := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jobsv1alpha1.GuardName("demo_sync", "project-1")},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("run-refused")},
	}
	if err := env.Client.Create(context.Background(), guard); err != nil {
		t.Fatal(err)
	}
	createRunWith(t, ns, "run-refused", func(jr *jobsv1alpha1.JobRun) { jr.Spec.CreatedAt = ptr.To(metav1.NewMicroTime(clock.Now())) })
	waitRefused(t, ns, "run-refused")

	clock.Step(59 * time.Second)
	waitReconciled(t, ns, "run-refused")
	if jr, err := getRun(context.Background(), ns, "run-refused"); err != nil || jr.CurrentPhase() != jobsv1alpha1.JobRunPending {
		t.Fatalf("a second before the start timeout: run %v (%v), want still pending", jr.Status.Phase, err)
	}
	clock.Step(time.Second)
	poke(t, ns, "run-refused")
	jr := waitPhase(t, ns, "run-refused", jobsv1alpha1.JobRunFailed)
	if finishedReason(jr) != jobsv1alpha1.ReasonPodForbidden || !strings.HasPrefix(jr.Status.Error, `run did not start within its start timeout of 1m0s: pods "run-refused-1" is forbidden: exceeded quota: no-pods`) {
		t.Errorf("failed with reason %q, error %q; want PodForbidden with the API server's message", finishedReason(jr), jr.Status.Error)
	}
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(guard), &coordinationv1.Lease{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("the failed run's guard is still held (%v)", err)
		}
		return nil
	})
}

// TestRefusedPodIsRetried: once the refusal passes (the quota is lifted),
// the next retry creates the pod, without anyone touching the run.
func TestRefusedPodIsRetried(t *testing.T) {
	ns := env.Namespace(t)
	quota := noPodsQuota(t, ns)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns)
	createRunWith(t, ns, "run-later", func(jr *jobsv1alpha1.JobRun) { jr.Spec.CreatedAt = ptr.To(metav1.NewMicroTime(clock.Now())) })
	waitRefused(t, ns, "run-later")
	if err := env.Client.Delete(context.Background(), quota); err != nil {
		t.Fatal(err)
	}
	pod := waitPod(t, ns, "run-later-1")
	kubelet(t, pod, corev1.PodRunning, 0, "")
	jr := waitPhase(t, ns, "run-later", jobsv1alpha1.JobRunRunning)
	if jr.Status.Attempts != 1 {
		t.Errorf("attempts %d after the refusals, want 1", jr.Status.Attempts)
	}
}

// TestUnschedulablePodFailsAtTheStartTimeout: a pod that no node takes
// fails the run with the scheduler's reason when the start timeout ends,
// and the pod is deleted.
func TestUnschedulablePodFailsAtTheStartTimeout(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.StartTimeoutSeconds = ptr.To[int64](120) })
	createRunWith(t, ns, "run-nowhere", func(jr *jobsv1alpha1.JobRun) { jr.Spec.CreatedAt = ptr.To(metav1.NewMicroTime(clock.Now())) })
	pod := waitPod(t, ns, "run-nowhere-1")
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: "0/1 nodes are available: 1 node(s) had untolerated taint {team: other}.", LastTransitionTime: metav1.Now()}}
	pod.Status.Phase = corev1.PodPending
	if err := env.Client.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	clock.Step(2 * time.Minute)
	poke(t, ns, "run-nowhere")
	jr := waitPhase(t, ns, "run-nowhere", jobsv1alpha1.JobRunFailed)
	want := "run did not start within its start timeout of 2m0s: pod run-nowhere-1 was not scheduled: 0/1 nodes are available: 1 node(s) had untolerated taint {team: other}."
	if finishedReason(jr) != corev1.PodReasonUnschedulable || jr.Status.Error != want {
		t.Errorf("failed with reason %q, error %q; want Unschedulable, %q", finishedReason(jr), jr.Status.Error, want)
	}
	waitPodGone(t, pod, "the pod of a run that never started is still there")
}
