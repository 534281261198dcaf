package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/kueuetest"
	"jobrun.dev/jobrun/test/testenv"
)

// kueueQueues starts a real Kueue for ns (labelled for its pod
// integration; Admission Fair Sharing sampling usage every second, half of
// it forgotten in 10 s, so that seconds of use count) with a
// ResourceFlavor and two ClusterQueues, for the teams (teamPods at once,
// Admission Fair Sharing between their LocalQueues, as the chart's) and for
// system runs (systemPods).
func kueueQueues(t *testing.T, ns string, teamPods, systemPods int) (KueueQueues, *kueuetest.Kueue) {
	t.Helper()
	return kueueQueuesWith(t, ns, teamPods, systemPods, nil)
}

// kueueQueuesWith is kueueQueues with Kueue's feature gates.
func kueueQueuesWith(t *testing.T, ns string, teamPods, systemPods int, gates map[string]bool) (KueueQueues, *kueuetest.Kueue) {
	t.Helper()
	k := startKueueWith(t, gates)
	ctx := context.Background()
	// The test's LocalQueues and Workloads go with it (envtest deletes no
	// namespace): later tests' Kueue would otherwise keep sampling every
	// earlier test's LocalQueues (Admission Fair Sharing) and load a busy
	// machine more with each test. On failure, Kueue's log lines about
	// the test's namespace (its tail is mostly other namespaces').
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kueue log lines of namespace %s (last 100):\n%s", ns, k.LogLines(100, ns))
		}
		for _, gvk := range []schema.GroupVersionKind{workloadGVK, localQueueGVK} {
			u := &unstructured.Unstructured{}
			u.SetGroupVersionKind(gvk)
			if err := env.Client.DeleteAllOf(context.Background(), u, client.InNamespace(ns)); err != nil {
				t.Logf("deleting the test's %ss: %v", gvk.Kind, err)
			}
		}
	})
	q := KueueQueues{Teams: "teams-" + ns, System: "system-" + ns}
	flavor := "flavor-" + ns
	create := func(obj map[string]any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: obj}
		if err := env.Client.Create(ctx, u); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), u) })
	}
	create(map[string]any{"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": map[string]any{"name": flavor}})
	for cq, pods := range map[string]int{q.Teams: teamPods, q.System: systemPods} {
		spec := map[string]any{
			"namespaceSelector": map[string]any{},
			"resourceGroups": []any{map[string]any{
				"coveredResources": []any{"cpu", "pods"},
				"flavors": []any{map[string]any{"name": flavor, "resources": []any{
					map[string]any{"name": "cpu", "nominalQuota": "100"}, map[string]any{"name": "pods", "nominalQuota": pods}}}},
			}},
		}
		if cq == q.Teams {
			spec["admissionScope"] = map[string]any{"admissionMode": "UsageBasedAdmissionFairSharing"}
		}
		create(map[string]any{"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": map[string]any{"name": cq}, "spec": spec})
	}
	return q, k
}

// startKueue starts a real Kueue for the tests' control plane (Admission
// Fair Sharing sampling usage every second, half of it forgotten in 10 s,
// so that seconds of use count).
func startKueue(t *testing.T) *kueuetest.Kueue {
	t.Helper()
	return startKueueWith(t, nil)
}

// startKueueWith is startKueue with Kueue's feature gates.
func startKueueWith(t *testing.T, gates map[string]bool) *kueuetest.Kueue {
	t.Helper()
	return kueuetest.Start(t, env.ControlPlane, kueuetest.Options{UsageSamplingInterval: time.Second, UsageHalfLife: 10 * time.Second, FeatureGates: gates})
}

// waitQueued waits until run name is pending with condition Queued of
// status want and one of reasons.
func waitQueued(t *testing.T, ns, name string, want metav1.ConditionStatus, reasons ...string) *jobsv1alpha1.JobRun {
	t.Helper()
	var jr *jobsv1alpha1.JobRun
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		var err error
		if jr, err = getRun(ctx, ns, name); err != nil {
			return err
		}
		c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionQueued)
		if c == nil || c.Status != want || !slices.Contains(reasons, c.Reason) || jr.CurrentPhase() != jobsv1alpha1.JobRunPending {
			return fmt.Errorf("run %s: %s, Queued %+v; want pending, Queued=%s %s", name, jr.CurrentPhase(), c, want, strings.Join(reasons, " or "))
		}
		return nil
	})
	return jr
}

