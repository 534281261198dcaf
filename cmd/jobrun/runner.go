package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/handlers"
	"jobrun.dev/jobrun/sdk"
)

// runRunner executes the run named by the pod's environment with the
// built-in handlers and returns the process's exit code.
func runRunner(ctx context.Context, args []string) (int, error) {
	fs := flag.NewFlagSet("jobrun runner", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "Path to a kubeconfig. Empty: $KUBECONFIG, else the pod's service account.")
	progressInterval := fs.Duration("progress-interval", time.Second, "Least time between two progress writes.")
	cancelPoll := fs.Duration("cancel-poll-interval", 5*time.Second, "How often to re-read the run in case the watch missed a cancel request.")
	opts := zap.Options{}
	opts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, nil
		}
		return jobsv1alpha1.ExitCodeRunnerError, err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	cfg, err := sdk.ConfigFromEnv(os.Getenv)
	if err != nil {
		return jobsv1alpha1.ExitCodeRunnerError, err
	}
	cfg.Client, err = newClient(*kubeconfig)
	if err != nil {
		return jobsv1alpha1.ExitCodeRunnerError, err
	}
	cfg.Handlers = handlers.Builtin()
	cfg.ProgressInterval = *progressInterval
	cfg.CancelPollInterval = *cancelPoll
	cfg.Log = ctrl.Log.WithName("runner")
	return sdk.Serve(ctx, cfg), nil
}
