package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	stop := startManager(t, clock)
	js := createSchedule(t, ns, "every-minute", "* * * * *", func(js *jobsv1alpha1.JobSchedule) {
		js.Spec.Params = nil
	})

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
	startManager(t, clock)
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
			stop := startManager(t, clock)
			js := createSchedule(t, ns, "lost", "* * * * *", func(js *jobsv1alpha1.JobSchedule) { js.Spec.ConcurrencyPolicy = policy })
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
			startManager(t, clock)
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

func TestScheduleStartingDeadline(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now())
	createJobType(t, ns)
	startManager(t, clock)
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
	startManager(t, clocktesting.NewFakeClock(time.Now()))
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
	startManager(t, clocktesting.NewFakeClock(time.Now()))
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
