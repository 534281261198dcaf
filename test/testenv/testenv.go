// Package testenv is the shared harness of jobrun's suites that run against a
// real kube-apiserver and etcd: one control plane per test package, started
// from TestMain, with a fresh namespace per test and a non-cached client for
// assertions.
//
//	var env *testenv.Env
//
//	func TestMain(m *testing.M) { testenv.Main(m, &env) }
package testenv

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/internal/controlplane"
	"jobrun.dev/jobrun/internal/guard"
	"jobrun.dev/jobrun/test/testrun"
)

// Env is a running control plane for one test package.
type Env struct {
	*controlplane.ControlPlane
	// Client reads straight from the API server (no cache), so assertions see
	// what is stored, not what an informer has caught up with.
	Client client.Client
	// Kubeconfig is the path of an admin kubeconfig, for kubectl.
	Kubeconfig string
	// Root is the repository root.
	Root string
}

// Root is the repository root, found from this file's location.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Main starts a control plane, stores it in *env, runs the package's tests
// and stops the control plane. It exits the process with the tests' code.
func Main(m *testing.M, env **Env) {
	os.Exit(run(m, env))
}

func run(m *testing.M, envp **Env) int {
	// Fuzzing (go test -fuzz) runs only pure fuzz targets: no control plane
	// for the coordinator or its workers.
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		return m.Run()
	}
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return m.Run()
	}
	root := Root()
	cp, err := controlplane.Start(controlplane.Options{Root: root})
	defer func() {
		if err := cp.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stopping the control plane: %v\n", err)
		}
	}()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		return 1
	}
	env, err := newEnv(cp, root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		return 1
	}
	defer os.RemoveAll(filepath.Dir(env.Kubeconfig))
	*envp = env
	return m.Run()
}

func newEnv(cp *controlplane.ControlPlane, root string) (*Env, error) {
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = 200, 400
	c, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		return nil, fmt.Errorf("creating client: %w", err)
	}
	dir, err := os.MkdirTemp("", "jobrun-testenv-")
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := cp.WriteAdminKubeconfig(kubeconfig); err != nil {
		return nil, err
	}
	return &Env{ControlPlane: cp, Client: c, Kubeconfig: kubeconfig, Root: root}, nil
}

// Context is a context for one test, cancelled when the test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Namespace creates a namespace of its own for t and deletes it when t ends.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "t-" + strings.ToLower(rand.String(8)),
	}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		// No namespace controller runs here, so the objects stay; deleting
		// the namespace still keeps later tests from listing them by accident.
		_ = e.Client.Delete(context.Background(), ns)
	})
	return ns.Name
}

// Kubectl runs the kubectl built beside kube-apiserver as the admin user and
// returns its standard output; it fails t when kubectl fails.
func (e *Env) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := e.TryKubectl(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// TryKubectl runs kubectl like Kubectl and returns its error, with standard
// error in it, instead of failing the test.
func (e *Env) TryKubectl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(e.AssetsDir, "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Annotate sets one annotation on obj with a merge patch, keeping the others,
// as a user's `kubectl annotate` would.
func (e *Env) Annotate(t testing.TB, obj client.Object, key, value string) {
	t.Helper()
	Annotate(t, e.Client, obj, key, value)
}

// Annotate sets one annotation on obj through c; see Env.Annotate.
func Annotate(t testing.TB, c client.Client, obj client.Object, key, value string) {
	t.Helper()
	ctx := context.Background()
	if err := c.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(obj.DeepCopyObject().(client.Object))
	annotations := obj.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[key] = value
	obj.SetAnnotations(annotations)
	if err := c.Patch(ctx, obj, patch); err != nil {
		t.Fatalf("annotating %s: %v", obj.GetName(), err)
	}
}

// FreeAddr is a loopback address with a port that was free a moment ago, for
// a server under test to bind.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Eventually polls cond every 100ms until it returns nil or timeout passes,
// then fails t with cond's last error. Use it wherever something happens
// asynchronously; never sleep for ordering.
func Eventually(t testing.TB, timeout time.Duration, cond func(ctx context.Context) error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		err := cond(ctx)
		// A call cut short by the timeout (or refused by a client's rate
		// limiter because it would end past the deadline) says less than the
		// one before it.
		deadline, _ := ctx.Deadline()
		if err == nil || last == nil || (ctx.Err() == nil && time.Until(deadline) > time.Second) {
			last = err
		}
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("condition not met within %s: %v", timeout, last)
	}
}

// NewManager returns a controller-runtime manager for one test: it caches
// only namespace ns (no namespace controller runs in these suites, so other
// tests' objects stay, and must not be reconciled by this test's
// controllers), serves no metrics or probes, and may share the process
// with other managers of the same controllers (one after another, or
// go test -count=N).
func (e *Env) NewManager(t testing.TB, ns string) manager.Manager {
	t.Helper()
	return e.NewManagerWithConfig(t, e.Config, ns)
}

// NewManagerWithConfig is NewManager talking to the API server through cfg
// (a copy of e.Config with its transport wrapped, say, to count requests).
func (e *Env) NewManagerWithConfig(t testing.TB, cfg *rest.Config, ns string) manager.Manager {
	t.Helper()
	skipNameValidation := true
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 e.Scheme,
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: &skipNameValidation},
	})
	if err != nil {
		t.Fatal(err)
	}
	return mgr
}

