package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// maxErrorLength is the CRD's bound on status.error, less room for a suffix.
const maxErrorLength = 4000

// maxResultBytes bounds a handler's result: it lives in the run's status, in
// etcd, and is served by the REST API on every poll.
const maxResultBytes = 64 << 10

// Config is what Serve needs to execute one run.
type Config struct {
	// Client talks to the API server as the pod's service account. It needs
	// get, watch and status patch on JobRuns in Namespace.
	Client client.WithWatch
	// Namespace and Name identify the run.
	Namespace, Name string
	// Attempt is the attempt number the controller started this pod for.
	Attempt int
	// Handlers maps job type strings to handlers.
	Handlers map[string]Handler
	// ProgressInterval is the least time between two progress writes
	// (default 1s).
	ProgressInterval time.Duration
	// CancelPollInterval is how often the run is re-read in case the watch
	// missed the cancel request (default 5s).
	CancelPollInterval time.Duration
	// Log receives the runner's log lines.
	Log logr.Logger
}

// ConfigFromEnv fills Namespace, Name and Attempt from the environment the
// controller gives the handler container.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{Namespace: getenv(jobsv1alpha1.EnvRunNamespace), Name: getenv(jobsv1alpha1.EnvRunName)}
	if c.Namespace == "" || c.Name == "" {
		return c, fmt.Errorf("%s and %s must be set: the runner runs inside a run's pod", jobsv1alpha1.EnvRunNamespace, jobsv1alpha1.EnvRunName)
	}
	c.Attempt = 1
	if a := getenv(jobsv1alpha1.EnvAttempt); a != "" {
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 {
			return c, fmt.Errorf("%s=%q is not a positive number", jobsv1alpha1.EnvAttempt, a)
		}
		c.Attempt = n
	}
	return c, nil
}

// Serve executes the run named by cfg with its handler and returns the exit
// code the runner process should end with (0, or one of the ExitCode
// constants of the API). The handler's result or error is in the run's
// status before Serve returns, unless the API server could not be reached.
// Cancelling ctx (the pod is being stopped) cancels the handler too.
func Serve(ctx context.Context, cfg Config) int {
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.CancelPollInterval <= 0 {
		cfg.CancelPollInterval = 5 * time.Second
	}
	log := cfg.Log.WithValues("run", cfg.Name, "namespace", cfg.Namespace, "attempt", cfg.Attempt)
	key := client.ObjectKey{Namespace: cfg.Namespace, Name: cfg.Name}

	jr := &jobsv1alpha1.JobRun{}
	if err := retryTransient(ctx, func(ctx context.Context) error { return cfg.Client.Get(ctx, key, jr) }); err != nil {
		log.Error(err, "reading the run")
		return jobsv1alpha1.ExitCodeRunnerError
	}
	if jr.CurrentPhase().IsTerminal() {
		log.Info("run already finished; nothing to do", "phase", jr.CurrentPhase())
		return 0
	}
	if jr.IsCancelRequested() {
		log.Info("run was cancelled before its handler started")
		return jobsv1alpha1.ExitCodeCancelled
	}
	if jr.Status.Attempts > int32(cfg.Attempt) {
		log.Info("a later attempt replaced this one; the handler does not start", "recorded", jr.Status.Attempts)
		return 0
	}
	if jr.Status.Attempts < int32(cfg.Attempt) {
		// The controller records the first attempt once it sees the pod
		// run, not when it creates it: the runner records its attempt
		// itself before the handler starts, so that no handler runs for an
		// attempt the run does not count (a pod that vanished unrecorded
		// ran nothing, and is simply created again).
		record := fmt.Sprintf(`{"status":{"attempts":%d,"podName":%q}}`, cfg.Attempt, jobsv1alpha1.PodName(cfg.Name, int32(cfg.Attempt)))
		if err := retryTransient(ctx, func(ctx context.Context) error {
			return cfg.Client.Status().Patch(ctx, jr.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(record)))
		}); err != nil {
			log.Error(err, "recording this attempt in the run; the handler does not start")
			return jobsv1alpha1.ExitCodeRunnerError
		}
	}
	w := &statusWriter{c: cfg.Client, run: jr}
	handler, ok := cfg.Handlers[jr.Spec.JobType]
	if !ok {
		err := fmt.Errorf("this image has no handler for job type %q", jr.Spec.JobType)
		log.Error(err, "cannot run")
		_ = w.writeError(ctx, err)
		return jobsv1alpha1.ExitCodeRunnerError
	}

	handlerCtx, cancelHandler := context.WithCancelCause(ctx)
	defer cancelHandler(nil)
	cancelWatchDone := make(chan struct{})
	watchCtx, stopWatch := context.WithCancel(ctx)
	go func() {
		defer close(cancelWatchDone)
		if watchCancel(watchCtx, cfg.Client, key, cfg.CancelPollInterval) {
			log.Info("cancel requested; cancelling the handler")
			cancelHandler(errCancelRequested)
		}
	}()

	progress := newProgressReporter(cfg.ProgressInterval, w.writeProgress)
	progressCtx, stopProgress := context.WithCancel(ctx)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		progress.run(progressCtx)
	}()

	run := &Run{
		ID: jr.Name, Namespace: jr.Namespace, JobType: jr.Spec.JobType,
		TeamID: jr.Spec.TeamID, ProjectID: jr.Spec.ProjectID, Attempt: cfg.Attempt,
		Client: cfg.Client, progress: progress,
	}
	if jr.Spec.Params != nil {
		run.params = jr.Spec.Params.Raw
	}

	log.Info("handler starting", "jobType", run.JobType)
	start := time.Now()
	result, herr := callHandler(handlerCtx, handler, run)
	cancelled := herr != nil && context.Cause(handlerCtx) != nil
	log.Info("handler returned", "duration", time.Since(start), "error", herr, "cancelled", cancelled)

	stopWatch()
	<-cancelWatchDone
	stopProgress()
	<-progressDone

	// Whatever happens to the pod from here on, the outcome must reach the
	// run: write on a context that outlives a SIGTERM'd ctx (the kubelet's
	// grace period still bounds it) and rides out an API-server outage.
	finalCtx, cancelFinal := context.WithTimeout(context.WithoutCancel(ctx), retryBudget)
	defer cancelFinal()
	if err := retryTransient(finalCtx, progress.flush); err != nil {
		log.Error(err, "writing the last progress")
	}
	switch {
	case cancelled:
		return jobsv1alpha1.ExitCodeCancelled
	case herr != nil:
		if err := w.writeError(finalCtx, herr); err != nil {
			log.Error(err, "recording the handler's error")
		}
		return jobsv1alpha1.ExitCodeFailed
	}
	raw, err := json.Marshal(result)
	if err == nil && len(raw) > maxResultBytes {
		err = fmt.Errorf("result is %d bytes, more than the %d allowed", len(raw), maxResultBytes)
	}
	if err != nil {
		err = fmt.Errorf("handler's result cannot be recorded: %w", err)
		if werr := w.writeError(finalCtx, err); werr != nil {
			log.Error(werr, "recording the error")
		}
		return jobsv1alpha1.ExitCodeFailed
	}
	if err := w.writeResult(finalCtx, raw); err != nil {
		log.Error(err, "recording the result")
		return jobsv1alpha1.ExitCodeRunnerError
	}
	return 0
}

