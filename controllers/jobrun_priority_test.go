package controllers

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testrun"
)

// TestPodlessFirst: a run created without an attempt yet is queued ahead of
// the others (also when the manager starts and lists it, and when the run's
// other handler queued it first); a run with a pod, a finished run and the
// consistency marker are left to the normal priority.
func TestPodlessFirst(t *testing.T) {
	withStatus := func(status jobsv1alpha1.JobRunStatus) *jobsv1alpha1.JobRun {
		run := testrun.Make("ns", "run").JobType("demo_sync").Team("team-1").Project("p").Obj()
		run.Status = status
		return run
	}
	system := testrun.Make("ns", "run").JobType("demo_maintenance").Obj()
	for _, tc := range []struct {
		name          string
		run           *jobsv1alpha1.JobRun
		initialList   bool
		queuedAlready bool
		want          bool
	}{
		{"new run", withStatus(jobsv1alpha1.JobRunStatus{}), false, false, true},
		{"new system run", system, false, false, true},
		{"new run, queued by its other handler", withStatus(jobsv1alpha1.JobRunStatus{}), false, true, true},
		{"pending run without a pod, listed at start", withStatus(jobsv1alpha1.JobRunStatus{Phase: jobsv1alpha1.JobRunPending}), true, false, true},
		{"run with a pod", withStatus(jobsv1alpha1.JobRunStatus{Phase: jobsv1alpha1.JobRunPending, Attempts: 1}), false, false, false},
		{"finished run", withStatus(jobsv1alpha1.JobRunStatus{Phase: jobsv1alpha1.JobRunFailed}), true, false, false},
		{"consistency marker", testrun.Make("ns", jobsv1alpha1.ConsistencyMarkerName).JobType(jobsv1alpha1.ConsistencyMarkerJobType).Obj(), false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := priorityqueue.New[reconcile.Request]("test")
			defer q.ShutDown()
			req := reconcile.Request{NamespacedName: client.ObjectKeyFromObject(tc.run)}
			if tc.queuedAlready {
				q.Add(req)
			}
			(&JobRunReconciler{}).podlessFirst().Create(context.Background(), event.CreateEvent{Object: tc.run, IsInInitialList: tc.initialList}, q)
			// Something else queued after it: first out is whatever has
			// the higher priority.
			other := reconcile.Request{NamespacedName: client.ObjectKey{Namespace: "ns", Name: "other"}}
			q.Add(other)
			got, priority, _ := q.GetWithPriority()
			want := dispatchPriority
			if tc.run.Spec.TeamID == "" {
				want = systemDispatchPriority // the system lane, ahead of teams' runs
			}
			if first := got == req; first != tc.want || first && priority != want {
				t.Errorf("first out: %v at priority %d; want the run first: %v (at %d)", got, priority, tc.want, want)
			}
		})
	}
}

// TestPodlessFirstForOnePass: a pass asks for its next one at the normal
// priority, so a run keeps no lead once it has its pod.
func TestPodlessFirstForOnePass(t *testing.T) {
	ns := env.Namespace(t)
	createJobType(t, ns)
	run := createRun(t, ns, "run-1")
	r := NewJobRunReconciler(env.NewManager(t, ns))
	r.client = env.Client
	res, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKeyFromObject(run)})
	if err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter == 0 || res.Priority == nil || *res.Priority != 0 {
		t.Errorf("first pass: requeue after %s at priority %v, want a later pass at priority 0", res.RequeueAfter, res.Priority)
	}
}

