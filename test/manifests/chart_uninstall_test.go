package manifests_test

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/uninstall"
	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// leaderLease is the manager's leader-election Lease (cmd/jobrun).
const leaderLease = "jobrun-manager.jobs.jobrun.dev"

// hookObjects renders the chart's uninstall hook (templates/uninstall.yaml)
// with the hs256 values and the extra --set arguments, decoded.
func hookObjects(t *testing.T, ns string, set ...string) []client.Object {
	t.Helper()
	args := []string{"template", "jr", chartDir(), "-n", ns, "-f", filepath.Join(chartDir(), "ci", "hs256-values.yaml"), "--set", "fullnameOverride=jr"}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := helm(t, append(args, "--show-only", "templates/uninstall.yaml")...)
	if err != nil {
		if strings.Contains(out, "could not find template") {
			return nil // rendered nothing
		}
		t.Fatal(err)
	}
	var objs []client.Object
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		if strings.TrimSpace(doc) == "" || !strings.Contains(doc, "kind:") {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("decoding %s: %v", doc, err)
		}
		objs = append(objs, obj.(client.Object))
	}
	return objs
}

// TestChartUninstallHookRenders: the hook's objects are post-delete hooks,
// RBAC before the Job, deleted when the hook succeeded; the RBAC is exactly
// what `jobrun uninstall` needs; the Job runs jobrun's image under the
// restricted Pod Security settings; nothing renders with deleteRuns false.
func TestChartUninstallHookRenders(t *testing.T) {
	leases := rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"list", "delete"}}
	runs := rbacv1.PolicyRule{APIGroups: []string{"jobs.jobrun.dev"}, Resources: []string{"jobruns"}, Verbs: []string{"list", "deletecollection", "patch"}}
	for _, tt := range []struct {
		name        string
		set         []string
		kinds       []string
		role        []rbacv1.PolicyRule
		clusterRole []rbacv1.PolicyRule
		args        []string
	}{
		{"namespaced", nil, []string{"ServiceAccount", "Role", "RoleBinding", "Job"},
			[]rbacv1.PolicyRule{leases, runs}, nil, []string{"uninstall", "--namespace=rel", "--timeout=120s"}},
		{"clusterWide", []string{"manager.clusterWide=true", "uninstall.timeoutSeconds=30"},
			[]string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Job"},
			[]rbacv1.PolicyRule{leases}, []rbacv1.PolicyRule{runs}, []string{"uninstall", "--namespace=rel", "--all-namespaces", "--timeout=30s"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			objs := hookObjects(t, "rel", tt.set...)
			var kinds []string
			for _, o := range objs {
				kind := strings.TrimPrefix(fmt.Sprintf("%T", o), "*v1.")
				kinds = append(kinds, kind)
				if o.GetName() != "jr-uninstall" || o.GetLabels()["app.kubernetes.io/component"] != "uninstall" || o.GetLabels()["app.kubernetes.io/instance"] != "jr" {
					t.Errorf("%s %s: name or labels not the chart's: %v", kind, o.GetName(), o.GetLabels())
				}
				weight := "-10"
				switch kind {
				case "RoleBinding", "ClusterRoleBinding":
					weight = "-5"
				case "Job":
					weight = "0"
				}
				want := map[string]string{"helm.sh/hook": "post-delete", "helm.sh/hook-weight": weight, "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
				if diff := cmp.Diff(want, o.GetAnnotations()); diff != "" {
					t.Errorf("%s annotations (-want +got):\n%s", kind, diff)
				}
				switch o := o.(type) {
				case *rbacv1.Role:
					if diff := cmp.Diff(tt.role, o.Rules); diff != "" {
						t.Errorf("Role rules (-want +got):\n%s", diff)
					}
				case *rbacv1.ClusterRole:
					if diff := cmp.Diff(tt.clusterRole, o.Rules); diff != "" {
						t.Errorf("ClusterRole rules (-want +got):\n%s", diff)
					}
				case *batchv1.Job:
					checkHookJob(t, o, tt.args)
				}
			}
			if !slices.Equal(kinds, tt.kinds) {
				t.Errorf("rendered %v, want %v", kinds, tt.kinds)
			}
		})
	}
	if objs := hookObjects(t, "rel", "uninstall.deleteRuns=false"); len(objs) != 0 {
		t.Errorf("uninstall.deleteRuns=false still renders %d hook objects", len(objs))
	}
}

