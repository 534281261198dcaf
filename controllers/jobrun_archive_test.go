package controllers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/archive"
	"jobrun.dev/jobrun/internal/archive/archivetest"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// These tests run the JobRun controller against a real API server and a
// real PostgreSQL (internal/pgtest) holding the archive.

// waitArchived waits until the run's status says Archived and its finalizer
// is gone, and returns it.
func waitArchived(t *testing.T, ns, name string) *jobsv1alpha1.JobRun {
	t.Helper()
	var jr *jobsv1alpha1.JobRun
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		var err error
		if jr, err = getRun(ctx, ns, name); err != nil {
			return err
		}
		if !isArchived(jr) || controllerutil.ContainsFinalizer(jr, jobsv1alpha1.FinalizerArchive) {
			return fmt.Errorf("run %s (%s): Archived %v, finalizers %v", name, jr.Status.Phase, meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionArchived), jr.Finalizers)
		}
		return nil
	})
	return jr
}

// archivedRow reads the run's row; it fails the test if there is none.
func archivedRow(t *testing.T, store *archive.Store, ns, name string) *jobsv1alpha1.JobRun {
	t.Helper()
	row, err := store.Get(context.Background(), ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if row == nil {
		t.Fatalf("run %s has no row in the archive", name)
	}
	return row
}

func sameTime(a, b time.Time) bool {
	return a.Truncate(time.Microsecond).Equal(b.Truncate(time.Microsecond))
}

// A run created without the finalizer (kubectl) gets it on its first pass,
// in the patch that labels it; when it finishes, its row is written before
// its end is recorded, with the end, and the finalizer leaves in the patch
// that labels the end: no write of its own.
func TestArchiveOnFinish(t *testing.T) {
	ns := env.Namespace(t)
	store, _, _ := archivetest.Start(t, false)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()), WithArchive(store, time.Hour))
	createJobType(t, ns)
	createRun(t, ns, "run-1")
	pod := waitPod(t, ns, "run-1-1")
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-1")
		if err != nil {
			return err
		}
		if !controllerutil.ContainsFinalizer(jr, jobsv1alpha1.FinalizerArchive) {
			return fmt.Errorf("run-1 has no archive finalizer yet: %v", jr.Finalizers)
		}
		return nil
	})
	kubelet(t, pod, corev1.PodRunning, 0, "")
	jr := waitPhase(t, ns, "run-1", jobsv1alpha1.JobRunRunning)
	runnerWrites(t, jr, `{"status":{"progress":{"processed":10,"total":10,"message":"done","summary":"10/10"},"result":{"synced":10}}}`)
	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	jr = waitArchived(t, ns, "run-1")
	if jr.Status.Phase != jobsv1alpha1.JobRunCompleted {
		t.Fatalf("phase %s, want completed", jr.Status.Phase)
	}
	row := archivedRow(t, store, ns, "run-1")
	if row.Status.Phase != jobsv1alpha1.JobRunCompleted || row.Spec.TeamID != "team-1" || row.Spec.ProjectID != "project-1" ||
		string(row.Status.Result.Raw) != `{"synced": 10}` && string(row.Status.Result.Raw) != `{"synced":10}` ||
		row.Status.Progress == nil || row.Status.Progress.Processed != 10 ||
		!sameTime(row.Status.CompletedAt.Time, jr.Status.CompletedAt.Time) || !sameTime(row.Status.StartedAt.Time, jr.Status.StartedAt.Time) {
		t.Fatalf("archived row differs from the run:\nrow %+v\nrun %+v", row.Status, jr.Status)
	}
}

// TestDeletedRunIsArchivedCancelled: a run deleted while it runs is held by its finalizer,
// ends cancelled (reason Deleted) with its pod stopped, is archived so, and
// then goes.
func TestDeletedRunIsArchivedCancelled(t *testing.T) {
	ns := env.Namespace(t)
	store, _, _ := archivetest.Start(t, false)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()), WithArchive(store, time.Hour))
	createJobType(t, ns)
	jr := createRunWith(t, ns, "run-1", func(jr *jobsv1alpha1.JobRun) {
		controllerutil.AddFinalizer(jr, jobsv1alpha1.FinalizerArchive)
	})
	pod := waitPod(t, ns, "run-1-1")
	kubelet(t, pod, corev1.PodRunning, 0, "")
	waitPhase(t, ns, "run-1", jobsv1alpha1.JobRunRunning)
	if err := env.Client.Delete(context.Background(), jr); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		if _, err := getRun(ctx, ns, "run-1"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("run-1 still exists after its delete (%v)", err)
		}
		return nil
	})
	row := archivedRow(t, store, ns, "run-1")
	if c := meta.FindStatusCondition(row.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); row.Status.Phase != jobsv1alpha1.JobRunCancelled || c == nil || c.Reason != jobsv1alpha1.ReasonDeleted {
		t.Fatalf("archived as %s (Finished %+v), want cancelled, reason %s", row.Status.Phase, c, jobsv1alpha1.ReasonDeleted)
	}
	waitPodGone(t, pod, "the deleted run's pod still exists")
}

