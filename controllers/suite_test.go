package controllers

import (
	"context"
	"testing"

	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"jobrun.dev/jobrun/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// startManager runs a manager with the JobRun, JobType and JobSchedule controllers
// for the test's namespace ns, reading time from clock, until the test ends
// or stop is called. stop waits for it to return.
func startManager(t *testing.T, ns string, clock *clocktesting.FakeClock, opts ...Option) (stop func()) {
	t.Helper()
	stop, _ = startManagerWithCache(t, ns, clock, opts...)
	return stop
}

// startManagerWithCache is startManager that also returns the manager's
// cached client: what its controllers see, which may lag the API server.
func startManagerWithCache(t *testing.T, ns string, clock *clocktesting.FakeClock, opts ...Option) (stop func(), seen client.Reader) {
	t.Helper()
	mgr := env.NewManager(t, ns)
	opts = append([]Option{WithClock(clock)}, opts...)
	if err := NewJobRunReconciler(mgr, opts...).SetupWithManager(context.Background(), mgr); err != nil {
		t.Fatal(err)
	}
	if err := NewJobTypeReconciler(mgr, opts...).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	if err := NewJobScheduleReconciler(mgr, opts...).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	stop = testenv.StartManager(t, mgr)
	return stop, mgr.GetClient()
}
