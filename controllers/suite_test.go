package controllers

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"jobrun.dev/jobrun/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// startManager runs a manager with the JobRun and JobSchedule controllers
// for the test's namespace ns, reading time from clock, until the test ends
// or stop is called. stop waits for it to return.
func startManager(t *testing.T, ns string, clock *clocktesting.FakeClock, opts ...JobRunOption) (stop func()) {
	t.Helper()
	stop, _ = startManagerWithCache(t, ns, clock, opts...)
	return stop
}

// startManagerWithCache is startManager that also returns the manager's
// cached client: what its controllers see, which may lag the API server.
func startManagerWithCache(t *testing.T, ns string, clock *clocktesting.FakeClock, opts ...JobRunOption) (stop func(), seen client.Reader) {
	t.Helper()
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme: env.Scheme,
		// Only the test's own namespace: no namespace controller runs here,
		// so earlier tests' runs stay, and a later test's manager must not
		// reconcile them (nor send their emails to its mail server).
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// Several managers run in one test process, one after another.
		Controller: config.Controller{SkipNameValidation: ptrTrue()},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := NewJobRunReconciler(mgr, append([]JobRunOption{WithClock(clock)}, opts...)...).SetupWithManager(ctx, mgr); err != nil {
		t.Fatal(err)
	}
	if err := NewJobScheduleReconciler(mgr, clock).SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("manager did not stop within 30s")
		}
	}
	t.Cleanup(stop)
	return stop, mgr.GetClient()
}

func ptrTrue() *bool { b := true; return &b }