// StartManager runs mgr until the test ends or stop is called; stop waits
// (up to 30 s) for it to return and fails the test with any error it gave.
func StartManager(t testing.TB, mgr manager.Manager) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("manager: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("manager did not stop within 30s")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Runs lists the JobRuns of ns through c, without the REST API's
// consistency marker (a JobRun that is not a run).
func Runs(ctx context.Context, c client.Reader, ns string) ([]jobsv1alpha1.JobRun, error) {
	list := &jobsv1alpha1.JobRunList{}
	if err := c.List(ctx, list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	return slices.DeleteFunc(list.Items, func(r jobsv1alpha1.JobRun) bool { return jobsv1alpha1.IsConsistencyMarker(&r) }), nil
}

// CreateRunTimeObjects creates in ns what jobrun makes at run time, as it
// makes them: two runs of project job types each holding its pair's guard
// (internal/guard), a system run (no guard), the REST API's consistency
// marker, and the leader-election Lease leaseName. It also creates a Lease
// that is not jobrun's (named "not-jobruns"), which a cleanup must keep.
func (e *Env) CreateRunTimeObjects(t testing.TB, ns, leaseName string) {
	t.Helper()
	ctx := context.Background()
	guards := guard.New(e.Client, e.Client)
	for i, project := range []string{"project-1", "project-2"} {
		run := testrun.Make(ns, fmt.Sprintf("run-%d", i+1)).JobType("demo_sync").Team("team-1").Project(project).
			TriggeredBy("manual:user:user-1").TriggerLabels().Obj()
		if _, err := guards.Take(ctx, run); err != nil {
			t.Fatalf("taking the guard of %s/%s: %v", ns, run.Name, err)
		}
		if err := e.Client.Create(ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	for _, obj := range []client.Object{
		testrun.Make(ns, "maintenance-1").JobType("demo_maintenance").TriggeredBy("schedule:nightly").Obj(),
		testrun.Make(ns, jobsv1alpha1.ConsistencyMarkerName).JobType(jobsv1alpha1.ConsistencyMarkerJobType).TriggeredBy("jobrun:consistency-marker").Obj(),
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: leaseName},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("manager-0_1234")}},
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "not-jobruns"}},
	} {
		err := e.Client.Create(ctx, obj)
		if apierrors.IsAlreadyExists(err) && obj.GetName() == "not-jobruns" {
			continue // made by an earlier call, and kept
		}
		if err != nil {
			t.Fatalf("creating %s/%s: %v", ns, obj.GetName(), err)
		}
	}
}

// RunTimeObjectsLeft lists what of CreateRunTimeObjects' jobrun objects is
// still in ns (JobRuns, guard Leases, the Lease leaseName), as
// "kind/name"; it fails when the Lease not-jobruns is gone.
func (e *Env) RunTimeObjectsLeft(ctx context.Context, ns, leaseName string) ([]string, error) {
	var left []string
	runs := &jobsv1alpha1.JobRunList{}
	if err := e.Client.List(ctx, runs, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	for _, r := range runs.Items {
		left = append(left, "jobrun/"+r.Name)
	}
	leases := &coordinationv1.LeaseList{}
	if err := e.Client.List(ctx, leases, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	kept := false
	for _, l := range leases.Items {
		switch {
		case l.Name == "not-jobruns":
			kept = true
		case l.Name == leaseName || strings.HasPrefix(l.Name, "jobrun-guard-"):
			left = append(left, "lease/"+l.Name)
		}
	}
	if !kept {
		return left, fmt.Errorf("the Lease %s/not-jobruns, not jobrun's, was deleted", ns)
	}
	return left, nil
}
