package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

func createSchedule(t *testing.T, ns, name, schedule string, mutate ...func(*jobsv1alpha1.JobSchedule)) *jobsv1alpha1.JobSchedule {
	t.Helper()
	js := &jobsv1alpha1.JobSchedule{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       jobsv1alpha1.JobScheduleSpec{Schedule: schedule, JobType: "demo_sync"},
	}
	for _, m := range mutate {
		m(js)
	}
	if err := env.Client.Create(context.Background(), js); err != nil {
		t.Fatal(err)
	}
	return js
}

func getSchedule(t *testing.T, js *jobsv1alpha1.JobSchedule) *jobsv1alpha1.JobSchedule {
	t.Helper()
	got := &jobsv1alpha1.JobSchedule{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(js), got); err != nil {
		t.Fatal(err)
	}
	return got
}

func scheduleRuns(t *testing.T, js *jobsv1alpha1.JobSchedule) []jobsv1alpha1.JobRun {
	t.Helper()
	list := &jobsv1alpha1.JobRunList{}
	if err := env.Client.List(context.Background(), list, client.InNamespace(js.Namespace), client.MatchingLabels{jobsv1alpha1.LabelSchedule: js.Name}); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// stepAndWait moves the clock, pokes the schedule and waits until the
// controller has handled the new time (its nextScheduleTime is after now).
func stepAndWait(t *testing.T, clock *clocktesting.FakeClock, js *jobsv1alpha1.JobSchedule, d time.Duration) *jobsv1alpha1.JobSchedule {
	t.Helper()
	clock.Step(d)
	env.Annotate(t, js.DeepCopy(), "test.jobrun.dev/poke", clock.Now().Format(time.RFC3339Nano))
	var got *jobsv1alpha1.JobSchedule
	testenv.Eventually(t, 20*time.Second, func(context.Context) error {
		got = getSchedule(t, js)
		if got.Status.NextScheduleTime == nil || !got.Status.NextScheduleTime.After(clock.Now()) {
			return fmt.Errorf("next schedule time %v not after %v yet", got.Status.NextScheduleTime, clock.Now())
		}
		return nil
	})
	return got
}

func TestScheduleStartsRunsOnTime(t *testing.T) {
	ns := env.Namespace(t)
	// The schedule's clock starts at its creation, a whole minute.
	clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Minute).Add(time.Minute + 10*time.Second))
	createJobType(t, ns)
	stop := startManager(t, ns, clock)
	js := createSchedule(t, ns, "every-minute", "* * * * *", func(js *jobsv1alpha1.JobSchedule) {
		js.Spec.Params = nil
	})
	alignClock(t, clock, js)

	got := stepAndWait(t, clock, js, 0)
	created := getSchedule(t, js).CreationTimestamp.Time
	runs := scheduleRuns(t, js)
	due := got.Status.LastScheduleTime
	if len(runs) != 1 || due == nil {
		t.Fatalf("%d runs, lastScheduleTime %v; want the one due since %v", len(runs), due, created)
	}
	run := runs[0]
	if run.Name != scheduledRunName(got, due.Time) || run.Spec.TriggeredBy != "schedule:every-minute" || metav1.GetControllerOf(&run) == nil {
		t.Errorf("run %s triggeredBy %q owner %v", run.Name, run.Spec.TriggeredBy, metav1.GetControllerOf(&run))
	}
	if got := run.Annotations[jobsv1alpha1.AnnotationScheduledTime]; got != due.UTC().Format(time.RFC3339) {
		t.Errorf("scheduled-time annotation %q, want %s", got, due.UTC().Format(time.RFC3339))
	}
	if !got.Status.NextScheduleTime.Time.Equal(due.Add(time.Minute)) || len(got.Status.ActiveRuns) != 1 || got.Status.ActiveRuns[0] != run.Name {
		t.Errorf("status: next %v active %v", got.Status.NextScheduleTime, got.Status.ActiveRuns)
	}

	// Forbid (the default): the next minute comes while the run is active.
	got = stepAndWait(t, clock, js, time.Minute)
	if n := len(scheduleRuns(t, js)); n != 1 || got.Status.MissedRuns != 1 {
		t.Errorf("with Forbid and an active run: %d runs, missed %d; want 1 and 1", n, got.Status.MissedRuns)
	}

	// Allow, and ten minutes missed: one run, for the latest time, no burst.
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.ConcurrencyPolicy = jobsv1alpha1.ConcurrencyAllow
	if err := env.Client.Patch(context.Background(), got, patch); err != nil {
		t.Fatal(err)
	}
	missedBefore := got.Status.MissedRuns
	got = stepAndWait(t, clock, js, 10*time.Minute)
	if n := len(scheduleRuns(t, js)); n != 2 {
		t.Errorf("after 10 missed minutes with Allow: %d runs, want 2 (one new, for the latest time)", n)
	}
	if got.Status.MissedRuns-missedBefore != 9 {
		t.Errorf("missed runs grew by %d, want 9", got.Status.MissedRuns-missedBefore)
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, jobsv1alpha1.JobScheduleConditionReady); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("Ready condition %+v", c)
	}

	// A restarted controller never starts a schedule time twice. The manager
	// stops after it started the run for the latest time, and the schedule
	// is set back as if it had died before recording that time in status: a
	// new manager (fresh cache), with the clock still where it was, finds
	// the time due again. With Allow, only the run's name (derived from the
	// schedule time) keeps it from starting a second run.
	stop()
	last := got.Status.LastScheduleTime.Time
	lost := got.DeepCopy()
	lost.Status.LastScheduleTime = &metav1.Time{Time: last.Add(-time.Minute)}
	if err := env.Client.Status().Patch(context.Background(), lost, client.MergeFrom(got)); err != nil {
		t.Fatal(err)
	}
	runsBefore := len(scheduleRuns(t, js))
	startManager(t, ns, clock)
	testenv.Eventually(t, 20*time.Second, func(context.Context) error {
		if got := getSchedule(t, js).Status.LastScheduleTime; !got.Time.Equal(last) {
			return fmt.Errorf("the new manager has not handled %v yet (lastScheduleTime %v)", last, got)
		}
		return nil
	})
	if n := len(scheduleRuns(t, js)); n != runsBefore {
		t.Errorf("after a restart at the same schedule time: %d runs, want still %d", n, runsBefore)
	}
}

