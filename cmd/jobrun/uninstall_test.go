package main

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testrun"
)

// uninstallCmd runs `jobrun uninstall args...` with the admin kubeconfig
// and the extra environment, and returns its output.
func uninstallCmd(t *testing.T, extraEnv []string, args ...string) (string, error) {
	t.Helper()
	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"uninstall", "--kubeconfig", env.Kubeconfig, "--timeout", "30s"}, args...)...)
	cmd.Env = append(os.Environ(), extraEnv...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func left(t *testing.T, ns string) []string {
	t.Helper()
	got, err := env.RunTimeObjectsLeft(context.Background(), ns, leaderElectionID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestUninstall: `jobrun uninstall` deletes the runs (the consistency
// marker too), the guards and the leader Lease of its namespace, taken from
// $POD_NAMESPACE, and nothing of another namespace or not jobrun's; again,
// it finds nothing and succeeds; with --all-namespaces it deletes the runs
// of every namespace. (No garbage collector runs here: the runs' pods are
// the real-node test's to check.)
func TestUninstall(t *testing.T) {
	ns, other := env.Namespace(t), env.Namespace(t)
	env.CreateRunTimeObjects(t, ns, leaderElectionID)
	env.CreateRunTimeObjects(t, other, leaderElectionID)
	all := left(t, other)
	if len(all) != 7 { // 4 JobRuns, 2 guards, the leader Lease
		t.Fatalf("the fixture made %v, want 4 runs, 2 guards and the leader Lease", all)
	}

	out, err := uninstallCmd(t, []string{"POD_NAMESPACE=" + ns})
	if err != nil {
		t.Fatalf("jobrun uninstall: %v\n%s", err, out)
	}
	for _, want := range []string{`"jobRuns":4`, `"guardLeases":2`, `"leaderLease":true`, `"namespace":"` + ns + `"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %s:\n%s", want, out)
		}
	}
	if got := left(t, ns); len(got) != 0 {
		t.Errorf("left in the uninstalled namespace: %v", got)
	}
	if got := left(t, other); !slices.Equal(got, all) {
		t.Errorf("the other namespace holds %v, want %v untouched", got, all)
	}

	// Idempotent: nothing left to delete is no error.
	out, err = uninstallCmd(t, nil, "--namespace", ns)
	if err != nil || !strings.Contains(out, `"jobRuns":0`) {
		t.Fatalf("a second jobrun uninstall: %v\n%s", err, out)
	}

	// Every namespace's runs; guards and the leader Lease of --namespace
	// only (a cluster-wide manager keeps them in its own namespace).
	env.CreateRunTimeObjects(t, ns, leaderElectionID)
	out, err = uninstallCmd(t, nil, "--namespace", ns, "--all-namespaces")
	if err != nil {
		t.Fatalf("jobrun uninstall --all-namespaces: %v\n%s", err, out)
	}
	if got := left(t, ns); len(got) != 0 {
		t.Errorf("left in the manager's namespace: %v", got)
	}
	want := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return strings.HasPrefix(s, "jobrun/") })
	if got := left(t, other); !slices.Equal(got, want) {
		t.Errorf("the other namespace holds %v, want no run and its leases %v", got, want)
	}
}

func TestUninstallRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--timeout=0s"}, {"--no-such-flag"}, {"stray"}} {
		if _, err := parseUninstallFlags(append([]string{"--namespace=ns"}, args...)); err == nil {
			t.Errorf("parseUninstallFlags(%q) accepted", args)
		}
	}
	t.Setenv("POD_NAMESPACE", "")
	f, err := parseUninstallFlags([]string{"--kubeconfig", env.Kubeconfig})
	if err != nil || f.opts.Namespace == "" || f.opts.LeaseNamespace != f.opts.Namespace || f.opts.LeaseName != leaderElectionID {
		t.Errorf("defaults from the kubeconfig: %+v, %v", f, err)
	}
	t.Setenv("POD_NAMESPACE", "from-env")
	if f, err := parseUninstallFlags(nil); err != nil || f.opts.Namespace != "from-env" || f.opts.LeaseNamespace != "from-env" {
		t.Errorf("namespace from $POD_NAMESPACE: %+v, %v", f, err)
	}
	if f, err := parseUninstallFlags([]string{"--namespace=a", "--leader-election-namespace=b"}); err != nil || f.opts.Namespace != "a" || f.opts.LeaseNamespace != "b" {
		t.Errorf("explicit namespaces: %+v, %v", f, err)
	}
}

// TestUninstallRemovesArchiveFinalizers: runs held by the archive's
// finalizer (no manager is left to archive them) are deleted anyway, the
// finalizer removed and counted; a run's other finalizers stay.
func TestUninstallRemovesArchiveFinalizers(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()
	for _, name := range []string{"run-a", "run-b"} {
		run := testrun.Make(ns, name).JobType("demo_sync").Team("team-1").Project("project-1").TriggeredBy("manual:user:u1").Obj()
		run.Finalizers = []string{jobsv1alpha1.FinalizerArchive}
		if name == "run-b" {
			run.Finalizers = []string{"example.com/first", jobsv1alpha1.FinalizerArchive}
		}
		if err := env.Client.Create(ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	// run-b's other finalizer is removed by its owner while uninstall waits.
	go func() {
		time.Sleep(3 * time.Second)
		run := &jobsv1alpha1.JobRun{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "run-b"}, run); err != nil {
			return
		}
		if !slices.Equal(run.Finalizers, []string{"example.com/first"}) {
			t.Errorf("run-b's finalizers %v while uninstall runs, want only example.com/first", run.Finalizers)
		}
		run.Finalizers = nil
		_ = env.Client.Update(ctx, run)
	}()
	out, err := uninstallCmd(t, nil, "--namespace", ns)
	if err != nil {
		t.Fatalf("jobrun uninstall: %v\n%s", err, out)
	}
	if !strings.Contains(out, `"unarchivedJobRuns":2`) {
		t.Errorf("the log does not count 2 unarchived runs:\n%s", out)
	}
	list := &jobsv1alpha1.JobRunList{}
	if err := env.Client.List(ctx, list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("%d runs left", len(list.Items))
	}
}