func checkHookJob(t *testing.T, job *batchv1.Job, args []string) {
	t.Helper()
	spec := job.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("Job containers: %+v", spec.Containers)
	}
	c := spec.Containers[0]
	if diff := cmp.Diff(args, c.Args); diff != "" {
		t.Errorf("Job args (-want +got):\n%s", diff)
	}
	if c.Image != "jobrun:0.1.0" || spec.ServiceAccountName != "jr-uninstall" || spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("Job image %q, service account %q, restart policy %q", c.Image, spec.ServiceAccountName, spec.RestartPolicy)
	}
	wantPod := &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	wantContainer := &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	if diff := cmp.Diff(wantPod, spec.SecurityContext); diff != "" {
		t.Errorf("pod securityContext (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantContainer, c.SecurityContext); diff != "" {
		t.Errorf("container securityContext (-want +got):\n%s", diff)
	}
	if ptr.Deref(job.Spec.BackoffLimit, -1) != 1 || job.Spec.ActiveDeadlineSeconds == nil || job.Spec.TTLSecondsAfterFinished == nil || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("Job bounds: backoffLimit %v, activeDeadlineSeconds %v, ttlSecondsAfterFinished %v, limits %v",
			job.Spec.BackoffLimit, job.Spec.ActiveDeadlineSeconds, job.Spec.TTLSecondsAfterFinished, c.Resources.Limits)
	}
}

// TestChartUninstallHook installs the chart, adds what jobrun makes at run
// time, and helm uninstalls it with its hook. No Job controller or kubelet
// runs here, so the test plays them: when the hook Job appears it runs the
// Job's `jobrun uninstall` (its logic, with the Job's flags) under a token
// of the hook's service account, so with exactly the hook's RBAC, then
// marks the Job complete. Afterwards the namespace holds no run, guard or
// leader Lease, the hook's objects are gone, and a run of another namespace
// is untouched.
func TestChartUninstallHook(t *testing.T) {
	ctx := testenv.Context(t)
	ns, other := env.Namespace(t), env.Namespace(t)
	if _, err := helm(t, "install", "jr", chartDir(), "-n", ns, "-f", filepath.Join(chartDir(), "ci", "hs256-values.yaml"), "--set", "fullnameOverride=jr"); err != nil {
		t.Fatal(err)
	}
	env.CreateRunTimeObjects(t, ns, leaderLease)
	env.CreateRunTimeObjects(t, other, leaderLease)
	// A run the archive's finalizer holds (its manager gone): the hook
	// removes the finalizer, with its RBAC.
	held := testrun.Make(ns, "held-by-archive").JobType("demo_sync").Team("team-1").Project("project-9").TriggeredBy("manual:user:u").Obj()
	held.Finalizers = []string{jobsv1alpha1.FinalizerArchive}
	if err := env.Client.Create(ctx, held); err != nil {
		t.Fatal(err)
	}
	otherBefore, err := env.RunTimeObjectsLeft(ctx, other, leaderLease)
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { _, err := helm(t, "uninstall", "jr", "-n", ns, "--timeout", "90s"); done <- err }()
	job := &batchv1.Job{}
	testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
		return env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "jr-uninstall"}, job)
	})
	if n := runAsHook(t, job); n.Runs != 5 || n.Unarchived != 1 || n.Guards != 2 || !n.LeaderLease {
		t.Errorf("the hook deleted %+v, want 5 runs (1 unarchived), 2 guards and the leader Lease", n)
	}
	completeJob(t, job)
	if err := <-done; err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}

	if left, err := env.RunTimeObjectsLeft(ctx, ns, leaderLease); err != nil || len(left) != 0 {
		t.Errorf("left after helm uninstall: %v (%v)", left, err)
	}
	if got, err := env.RunTimeObjectsLeft(ctx, other, leaderLease); err != nil || !slices.Equal(got, otherBefore) {
		t.Errorf("the other namespace holds %v (%v), want %v untouched", got, err, otherBefore)
	}
	for _, obj := range []client.Object{&batchv1.Job{}, &corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}} {
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "jr-uninstall"}, obj); !apierrors.IsNotFound(err) {
			t.Errorf("the hook's %T is still there (a succeeded hook's objects go): %v", obj, err)
		}
	}
}