// TestNewRunQueuedOnce: the creation of a run without a pod is queued by
// one handler only. Queued by two, a worker could take the run between the
// two and pass over it again at once, before the cache shows the pod the
// first pass created (in the side-by-side bench: 0.4-0.6 pod creates refused
// as existing per run).
func TestNewRunQueuedOnce(t *testing.T) {
	run := testrun.Make("ns", "run").JobType("demo_sync").Obj()
	created := event.CreateEvent{Object: run}
	// forHandler is what the controller's JobRun handler does with the
	// event: queue it if its predicates let it through.
	forHandler := func(q priorityqueue.PriorityQueue[reconcile.Request]) {
		if leftToPodlessFirst.Create(created) && notConsistencyMarker.Create(created) {
			q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(run)})
		}
	}
	for _, forFirst := range []bool{true, false} {
		q := priorityqueue.New[reconcile.Request]("test")
		handlers := []func(){
			func() { forHandler(q) },
			func() { (&JobRunReconciler{}).podlessFirst().Create(context.Background(), created, q) },
		}
		if !forFirst {
			handlers[0], handlers[1] = handlers[1], handlers[0]
		}
		handlers[0]()
		if q.Len() == 1 {
			// A worker takes the run between the two handlers.
			item, _, _ := q.GetWithPriority()
			handlers[1]()
			q.Done(item)
		} else {
			handlers[1]()
			item, _, _ := q.GetWithPriority()
			q.Done(item)
		}
		if n := q.Len(); n != 0 {
			t.Errorf("JobRun handler first: %v: the run is queued for a second pass (%d queued)", forFirst, n)
		}
		q.ShutDown()
	}
	// A run that has its pod is the JobRun handler's.
	withPod := run.DeepCopy()
	withPod.Status.Attempts = 1
	if !leftToPodlessFirst.Create(event.CreateEvent{Object: withPod}) {
		t.Error("the creation of a run with a pod (seen when the manager starts) is not queued")
	}
}

// TestAdmissionFirst: a run whose Workload Kueue just admitted is queued at
// dispatchPriority (its next pass creates its pod); other changes of its
// Workload (why it still waits) at the normal priority.
func TestAdmissionFirst(t *testing.T) {
	workload := func(admitted string) *unstructured.Unstructured {
		wl := &unstructured.Unstructured{Object: map[string]any{"status": map[string]any{"conditions": []any{
			map[string]any{"type": "Admitted", "status": admitted},
		}}}}
		wl.SetGroupVersionKind(workloadGVK)
		wl.SetNamespace("ns")
		wl.SetName("run")
		wl.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: jobsv1alpha1.GroupVersion.String(), Kind: "JobRun", Name: "run", Controller: ptr.To(true)}})
		return wl
	}
	for _, tc := range []struct {
		name     string
		old, new string
		want     int
	}{
		{"admitted now", "False", "True", dispatchPriority},
		{"still waiting", "False", "False", 0},
		{"admitted before", "True", "True", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := priorityqueue.New[reconcile.Request]("test")
			defer q.ShutDown()
			workloadEvents.Update(context.Background(), event.UpdateEvent{ObjectOld: workload(tc.old), ObjectNew: workload(tc.new)}, q)
			got, priority, _ := q.GetWithPriority()
			if got.Name != "run" || priority != tc.want {
				t.Errorf("queued %v at priority %d, want run at %d", got, priority, tc.want)
			}
		})
	}
}

