package sdk_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/sdk"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// newRun creates a run whose status records its first attempt, as the
// controller does once the attempt's pod runs.
func newRun(t *testing.T, ns, jobType, params string) *jobsv1alpha1.JobRun {
	t.Helper()
	jr := newUnrecordedRun(t, ns, jobType, params)
	recordAttempt(t, jr, 1)
	return jr
}

// newUnrecordedRun creates a run whose status records no attempt yet.
func newUnrecordedRun(t *testing.T, ns, jobType, params string) *jobsv1alpha1.JobRun {
	t.Helper()
	jr := testrun.Make(ns, "").GenerateName("run-").JobType(jobType).Team("team-1").Project("project-1").
		TriggeredBy("manual:user:u1").Params(params).Obj()
	if err := env.Client.Create(testenv.Context(t), jr); err != nil {
		t.Fatal(err)
	}
	return jr
}

// recordAttempt writes attempt n into the run's status, as the controller.
func recordAttempt(t *testing.T, jr *jobsv1alpha1.JobRun, n int32) {
	t.Helper()
	if err := testrun.RecordAttempt(testenv.Context(t), env.Client, jr, n); err != nil {
		t.Fatal(err)
	}
}

func watchClient(t *testing.T) client.WithWatch {
	t.Helper()
	c, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func config(t *testing.T, jr *jobsv1alpha1.JobRun, handlers map[string]sdk.Handler) sdk.Config {
	return sdk.Config{
		Client: watchClient(t), Namespace: jr.Namespace, Name: jr.Name, Attempt: 1,
		Handlers: handlers, ProgressInterval: 50 * time.Millisecond, CancelPollInterval: 200 * time.Millisecond,
		Log: testr.New(t),
	}
}

func get(t *testing.T, jr *jobsv1alpha1.JobRun) *jobsv1alpha1.JobRun {
	t.Helper()
	got := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(jr), got); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestProgressIsCoalesced calls Progress 100,000 times and counts the status
// writes the API server saw, through a watch on the run.
func TestProgressIsCoalesced(t *testing.T) {
	ns := env.Namespace(t)
	jr := newRun(t, ns, "count", `{"n":100000}`)

	w, err := watchClient(t).Watch(testenv.Context(t), &jobsv1alpha1.JobRunList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	var modified atomic.Int64
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Modified {
				modified.Add(1)
			}
		}
	}()

	const calls = 100_000
	var elapsed time.Duration
	cfg := config(t, jr, map[string]sdk.Handler{"count": func(ctx context.Context, run *sdk.Run) (any, error) {
		start := time.Now()
		for i := int64(1); i <= calls; i++ {
			run.Progress(i, calls, fmt.Sprintf("item %d", i))
			if i%1000 == 0 {
				time.Sleep(time.Millisecond) // a handler that does some work
			}
		}
		elapsed = time.Since(start)
		return map[string]int{"synced": calls}, nil
	}})
	if code := sdk.Serve(context.Background(), cfg); code != 0 {
		t.Fatalf("Serve = %d, want 0", code)
	}
	got := get(t, jr)
	if diff := got.Status.Progress; diff == nil || diff.Processed != calls || diff.Total != calls || diff.Message != fmt.Sprintf("item %d", calls) {
		t.Errorf("final progress = %+v, want %d/%d with the last message", got.Status.Progress, calls, calls)
	}
	if string(got.Status.Result.Raw) != `{"synced":100000}` {
		t.Errorf("result = %s", got.Status.Result.Raw)
	}
	// Let the watch catch up with the last writes before counting.
	rv := got.ResourceVersion
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		if get(t, jr).ResourceVersion != rv {
			return errors.New("still changing")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	// At most one progress write per interval, plus the final flush and the
	// result: never anything near one per call.
	limit := int64(elapsed/cfg.ProgressInterval) + 3
	n := modified.Load()
	t.Logf("%d Progress calls over %s produced %d status writes (progress + result), limit %d", calls, elapsed, n, limit)
	if n > limit || n < 2 {
		t.Errorf("%d status writes for %d Progress calls in %s; want between 2 and %d", n, calls, elapsed, limit)
	}
}

func TestHandlerErrorIsRecorded(t *testing.T) {
	ns := env.Namespace(t)
	jr := newRun(t, ns, "broken", `{}`)
	cfg := config(t, jr, map[string]sdk.Handler{"broken": func(ctx context.Context, run *sdk.Run) (any, error) {
		run.Progress(3, 10, "three done")
		return nil, errors.New("upstream returned 503")
	}})
	if code := sdk.Serve(context.Background(), cfg); code != jobsv1alpha1.ExitCodeFailed {
		t.Fatalf("Serve = %d, want %d", code, jobsv1alpha1.ExitCodeFailed)
	}
	got := get(t, jr)
	if got.Status.Error != "upstream returned 503" {
		t.Errorf("status.error = %q", got.Status.Error)
	}
	if got.Status.Progress == nil || got.Status.Progress.Processed != 3 {
		t.Errorf("last progress not kept: %+v", got.Status.Progress)
	}
	if got.Status.Phase != jobsv1alpha1.JobRunRunning {
		t.Errorf("the runner wrote phase %q; only the controller decides it", got.Status.Phase)
	}
}

func TestPanicBecomesError(t *testing.T) {
	ns := env.Namespace(t)
	jr := newRun(t, ns, "panics", `{}`)
	cfg := config(t, jr, map[string]sdk.Handler{"panics": func(ctx context.Context, run *sdk.Run) (any, error) {
		var m map[string]int
		m["boom"]++
		return nil, nil
	}})
	if code := sdk.Serve(context.Background(), cfg); code != jobsv1alpha1.ExitCodeFailed {
		t.Fatalf("Serve = %d, want %d", code, jobsv1alpha1.ExitCodeFailed)
	}
	if got := get(t, jr).Status.Error; !strings.HasPrefix(got, "handler panicked: assignment to entry in nil map") {
		t.Errorf("status.error = %q", got)
	}
}

func TestUnknownJobTypeAndBadParams(t *testing.T) {
	ns := env.Namespace(t)

	jr := newRun(t, ns, "nobody_handles_this", `{}`)
	if code := sdk.Serve(context.Background(), config(t, jr, map[string]sdk.Handler{})); code != jobsv1alpha1.ExitCodeRunnerError {
		t.Errorf("Serve = %d, want %d", code, jobsv1alpha1.ExitCodeRunnerError)
	}
	if got := get(t, jr).Status.Error; got != `this image has no handler for job type "nobody_handles_this"` {
		t.Errorf("status.error = %q", got)
	}

	jr = newRun(t, ns, "typed", `{"itemz": 5}`)
	cfg := config(t, jr, map[string]sdk.Handler{"typed": func(ctx context.Context, run *sdk.Run) (any, error) {
		var p struct {
			Items int `json:"items"`
		}
		return nil, run.Params(&p)
	}})
	if code := sdk.Serve(context.Background(), cfg); code != jobsv1alpha1.ExitCodeFailed {
		t.Errorf("Serve = %d, want %d", code, jobsv1alpha1.ExitCodeFailed)
	}
	if got := get(t, jr).Status.Error; got != `invalid params: json: unknown field "itemz"` {
		t.Errorf("status.error = %q", got)
	}
}

// brokenWatch is a real client whose watches always fail, as when a proxy
// cuts them: only the polling fallback can see a cancel request.
type brokenWatch struct{ client.WithWatch }

func (brokenWatch) Watch(context.Context, client.ObjectList, ...client.ListOption) (watch.Interface, error) {
	return nil, errors.New("watch refused")
}

func TestCancellation(t *testing.T) {
	for _, tt := range []struct {
		name        string
		brokenWatch bool
	}{
		{"through the watch", false},
		{"through polling when watches fail", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns := env.Namespace(t)
			jr := newRun(t, ns, "waits", `{}`)
			started := make(chan struct{})
			cfg := config(t, jr, map[string]sdk.Handler{"waits": func(ctx context.Context, run *sdk.Run) (any, error) {
				run.Progress(7, 100, "seven")
				close(started)
				<-ctx.Done()
				return nil, ctx.Err()
			}})
			if tt.brokenWatch {
				cfg.Client = brokenWatch{cfg.Client}
			}
			done := make(chan int, 1)
			go func() { done <- sdk.Serve(context.Background(), cfg) }()
			<-started

			env.Annotate(t, jr.DeepCopy(), jobsv1alpha1.AnnotationCancelRequested, time.Now().UTC().Format(time.RFC3339))
			requested := time.Now()
			select {
			case code := <-done:
				if code != jobsv1alpha1.ExitCodeCancelled {
					t.Errorf("Serve = %d, want %d", code, jobsv1alpha1.ExitCodeCancelled)
				}
				t.Logf("cancel reached the handler and Serve returned %s after the request", time.Since(requested))
			case <-time.After(30 * time.Second):
				t.Fatal("the handler was not cancelled within 30s")
			}
			got := get(t, jr)
			if got.Status.Progress == nil || got.Status.Progress.Processed != 7 {
				t.Errorf("cancelled run lost its last progress: %+v", got.Status.Progress)
			}
			if got.Status.Error != "" {
				t.Errorf("a cancelled run recorded error %q", got.Status.Error)
			}
		})
	}
}