// waitAdmitted waits until pod name exists (a run's pod is created once
// Kueue admitted its Workload), and returns it.
func waitAdmitted(t *testing.T, ns, name string) *corev1.Pod {
	t.Helper()
	return waitPodWithin(t, ns, name, 60*time.Second)
}

// workloadOf returns the Workload of run name.
func workloadOf(t *testing.T, ns, name string) *unstructured.Unstructured {
	t.Helper()
	wl := &unstructured.Unstructured{}
	wl.SetGroupVersionKind(workloadGVK)
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		return env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, wl)
	})
	return wl
}

// queueOf is the LocalQueue of run name's Workload.
func queueOf(t *testing.T, ns, name string) string {
	t.Helper()
	q, _, _ := unstructured.NestedString(workloadOf(t, ns, name).Object, "spec", "queueName")
	return q
}

// runsWithPods are the runs of ns whose pod exists and has not started:
// admitted by Kueue, not running yet.
func runsWithPods(t *testing.T, ns string) map[string]bool {
	t.Helper()
	pods := &corev1.PodList{}
	if err := env.Client.List(context.Background(), pods, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodPending {
			out[p.Labels[jobsv1alpha1.LabelRun]] = true
		}
	}
	return out
}

// TestRunsQueueThroughKueue: with a real Kueue, a team's runs wait in the
// team's LocalQueue (created by the controller) while the team's quota is
// used: pending, Queued=True, not failed by the start timeout; a cancel
// ends a queued run at once; a system run goes through its own lane,
// whatever the teams' queue holds; and an admitted run's start timeout
// counts from its admission.
func TestRunsQueueThroughKueue(t *testing.T) {
	ns := env.Namespace(t)
	q, _ := kueueQueues(t, ns, 1, 1)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock, WithKueue(q))
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.StartTimeoutSeconds = ptr.To[int64](60) })
	created := func(at time.Time) func(*jobsv1alpha1.JobRun) {
		return func(jr *jobsv1alpha1.JobRun) { jr.Spec.CreatedAt = ptr.To(metav1.NewMicroTime(at)) }
	}

	createRunWith(t, ns, "run-a", created(clock.Now()))
	podA := waitAdmitted(t, ns, "run-a-1")
	if got := queueOf(t, ns, "run-a"); got != "jobrun-team-team-1" {
		t.Fatalf("run-a's Workload is in queue %q, want jobrun-team-team-1", got)
	}
	lq := &unstructured.Unstructured{}
	lq.SetGroupVersionKind(localQueueGVK)
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "jobrun-team-team-1"}, lq); err != nil {
		t.Fatalf("the team's LocalQueue: %v", err)
	}
	if cq, _, _ := unstructured.NestedString(lq.Object, "spec", "clusterQueue"); cq != q.Teams {
		t.Errorf("the team's LocalQueue points at %q, want %q", cq, q.Teams)
	}

	// The team's one pod is taken: run-b waits, pending, and its start
	// timeout does not fail it.
	createRunWith(t, ns, "run-b", created(clock.Now()))
	// Queued carries Kueue's reason and message, from the pod's Workload.
	jr := waitQueued(t, ns, "run-b", metav1.ConditionTrue, "Pending")
	if c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionQueued); !strings.Contains(c.Message, "LocalQueue jobrun-team-team-1: couldn't assign flavors") || !strings.Contains(c.Message, "insufficient unused quota for pods") {
		t.Errorf("run-b's Queued message %q, want the LocalQueue and Kueue's message", c.Message)
	}
	clock.Step(2 * time.Minute)
	poke(t, ns, "run-b")
	waitReconciled(t, ns, "run-b")
	waitQueued(t, ns, "run-b", metav1.ConditionTrue, "Pending")

	// A system run has a lane of its own.
	createRunWith(t, ns, "run-system", func(jr *jobsv1alpha1.JobRun) {
		jr.Spec.TeamID, jr.Spec.ProjectID = "", ""
		jr.Spec.CreatedAt = ptr.To(metav1.NewMicroTime(clock.Now()))
	})
	waitAdmitted(t, ns, "run-system-1")
	if got := queueOf(t, ns, "run-system"); got != KueueSystemLocalQueue {
		t.Errorf("the system run's Workload is in queue %q, want %s", got, KueueSystemLocalQueue)
	}

	// A cancel ends a queued run at once: no handler ever ran.
	env.Annotate(t, &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "run-b"}}, jobsv1alpha1.AnnotationCancelRequested, "now")
	if jr := waitPhase(t, ns, "run-b", jobsv1alpha1.JobRunCancelled); finishedReason(jr) != jobsv1alpha1.ReasonCancelledWhileQueued {
		t.Errorf("the cancelled queued run ended with reason %q, want %s", finishedReason(jr), jobsv1alpha1.ReasonCancelledWhileQueued)
	}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "run-b-1"}, &corev1.Pod{}); !apierrors.IsNotFound(err) {
		t.Errorf("the cancelled queued run has a pod (%v)", err)
	}
	// Its Workload leaves the queue.
	testenv.Eventually(t, 30*time.Second, func(context.Context) error {
		if status, _, _ := workloadCondition(workloadOf(t, ns, "run-b"), "Finished"); status != "True" {
			return fmt.Errorf("the cancelled queued run's Workload is not Finished")
		}
		return nil
	})

	// run-c waits past its start timeout; once run-a's pod ends, Kueue
	// admits run-c's, and its start timeout runs from then: still pending,
	// not failed.
	createRunWith(t, ns, "run-c", created(clock.Now()))
	waitQueued(t, ns, "run-c", metav1.ConditionTrue, "Pending")
	clock.Step(2 * time.Minute)
	poke(t, ns, "run-c")
	waitReconciled(t, ns, "run-c")
	kubelet(t, podA, corev1.PodSucceeded, 0, "")
	waitPhase(t, ns, "run-a", jobsv1alpha1.JobRunCompleted)
	waitAdmitted(t, ns, "run-c-1")
	waitQueued(t, ns, "run-c", metav1.ConditionFalse, jobsv1alpha1.ReasonAdmitted)
	clock.Step(59 * time.Second)
	poke(t, ns, "run-c")
	waitReconciled(t, ns, "run-c")
	if jr, err := getRun(context.Background(), ns, "run-c"); err != nil || jr.CurrentPhase() != jobsv1alpha1.JobRunPending {
		t.Fatalf("run-c 59 s after its admission: %v (%v), want pending", jr.Status.Phase, err)
	}
	clock.Step(2 * time.Second)
	poke(t, ns, "run-c")
	if jr := waitPhase(t, ns, "run-c", jobsv1alpha1.JobRunFailed); finishedReason(jr) != jobsv1alpha1.ReasonStartTimeout {
		t.Errorf("run-c a start timeout after its admission: reason %q, want %s", finishedReason(jr), jobsv1alpha1.ReasonStartTimeout)
	}
}