var errCancelRequested = errors.New("cancel requested")

// callHandler runs h, turning a panic into an error so that the run fails
// with a message instead of a crashed pod.
func callHandler(ctx context.Context, h Handler, run *Run) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panicked: %v\n%s", p, debug.Stack())
		}
	}()
	return h(ctx, run)
}

// statusWriter writes the runner's part of a run's status with merge patches
// that touch only those fields, so they never conflict with the controller's
// writes of phase and conditions.
type statusWriter struct {
	c   client.Client
	run *jobsv1alpha1.JobRun
}

func (w *statusWriter) patch(ctx context.Context, status map[string]any) error {
	data, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return err
	}
	return w.c.Status().Patch(ctx, w.run.DeepCopy(), client.RawPatch(types.MergePatchType, data))
}

func (w *statusWriter) writeProgress(ctx context.Context, p *jobsv1alpha1.JobRunProgress) error {
	return w.patch(ctx, map[string]any{"progress": p})
}

func (w *statusWriter) writeResult(ctx context.Context, raw json.RawMessage) error {
	return retryTransient(ctx, func(ctx context.Context) error {
		return w.patch(ctx, map[string]any{"result": raw})
	})
}

func (w *statusWriter) writeError(ctx context.Context, herr error) error {
	msg := herr.Error()
	if len(msg) > maxErrorLength {
		msg = msg[:maxErrorLength] + " [truncated]"
	}
	return retryTransient(ctx, func(ctx context.Context) error {
		return w.patch(ctx, map[string]any{"error": msg})
	})
}

// retryBudget is how long the runner keeps retrying an API-server request
// that fails for a reason that may pass: long enough to ride out an API
// server restart or a control-plane upgrade, so that a handler's finished
// work is not lost to a short outage.
const retryBudget = 2 * time.Minute

// retryTransient retries f with backoff (100 ms doubling to 5 s, jittered)
// while it fails for reasons that may pass (server timeouts, throttling,
// connection errors), for up to retryBudget or until ctx ends.
func retryTransient(ctx context.Context, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, retryBudget)
	defer cancel()
	delay := 100 * time.Millisecond
	for {
		err := f(ctx)
		switch {
		case err == nil:
			return nil
		case apierrors.IsNotFound(err), apierrors.IsInvalid(err), apierrors.IsForbidden(err), apierrors.IsBadRequest(err):
			return err
		}
		t := time.NewTimer(wait.Jitter(delay, 0.1))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}
