// Package manifests_test proves the install manifests in config/ against a
// real API server: they apply cleanly and grant the manager what it needs and
// no more.
package manifests_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"jobrun.dev/jobrun/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

func TestDefaultManifestsApply(t *testing.T) {
	manifests := env.Kubectl(t, "kustomize", filepath.Join(env.Root, "config", "default"))
	path := filepath.Join(t.TempDir(), "jobrun.yaml")
	if err := os.WriteFile(path, []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	out := env.Kubectl(t, "apply", "--server-side", "-f", path)
	for _, want := range []string{
		"namespace/jobrun-system",
		"customresourcedefinition.apiextensions.k8s.io/jobruns.jobs.jobrun.dev",
		"serviceaccount/jobrun-manager",
		"serviceaccount/jobrun-api",
		"role.rbac.authorization.k8s.io/jobrun-api-role",
		"validatingadmissionpolicy.admissionregistration.k8s.io/jobrun-jobtype-pod-policy",
		"deployment.apps/jobrun-manager",
		"clusterrole.rbac.authorization.k8s.io/jobrun-manager-role",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %s:\n%s", want, out)
		}
	}

	env.Kubectl(t, "apply", "--server-side", "-k", filepath.Join(env.Root, "config", "integrations"))
	checkPermissions(t, "jobrun-system", "jobrun-integrations", "jobrun")
}