// TestQueuedWithoutAWordFromKueue: a run whose Workload Kueue never looks
// at while it waits is still recorded as queued, within kueueQuietGrace.
// Kueue writes why a Workload waits only when it tries it; with its
// SchedulingEquivalenceHashing gate, once one Workload does not fit, later
// ones of the same shape are set aside untried, without a word. Without
// the grace their runs stayed pending with no Queued condition at all.
// System runs: their ClusterQueue has no Admission Fair Sharing, whose
// bookkeeping rebuilds the queue every second and would try them again.
func TestQueuedWithoutAWordFromKueue(t *testing.T) {
	ns := env.Namespace(t)
	q, _ := kueueQueuesWith(t, ns, 1, 1, map[string]bool{"SchedulingEquivalenceHashing": true})
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock, WithKueue(q))
	createJobType(t, ns)
	system := func(jr *jobsv1alpha1.JobRun) { jr.Spec.TeamID, jr.Spec.ProjectID = "", "" }

	createRunWith(t, ns, "run-a", system)
	waitAdmitted(t, ns, "run-a-1")
	// run-b is tried and does not fit: Kueue says so.
	createRunWith(t, ns, "run-b", system)
	waitQueued(t, ns, "run-b", metav1.ConditionTrue, "Pending")
	// run-c and run-d have run-b's shape: set aside untried.
	createRunWith(t, ns, "run-c", system)
	createRunWith(t, ns, "run-d", system)
	for _, name := range []string{"run-c", "run-d"} {
		workloadOf(t, ns, name)
	}
	// (The Workloads' creation times are the API server's: the fake clock,
	// set at the test's start, moves past them.)
	clock.SetTime(time.Now().Add(kueueQuietGrace + time.Second))
	for _, name := range []string{"run-c", "run-d"} {
		// WaitingForAdmission, unless Kueue did try it after all.
		jr := waitQueued(t, ns, name, metav1.ConditionTrue, jobsv1alpha1.ReasonWaitingForAdmission, "Pending")
		c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionQueued)
		if !strings.Contains(c.Message, "LocalQueue "+KueueSystemLocalQueue) {
			t.Errorf("%s's Queued message %q, want its LocalQueue %s", name, c.Message, KueueSystemLocalQueue)
		}
		if c.Reason == "Pending" {
			t.Logf("%s: Kueue tried its Workload after all (Queued=True Pending): this run shows less than the test means to", name)
		}
	}
}

