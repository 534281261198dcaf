package manifests_test

import (
	"maps"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// installKueueCRDs makes Kueue's kinds served, with Kueue's own schemas
// (bin/kueue/crds, from its Go module), so that the chart's queues are
// validated for real.
func installKueueCRDs(t *testing.T) {
	t.Helper()
	env.Kubectl(t, "apply", "--server-side", "-f", filepath.Join(env.Root, "bin", "kueue", "crds"))
	env.Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/clusterqueues.kueue.x-k8s.io", "crd/resourceflavors.kueue.x-k8s.io", "crd/localqueues.kueue.x-k8s.io")
}

// TestChartKueue: kueue.enabled renders the teams' ClusterQueue (the
// release namespace's runs, Admission Fair Sharing, teams.maxRuns pods), the
// system's (its own quota, no cohort to lend it to), their ResourceFlavor,
// the default WorkloadPriorityClasses, and the manager's --kueue flags
// naming them; without it, none of that.
func TestChartKueue(t *testing.T) {
	values := filepath.Join(chartDir(), "ci", "kueue-values.yaml")
	deployments, _ := chartDeployments(t, []string{values})
	args := deployments["jr-manager"].Spec.Template.Spec.Containers[0].Args
	for _, want := range []string{"--kueue", "--kueue-team-cluster-queue=jr-teams", "--kueue-system-cluster-queue=platform-system-runs"} {
		if !slices.Contains(args, want) {
			t.Errorf("manager args %v lack %s", args, want)
		}
	}
	out, err := helm(t, "template", "jr", chartDir(), "-n", "rel", "--set", "fullnameOverride=jr", "-f", values, "--show-only", "templates/kueue.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]*unstructured.Unstructured{}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("decoding %s: %v", doc, err)
		}
		objs[u.GetKind()+"/"+u.GetName()] = u
	}
	if _, ok := objs["ResourceFlavor/jr"]; !ok {
		t.Errorf("no ResourceFlavor jr: %v", slices.Sorted(maps.Keys(objs)))
	}
	for name, want := range map[string]struct {
		quota int64
		afs   bool
	}{"jr-teams": {50, true}, "platform-system-runs": {3, false}} {
		cq := objs["ClusterQueue/"+name]
		if cq == nil {
			t.Errorf("no ClusterQueue %s", name)
			continue
		}
		ns, _, _ := unstructured.NestedString(cq.Object, "spec", "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name")
		groups, _, _ := unstructured.NestedSlice(cq.Object, "spec", "resourceGroups")
		mode, _, _ := unstructured.NestedString(cq.Object, "spec", "admissionScope", "admissionMode")
		_, cohort, _ := unstructured.NestedString(cq.Object, "spec", "cohortName")
		var quota int64
		if len(groups) == 1 {
			flavors, _, _ := unstructured.NestedSlice(groups[0].(map[string]any), "flavors")
			if len(flavors) == 1 {
				res, _, _ := unstructured.NestedSlice(flavors[0].(map[string]any), "resources")
				for _, r := range res {
					if r.(map[string]any)["name"] == "pods" {
						q, _ := r.(map[string]any)["nominalQuota"].(float64) // JSON numbers
						quota = int64(q)
					}
				}
				if covered, _, _ := unstructured.NestedStringSlice(groups[0].(map[string]any), "coveredResources"); !slices.Equal(covered, []string{"cpu", "memory", "pods"}) {
					t.Errorf("ClusterQueue %s covers %v, want cpu, memory and pods (Kueue admits no pod asking for another)", name, covered)
				}
			}
		}
		if ns != "rel" || quota != want.quota || (mode == "UsageBasedAdmissionFairSharing") != want.afs || cohort {
			t.Errorf("ClusterQueue %s: namespace %q, pods quota %d, admission mode %q, cohort %v; want rel, %d, fair sharing %v, none", name, ns, quota, mode, cohort, want.quota, want.afs)
		}
	}
	for name, want := range map[string]int64{"jobrun-high": 1000, "jobrun-low": -1000} {
		wpc := objs["WorkloadPriorityClass/"+name]
		if wpc == nil {
			t.Errorf("no WorkloadPriorityClass %s: %v", name, slices.Sorted(maps.Keys(objs)))
			continue
		}
		if value, _, _ := unstructured.NestedFloat64(wpc.Object, "value"); int64(value) != want {
			t.Errorf("WorkloadPriorityClass %s has value %v, want %d", name, value, want)
		}
	}

	hs256 := filepath.Join(chartDir(), "ci", "hs256-values.yaml")
	deployments, _ = chartDeployments(t, []string{hs256})
	if args := strings.Join(deployments["jr-manager"].Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "--kueue") {
		t.Errorf("kueue.enabled false, yet the manager has %s", args)
	}
	if out, err := helm(t, "template", "jr", chartDir(), "-f", hs256); err != nil || strings.Contains(out, "kind: ClusterQueue") || strings.Contains(out, "kind: ResourceFlavor") {
		t.Errorf("kueue.enabled false renders Kueue objects (%v)", err)
	}
}