func TestCancelledBeforeStart(t *testing.T) {
	ns := env.Namespace(t)
	jr := newRun(t, ns, "never", `{}`)
	env.Annotate(t, jr.DeepCopy(), jobsv1alpha1.AnnotationCancelRequested, "now")
	called := false
	cfg := config(t, jr, map[string]sdk.Handler{"never": func(context.Context, *sdk.Run) (any, error) {
		called = true
		return nil, nil
	}})
	if code := sdk.Serve(context.Background(), cfg); code != jobsv1alpha1.ExitCodeCancelled {
		t.Errorf("Serve = %d, want %d", code, jobsv1alpha1.ExitCodeCancelled)
	}
	if called {
		t.Error("the handler ran for a run cancelled before it started")
	}
}

// TestFinalWritesRideOutAnOutage takes the API server away from the runner
// for 8 s just as its handler finishes: the last progress and the result
// cannot be written then, and must be once the API server is back (the
// runner's retries once gave up after ~6 s and lost the last progress).
func TestFinalWritesRideOutAnOutage(t *testing.T) {
	ns := env.Namespace(t)
	jr := newRun(t, ns, "slow", `{}`)
	proxy, proxied := testenv.NewProxy(t, env.Config)
	c, err := client.NewWithWatch(proxied, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	cfg := config(t, jr, map[string]sdk.Handler{"slow": func(ctx context.Context, run *sdk.Run) (any, error) {
		run.Progress(1, 3, "working")
		close(started)
		<-release
		run.Progress(3, 3, "done")
		return map[string]int{"done": 3}, nil
	}})
	cfg.Client = c
	code := make(chan int, 1)
	go func() { code <- sdk.Serve(context.Background(), cfg) }()

	<-started
	proxy.Cut()
	close(release)
	time.Sleep(8 * time.Second) // the outage: a duration, not an ordering
	if got := get(t, jr); got.Status.Result != nil {
		t.Fatalf("the result was written during the outage: the runner is not cut off")
	}
	proxy.Restore()
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("runner exited %d after the outage, want 0", c)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the runner did not finish within 2 minutes of the API server's return")
	}
	got := get(t, jr)
	if p := got.Status.Progress; p == nil || p.Processed != 3 || p.Message != "done" {
		t.Errorf("last progress after the outage = %+v, want 3/3 done", p)
	}
	if got.Status.Result == nil || string(got.Status.Result.Raw) != `{"done":3}` {
		t.Errorf("result after the outage = %v", got.Status.Result)
	}
}