// TestScheduleStatusWriteLost: a pass started the run for a time, and its
// status write (which records the time) was lost, to a conflict or a
// restart. The next pass finds the time due again, and the run it started
// active: that run is the time's own, not a concurrent one to skip (Forbid)
// or to cancel (Replace).
func TestScheduleStatusWriteLost(t *testing.T) {
	for _, policy := range []jobsv1alpha1.ConcurrencyPolicy{jobsv1alpha1.ConcurrencyForbid, jobsv1alpha1.ConcurrencyReplace} {
		t.Run(string(policy), func(t *testing.T) {
			ns := env.Namespace(t)
			clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Minute).Add(time.Minute + 10*time.Second))
			createJobType(t, ns)
			stop := startManager(t, ns, clock)
			js := createSchedule(t, ns, "lost", "* * * * *", func(js *jobsv1alpha1.JobSchedule) { js.Spec.ConcurrencyPolicy = policy })
			alignClock(t, clock, js)
			got := stepAndWait(t, clock, js, 0)
			due := got.Status.LastScheduleTime.Time
			name := scheduledRunName(got, due)
			waitPod(t, ns, name+"-1") // active: no kubelet runs it

			stop()
			lost := got.DeepCopy()
			lost.Status.LastScheduleTime = nil
			if err := env.Client.Status().Patch(context.Background(), lost, client.MergeFrom(got)); err != nil {
				t.Fatal(err)
			}
			startManager(t, ns, clock)
			testenv.Eventually(t, 20*time.Second, func(context.Context) error {
				if got = getSchedule(t, js); got.Status.LastScheduleTime == nil || !got.Status.LastScheduleTime.Time.Equal(due) {
					return fmt.Errorf("the new manager has not handled %v yet (lastScheduleTime %v)", due, got.Status.LastScheduleTime)
				}
				return nil
			})
			run, err := getRun(context.Background(), ns, name)
			if err != nil {
				t.Fatal(err)
			}
			if run.IsCancelRequested() {
				t.Errorf("the run for %v was asked to stop by its own schedule time", due)
			}
			if got.Status.MissedRuns != 0 {
				t.Errorf("missedRuns %d, want 0: the time's run was started", got.Status.MissedRuns)
			}
			if n := len(scheduleRuns(t, js)); n != 1 {
				t.Errorf("%d runs, want 1", n)
			}
		})
	}
}