// TestTeamsShareFairlyUnderAFlood: with a real Kueue and the teams'
// ClusterQueue shared by Admission Fair Sharing, a team that floods the
// queue does not make another team's runs wait behind its backlog: when a
// slot frees, the other team's runs are admitted next. A system run is
// admitted at once through its own lane, whatever the teams' queue holds.
func TestTeamsShareFairlyUnderAFlood(t *testing.T) {
	ns := env.Namespace(t)
	q, _ := kueueQueues(t, ns, 2, 1)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock, WithKueue(q))
	// Admission Fair Sharing weighs the teams' usage of what their pods
	// request, as real run pods do.
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) {
		jt.Spec.Template.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}
	})
	team := func(name string) func(*jobsv1alpha1.JobRun) {
		return func(jr *jobsv1alpha1.JobRun) { jr.Spec.TeamID, jr.Spec.ProjectID = name, name+"-project" }
	}

	// Team A floods: 2 admitted, the rest queued.
	const flood = 12
	for i := range flood {
		createRunWith(t, ns, fmt.Sprintf("a-%02d", i), team("team-a"))
	}
	admitted := func() map[string]bool { return runsWithPods(t, ns) }
	var first map[string]bool
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		if first = admitted(); len(first) != 2 {
			return fmt.Errorf("admitted %v, want 2 of team-a's runs", first)
		}
		return nil
	})
	for i := range flood {
		if name := fmt.Sprintf("a-%02d", i); !first[name] {
			waitQueued(t, ns, name, metav1.ConditionTrue, "Pending")
		}
	}
	// Kueue has sampled team-a's usage (2 runs); team-b has none.
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		lq := &unstructured.Unstructured{}
		lq.SetGroupVersionKind(localQueueGVK)
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "jobrun-team-team-a"}, lq); err != nil {
			return err
		}
		cpu, _, _ := unstructured.NestedString(lq.Object, "status", "fairSharing", "admissionFairSharingStatus", "consumedResources", "cpu")
		if q, err := resource.ParseQuantity(cpu); err != nil || q.IsZero() {
			return fmt.Errorf("team-a's LocalQueue has consumed cpu %q, want some", cpu)
		}
		return nil
	})

	// A system run is not held by the teams' queue.
	createRunWith(t, ns, "system-1", func(jr *jobsv1alpha1.JobRun) { jr.Spec.TeamID, jr.Spec.ProjectID = "", "" })
	waitAdmitted(t, ns, "system-1-1")

	// Team B's runs, created after all of team-a's, go next.
	createRunWith(t, ns, "b-00", team("team-b"))
	createRunWith(t, ns, "b-01", team("team-b"))
	waitQueued(t, ns, "b-00", metav1.ConditionTrue, "Pending")
	waitQueued(t, ns, "b-01", metav1.ConditionTrue, "Pending")
	for name := range first {
		kubelet(t, waitPod(t, ns, name+"-1"), corev1.PodSucceeded, 0, "")
		waitPhase(t, ns, name, jobsv1alpha1.JobRunCompleted)
	}
	var next map[string]bool
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		next = admitted()
		delete(next, "system-1")
		if len(next) != 2 {
			return fmt.Errorf("admitted %v, want 2 runs once team-a's first two ended", next)
		}
		return nil
	})
	if !next["b-00"] || !next["b-01"] {
		t.Errorf("after team-a's first two runs ended, Kueue admitted %v; want team-b's b-00 and b-01 (created after team-a's %d runs) before team-a's backlog", next, flood)
	}
}

