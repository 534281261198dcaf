package apiserver

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// hookedReader calls before ahead of every Get of its reader; an error from
// before is the Get's answer.
type hookedReader struct {
	client.Reader
	before func(ctx context.Context, key client.ObjectKey, obj client.Object) error
}

func (h hookedReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if err := h.before(ctx, key, obj); err != nil {
		return err
	}
	return h.Reader.Get(ctx, key, obj, opts...)
}

// endedHolder creates a run of revenuecat_sync for project-1 that has
// completed and a guard it still holds (its release was missed): the next
// trigger finds the guard stale.
func endedHolder(t *testing.T, ns string) (*jobsv1alpha1.JobRun, *coordinationv1.Lease) {
	t.Helper()
	ctx := context.Background()
	run := testrun.Make(ns, "ended-holder").JobType("revenuecat_sync").Team("team-1").Project("project-1").TriggeredBy("manual:user:user-1").Obj()
	if err := env.Client.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	run.Status.Phase = jobsv1alpha1.JobRunCompleted
	if err := env.Client.Status().Update(ctx, run); err != nil {
		t.Fatal(err)
	}
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jobsv1alpha1.GuardName("revenuecat_sync", "project-1")},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(run.Name)},
	}
	if err := env.Client.Create(ctx, lease); err != nil {
		t.Fatal(err)
	}
	return run, lease
}

// A guard whose holder cannot be read is neither held nor stale: the
// trigger answers 503 (retry), never a 409 naming a run that has ended.
func TestTriggerGuardHolderUnreadableIs503(t *testing.T) {
	ns := env.Namespace(t)
	var failing atomic.Bool
	failing.Store(true)
	a := startAPIWith(t, ns, env.Config, nil, apiOptions{wrapReader: func(r client.Reader) client.Reader {
		return hookedReader{Reader: r, before: func(_ context.Context, key client.ObjectKey, obj client.Object) error {
			if _, isRun := obj.(*jobsv1alpha1.JobRun); isRun && key.Name == "ended-holder" && failing.Load() {
				return apierrors.NewServiceUnavailable("etcd is away")
			}
			return nil
		}}
	}})
	a.seed()
	endedHolder(t, ns)

	status, body := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"})
	if status != http.StatusServiceUnavailable {
		t.Fatalf("trigger while the holder cannot be read: %d %v, want 503", status, body)
	}
	failing.Store(false)
	status, body = a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"})
	if status != http.StatusCreated {
		t.Fatalf("trigger once the holder can be read: %d %v, want 201", status, body)
	}
}

// A stale guard released between the trigger's read and its takeover (its
// run's release came late) is taken again: 201, never a 404 nor a 409 (the
// API server answers such an update with a conflict or not found).
func TestTriggerGuardReleasedDuringTakeover(t *testing.T) {
	ns := env.Namespace(t)
	var released atomic.Bool
	var lease *coordinationv1.Lease
	a := startAPIWith(t, ns, env.Config, nil, apiOptions{wrapReader: func(r client.Reader) client.Reader {
		return hookedReader{Reader: r, before: func(ctx context.Context, key client.ObjectKey, obj client.Object) error {
			// The staleness check reads the holder: release the guard
			// then, after the trigger has read it.
			if _, isRun := obj.(*jobsv1alpha1.JobRun); isRun && key.Name == "ended-holder" && !released.Swap(true) {
				return env.Client.Delete(ctx, lease)
			}
			return nil
		}}
	}})
	a.seed()
	_, lease = endedHolder(t, ns)

	status, body := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"})
	if status != http.StatusCreated {
		t.Fatalf("trigger whose stale guard was released under it: %d %v, want 201", status, body)
	}
	if !released.Load() {
		t.Fatal("the guard was never released under the trigger: the test did not test anything")
	}
	id, _ := jobRunOf(body)["id"].(string)
	got := &coordinationv1.Lease{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(lease), got); err != nil || ptr.Deref(got.Spec.HolderIdentity, "") != id {
		t.Errorf("guard after the trigger: holder %v (%v), want the new run %s", got.Spec.HolderIdentity, err, id)
	}
}

// Replicas whose clocks are an hour apart agree on a guard whose run does
// not exist: fresh, it is held (its trigger may be creating the run), for
// the replica ahead too; once the API server's clock says it is older than
// the grace, it is stale, for the replica behind too.
func TestTriggerGuardStalenessIgnoresReplicaClocks(t *testing.T) {
	ns := env.Namespace(t)
	ahead := startAPIWith(t, ns, env.Config, nil, apiOptions{now: func() time.Time { return time.Now().Add(time.Hour) }})
	behind := startAPIWith(t, ns, env.Config, nil, apiOptions{now: func() time.Time { return time.Now().Add(-time.Hour) }})
	ahead.seed()
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jobsv1alpha1.GuardName("revenuecat_sync", "project-1")},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("run-being-created"), AcquireTime: ptr.To(metav1.NewMicroTime(time.Now()))},
	}
	if err := env.Client.Create(context.Background(), lease); err != nil {
		t.Fatal(err)
	}
	trigger := func(a *api) (int, map[string]any) {
		return a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"})
	}
	for name, a := range map[string]*api{"ahead": ahead, "behind": behind} {
		if status, body := trigger(a); status != http.StatusConflict {
			t.Fatalf("replica %s, fresh guard of a run not yet created: %d %v, want 409", name, status, body)
		}
	}
	testenv.Eventually(t, 3*time.Minute, func(context.Context) error {
		if status, body := trigger(behind); status != http.StatusCreated {
			return fmt.Errorf("replica behind, guard older than the grace: %d %v, want 201 in the end", status, body)
		}
		return nil
	})
}

// dropCreateAnswers forwards requests to the API server, but drops the
// answer of the first create of a JobRun: the run is created, the caller
// sees its connection reset.
type dropCreateAnswers struct {
	next    http.RoundTripper
	dropped atomic.Bool
}

func (d *dropCreateAnswers) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := d.next.RoundTrip(req)
	if err != nil || req.Method != http.MethodPost || !strings.HasSuffix(req.URL.Path, "/jobruns") || d.dropped.Swap(true) {
		return resp, err
	}
	resp.Body.Close()
	return nil, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
}

// A trigger whose run create reached the API server but whose answer was
// lost finds the run and answers 201 with it, keeping its guard: the
// client's retry is a 409 naming that run, never a second active run.
func TestTriggerCreateAnswerLost(t *testing.T) {
	ns := env.Namespace(t)
	drop := &dropCreateAnswers{}
	a := startAPIWith(t, ns, env.Config, nil, apiOptions{wrapTransport: func(rt http.RoundTripper) http.RoundTripper {
		drop.next = rt
		return drop
	}})
	a.seed()
	trigger := map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"}

	status, body := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), trigger)
	if !drop.dropped.Load() {
		t.Fatal("no create answer was dropped: the test did not test anything")
	}
	if status != http.StatusCreated {
		t.Fatalf("trigger whose create answer was lost: %d %v, want 201 with the run it created", status, body)
	}
	id, _ := jobRunOf(body)["id"].(string)
	status, body = a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", userToken(t), trigger)
	if e, _ := body["error"].(map[string]any); status != http.StatusConflict || e["existing_run_id"] != id {
		t.Errorf("the client's retry: %d %v, want 409 naming %s", status, body, id)
	}
	runs, err := testenv.Runs(context.Background(), env.Client, ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 1 || runs[0].Name != id {
		t.Errorf("%d runs, want exactly the one the lost answer created (%s)", len(runs), id)
	}
}