// TestScheduleReplace: with concurrencyPolicy Replace, a due time asks the
// active run to stop (the cancel annotation, as the REST API's cancel) and
// starts the new one beside it.
func TestScheduleReplace(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Minute).Add(time.Minute + 10*time.Second))
	createJobType(t, ns)
	startManager(t, ns, clock)
	js := createSchedule(t, ns, "replace", "* * * * *", func(js *jobsv1alpha1.JobSchedule) {
		js.Spec.ConcurrencyPolicy = jobsv1alpha1.ConcurrencyReplace
	})
	alignClock(t, clock, js)
	got := stepAndWait(t, clock, js, 0)
	first := scheduledRunName(got, got.Status.LastScheduleTime.Time)
	// Active: its handler runs (a run whose pod has not started yet is
	// cancelled at once, with no handler to wait for).
	kubelet(t, waitPod(t, ns, first+"-1"), corev1.PodRunning, 0, "")
	waitPhase(t, ns, first, jobsv1alpha1.JobRunRunning)

	got = stepAndWait(t, clock, js, time.Minute)
	second := scheduledRunName(got, got.Status.LastScheduleTime.Time)
	old, err := getRun(context.Background(), ns, first)
	if err != nil {
		t.Fatal(err)
	}
	if !old.IsCancelRequested() {
		t.Errorf("the active run %s was not asked to stop", first)
	}
	if _, err := getRun(context.Background(), ns, second); err != nil {
		t.Errorf("the run for the new time: %v", err)
	}
	if n := len(scheduleRuns(t, js)); n != 2 {
		t.Errorf("%d runs, want 2 (the replaced one, stopping, and the new one)", n)
	}
	if got.Status.MissedRuns != 0 {
		t.Errorf("missedRuns %d, want 0: Replace skips nothing", got.Status.MissedRuns)
	}

	// The replaced run's handler obeys: the run ends cancelled.
	kubelet(t, waitPod(t, ns, first+"-1"), corev1.PodFailed, jobsv1alpha1.ExitCodeCancelled, "Error")
	waitPhase(t, ns, first, jobsv1alpha1.JobRunCancelled)
}

// TestScheduleSuspend: a suspended schedule starts nothing while its times
// pass; resumed, it starts the latest of them (never a burst) and goes on.
func TestScheduleSuspend(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Minute).Add(time.Minute + 10*time.Second))
	createJobType(t, ns)
	startManager(t, ns, clock)
	js := createSchedule(t, ns, "paused", "* * * * *", func(js *jobsv1alpha1.JobSchedule) {
		js.Spec.Suspend = ptr.To(true)
		js.Spec.ConcurrencyPolicy = jobsv1alpha1.ConcurrencyAllow
	})
	alignClock(t, clock, js)
	for _, step := range []time.Duration{0, time.Minute, 3 * time.Minute} {
		got := stepAndWait(t, clock, js, step)
		if n := len(scheduleRuns(t, js)); n != 0 || got.Status.LastScheduleTime != nil {
			t.Errorf("suspended, at %v: %d runs, lastScheduleTime %v; want none", clock.Now(), n, got.Status.LastScheduleTime)
		}
		if c := meta.FindStatusCondition(got.Status.Conditions, jobsv1alpha1.JobScheduleConditionReady); c == nil || c.Reason != reasonSuspended {
			t.Errorf("suspended: Ready condition %+v", c)
		}
	}

	got := getSchedule(t, js)
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.Suspend = ptr.To(false)
	if err := env.Client.Patch(context.Background(), got, patch); err != nil {
		t.Fatal(err)
	}
	latest := clock.Now().Truncate(time.Minute)
	testenv.Eventually(t, 20*time.Second, func(context.Context) error {
		got = getSchedule(t, js)
		if got.Status.LastScheduleTime == nil || !got.Status.LastScheduleTime.Time.Equal(latest) {
			return fmt.Errorf("resumed: lastScheduleTime %v, want %v", got.Status.LastScheduleTime, latest)
		}
		return nil
	})
	runs := scheduleRuns(t, js)
	if len(runs) != 1 || runs[0].Annotations[jobsv1alpha1.AnnotationScheduledTime] != latest.UTC().Format(time.RFC3339) {
		t.Fatalf("resumed: %d runs (%v), want one for the latest time %v", len(runs), runs, latest)
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, jobsv1alpha1.JobScheduleConditionReady); c == nil || c.Reason != reasonScheduled {
		t.Errorf("resumed: Ready condition %+v", c)
	}
	stepAndWait(t, clock, js, time.Minute)
	if n := len(scheduleRuns(t, js)); n != 2 {
		t.Errorf("a minute after resuming: %d runs, want 2", n)
	}
}