// runAsHook does what the Job controller and the kubelet would: runs the
// Job's container (jobrun uninstall's logic with its flags) as the Job's
// service account.
func runAsHook(t *testing.T, job *batchv1.Job) uninstall.Counts {
	t.Helper()
	ctx := testenv.Context(t)
	spec := job.Spec.Template.Spec
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	o := uninstall.Options{LeaseName: leaderLease, Interval: 100 * time.Millisecond}
	fs.StringVar(&o.Namespace, "namespace", "", "")
	fs.BoolVar(&o.AllNamespaces, "all-namespaces", false, "")
	fs.DurationVar(&o.Timeout, "timeout", 0, "")
	if args := spec.Containers[0].Args; len(args) == 0 || args[0] != "uninstall" || fs.Parse(args[1:]) != nil {
		t.Fatalf("the hook Job's args are not jobrun uninstall's: %v", args)
	}
	o.LeaseNamespace = o.Namespace

	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: job.Namespace, Name: spec.ServiceAccountName}}
	if err := env.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("a token of the hook's service account %s: %v", sa.Name, err)
	}
	cfg := &rest.Config{Host: env.Config.Host, BearerToken: tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData, Insecure: env.Config.Insecure}}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	n, err := uninstall.Run(ctx, c, o, testr.New(t))
	if err != nil {
		t.Fatalf("the hook's jobrun uninstall, as its service account: %v", err)
	}
	return n
}

// completeJob marks job complete, as the Job controller would.
func completeJob(t *testing.T, job *batchv1.Job) {
	t.Helper()
	ctx := testenv.Context(t)
	now := metav1.Now()
	job.Status = batchv1.JobStatus{StartTime: &now, CompletionTime: &now, Succeeded: 1, Conditions: []batchv1.JobCondition{
		{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}}
	if err := env.Client.Status().Update(ctx, job); err != nil {
		t.Fatalf("marking the hook Job complete: %v", err)
	}
}

// TestChartUninstallHookClusterWide applies the hook's RBAC as rendered with
// manager.clusterWide (only it: the chart's admission policies would then
// cover every namespace of the shared API server) and runs the hook Job's
// `jobrun uninstall --all-namespaces` as its service account: the runs of
// every namespace go, the guards and leader Lease of the release namespace
// too, another namespace's Leases stay.
func TestChartUninstallHookClusterWide(t *testing.T) {
	ns, other := env.Namespace(t), env.Namespace(t)
	var job *batchv1.Job
	for _, obj := range hookObjects(t, ns, "manager.clusterWide=true") {
		if j, ok := obj.(*batchv1.Job); ok {
			job = j
			continue
		}
		obj.SetName(obj.GetName() + "-" + ns) // cluster-scoped: one per test
		switch o := obj.(type) {
		case *rbacv1.RoleBinding:
			o.RoleRef.Name += "-" + ns
			o.Subjects[0].Name += "-" + ns
		case *rbacv1.ClusterRoleBinding:
			o.RoleRef.Name += "-" + ns
			o.Subjects[0].Name += "-" + ns
		}
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), obj) })
	}
	if job == nil {
		t.Fatal("no hook Job rendered")
	}
	job.Spec.Template.Spec.ServiceAccountName += "-" + ns
	env.CreateRunTimeObjects(t, ns, leaderLease)
	env.CreateRunTimeObjects(t, other, leaderLease)
	ctx := testenv.Context(t)
	otherBefore, err := env.RunTimeObjectsLeft(ctx, other, leaderLease)
	if err != nil {
		t.Fatal(err)
	}
	if n := runAsHook(t, job); n.Runs < 8 || n.Guards != 2 || !n.LeaderLease {
		t.Errorf("the hook deleted %+v, want at least 8 runs (both namespaces), 2 guards and the leader Lease", n)
	}
	if left, err := env.RunTimeObjectsLeft(ctx, ns, leaderLease); err != nil || len(left) != 0 {
		t.Errorf("left in the release namespace: %v (%v)", left, err)
	}
	want := slices.DeleteFunc(otherBefore, func(s string) bool { return strings.HasPrefix(s, "jobrun/") })
	if got, err := env.RunTimeObjectsLeft(ctx, other, leaderLease); err != nil || !slices.Equal(got, want) {
		t.Errorf("the other namespace holds %v (%v), want no run and its Leases %v", got, err, want)
	}
}