// TestRunnerRecordsItsAttempt: the controller records the first attempt only
// when it sees the pod run; the runner records its attempt itself (attempts
// and podName, nothing else) before the handler starts, so that no handler
// runs for an attempt the run does not count. A pod whose attempt a later
// one replaced runs nothing.
func TestRunnerRecordsItsAttempt(t *testing.T) {
	t.Run("unrecorded", func(t *testing.T) {
		jr := newUnrecordedRun(t, env.Namespace(t), "recorded", `{}`)
		var seen *jobsv1alpha1.JobRun
		cfg := config(t, jr, map[string]sdk.Handler{"recorded": func(ctx context.Context, run *sdk.Run) (any, error) {
			seen = get(t, jr)
			return map[string]int{"ok": 1}, nil
		}})
		if code := sdk.Serve(context.Background(), cfg); code != 0 {
			t.Fatalf("Serve = %d, want 0", code)
		}
		if seen == nil || seen.Status.Attempts != 1 || seen.Status.PodName != jr.Name+"-1" {
			t.Fatalf("the handler ran with the run's status %+v, want attempt 1 and its pod recorded", seen)
		}
		if seen.Status.Phase != jobsv1alpha1.JobRunPending || len(seen.Status.Conditions) != 0 {
			t.Errorf("the runner wrote more than its attempt: %+v", seen.Status)
		}
	})
	t.Run("replaced by a later attempt", func(t *testing.T) {
		jr := newUnrecordedRun(t, env.Namespace(t), "replaced", `{}`)
		recordAttempt(t, jr, 2)
		called := false
		cfg := config(t, jr, map[string]sdk.Handler{"replaced": func(context.Context, *sdk.Run) (any, error) {
			called = true
			return nil, nil
		}})
		if code := sdk.Serve(context.Background(), cfg); code != 0 || called {
			t.Errorf("Serve = %d, handler called: %v; want 0, never", code, called)
		}
		if got := get(t, jr); got.Status.Attempts != 2 {
			t.Errorf("attempts %d after the replaced pod's runner, want 2", got.Status.Attempts)
		}
	})
}