// TestScheduleHistoryLimits: a schedule keeps its newest
// successfulRunsHistoryLimit completed runs and failedRunsHistoryLimit
// failed ones, and deletes the older ones.
func TestScheduleHistoryLimits(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Minute).Add(time.Minute + 10*time.Second))
	createJobType(t, ns)
	startManager(t, ns, clock)
	js := createSchedule(t, ns, "history", "* * * * *", func(js *jobsv1alpha1.JobSchedule) {
		js.Spec.SuccessfulRunsHistoryLimit = ptr.To[int32](2)
		js.Spec.FailedRunsHistoryLimit = ptr.To[int32](1)
		// Each run has ended before the next is due, but the schedule's
		// cache may not know it yet: Forbid could skip a time.
		js.Spec.ConcurrencyPolicy = jobsv1alpha1.ConcurrencyAllow
	})
	alignClock(t, clock, js)
	// One run a minute, oldest first; the last one completes, so the
	// schedule's lastSuccessfulTime says when a pass saw them all.
	outcomes := []jobsv1alpha1.JobRunPhase{jobsv1alpha1.JobRunCompleted, jobsv1alpha1.JobRunFailed, jobsv1alpha1.JobRunFailed, jobsv1alpha1.JobRunCompleted, jobsv1alpha1.JobRunCompleted}
	var names []string
	var lastDone time.Time
	for i, outcome := range outcomes {
		step := time.Minute
		if i == 0 {
			step = 0
		}
		got := stepAndWait(t, clock, js, step)
		name := scheduledRunName(got, got.Status.LastScheduleTime.Time)
		names = append(names, name)
		pod := waitPod(t, ns, name+"-1")
		if outcome == jobsv1alpha1.JobRunCompleted {
			kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
		} else {
			kubelet(t, pod, corev1.PodFailed, 1, "Error")
		}
		lastDone = waitPhase(t, ns, name, outcome).Status.CompletedAt.Time
	}
	testenv.Eventually(t, 20*time.Second, func(context.Context) error {
		if got := getSchedule(t, js).Status.LastSuccessfulTime; got == nil || !got.Time.Equal(lastDone.Truncate(time.Second)) {
			return fmt.Errorf("lastSuccessfulTime %v, want %v", got, lastDone.Truncate(time.Second))
		}
		return nil
	})
	var kept []string
	for _, run := range scheduleRuns(t, js) {
		kept = append(kept, run.Name)
	}
	slices.Sort(kept)
	want := []string{names[2], names[3], names[4]} // the newest failed one, the two newest completed ones
	slices.Sort(want)
	if !slices.Equal(kept, want) {
		t.Errorf("runs kept: %v, want %v (runs oldest first: %v, %v)", kept, want, names, outcomes)
	}
}

