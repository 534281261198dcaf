package manifests_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/apiserver"
	"jobrun.dev/jobrun/test/testenv"
)

func chartDir() string { return filepath.Join(env.Root, "charts", "jobrun") }

// helm runs the helm built by hack/build-tools.sh against the test's API
// server, with its caches and config in a folder of the test's own.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(filepath.Join(env.Root, "bin", "helm"), append(args, "--kubeconfig", env.Kubeconfig)...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+env.Kubeconfig,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// installServiceMonitorCRD makes monitoring.coreos.com/v1 ServiceMonitor a
// served kind, with the Prometheus Operator's own schema (bin/crds, from its
// Go module), so that the chart's ServiceMonitor is validated for real.
func installServiceMonitorCRD(t *testing.T) {
	t.Helper()
	env.Kubectl(t, "apply", "--server-side", "-f", filepath.Join(env.Root, "bin", "crds", "monitoring.coreos.com_servicemonitors.yaml"))
	env.Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com")
}

func valuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir(), "ci", "*-values.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("want the chart's ci/*-values.yaml files, got %v (%v)", files, err)
	}
	return files
}

// TestChartValuesFilesDryRun renders the chart with each of its ci values
// files and has the API server validate every rendered object (server-side
// dry-run: schemas, CEL rules, RBAC and admission policies compile).
func TestChartValuesFilesDryRun(t *testing.T) {
	installServiceMonitorCRD(t)
	installKueueCRDs(t)
	for _, values := range valuesFiles(t) {
		t.Run(filepath.Base(values), func(t *testing.T) {
			ns := env.Namespace(t)
			if out, err := helm(t, "lint", "--strict", chartDir(), "-f", values); err != nil {
				t.Fatalf("lint: %v\n%s", err, out)
			}
			// A dry run cannot create the integrations namespace it then
			// puts a Role in: use the test's.
			rendered, err := helm(t, "template", "jobrun", chartDir(), "-n", ns, "-f", values, "--set", "integrations.createNamespace=false,integrations.namespace="+ns)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "rendered.yaml")
			if err := os.WriteFile(path, []byte(rendered), 0o644); err != nil {
				t.Fatal(err)
			}
			out := env.Kubectl(t, "apply", "--server-side", "--dry-run=server", "-f", path)
			for _, want := range []string{"serviceaccount/", "-manager ", "clusterrole.rbac.authorization.k8s.io/", "validatingadmissionpolicy.admissionregistration.k8s.io/"} {
				if !strings.Contains(out, want) {
					t.Errorf("dry-run output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestChartBadValues: values that are wrong fail before anything reaches
// the cluster, with a message that names the value; values the chart cannot
// judge (a JobSchedule's fields) are refused by the API server's schema.
func TestChartBadValues(t *testing.T) {
	hs256 := filepath.Join(chartDir(), "ci", "hs256-values.yaml")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no JWT setting", nil, "auth.jwt.existingSecret"},
		{"replicas as text", []string{"-f", hs256, "--set-string", "manager.replicas=two"}, "manager/replicas"},
		{"unknown mode", []string{"-f", hs256, "--set", "api.mode=sidecar"}, "api/mode"},
		{"misspelt key", []string{"-f", hs256, "--set", "manger.replicas=1"}, "manger"},
		{"job type name", []string{"-f", hs256, "--set", "jobTypes.Demo-Sync.template.spec.restartPolicy=Never"}, "Demo-Sync"},
		{"API key hash", []string{"-f", hs256, "--set", "auth.apiKeys[0].id=0123456789abcdef,auth.apiKeys[0].team=t,auth.apiKeys[0].sha256=secret"}, "sha256"},
		{"both JWT modes", []string{"-f", hs256, "--set", "auth.jwt.jwksURL=https://idp.example/jwks,auth.jwt.issuer=i,auth.jwt.audience=a"}, "only one of"},
		{"JWKS without issuer and audience", []string{"--set", "auth.jwt.jwksURL=https://idp.example/jwks"}, "auth.jwt.issuer"},
		{"JWKS over plain http", []string{"--set", "auth.jwt.jwksURL=http://idp.example/jwks,auth.jwt.issuer=i,auth.jwt.audience=a"}, "auth/jwt/jwksURL"},
		{"token lifetime as a number", []string{"-f", hs256, "--set", "auth.jwt.maxTokenLifetime=24"}, "maxTokenLifetime"},
		{"CORS origin without a scheme", []string{"-f", hs256, "--set", "api.cors.allowedOrigins[0]=app.example.com"}, "api/cors/allowedOrigins"},
		{"file", []string{"-f", filepath.Join("testdata", "bad-values.yaml")}, "smtp/tls"},
		{"archive without its Secret", []string{"-f", hs256, "--set", "archive.enabled=true"}, "archive.enabled is true but archive.existingSecret is empty"},
		{"archive live TTL of zero", []string{"-f", hs256, "--set", "archive.liveTTL=0s"}, "archive/liveTTL"},
		{"archive retention in days", []string{"-f", hs256, "--set", "archive.retention=90d"}, "archive/retention"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := helm(t, append([]string{"template", "jobrun", chartDir()}, tt.args...)...)
			if err == nil {
				t.Fatalf("helm template accepted the values:\n%s", out)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error does not name %q: %v", tt.want, err)
			}
		})
	}

	t.Run("refused by the API server", func(t *testing.T) {
		ns := env.Namespace(t)
		rendered, err := helm(t, "template", "jobrun", chartDir(), "-n", ns, "-f", hs256, "-f", filepath.Join("testdata", "bad-schedule-values.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "rendered.yaml")
		if err := os.WriteFile(path, []byte(rendered), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = env.TryKubectl("apply", "--server-side", "--dry-run=server", "-f", path)
		if err == nil || !strings.Contains(err.Error(), "spec.concurrencyPolicy") {
			t.Fatalf("want the schedule refused for its concurrencyPolicy, got %v", err)
		}
	})
}

// TestChartInstall installs the chart for real into the test's API server,
// checks what it made (and that the RBAC equals config/default's), that an
// API key kept in values authenticates, then upgrades and uninstalls it.
func TestChartInstall(t *testing.T) {
	installServiceMonitorCRD(t)
	ctx := testenv.Context(t)
	ns := env.Namespace(t)
	key, keySecret, err := apiserver.NewAPIKey(ns, "demo-team", []string{apiserver.PermJobsRead}, "ci@example.com")
	if err != nil {
		t.Fatal(err)
	}
	keyID := apiserver.APIKeyID(keySecret)
	full := filepath.Join(chartDir(), "ci", "full-values.yaml")
	out, err := helm(t, "install", "jobrun", chartDir(), "-n", ns, "-f", full,
		"--set", "auth.apiKeys[0].id="+keyID+",auth.apiKeys[0].team=demo-team,auth.apiKeys[0].permissions[0]=jobs:read,auth.apiKeys[0].sha256="+keySecret.StringData["sha256"])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "STATUS: deployed") || !strings.Contains(out, "service/jr-api") {
		t.Errorf("install output (with NOTES) unexpected:\n%s", out)
	}
	t.Cleanup(func() {
		// Cluster-scoped objects outlive the test's namespace.
		_, _ = helm(t, "uninstall", "jobrun", "-n", ns, "--no-hooks")
	})

	get := func(obj client.Object, name string) {
		t.Helper()
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
			t.Errorf("%T %s: %v", obj, name, err)
		}
	}
	manager := &appsv1.Deployment{}
	get(manager, "jr-manager")
	if got := manager.Spec.Replicas; got == nil || *got != 3 {
		t.Errorf("manager replicas = %v, want 3", got)
	}
	args := strings.Join(manager.Spec.Template.Spec.Containers[0].Args, " ")
	for _, want := range []string{"--leader-elect=true", "--runner-service-account=jr-runner", "--smtp-host=smtp.example.com", "--smtp-password-file=/etc/jobrun/smtp/password", "--jobrun-workers=8", "--allowed-service-accounts=reporting", "--namespace=" + ns} {
		if !strings.Contains(args, want) {
			t.Errorf("manager args lack %s: %s", want, args)
		}
	}
	if strings.Contains(args, "--api-bind-address") {
		t.Errorf("api.mode standalone, yet the manager serves the API: %s", args)
	}
	sc := manager.Spec.Template.Spec.Containers[0].SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || manager.Spec.Template.Spec.SecurityContext.RunAsNonRoot == nil {
		t.Errorf("manager is not non-root with a read-only root filesystem: %+v", sc)
	}
	api := &appsv1.Deployment{}
	get(api, "jr-api")
	apiArgs := strings.Join(api.Spec.Template.Spec.Containers[0].Args, " ")
	for _, want := range []string{"--run-controllers=false", "--leader-elect=false", "--api-bind-address=:8080", "--namespace=" + ns, "--jwks-url=https://idp.example.com/.well-known/jwks.json",
		"--stream-ticket-key-file=/etc/jobrun/session-key/session-key"} {
		if !strings.Contains(apiArgs, want) {
			t.Errorf("api args lack %s: %s", want, apiArgs)
		}
	}
	if vols := api.Spec.Template.Spec.Volumes; !slices.ContainsFunc(vols, func(v corev1.Volume) bool {
		return v.Secret != nil && v.Secret.SecretName == "jobrun-session-key"
	}) {
		t.Errorf("the standalone API does not mount auth.sessionKey's Secret: %+v", vols)
	}
	if sa := api.Spec.Template.Spec.ServiceAccountName; sa != "jr-api" {
		t.Errorf("the standalone API runs as %q, want its own jr-api", sa)
	}
	if sa := manager.Spec.Template.Spec.ServiceAccountName; sa != "jr-manager" {
		t.Errorf("the manager runs as %q, want jr-manager", sa)
	}
	get(&corev1.Service{}, "jr-api")
	get(&corev1.ServiceAccount{}, "jr-runner")
	get(&rbacv1.Role{}, "jr-manager-role")
	get(&jobsv1alpha1.JobType{}, "demo-sync")
	get(&jobsv1alpha1.JobType{}, "demo-maintenance")
	get(&jobsv1alpha1.Project{}, "demo-project")
	schedule := &jobsv1alpha1.JobSchedule{}
	get(schedule, "nightly-maintenance")
	if schedule.Spec.TimeZone != "Europe/Berlin" {
		t.Errorf("schedule time zone = %v", schedule.Spec.TimeZone)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "jr-manager-role"}, &rbacv1.ClusterRole{}); err != nil {
		t.Errorf("ClusterRole: %v", err)
	}
	if out := env.Kubectl(t, "get", "servicemonitors", "-n", ns, "-o", "name"); !strings.Contains(out, "jr-manager") {
		t.Errorf("no ServiceMonitor: %q", out)
	}

	// The chart's JobType pod policy, with the release's names and
	// manager.allowedServiceAccounts.
	testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
		err := env.Client.Create(ctx, jobTypeWith(ns, func(s *corev1.PodSpec) { s.ServiceAccountName = "jr-manager" }), client.DryRunAll)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "jr-jobtype-pod-policy") ||
			!strings.Contains(err.Error(), `service account "jr-manager" is not allowed (allowed: jr-runner, reporting)`) {
			return fmt.Errorf("a JobType naming the manager's service account: err = %v, want Forbidden by jr-jobtype-pod-policy", err)
		}
		return nil
	})
	for _, sa := range []string{"", "jr-runner", "reporting"} {
		if err := env.Client.Create(ctx, jobTypeWith(ns, func(s *corev1.PodSpec) { s.ServiceAccountName = sa }), client.DryRunAll); err != nil {
			t.Errorf("a JobType with serviceAccountName %q: %v", sa, err)
		}
	}
	if err := env.Client.Create(ctx, jobTypeWith(ns, func(s *corev1.PodSpec) { s.HostPID = true }), client.DryRunAll); !apierrors.IsForbidden(err) {
		t.Errorf("a hostPID JobType: err = %v, want Forbidden", err)
	}

	// The chart's runner policy, for the release's runner.
	checkRunnerWrites(t, ns, "jr-runner")

	// The chart's RBAC is config/default's, with the release's names.
	checkPermissions(t, ns, ns+"-integrations", "jr")

	// An API key kept in values is accepted by the REST API's authenticator.
	keys := apiserver.APIKeyAuthenticator{Reader: env.Client, Namespace: ns}
	p, err := keys.Authenticate(ctx, key)
	if err != nil {
		t.Fatalf("the key from values is refused: %v", err)
	}
	if p.Kind != "api_key" || p.ID != keyID || strings.Join(p.Teams, ",") != "demo-team" || strings.Join(p.Permissions, ",") != apiserver.PermJobsRead {
		t.Errorf("principal = %+v", p)
	}

	// Upgrade: GitOps adds a schedule and moves the API into the manager.
	if _, err := helm(t, "upgrade", "jobrun", chartDir(), "-n", ns, "-f", full, "--reuse-values",
		"--set", "api.mode=manager,jobSchedules.hourly-maintenance.schedule=@hourly,jobSchedules.hourly-maintenance.jobType=demo_maintenance"); err != nil {
		t.Fatal(err)
	}
	get(&jobsv1alpha1.JobSchedule{}, "hourly-maintenance")
	get(manager, "jr-manager")
	if args := strings.Join(manager.Spec.Template.Spec.Containers[0].Args, " "); !strings.Contains(args, "--api-bind-address=:8080") {
		t.Errorf("after the upgrade the manager does not serve the API: %s", args)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "jr-api"}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("the standalone API Deployment is still there: %v", err)
	}

	// Without the uninstall hook: no Job controller runs here to complete
	// its Job (TestChartUninstallHook plays one).
	if _, err := helm(t, "uninstall", "jobrun", "-n", ns, "--no-hooks"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		err := env.Client.Get(ctx, client.ObjectKey{Name: "jr-manager-role"}, &rbacv1.ClusterRole{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("ClusterRole after uninstall: %v", err)
		}
		return nil
	})
}

