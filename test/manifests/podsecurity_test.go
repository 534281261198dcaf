package manifests_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/controllers"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// The JobRun controller's logs would only be noise here; a failure shows the
// run's status instead.
func init() { logf.SetLogger(logr.Discard()) }

// TestSamplePodsAdmittedUnderRestricted installs config/default and
// config/samples as a user would, runs the real JobRun controller, and starts
// a run of every sample JobType: each run's pod must be admitted into
// jobrun's namespace, which enforces the restricted Pod Security Standard.
// The same pods without the security context that jobrun fills in must be
// refused, so the proof stands on the API server's Pod Security admission,
// not on a namespace that lets everything in.
func TestSamplePodsAdmittedUnderRestricted(t *testing.T) {
	ctx := testenv.Context(t)
	const ns = "jobrun-system"
	manifests := filepath.Join(t.TempDir(), "jobrun.yaml")
	if err := os.WriteFile(manifests, []byte(env.Kubectl(t, "kustomize", filepath.Join(env.Root, "config", "default"))), 0o644); err != nil {
		t.Fatal(err)
	}
	env.Kubectl(t, "apply", "--server-side", "-f", manifests)
	env.Kubectl(t, "apply", "--server-side", "-n", ns, "-k", filepath.Join(env.Root, "config", "samples"))

	namespace := &corev1.Namespace{}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: ns}, namespace); err != nil {
		t.Fatal(err)
	}
	if got := namespace.Labels["pod-security.kubernetes.io/enforce"]; got != "restricted" {
		t.Fatalf("namespace %s enforces Pod Security level %q, want restricted", ns, got)
	}

	startJobRunController(t, ns)
	runs := []*jobsv1alpha1.JobRun{sampleRun(t, ns)}
	for _, r := range []struct{ jobType, params string }{
		{"demo_maintenance", ""},
		{"revenuecat_sync", `{"integration_id":"demo"}`},
	} {
		b := testrun.Make(ns, "").GenerateName(jobsv1alpha1.JobTypeObjectName(r.jobType) + "-").
			JobType(r.jobType).Team("demo-team").Project("demo-project").TriggeredBy("manual:user:demo-user")
		if r.params != "" {
			b.Params(r.params)
		}
		run := b.Obj()
		if err := env.Client.Create(ctx, run); err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run)
	}
	t.Cleanup(func() {
		// No garbage collector runs here: delete the pods with their runs.
		for _, run := range runs {
			_ = env.Client.Delete(context.Background(), run)
			_ = env.Client.DeleteAllOf(context.Background(), &corev1.Pod{}, client.InNamespace(ns),
				client.MatchingLabels{jobsv1alpha1.LabelRun: run.Name})
		}
	})

	for _, run := range runs {
		t.Run(run.Spec.JobType, func(t *testing.T) {
			pod := admittedPod(t, run)

			// The same pod as the template writes it, without what jobrun
			// fills in: Pod Security admission refuses it. A dry run goes
			// through admission and stores nothing.
			bare := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod.Name + "-bare"},
				Spec:       *pod.Spec.DeepCopy(),
			}
			bare.Spec.SecurityContext = nil
			for i := range bare.Spec.Containers {
				bare.Spec.Containers[i].SecurityContext = nil
			}
			err := env.Client.Create(ctx, bare, client.DryRunAll)
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `violates PodSecurity "restricted`) {
				t.Errorf("creating %s's pod without jobrun's security context: err = %v, want Forbidden by PodSecurity restricted", run.Spec.JobType, err)
			}
		})
	}
}

// sampleRun creates the sample JobRun (config/samples/jobs_v1alpha1_jobrun.yaml)
// in ns the way its comment says to, and returns it.
func sampleRun(t *testing.T, ns string) *jobsv1alpha1.JobRun {
	t.Helper()
	out := env.Kubectl(t, "create", "-n", ns, "-o", "name", "-f", filepath.Join(env.Root, "config", "samples", "jobs_v1alpha1_jobrun.yaml"))
	_, name, ok := strings.Cut(strings.TrimSpace(out), "/")
	if !ok {
		t.Fatalf("kubectl create printed %q, want kind/name", out)
	}
	run := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(testenv.Context(t), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatal(err)
	}
	return run
}

// admittedPod waits until the controller's pod of run is stored, that is,
// admitted, and returns it.
func admittedPod(t *testing.T, run *jobsv1alpha1.JobRun) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
		pods := &corev1.PodList{}
		if err := env.Client.List(ctx, pods, client.InNamespace(run.Namespace), client.MatchingLabels{jobsv1alpha1.LabelRun: run.Name}); err != nil {
			return err
		}
		if len(pods.Items) == 0 {
			got := &jobsv1alpha1.JobRun{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(run), got); err != nil {
				return err
			}
			return fmt.Errorf("run %s has no pod yet; its status: %+v", run.Name, got.Status)
		}
		pod = &pods.Items[0]
		return nil
	})
	return pod
}

// startJobRunController runs the real JobRun controller for namespace ns
// until the test ends.
func startJobRunController(t *testing.T, ns string) {
	t.Helper()
	mgr := env.NewManager(t, ns)
	if err := controllers.NewJobRunReconciler(mgr).SetupWithManager(context.Background(), mgr); err != nil {
		t.Fatal(err)
	}
	testenv.StartManager(t, mgr)
}