func TestScheduleStartingDeadline(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	createJobType(t, ns)
	startManager(t, ns, clock)
	js := createSchedule(t, ns, "strict", "* * * * *", func(js *jobsv1alpha1.JobSchedule) {
		js.Spec.StartingDeadlineSeconds = ptr.To[int64](20)
	})
	// The controller looks 50 s after a minute began: too late.
	next := clock.Now().Truncate(time.Minute).Add(time.Minute)
	got := stepAndWait(t, clock, js, next.Add(50*time.Second).Sub(clock.Now()))
	if n := len(scheduleRuns(t, js)); n != 0 || got.Status.MissedRuns != 1 {
		t.Errorf("past the starting deadline: %d runs, missed %d; want 0 and 1", n, got.Status.MissedRuns)
	}
}

func TestScheduleWithUnknownTimeZone(t *testing.T) {
	ns := env.Namespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	js := createSchedule(t, ns, "mars", "0 3 * * *", func(js *jobsv1alpha1.JobSchedule) { js.Spec.TimeZone = "Mars/Olympus" })
	testenv.Eventually(t, 20*time.Second, func(context.Context) error {
		c := meta.FindStatusCondition(getSchedule(t, js).Status.Conditions, jobsv1alpha1.JobScheduleConditionReady)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != reasonInvalidSchedule || !strings.Contains(c.Message, `unknown time zone "Mars/Olympus"`) {
			return fmt.Errorf("Ready condition %+v", c)
		}
		return nil
	})
}

// TestScheduleAppliedTwiceHasNoDrift applies the sample schedule with
// server-side apply twice while the controller writes its status: a GitOps
// tool sees the same spec and owns the same fields.
func TestScheduleAppliedTwiceHasNoDrift(t *testing.T) {
	ns := env.Namespace(t)
	startManager(t, ns, clocktesting.NewFakeClock(time.Now()))
	manifest := filepath.Join(testenv.Root(), "config", "samples", "jobs_v1alpha1_jobschedule.yaml")
	if _, err := os.Stat(manifest); err != nil {
		t.Fatal(err)
	}
	env.Kubectl(t, "apply", "--server-side", "--field-manager=argocd", "-n", ns, "-f", manifest)
	js := &jobsv1alpha1.JobSchedule{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nightly-maintenance"}}
	testenv.Eventually(t, 20*time.Second, func(context.Context) error {
		if getSchedule(t, js).Status.NextScheduleTime == nil {
			return fmt.Errorf("the controller has not written status yet")
		}
		return nil
	})
	first := getSchedule(t, js)
	env.Kubectl(t, "apply", "--server-side", "--field-manager=argocd", "-n", ns, "-f", manifest)
	second := getSchedule(t, js)
	if second.Generation != first.Generation || !equalSpec(first, second) {
		t.Errorf("spec changed on the second apply: generation %d -> %d", first.Generation, second.Generation)
	}
	owners := func(s *jobsv1alpha1.JobSchedule) string {
		var out []string
		for _, mf := range s.ManagedFields {
			if mf.Subresource == "" {
				out = append(out, mf.Manager+":"+string(mf.FieldsV1.Raw))
			}
		}
		return strings.Join(out, "\n")
	}
	if owners(first) != owners(second) {
		t.Errorf("managed fields of the spec changed:\n%s\n---\n%s", owners(first), owners(second))
	}
	if out := env.Kubectl(t, "diff", "--server-side", "--field-manager=argocd", "-n", ns, "-f", manifest); strings.TrimSpace(out) != "" {
		t.Errorf("kubectl diff shows drift:\n%s", out)
	}
}

func equalSpec(a, b *jobsv1alpha1.JobSchedule) bool {
	return equality.Semantic.DeepEqual(a.Spec, b.Spec)
}

// alignClock moves the tests' clock, which starts 10 s after the first
// whole minute after the test began, to 10 s after the first whole minute
// after js's creation, if the test crossed a minute boundary before it
// created js (the schedule's first due time is the first whole minute after
// its creation): without it a test that began in the last moments of a
// minute found nothing due.
func alignClock(t *testing.T, clock *clocktesting.FakeClock, js *jobsv1alpha1.JobSchedule) {
	t.Helper()
	due := getSchedule(t, js).CreationTimestamp.Time.Truncate(time.Minute).Add(time.Minute + 10*time.Second)
	if due.After(clock.Now()) {
		clock.SetTime(due)
	}
}
