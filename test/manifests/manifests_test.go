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
		"deployment.apps/jobrun-manager",
		"clusterrole.rbac.authorization.k8s.io/jobrun-manager-role",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("apply output lacks %s:\n%s", want, out)
		}
	}

	env.Kubectl(t, "apply", "--server-side", "-k", filepath.Join(env.Root, "config", "integrations"))
	checkPermissions(t, "jobrun-system", "jobrun-integrations", "jobrun-manager", "jobrun-runner")
}

// checkPermissions asks the API server's own authorizer what the manager's
// and the runner's service accounts (in namespace ns) may do, as installed by
// config/default and config/integrations or by the Helm chart: the same
// grants either way.
func checkPermissions(t *testing.T, ns, integrations, manager, runner string) {
	managerSA := "system:serviceaccount:" + ns + ":" + manager
	runnerSA := "system:serviceaccount:" + ns + ":" + runner
	other := "default"
	tests := []struct {
		as   string
		args []string
		want string
	}{
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