// TestTeamBacklogFirst: one team's burst of new runs does not queue another
// team's new run behind it: team A's runs beyond its first backlogStep wait
// at lower priorities, team B's first run comes out among A's first
// backlogStep; a run's first pass takes it out of its team's backlog.
func TestTeamBacklogFirst(t *testing.T) {
	ns := env.Namespace(t)
	r := NewJobRunReconciler(env.NewManager(t, ns))
	r.client = env.Client
	h := r.podlessFirst()
	q := priorityqueue.New[reconcile.Request]("test")
	defer q.ShutDown()
	create := func(name, team string) {
		run := testrun.Make(ns, name).JobType("demo_sync").Team(team).Project(name).Obj()
		h.Create(context.Background(), event.CreateEvent{Object: run}, q)
	}
	for i := range 3 * backlogStep {
		create(fmt.Sprintf("a-%03d", i), "team-a")
	}
	create("b-000", "team-b")
	for i := 0; ; i++ {
		got, priority, _ := q.GetWithPriority()
		if got.Name == "b-000" {
			if i > backlogStep || priority != dispatchPriority {
				t.Errorf("team-b's run came out after %d of team-a's, at priority %d; want within the first %d, at %d", i, priority, backlogStep, dispatchPriority)
			}
			break
		}
		q.Done(got)
	}
	// Team A's passes done (the runs do not exist: nothing else to do):
	// its next run is first in line again.
	for i := range 3 * backlogStep {
		if _, err := r.Reconcile(context.Background(), reconcile.Request{NamespacedName: client.ObjectKey{Namespace: ns, Name: fmt.Sprintf("a-%03d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.backlog.add(client.ObjectKey{Namespace: ns, Name: "a-new"}, "team-a"); got != dispatchPriority {
		t.Errorf("team-a's next run after its backlog went: priority %d, want %d", got, dispatchPriority)
	}
}

// TestStartsAndEndsFirst: with Kueue, a run's start (its pod running) and
// its end (its phase, or its pod's) are queued at dispatchPriority, ahead of
// a team's backlog: the first is what its user waits to see, the second gives
// the run's quota back to the next queued run. Other changes queue nothing
// here (the controller's other handlers queue them at the normal priority).
func TestStartsAndEndsFirst(t *testing.T) {
	run := func(phase jobsv1alpha1.JobRunPhase) *jobsv1alpha1.JobRun {
		r := testrun.Make("ns", "run").JobType("demo_sync").Team("team-1").Project("p").Obj()
		r.Status.Phase = phase
		return r
	}
	pod := func(phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run-1", OwnerReferences: []metav1.OwnerReference{
				{APIVersion: jobsv1alpha1.GroupVersion.String(), Kind: "JobRun", Name: "run", Controller: ptr.To(true)},
			}},
			Status: corev1.PodStatus{Phase: phase},
		}
	}
	for _, tc := range []struct {
		name     string
		old, new client.Object
		queued   bool
	}{
		{"run completed", run(jobsv1alpha1.JobRunRunning), run(jobsv1alpha1.JobRunCompleted), true},
		{"run failed while pending", run(jobsv1alpha1.JobRunPending), run(jobsv1alpha1.JobRunFailed), true},
		{"run started", run(jobsv1alpha1.JobRunPending), run(jobsv1alpha1.JobRunRunning), false},
		{"ended run changed again", run(jobsv1alpha1.JobRunCompleted), run(jobsv1alpha1.JobRunCancelled), false},
		{"pod succeeded", pod(corev1.PodRunning), pod(corev1.PodSucceeded), true},
		{"pod failed", pod(corev1.PodPending), pod(corev1.PodFailed), true},
		{"pod started", pod(corev1.PodPending), pod(corev1.PodRunning), true},
		{"pod ended at once", pod(corev1.PodPending), pod(corev1.PodSucceeded), true},
		{"running pod changed again", pod(corev1.PodRunning), pod(corev1.PodRunning), false},
		{"pod still pending", pod(corev1.PodPending), pod(corev1.PodPending), false},
		{"ended pod changed again", pod(corev1.PodFailed), pod(corev1.PodFailed), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := priorityqueue.New[reconcile.Request]("test")
			defer q.ShutDown()
			startsAndEndsFirst.Update(context.Background(), event.UpdateEvent{ObjectOld: tc.old, ObjectNew: tc.new}, q)
			if !tc.queued {
				if n := q.Len(); n != 0 {
					t.Errorf("queued %d passes, want none", n)
				}
				return
			}
			got, priority, _ := q.GetWithPriority()
			if got.Name != "run" || got.Namespace != "ns" || priority != dispatchPriority {
				t.Errorf("queued %v at priority %d, want ns/run at %d", got, priority, dispatchPriority)
			}
		})
	}
}