// TestChartClusterWideRBAC renders the chart's RBAC with manager.clusterWide
// (only the RBAC: its admission policies would cover every namespace of the
// shared test API server) and asks the authorizer: the manager may run pods
// and runs in every namespace, but Secrets and Leases stay in its own; the
// standalone API and the runner gain nothing.
func TestChartClusterWideRBAC(t *testing.T) {
	ns := env.Namespace(t)
	hs256 := filepath.Join(chartDir(), "ci", "hs256-values.yaml")
	args := []string{"template", "cw", chartDir(), "-n", ns, "-f", hs256, "--set", "manager.clusterWide=true"}
	for _, f := range []string{"rbac-service_account", "rbac-role", "rbac-role_binding", "rbac-role-clusterwide", "api-service_account", "api-role", "api-role_binding"} {
		args = append(args, "--show-only", "templates/generated/"+f+".yaml")
	}
	rendered, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "rbac.yaml")
	if err := os.WriteFile(path, []byte(rendered), 0o644); err != nil {
		t.Fatal(err)
	}
	env.Kubectl(t, "apply", "--server-side", "-f", path)
	t.Cleanup(func() { _, _ = env.TryKubectl("delete", "--ignore-not-found", "-f", path) })

	managerSA := "system:serviceaccount:" + ns + ":cw-jobrun-manager"
	apiSA := "system:serviceaccount:" + ns + ":cw-jobrun-api"
	other := env.Namespace(t)
	for _, tt := range []struct {
		as   string
		args []string
		want string
	}{
		{managerSA, []string{"create", "pods", "-n", other}, "yes"},
		{managerSA, []string{"list", "pods", "--all-namespaces"}, "yes"},
		{managerSA, []string{"list", "jobruns.jobs.jobrun.dev", "--all-namespaces"}, "yes"},
		{managerSA, []string{"patch", "jobruns.jobs.jobrun.dev", "--subresource=status", "-n", other}, "yes"},
		{managerSA, []string{"patch", "jobtypes.jobs.jobrun.dev", "--subresource=status", "-n", other}, "yes"},
		{managerSA, []string{"get", "secrets", "-n", other}, "no"},
		{managerSA, []string{"get", "secrets", "-n", ns}, "yes"},
		{managerSA, []string{"create", "leases.coordination.k8s.io", "-n", other}, "no"},
		{managerSA, []string{"update", "jobtypes.jobs.jobrun.dev", "-n", other}, "no"},
		{apiSA, []string{"get", "jobruns.jobs.jobrun.dev", "-n", other}, "no"},
		{apiSA, []string{"create", "pods", "-n", ns}, "no"},
	} {
		out, _ := env.TryKubectl(append([]string{"auth", "can-i", "--as", tt.as}, tt.args...)...)
		if got := strings.TrimSpace(out); got != tt.want {
			t.Errorf("%s can-i %s = %q, want %q", tt.as, strings.Join(tt.args, " "), got, tt.want)
		}
	}
}
