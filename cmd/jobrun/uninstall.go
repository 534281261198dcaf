package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"jobrun.dev/jobrun/internal/uninstall"
)

// uninstallFlags are the uninstall role's settings.
type uninstallFlags struct {
	kubeconfig string
	opts       uninstall.Options
	zap        zap.Options
}

func parseUninstallFlags(args []string) (*uninstallFlags, error) {
	f := &uninstallFlags{opts: uninstall.Options{LeaseName: leaderElectionID}}
	fs := flag.NewFlagSet("jobrun uninstall", flag.ContinueOnError)
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Path to a kubeconfig. Empty: $KUBECONFIG, else the in-cluster service account.")
	fs.StringVar(&f.opts.Namespace, "namespace", "", "Namespace of the runs and guards (the manager's --namespace). Empty: $POD_NAMESPACE, else the kubeconfig's namespace.")
	fs.BoolVar(&f.opts.AllNamespaces, "all-namespaces", false, "Delete the runs of every namespace (a manager with --all-namespaces); guards and the leader Lease only in --namespace.")
	fs.StringVar(&f.opts.LeaseNamespace, "leader-election-namespace", "", "Namespace of the manager's leader-election Lease. Empty: --namespace.")
	fs.DurationVar(&f.opts.Timeout, "timeout", 2*time.Minute, "How long to delete and wait until no run, guard or leader Lease is left.")
	f.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if f.opts.Timeout <= 0 {
		return nil, fmt.Errorf("--timeout (%s) must be positive", f.opts.Timeout)
	}
	if f.opts.Namespace == "" {
		ns, err := defaultNamespace(f.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("no --namespace, and none from $POD_NAMESPACE or the kubeconfig: %w", err)
		}
		f.opts.Namespace = ns
	}
	if f.opts.LeaseNamespace == "" {
		f.opts.LeaseNamespace = f.opts.Namespace
	}
	return f, nil
}

// defaultNamespace is $POD_NAMESPACE, else the namespace of the kubeconfig's
// current context (in a cluster: the service account's namespace).
func defaultNamespace(kubeconfig string) (string, error) {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	ns, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).Namespace()
	if err == nil && ns == "" {
		err = errors.New("the kubeconfig names no namespace")
	}
	return ns, err
}

// runUninstall deletes what jobrun made at run time (runs, guards, the
// leader Lease) and waits until none is left: what helm uninstall and
// kubectl delete -k cannot know about.
func runUninstall(ctx context.Context, args []string) error {
	f, err := parseUninstallFlags(args)
	if err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&f.zap)))
	log := ctrl.Log.WithName("uninstall")
	c, err := newClient(f.kubeconfig)
	if err != nil {
		return err
	}
	log.Info("deleting what jobrun made", "namespace", f.opts.Namespace, "allNamespaces", f.opts.AllNamespaces,
		"leaderLease", f.opts.LeaseNamespace+"/"+f.opts.LeaseName, "timeout", f.opts.Timeout.String())
	n, err := uninstall.Run(ctx, c, f.opts, log)
	log.Info("done", "jobRuns", n.Runs, "unarchivedJobRuns", n.Unarchived, "guardLeases", n.Guards, "leaderLease", n.LeaderLease)
	return err
}