// The archive unreachable: runs go on finishing (Archived False, reason
// ArchivePending), their TTL and a user's delete wait for the archive; once
// it is back, each is archived and then goes.
func TestArchiveOutage(t *testing.T) {
	ns := env.Namespace(t)
	store, proxy, _ := archivetest.Start(t, true)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock, WithArchive(store, time.Minute))
	createJobType(t, ns)
	proxy.Cut()
	for _, name := range []string{"run-ttl", "run-deleted"} {
		createRunWith(t, ns, name, func(jr *jobsv1alpha1.JobRun) {
			controllerutil.AddFinalizer(jr, jobsv1alpha1.FinalizerArchive)
		})
		pod := waitPod(t, ns, name+"-1")
		kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
		waitPhase(t, ns, name, jobsv1alpha1.JobRunCompleted)
	}
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		for _, name := range []string{"run-ttl", "run-deleted"} {
			jr, err := getRun(ctx, ns, name)
			if err != nil {
				return err
			}
			c := meta.FindStatusCondition(jr.Status.Conditions, jobsv1alpha1.JobRunConditionArchived)
			if c == nil || c.Status != "False" || c.Reason != jobsv1alpha1.ReasonArchivePending {
				return fmt.Errorf("%s: Archived condition %+v, want False/ArchivePending", name, c)
			}
		}
		return nil
	})
	// Past the live TTL, and deleted by a user: both stay while unarchived.
	clock.Step(2 * time.Minute)
	poke(t, ns, "run-ttl")
	jr, err := getRun(context.Background(), ns, "run-deleted")
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(context.Background(), jr); err != nil {
		t.Fatal(err)
	}
	waitReconciled(t, ns, "run-ttl")
	time.Sleep(2 * time.Second) // retries come and fail meanwhile
	for _, name := range []string{"run-ttl", "run-deleted"} {
		jr, err := getRun(context.Background(), ns, name)
		if err != nil {
			t.Fatalf("%s deleted while unarchived: %v", name, err)
		}
		if jr.Status.Phase != jobsv1alpha1.JobRunCompleted {
			t.Fatalf("%s is %s, want completed", name, jr.Status.Phase)
		}
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	// Back: both archived (retries back off to at most 30 s), then gone.
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		for _, name := range []string{"run-ttl", "run-deleted"} {
			if _, err := getRun(ctx, ns, name); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%s still in the API server (%v)", name, err)
			}
		}
		return nil
	})
	for _, name := range []string{"run-ttl", "run-deleted"} {
		if row := archivedRow(t, store, ns, name); row.Status.Phase != jobsv1alpha1.JobRunCompleted {
			t.Fatalf("%s archived as %s", name, row.Status.Phase)
		}
	}
}

// lostAnswers is the archive whose first n writes succeed but answer with an
// error, as when the connection drops after the commit (or the manager dies
// right after it): the retry writes the same row again.
type lostAnswers struct {
	*archive.Store
	left atomic.Int32
}

func (l *lostAnswers) Upsert(ctx context.Context, runs ...*jobsv1alpha1.JobRun) error {
	if err := l.Store.Upsert(ctx, runs...); err != nil {
		return err
	}
	if l.left.Add(-1) >= 0 {
		return &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}
	}
	return nil
}

