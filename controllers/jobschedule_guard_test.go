package controllers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/internal/guard"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// projectSchedule makes a schedule a project-1 one with policy.
func projectSchedule(policy jobsv1alpha1.ConcurrencyPolicy) func(*jobsv1alpha1.JobSchedule) {
	return func(js *jobsv1alpha1.JobSchedule) {
		js.Spec.TeamID, js.Spec.ProjectID, js.Spec.ConcurrencyPolicy = "team-1", "project-1", policy
	}
}

// triggerViaAPI starts a run of demo_sync for project-1 as the REST trigger
// does: take the guard, then create the run.
func triggerViaAPI(t *testing.T, ns, name string) (*jobsv1alpha1.JobRun, error) {
	t.Helper()
	run := testrun.Make(ns, name).JobType("demo_sync").Team("team-1").Project("project-1").
		TriggeredBy("manual:user:user-1").TriggerLabels().Obj()
	if _, err := guard.New(env.Client, env.Client).Take(context.Background(), run); err != nil {
		return nil, err
	}
	return run, env.Client.Create(context.Background(), run)
}

func guardOfPair(ns string) client.ObjectKey {
	return client.ObjectKey{Namespace: ns, Name: jobsv1alpha1.GuardName("demo_sync", "project-1")}
}

// TestProjectScheduleRunHoldsTheGuard: a run a project schedule starts holds
// the (job type, project) guard, so a REST trigger of the pair meanwhile is
// refused naming it, and the guard is released when it ends.
func TestProjectScheduleRunHoldsTheGuard(t *testing.T) {
	ns := env.Namespace(t)
	clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Minute).Add(time.Minute + 10*time.Second))
	createJobType(t, ns)
	startManager(t, ns, clock)
	js := createSchedule(t, ns, "project", "* * * * *", projectSchedule(jobsv1alpha1.ConcurrencyForbid))
	alignClock(t, clock, js)
	got := stepAndWait(t, clock, js, 0)
	scheduled := scheduledRunName(got, got.Status.LastScheduleTime.Time)
	pod := waitPod(t, ns, scheduled+"-1")

	lease := &coordinationv1.Lease{}
	if err := env.Client.Get(context.Background(), guardOfPair(ns), lease); err != nil || ptr.Deref(lease.Spec.HolderIdentity, "") != scheduled {
		t.Fatalf("guard of the pair: holder %v (%v), want the scheduled run %s", lease.Spec.HolderIdentity, err, scheduled)
	}
	_, err := triggerViaAPI(t, ns, "api-run")
	var held *guard.HeldError
	if !errors.As(err, &held) || held.Holder != scheduled {
		t.Fatalf("trigger while the scheduled run is active: %v, want held by %s", err, scheduled)
	}

	kubelet(t, pod, corev1.PodSucceeded, 0, "Completed")
	waitPhase(t, ns, scheduled, jobsv1alpha1.JobRunCompleted)
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		if err := env.Client.Get(ctx, guardOfPair(ns), &coordinationv1.Lease{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("the ended scheduled run's guard is still there (%v)", err)
		}
		return nil
	})
	if _, err := triggerViaAPI(t, ns, "api-run"); err != nil {
		t.Fatalf("trigger once the scheduled run ended: %v", err)
	}
}

// TestProjectScheduleWhileAPIRunActive: a project schedule's time that comes
// while an API-triggered run of its (job type, project) is active starts no
// second run, whatever the policy; the time counts as missed, and Replace
// asks the API-triggered run to stop.
func TestProjectScheduleWhileAPIRunActive(t *testing.T) {
	for _, policy := range []jobsv1alpha1.ConcurrencyPolicy{jobsv1alpha1.ConcurrencyForbid, jobsv1alpha1.ConcurrencyAllow, jobsv1alpha1.ConcurrencyReplace} {
		t.Run(string(policy), func(t *testing.T) {
			ns := env.Namespace(t)
			clock := clocktesting.NewFakeClock(time.Now().Truncate(time.Minute).Add(time.Minute + 10*time.Second))
			createJobType(t, ns)
			startManager(t, ns, clock)
			apiRun, err := triggerViaAPI(t, ns, "api-run")
			if err != nil {
				t.Fatal(err)
			}
			// Active: its handler runs (Replace would cancel a run whose
			// pod has not started at once, and then start its own).
			kubelet(t, waitPod(t, ns, apiRun.Name+"-1"), corev1.PodRunning, 0, "")
			waitPhase(t, ns, apiRun.Name, jobsv1alpha1.JobRunRunning)

			js := createSchedule(t, ns, "project", "* * * * *", projectSchedule(policy))
			alignClock(t, clock, js)
			got := stepAndWait(t, clock, js, 0)
			if runs := scheduleRuns(t, js); len(runs) != 0 {
				t.Errorf("the schedule started %d run(s) beside the active API-triggered run, want none", len(runs))
			}
			if got.Status.MissedRuns != 1 {
				t.Errorf("missedRuns %d, want 1", got.Status.MissedRuns)
			}
			run, err := getRun(context.Background(), ns, apiRun.Name)
			if err != nil {
				t.Fatal(err)
			}
			if want := policy == jobsv1alpha1.ConcurrencyReplace; run.IsCancelRequested() != want {
				t.Errorf("API-triggered run asked to stop: %v, want %v", run.IsCancelRequested(), want)
			}
			lease := &coordinationv1.Lease{}
			if err := env.Client.Get(context.Background(), guardOfPair(ns), lease); err != nil || ptr.Deref(lease.Spec.HolderIdentity, "") != apiRun.Name {
				t.Errorf("guard of the pair: holder %v (%v), want still the API-triggered run", lease.Spec.HolderIdentity, err)
			}
		})
	}
}