// TestKueuePriorities: a JobType's priorityClassName orders its runs in
// Kueue's queue: when the team's one slot frees, the run of the highest
// priority goes next, whatever its age (the run's Workload carries the
// class and its value); a class that does not exist fails the run at once
// instead of leaving it queued forever.
func TestKueuePriorities(t *testing.T) {
	ns := env.Namespace(t)
	q, _ := kueueQueues(t, ns, 1, 1)
	high, low := "high-"+ns, "low-"+ns
	for name, value := range map[string]int64{high: 1000, low: -1000} {
		wpc := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
			"metadata": map[string]any{"name": name}, "value": value,
		}}
		if err := env.Client.Create(context.Background(), wpc); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), wpc) })
	}
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()), WithKueue(q))
	jobType := func(jobType, priorityClass string) {
		createJobType(t, ns, func(jt *jobsv1alpha1.JobType) {
			jt.Name, jt.Spec.JobType = strings.ReplaceAll(jobType, "_", "-"), jobType
			jt.Spec.PriorityClassName = priorityClass
		})
	}
	jobType("demo_sync", low)
	jobType("urgent_sync", high)
	jobType("plain_sync", "")
	jobType("broken_sync", "missing-"+ns)
	run := func(name, jobType string) {
		createRunWith(t, ns, name, func(jr *jobsv1alpha1.JobRun) { jr.Spec.JobType = jobType; jr.Spec.ProjectID = name })
	}

	run("first", "plain_sync")
	first := waitAdmitted(t, ns, "first-1")
	wl := workloadOf(t, ns, "first")
	if class, found, _ := unstructured.NestedString(wl.Object, "spec", "priorityClassRef", "name"); found || queueOf(t, ns, "first") != "jobrun-team-team-1" {
		t.Errorf("the plain JobType's run has priority class %q (%v) and queue %q; want none and the team's queue", class, found, queueOf(t, ns, "first"))
	}
	// Queued oldest first: low, plain (default priority), urgent (high).
	for _, r := range [][2]string{{"low", "demo_sync"}, {"plain", "plain_sync"}, {"urgent", "urgent_sync"}} {
		run(r[0], r[1])
		waitQueued(t, ns, r[0], metav1.ConditionTrue, "Pending")
	}
	wl = workloadOf(t, ns, "urgent")
	class, _, _ := unstructured.NestedString(wl.Object, "spec", "priorityClassRef", "name")
	if priority, _, _ := unstructured.NestedInt64(wl.Object, "spec", "priority"); class != high || priority != 1000 {
		t.Errorf("the urgent run's Workload has priority class %q, priority %d; want %s, 1000", class, priority, high)
	}
	// Each time the slot frees, the highest priority waiting goes next.
	prev := first
	for _, next := range []string{"urgent", "plain", "low"} {
		kubelet(t, prev, corev1.PodSucceeded, 0, "")
		testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
			var admitted []string
			for name := range runsWithPods(t, ns) {
				admitted = append(admitted, name)
			}
			if len(admitted) != 1 {
				return fmt.Errorf("admitted and not started: %v, want one run", admitted)
			}
			if admitted[0] != next {
				t.Fatalf("Kueue admitted %s next, want %s (queued: low -1000, plain 0, urgent 1000, oldest first)", admitted[0], next)
			}
			return nil
		})
		prev = waitPod(t, ns, next+"-1")
	}

	// A class that does not exist: the run fails, no pod waits forever.
	run("broken", "broken_sync")
	jr := waitPhase(t, ns, "broken", jobsv1alpha1.JobRunFailed)
	if c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); c.Reason != jobsv1alpha1.ReasonPriorityClassNotFound || !strings.Contains(c.Message, "missing-"+ns) {
		t.Errorf("the run of a missing priority class ended with %q: %q, want %s naming the class", c.Reason, c.Message, jobsv1alpha1.ReasonPriorityClassNotFound)
	}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "broken-1"}, &corev1.Pod{}); !apierrors.IsNotFound(err) {
		t.Errorf("the run of a missing priority class has a pod (%v)", err)
	}
}

// waitNextSecond waits until the second in which run's Workload was
// created has passed: Kueue orders a queue by its Workloads' creation, in
// whole seconds (ties by UID), so a run created after is queued behind.
func waitNextSecond(t *testing.T, ns, run string) {
	t.Helper()
	created := workloadOf(t, ns, run).GetCreationTimestamp()
	testenv.Eventually(t, 30*time.Second, func(context.Context) error {
		if !time.Now().After(created.Add(time.Second)) {
			return fmt.Errorf("the second of the Workload of run %s (%s) has not passed", run, created)
		}
		return nil
	})
}