// checkPermissions asks the API server's own authorizer what the manager's,
// the standalone REST API's and the runner's service accounts (in namespace
// ns, named prefix-manager, prefix-api, prefix-runner) may do, as installed
// by config/default and config/integrations or by the Helm chart: the same
// grants either way. The manager serves its own namespace only.
func checkPermissions(t *testing.T, ns, integrations, prefix string) {
	managerSA := "system:serviceaccount:" + ns + ":" + prefix + "-manager"
	apiSA := "system:serviceaccount:" + ns + ":" + prefix + "-api"
	runnerSA := "system:serviceaccount:" + ns + ":" + prefix + "-runner"
	other := "default"
	jobruns := "jobruns.jobs.jobrun.dev"
	tests := []struct {
		as   string
		args []string
		want string
	}{
		// The manager: everything of its own namespace's runs, nothing
		// elsewhere.
		{managerSA, []string{"create", "pods", "-n", other}, "no"},
		{managerSA, []string{"list", "pods", "--all-namespaces"}, "no"},
		{managerSA, []string{"get", jobruns, "-n", other}, "no"},
		{managerSA, []string{"list", jobruns, "--all-namespaces"}, "no"},
		{managerSA, []string{"get", "jobtypes.jobs.jobrun.dev", "-n", other}, "no"},
		{managerSA, []string{"patch", "jobtypes.jobs.jobrun.dev", "--subresource=status", "-n", ns}, "yes"},
		{managerSA, []string{"patch", "jobtypes.jobs.jobrun.dev", "--subresource=status", "-n", other}, "no"},
		{managerSA, []string{"create", "events.events.k8s.io", "-n", other}, "no"},
		{managerSA, []string{"create", "serviceaccounts", "--subresource=token", "-n", ns}, "no"},
		{managerSA, []string{"create", "rolebindings.rbac.authorization.k8s.io", "-n", ns}, "no"},
		// The standalone REST API: reads, creates and annotates runs (cancel,
		// the consistency marker), guards, API-key Secrets by name; no pods,
		// no status, nothing outside its namespace.
		{apiSA, []string{"get", jobruns, "-n", ns}, "yes"},
		{apiSA, []string{"watch", jobruns, "-n", ns}, "yes"},
		{apiSA, []string{"create", jobruns, "-n", ns}, "yes"},
		{apiSA, []string{"patch", jobruns, "-n", ns}, "yes"},
		{apiSA, []string{"get", "jobtypes.jobs.jobrun.dev", "-n", ns}, "yes"},
		{apiSA, []string{"list", "projects.jobs.jobrun.dev", "-n", ns}, "yes"},
		{apiSA, []string{"get", "secrets", "-n", ns}, "yes"},
		{apiSA, []string{"create", "leases.coordination.k8s.io", "-n", ns}, "yes"},
		{apiSA, []string{"delete", "leases.coordination.k8s.io", "-n", ns}, "yes"},
		{apiSA, []string{"update", "leases.coordination.k8s.io", "-n", ns}, "no"},
		{apiSA, []string{"list", "secrets", "-n", ns}, "yes"}, // the API-key informer (its cache selects API keys only)
		{apiSA, []string{"create", "secrets", "-n", ns}, "no"},
		{apiSA, []string{"create", "pods", "-n", ns}, "no"},
		{apiSA, []string{"get", "pods", "-n", ns}, "no"},
		{apiSA, []string{"patch", jobruns, "--subresource=status", "-n", ns}, "no"},
		{apiSA, []string{"update", jobruns, "--subresource=status", "-n", ns}, "no"},
		{apiSA, []string{"delete", jobruns, "-n", ns}, "no"},
		{apiSA, []string{"update", "jobtypes.jobs.jobrun.dev", "-n", ns}, "no"},
		{apiSA, []string{"patch", "jobtypes.jobs.jobrun.dev", "--subresource=status", "-n", ns}, "no"},
		{apiSA, []string{"create", "events.events.k8s.io", "-n", ns}, "no"},
		// The console's run page reads a run's Events, in its namespace.
		{apiSA, []string{"list", "events", "-n", ns}, "yes"},
		{apiSA, []string{"list", "events", "-n", other}, "no"},
		{apiSA, []string{"create", "events", "-n", ns}, "no"},
		{apiSA, []string{"get", jobruns, "-n", other}, "no"},
		{apiSA, []string{"get", "secrets", "-n", integrations}, "no"},
		{apiSA, []string{"create", "tokenreviews.authentication.k8s.io"}, "no"},
		// The runner: no pods, no job types, no tokens.
		{runnerSA, []string{"create", "pods", "-n", ns}, "no"},
		{runnerSA, []string{"update", "jobtypes.jobs.jobrun.dev", "-n", ns}, "no"},
		{runnerSA, []string{"create", "serviceaccounts", "--subresource=token", "-n", ns}, "no"},
		{runnerSA, []string{"list", jobruns, "--all-namespaces"}, "no"},
		{managerSA, []string{"create", "leases.coordination.k8s.io", "-n", ns}, "yes"},
		{managerSA, []string{"update", "leases.coordination.k8s.io", "-n", ns}, "yes"},
		{managerSA, []string{"create", "events", "-n", ns}, "yes"},
		{managerSA, []string{"create", "tokenreviews.authentication.k8s.io"}, "yes"},
		{managerSA, []string{"create", "subjectaccessreviews.authorization.k8s.io"}, "yes"},
		// Least privilege: leases only in its own namespace, no secrets, no
		// writes to specs it does not own.
		{managerSA, []string{"create", "leases.coordination.k8s.io", "-n", other}, "no"},
		// API keys: the REST API watches their Secrets, in its namespace
		// only (RBAC cannot narrow to the label; its cache selects it).
		{managerSA, []string{"get", "secrets", "-n", ns}, "yes"},
		{managerSA, []string{"list", "secrets", "-n", ns}, "yes"},
		{managerSA, []string{"watch", "secrets", "-n", ns}, "yes"},
		{managerSA, []string{"create", "secrets", "-n", ns}, "no"},
		{managerSA, []string{"get", "secrets", "-n", other}, "no"},
		{managerSA, []string{"list", "secrets", "-n", other}, "no"},
		{managerSA, []string{"list", "secrets", "--all-namespaces"}, "no"},
		{managerSA, []string{"create", "pods", "-n", ns}, "yes"},
		{managerSA, []string{"patch", "jobruns.jobs.jobrun.dev", "--subresource=status", "-n", ns}, "yes"},
		{managerSA, []string{"update", "jobtypes.jobs.jobrun.dev", "-n", ns}, "no"},
		{managerSA, []string{"create", "jobruns.jobs.jobrun.dev", "-n", ns}, "yes"},
		{managerSA, []string{"get", "projects.jobs.jobrun.dev", "-n", ns}, "yes"},
		{managerSA, []string{"update", "projects.jobs.jobrun.dev", "-n", ns}, "no"},
		// The runner: read and watch runs, patch their status, nothing more.
		{runnerSA, []string{"get", "jobruns.jobs.jobrun.dev", "-n", ns}, "yes"},
		{runnerSA, []string{"watch", "jobruns.jobs.jobrun.dev", "-n", ns}, "yes"},
		{runnerSA, []string{"patch", "jobruns.jobs.jobrun.dev", "--subresource=status", "-n", ns}, "yes"},
		{runnerSA, []string{"patch", "jobruns.jobs.jobrun.dev", "-n", ns}, "no"},
		{runnerSA, []string{"delete", "jobruns.jobs.jobrun.dev", "-n", ns}, "no"},
		{runnerSA, []string{"get", "jobruns.jobs.jobrun.dev", "-n", other}, "no"},
		{runnerSA, []string{"get", "secrets", "-n", ns}, "no"},
		// Integration Secrets: get one by name in their own namespace only.
		{runnerSA, []string{"get", "secrets", "-n", integrations}, "yes"},
		{runnerSA, []string{"list", "secrets", "-n", integrations}, "no"},
		{runnerSA, []string{"get", "secrets", "-n", other}, "no"},
		{managerSA, []string{"get", "secrets", "-n", integrations}, "no"},
	}
	for _, tt := range tests {
		t.Run(tt.as+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			out, _ := env.TryKubectl(append([]string{"auth", "can-i", "--as", tt.as}, tt.args...)...)
			if got := strings.TrimSpace(out); got != tt.want {
				t.Errorf("%s can-i %s = %q, want %q", tt.as, strings.Join(tt.args, " "), got, tt.want)
			}
		})
	}
}
