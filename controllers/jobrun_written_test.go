package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

func TestWrittenRunsFresher(t *testing.T) {
	at := func(uid, rv string) *jobsv1alpha1.JobRun {
		return &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run", UID: types.UID(uid), ResourceVersion: rv}}
	}
	for _, tc := range []struct {
		name   string
		writes [][2]string // before -> after, of run uid-1
		cached *jobsv1alpha1.JobRun
		want   string // the resourceVersion fresher returns
	}{
		{"nothing written", nil, at("uid-1", "5"), "5"},
		{"cache shows the version the write replaced", [][2]string{{"5", "6"}}, at("uid-1", "5"), "6"},
		{"cache caught up", [][2]string{{"5", "6"}}, at("uid-1", "6"), "6"},
		{"cache moved past the write", [][2]string{{"5", "6"}}, at("uid-1", "9"), "9"},
		{"status then label: cache shows the first", [][2]string{{"5", "6"}, {"6", "7"}}, at("uid-1", "6"), "7"},
		{"status then label: cache shows neither", [][2]string{{"5", "6"}, {"6", "7"}}, at("uid-1", "5"), "7"},
		{"a run of the same name, recreated", [][2]string{{"5", "6"}}, at("uid-2", "5"), "5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &writtenRuns{}
			for _, wr := range tc.writes {
				w.wrote(wr[0], at("uid-1", wr[1]))
			}
			got, err := w.read(context.Background(), oneRun{tc.cached}, client.ObjectKeyFromObject(tc.cached))
			if err != nil {
				t.Fatal(err)
			}
			if got.ResourceVersion != tc.want || got.UID != tc.cached.UID {
				t.Errorf("fresher: version %s of %s, want %s of %s", got.ResourceVersion, got.UID, tc.want, tc.cached.UID)
			}
		})
	}
}

// oneRun is a cache that holds one run.
type oneRun struct{ run *jobsv1alpha1.JobRun }

func (c oneRun) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	if key != client.ObjectKeyFromObject(c.run) {
		return apierrors.NewNotFound(jobsv1alpha1.GroupVersion.WithResource("jobruns").GroupResource(), key.Name)
	}
	c.run.DeepCopyInto(obj.(*jobsv1alpha1.JobRun))
	return nil
}

func (c oneRun) List(context.Context, client.ObjectList, ...client.ListOption) error { return nil }

// catchingUp is a cache whose informer delivers the controller's write
// while a read is under way: its Get returns the version before the write,
// and the informer's handler runs (in its own goroutine, as an informer's
// does) before the Get returns, unless the read holds it back.
type catchingUp struct {
	before, after *jobsv1alpha1.JobRun
	handler       toolscache.ResourceEventHandler
}

func (c catchingUp) Get(_ context.Context, _ client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	c.before.DeepCopyInto(obj.(*jobsv1alpha1.JobRun))
	delivered := make(chan struct{})
	go func() {
		c.handler.OnUpdate(c.before, c.after)
		close(delivered)
	}()
	select {
	case <-delivered:
	case <-time.After(100 * time.Millisecond): // held back by the read
	}
	return nil
}

func (c catchingUp) List(context.Context, client.ObjectList, ...client.ListOption) error { return nil }

// TestWrittenRunsReadWhileCaughtUp: the cache catches up with the
// controller's write between its Get and the look at the records; the read
// still returns the write, not the older version the Get returned.
func TestWrittenRunsReadWhileCaughtUp(t *testing.T) {
	w := &writtenRuns{}
	before := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run", UID: "uid-1", ResourceVersion: "5"}}
	after := before.DeepCopy()
	after.ResourceVersion = "6"
	w.wrote("5", after)
	got, err := w.read(context.Background(), catchingUp{before: before, after: after, handler: w.seen()}, client.ObjectKeyFromObject(before))
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != "6" {
		t.Errorf("read version %s, want the controller's write, 6", got.ResourceVersion)
	}
}

func TestWrittenRunsForgetOnceSeen(t *testing.T) {
	w := &writtenRuns{}
	run := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run", UID: "uid-1", ResourceVersion: "6"}}
	w.wrote("5", run)
	h := w.seen()
	old := run.DeepCopy()
	old.ResourceVersion = "5"
	h.OnUpdate(old, old)
	if w.len() != 1 {
		t.Fatalf("the replaced version seen: %d runs remembered, want 1", w.len())
	}
	h.OnUpdate(old, run)
	if w.len() != 0 {
		t.Fatalf("the written version seen: %d runs remembered, want 0", w.len())
	}
	w.wrote("6", &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run", UID: "uid-1", ResourceVersion: "7"}})
	h.OnDelete(run)
	if w.len() != 0 {
		t.Fatalf("the run deleted: %d runs remembered, want 0", w.len())
	}
}

// laggingCache is the controller's view of a cache that has not caught up:
// JobRun reads return the version frozen, everything else goes to the API
// server. It counts pod creates.
type laggingCache struct {
	client.Client
	frozen     *jobsv1alpha1.JobRun
	podCreates atomic.Int32
}

func (c *laggingCache) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if run, ok := obj.(*jobsv1alpha1.JobRun); ok && key == client.ObjectKeyFromObject(c.frozen) {
		c.frozen.DeepCopyInto(run)
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c *laggingCache) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	if _, ok := obj.(*corev1.Pod); ok {
		c.podCreates.Add(1)
	}
	return c.Client.Create(ctx, obj, opts...)
}