// TestKueueRestartsLoseNothing: the manager down while runs queue (a run
// ends, a queued run is cancelled, a run is created), then Kueue killed
// (a crash: its webhooks stay, refusing Workloads) while runs wait and one
// is created: once each is back, every run ends or waits as it should, none
// lost, none failed; a Workload Kueue's dead webhook refused says so and is
// created once Kueue is back.
func TestKueueRestartsLoseNothing(t *testing.T) {
	ns := env.Namespace(t)
	q, k := kueueQueues(t, ns, 1, 1)
	clock := clocktesting.NewFakeClock(time.Now())
	stop := startManager(t, ns, clock, WithKueue(q))
	createJobType(t, ns)
	run := func(name string) {
		createRunWith(t, ns, name, func(jr *jobsv1alpha1.JobRun) { jr.Spec.ProjectID = name })
	}
	run("run-1")
	pod1 := waitAdmitted(t, ns, "run-1-1")
	run("run-2")
	waitQueued(t, ns, "run-2", metav1.ConditionTrue, "Pending")
	waitNextSecond(t, ns, "run-2")
	run("run-3")
	waitQueued(t, ns, "run-3", metav1.ConditionTrue, "Pending")

	// The manager is down: run-1 ends, run-3 is cancelled, run-4 is
	// created. (run-1's quota goes back when the manager marks its
	// Workload finished.)
	stop()
	kubelet(t, pod1, corev1.PodSucceeded, 0, "")
	env.Annotate(t, &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "run-3"}}, jobsv1alpha1.AnnotationCancelRequested, "now")
	run("run-4")
	startManager(t, ns, clock, WithKueue(q))
	waitPhase(t, ns, "run-1", jobsv1alpha1.JobRunCompleted)
	if jr := waitPhase(t, ns, "run-3", jobsv1alpha1.JobRunCancelled); finishedReason(jr) != jobsv1alpha1.ReasonCancelledWhileQueued {
		t.Errorf("run-3, cancelled while the manager was down: reason %q, want %s", finishedReason(jr), jobsv1alpha1.ReasonCancelledWhileQueued)
	}
	// What the manager owes Kueue after its restart: the ended runs'
	// Workloads Finished (their quota back), the new run's Workload made.
	// (Which queued run Kueue admits next is Kueue's; run-4's Workload may
	// be admitted as soon as it is made, and then run-4 is never recorded
	// queued: nextAdmitted counts a run's pod as its admission.)
	for _, name := range []string{"run-1", "run-3"} {
		testenv.Eventually(t, 30*time.Second, func(context.Context) error {
			if status, _, _ := workloadCondition(workloadOf(t, ns, name), "Finished"); status != "True" {
				return fmt.Errorf("the Workload of %s, which ended while the manager was down, is not Finished", name)
			}
			return nil
		})
	}
	if got := queueOf(t, ns, "run-4"); got != "jobrun-team-team-1" {
		t.Errorf("run-4's Workload is in %q, want jobrun-team-team-1", got)
	}

	// Kueue crashes: run-5's Workload is refused by Kueue's webhook, so
	// run-5 waits, saying so.
	k.Kill()
	run("run-5")
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-5")
		if err != nil {
			return err
		}
		if c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionQueued); c == nil || c.Reason != jobsv1alpha1.ReasonWorkloadRefused || !strings.Contains(c.Message, "failed calling webhook") {
			return fmt.Errorf("run-5's Queued condition %+v, want %s saying Kueue's webhook could not be called", c, jobsv1alpha1.ReasonWorkloadRefused)
		}
		return nil
	})
	if jr, err := getRun(context.Background(), ns, "run-5"); err != nil || jr.CurrentPhase() != jobsv1alpha1.JobRunPending {
		t.Fatalf("run-5 while Kueue is down: %+v (%v), want pending", jr.Status, err)
	}

	// Kueue is back: run-5 gets its Workload; run-2, run-4 and run-5 are
	// admitted one at a time, in whatever order Kueue takes them, and all
	// complete: none lost.
	k = startKueue(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("restarted kueue's log lines of namespace %s (last 100):\n%s", ns, k.LogLines(100, ns))
		}
	})
	workloadOf(t, ns, "run-5")
	left := []string{"run-2", "run-4", "run-5"}
	for len(left) > 0 {
		admitted := nextAdmitted(t, ns, left...)
		kubelet(t, waitPod(t, ns, admitted+"-1"), corev1.PodSucceeded, 0, "")
		waitPhase(t, ns, admitted, jobsv1alpha1.JobRunCompleted)
		left = slices.DeleteFunc(left, func(n string) bool { return n == admitted })
	}
}

