package manifests_test

import (
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
)

// chartDeployments renders the chart's Deployments (manager and standalone
// REST API) with values files and --set arguments, decoded by name.
func chartDeployments(t *testing.T, files []string, set ...string) (map[string]*appsv1.Deployment, string) {
	t.Helper()
	args := []string{"template", "jr", chartDir(), "-n", "rel", "--set", "fullnameOverride=jr",
		"--show-only", "templates/manager.yaml", "--show-only", "templates/api.yaml"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	deployments := map[string]*appsv1.Deployment{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		if !strings.Contains(doc, "kind: Deployment") {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("decoding %s: %v", doc, err)
		}
		d := obj.(*appsv1.Deployment)
		deployments[d.Name] = d
	}
	return deployments, out
}

// TestChartArchive: with archive.enabled, the manager and the standalone
// REST API both read the DSN from the Secret (env JOBRUN_ARCHIVE_DSN through
// secretKeyRef, never a value or an argument) and get the two durations as
// flags; the manager serving the API itself gets them too; without it,
// nothing of the archive is rendered.
func TestChartArchive(t *testing.T) {
	archive := filepath.Join(chartDir(), "ci", "archive-values.yaml")
	hs256 := filepath.Join(chartDir(), "ci", "hs256-values.yaml")
	for _, tt := range []struct {
		name        string
		files       []string
		set         []string
		deployments []string
		secret, key string
		args        []string
	}{
		{"standalone API (ci/archive-values.yaml)", []string{archive}, nil, []string{"jr-manager", "jr-api"},
			"jobrun-db-app", "uri", []string{"--archive-live-ttl=30m", "--archive-retention=8760h"}},
		{"API in the manager, defaults", []string{hs256}, []string{"archive.enabled=true,archive.existingSecret=jobrun-archive"}, []string{"jr-manager"},
			"jobrun-archive", "dsn", []string{"--archive-live-ttl=1h", "--archive-retention=2160h"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			deployments, _ := chartDeployments(t, tt.files, tt.set...)
			if got := slices.Sorted(maps.Keys(deployments)); !slices.Equal(got, slices.Sorted(slices.Values(tt.deployments))) {
				t.Fatalf("Deployments %v, want %v", got, tt.deployments)
			}
			want := []corev1.EnvVar{{Name: "JOBRUN_ARCHIVE_DSN", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: tt.secret}, Key: tt.key}}}}
			for name, d := range deployments {
				c := d.Spec.Template.Spec.Containers[0]
				if diff := cmp.Diff(want, c.Env); diff != "" {
					t.Errorf("%s env (-want +got):\n%s", name, diff)
				}
				for _, arg := range tt.args {
					if !slices.Contains(c.Args, arg) {
						t.Errorf("%s args %v lack %s", name, c.Args, arg)
					}
				}
				for _, arg := range c.Args {
					if strings.HasPrefix(arg, "--archive-dsn") || strings.Contains(arg, "postgres") {
						t.Errorf("%s has the DSN in its args: %s", name, arg)
					}
				}
			}
		})
	}

	t.Run("off", func(t *testing.T) {
		deployments, out := chartDeployments(t, []string{archive}, "archive.enabled=false")
		if len(deployments) != 2 {
			t.Fatalf("rendered Deployments %v, want the manager and the API", slices.Sorted(maps.Keys(deployments)))
		}
		for _, unwanted := range []string{"JOBRUN_ARCHIVE_DSN", "--archive-", "jobrun-db-app"} {
			if strings.Contains(out, unwanted) {
				t.Errorf("archive.enabled=false renders %q:\n%s", unwanted, out)
			}
		}
	})
}