// A write whose answer is lost is retried; the row stays one row with the
// run's final state, and the run goes after its live TTL.
func TestArchiveAnswerLost(t *testing.T) {
	ns := env.Namespace(t)
	store, _, _ := archivetest.Start(t, false)
	lost := &lostAnswers{Store: store}
	lost.left.Store(2)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock, WithArchive(lost, time.Minute))
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.TTLSecondsAfterFinished = ptr.To[int32](86400) })
	createRun(t, ns, "run-1")
	pod := waitPod(t, ns, "run-1-1")
	kubelet(t, pod, corev1.PodFailed, 1, "Error")
	jr := waitArchived(t, ns, "run-1")
	if lost.left.Load() >= 0 {
		t.Fatalf("the lost answers were not all tried (%d left)", lost.left.Load())
	}
	row := archivedRow(t, store, ns, "run-1")
	if row.Status.Phase != jobsv1alpha1.JobRunFailed || row.Status.Error != jr.Status.Error {
		t.Fatalf("row %s %q, run %s %q", row.Status.Phase, row.Status.Error, jr.Status.Phase, jr.Status.Error)
	}
	page, _, err := store.List(context.Background(), archive.Query{Namespace: ns, TeamID: "team-1", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 1 {
		t.Fatalf("%d rows for one run", len(page))
	}
	// The archive's live TTL (a minute), shorter than the JobType's day.
	clock.Step(2 * time.Minute)
	poke(t, ns, "run-1")
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		if _, err := getRun(ctx, ns, "run-1"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("run-1 still in the API server after the live TTL (%v)", err)
		}
		return nil
	})
}

// Without an archive, a run carrying the finalizer (the archive was turned
// off) loses it when it finishes and goes at its TTL as before.
func TestNoArchiveRemovesFinalizer(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	startManager(t, ns, clock)
	createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.TTLSecondsAfterFinished = ptr.To[int32](60) })
	createRunWith(t, ns, "run-1", func(jr *jobsv1alpha1.JobRun) {
		controllerutil.AddFinalizer(jr, jobsv1alpha1.FinalizerArchive)
		jr.Finalizers = append(jr.Finalizers, "example.com/other")
	})
	pod := waitPod(t, ns, "run-1-1")
	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	// The end recorded first: the finalizer goes at the first pass already,
	// and a clock moved before the end would start the TTL after the move.
	waitPhase(t, ns, "run-1", jobsv1alpha1.JobRunCompleted)
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-1")
		if err != nil {
			return err
		}
		if !slices.Equal(jr.Finalizers, []string{"example.com/other"}) {
			return fmt.Errorf("finalizers %v, want only the other one", jr.Finalizers)
		}
		return nil
	})
	// Retention deletes it; the other finalizer, not jobrun's, holds it.
	clock.Step(2 * time.Minute)
	poke(t, ns, "run-1")
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		jr, err := getRun(ctx, ns, "run-1")
		if err != nil {
			return err
		}
		if jr.DeletionTimestamp == nil {
			return errors.New("run-1 not deleted after its TTL")
		}
		return nil
	})
	jr, err := getRun(context.Background(), ns, "run-1")
	if err != nil {
		t.Fatal(err)
	}
	jr.Finalizers = nil
	if err := env.Client.Update(context.Background(), jr); client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
}

// TestArchiveRetention: the leader's retention runner deletes the rows of
// runs that finished longer ago than the retention, in batches, and keeps
// the others.
func TestArchiveRetention(t *testing.T) {
	store, _, _ := archivetest.Start(t, false)
	now := time.Now()
	var runs []*jobsv1alpha1.JobRun
	for i := range 25 {
		age := time.Duration(i) * 24 * time.Hour // 0 to 24 days
		run := testrun.Make("ns-1", fmt.Sprintf("run-%02d", i)).JobType("demo_sync").Team("team-1").Project("p1").
			TriggeredBy("manual:user:u").CreatedAt(now.Add(-age - time.Minute)).Phase(jobsv1alpha1.JobRunCompleted).Obj()
		run.Status.CompletedAt = ptr.To(metav1.NewMicroTime(now.Add(-age)))
		runs = append(runs, run)
	}
	if err := store.Upsert(context.Background(), runs...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&ArchiveRetentionRunner{Archive: store, Retention: 10*24*time.Hour + time.Hour, Interval: 100 * time.Millisecond, Batch: 4, Now: func() time.Time { return now }}).Start(ctx)
	}()
	testenv.Eventually(t, 20*time.Second, func(ctx context.Context) error {
		left, _, err := store.List(ctx, archive.Query{Namespace: "ns-1", TeamID: "team-1", Limit: 100})
		if err != nil {
			return err
		}
		if len(left) != 11 {
			return fmt.Errorf("%d rows left, want the 11 of runs that finished within 10 days", len(left))
		}
		for _, run := range left {
			if now.Sub(run.Status.CompletedAt.Time) > 10*24*time.Hour+time.Hour {
				return fmt.Errorf("run %s, finished %s ago, kept", run.Name, now.Sub(run.Status.CompletedAt.Time))
			}
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