// nextAdmitted waits until one of the pending runs names is admitted
// (Queued=False Admitted, or its first pod exists) and returns it.
func nextAdmitted(t *testing.T, ns string, names ...string) string {
	t.Helper()
	var admitted string
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		var queued []string
		for _, name := range names {
			jr, err := getRun(ctx, ns, name)
			if err != nil {
				return err
			}
			if jr.CurrentPhase() != jobsv1alpha1.JobRunPending {
				continue
			}
			if c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionQueued); c != nil && c.Status == metav1.ConditionFalse && c.Reason == jobsv1alpha1.ReasonAdmitted {
				admitted = name
				return nil
			}
			// A run Kueue admitted at once (within kueueQuietGrace of its
			// Workload) was never recorded queued: it has its pod and no
			// Queued condition until its runner writes.
			err = env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: jobsv1alpha1.PodName(name, 1)}, &corev1.Pod{})
			switch {
			case err == nil:
				admitted = name
				return nil
			case !apierrors.IsNotFound(err):
				return err
			}
			queued = append(queued, name)
		}
		// Whether Kueue admitted them and the manager missed it, or not.
		var workloads []string
		for _, name := range queued {
			wl := &unstructured.Unstructured{}
			wl.SetGroupVersionKind(workloadGVK)
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, wl); err != nil {
				workloads = append(workloads, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			conds, _, _ := unstructured.NestedSlice(wl.Object, "status", "conditions")
			workloads = append(workloads, fmt.Sprintf("%s: %v", name, conds))
		}
		return fmt.Errorf("none of %v admitted (pending, no pod: %v; their Workloads' conditions: %v)", names, queued, workloads)
	})
	return admitted
}

// TestQueuedRunsShowTheirPosition: a queued run's Queued condition says
// where it stands in Kueue's queues, from Kueue's visibility API, for the
// first runs of each LocalQueue (limit 2 here); positions follow the queue
// as runs ahead are admitted.
func TestQueuedRunsShowTheirPosition(t *testing.T) {
	ns := env.Namespace(t)
	q, k := kueueQueues(t, ns, 1, 1)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()), WithKueue(q),
		WithKueuePositions(KueuePositions{Interval: 200 * time.Millisecond, Limit: 2, Config: k.VisibilityConfig(env.Config)}))
	createJobType(t, ns)
	run := func(name string) {
		createRunWith(t, ns, name, func(jr *jobsv1alpha1.JobRun) { jr.Spec.ProjectID = name })
	}
	run("run-0")
	first := waitAdmitted(t, ns, "run-0-1")
	// Queued in this order (Kueue orders by whole seconds of creation).
	for i, name := range []string{"run-1", "run-2", "run-3"} {
		if i > 0 {
			waitNextSecond(t, ns, fmt.Sprintf("run-%d", i))
		}
		run(name)
		waitQueued(t, ns, name, metav1.ConditionTrue, "Pending")
	}
	wantPositions := func(want map[string]string) {
		t.Helper()
		testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
			for name, prefix := range want {
				jr, err := getRun(ctx, ns, name)
				if err != nil {
					return err
				}
				c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionQueued)
				if c == nil || c.Status != metav1.ConditionTrue || !strings.HasPrefix(c.Message, prefix+": ") {
					return fmt.Errorf("%s's Queued condition %+v, want a message starting %q", name, c, prefix)
				}
			}
			return nil
		})
	}
	wantPositions(map[string]string{
		"run-1": "position 1 in LocalQueue jobrun-team-team-1 (1 in its ClusterQueue)",
		"run-2": "position 2 in LocalQueue jobrun-team-team-1 (2 in its ClusterQueue)",
		"run-3": "LocalQueue jobrun-team-team-1", // behind the limit
	})
	kubelet(t, first, corev1.PodSucceeded, 0, "")
	waitQueued(t, ns, "run-1", metav1.ConditionFalse, jobsv1alpha1.ReasonAdmitted)
	wantPositions(map[string]string{
		"run-2": "position 1 in LocalQueue jobrun-team-team-1 (1 in its ClusterQueue)",
		"run-3": "position 2 in LocalQueue jobrun-team-team-1 (2 in its ClusterQueue)",
	})
}
