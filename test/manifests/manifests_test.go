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

const managerSA = "system:serviceaccount:jobrun-system:jobrun-manager"

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

	// What the manager may do, checked by the API server's own authorizer.
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"create", "leases.coordination.k8s.io", "-n", "jobrun-system"}, "yes"},
		{[]string{"update", "leases.coordination.k8s.io", "-n", "jobrun-system"}, "yes"},
		{[]string{"create", "events", "-n", "jobrun-system"}, "yes"},
		{[]string{"create", "tokenreviews.authentication.k8s.io"}, "yes"},
		{[]string{"create", "subjectaccessreviews.authorization.k8s.io"}, "yes"},
		// Least privilege: leases only in its own namespace, and nothing it
		// has no use for yet.
		{[]string{"create", "leases.coordination.k8s.io", "-n", "default"}, "no"},
		{[]string{"get", "secrets", "-n", "jobrun-system"}, "no"},
		{[]string{"create", "pods", "-n", "jobrun-system"}, "no"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, _ := env.TryKubectl(append([]string{"auth", "can-i", "--as", managerSA}, tt.args...)...)
			if got := strings.TrimSpace(out); got != tt.want {
				t.Errorf("manager can-i %s = %q, want %q", strings.Join(tt.args, " "), got, tt.want)
			}
		})
	}
}