// TestOwnWriteNotRedone: a pass that follows the controller's own status
// write while the cache still shows the run from before it (its events lag
// the pod's) starts from that write: it neither creates the pod again nor
// loses its status patch to a conflict and waits. A write by someone else
// that the cache has not seen still conflicts.
func TestOwnWriteNotRedone(t *testing.T) {
	ns := env.Namespace(t)
	createJobType(t, ns)
	run := createRun(t, ns, "run-1")
	ctx := context.Background()
	cached := &laggingCache{Client: env.Client, frozen: run.DeepCopy()}
	o := newOptions([]Option{WithClock(clocktesting.NewFakeClock(time.Now()))})
	r := &JobRunReconciler{client: cached, apiReader: env.Client, scheme: env.Scheme, recorder: events.NewFakeRecorder(10),
		clock: o.clock, policy: o.policy, metrics: newRunMetrics(prometheus.NewRegistry()), workers: 1}
	req := ctrl.Request{NamespacedName: client.ObjectKeyFromObject(run)}
	reconcile := func(what string) ctrl.Result {
		t.Helper()
		res, err := r.Reconcile(ctx, req)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return res
	}
	version := func() string {
		t.Helper()
		got, err := getRun(ctx, ns, "run-1")
		if err != nil {
			t.Fatal(err)
		}
		return got.ResourceVersion
	}

	// The first pass creates the pod and records nothing yet in the status
	// (the pod does, until it runs; the run only gets its status label);
	// the next finds the pod and does nothing.
	reconcile("first pass")
	first, err := getRun(ctx, ns, "run-1")
	if err != nil {
		t.Fatal(err)
	}
	if first.Status.Attempts != 0 || len(first.Status.Conditions) != 0 || cached.podCreates.Load() != 1 {
		t.Fatalf("first pass: status %+v, %d pod creates; want nothing recorded, 1 create", first.Status, cached.podCreates.Load())
	}
	reconcile("second pass")
	if n := cached.podCreates.Load(); n != 1 || version() != first.ResourceVersion {
		t.Fatalf("second pass: %d pod creates, run version %s (was %s); want no create, no write", n, version(), first.ResourceVersion)
	}

	// The pod runs, and someone else writes (a user's annotation) while
	// the cache still shows the run from before: the pass's status patch
	// is refused, and it tries again on the cache's next version, never on
	// top of a write it has not seen.
	kubelet(t, waitPod(t, ns, "run-1-1"), corev1.PodRunning, 0, "")
	env.Annotate(t, &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "run-1"}}, "example.com/note", "seen")
	if res := reconcile("pass that missed another writer's write"); res.RequeueAfter != conflictRetryDelay {
		t.Errorf("a pass that missed another writer's write: requeue after %s, want the conflict's %s", res.RequeueAfter, conflictRetryDelay)
	}
	seen := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(ctx, req.NamespacedName, seen); err != nil {
		t.Fatal(err)
	}
	cached.frozen = seen.DeepCopy()
	reconcile("pass once the cache caught up")
	written, err := getRun(ctx, ns, "run-1")
	if err != nil {
		t.Fatal(err)
	}
	if written.Status.Phase != jobsv1alpha1.JobRunRunning || written.Status.Attempts != 1 || written.Status.PodName != "run-1-1" {
		t.Fatalf("the cache caught up: phase %q, attempts %d, pod %q; want running, 1, run-1-1 (one write records both)", written.Status.Phase, written.Status.Attempts, written.Status.PodName)
	}

	// Passes while the cache still shows the version that write replaced
	// start from the write: no conflict, no second pod, no write again.
	for i := range 2 {
		if res := reconcile("pass over the controller's own write"); res.RequeueAfter == conflictRetryDelay {
			t.Errorf("pass %d over the controller's own write conflicted (requeued after %s)", i+1, res.RequeueAfter)
		}
	}
	if n := cached.podCreates.Load(); n != 1 {
		t.Errorf("%d pod creates, want 1: later passes created the pod again", n)
	}
	if v := version(); v != written.ResourceVersion {
		t.Errorf("the run was written again (version %s, then %s)", written.ResourceVersion, v)
	}
}
