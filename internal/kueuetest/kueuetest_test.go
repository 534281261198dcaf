package kueuetest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"jobrun.dev/jobrun/internal/kueuetest"
	"jobrun.dev/jobrun/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

var (
	resourceFlavors  = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "resourceflavors"}
	clusterQueues    = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "clusterqueues"}
	localQueues      = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "localqueues"}
	workloads        = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "workloads"}
	workloadsV1beta1 = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta1", Resource: "workloads"}
	pods             = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

// TestPodsQueueThroughKueue: with a ClusterQueue of 1 CPU, of two pods asking
// 600m each the first is admitted (its scheduling gate removed, its Workload
// admitted) and the second waits, gated, its Workload pending for quota;
// deleting the first admits the second.
func TestPodsQueueThroughKueue(t *testing.T) {
	k := kueuetest.Start(t, env.ControlPlane, kueuetest.Options{PodIntegration: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(env.Config)
	cs := kubernetes.NewForConfigOrDie(env.Config)

	suffix := strings.ToLower(rand.String(6))
	ns := "kq-" + suffix
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{kueuetest.NamespaceLabel: "true"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	flavor, cq, lq := "flavor-"+suffix, "cq-"+suffix, "lq"
	create(ctx, t, dyn.Resource(resourceFlavors), map[string]any{
		"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
		"metadata": map[string]any{"name": flavor},
	})
	create(ctx, t, dyn.Resource(clusterQueues), map[string]any{
		"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
		"metadata": map[string]any{"name": cq},
		"spec": map[string]any{
			"namespaceSelector": map[string]any{},
			"resourceGroups": []any{map[string]any{
				"coveredResources": []any{"cpu"},
				"flavors": []any{map[string]any{
					"name":      flavor,
					"resources": []any{map[string]any{"name": "cpu", "nominalQuota": "1"}},
				}},
			}},
		},
	})
	create(ctx, t, dyn.Resource(localQueues).Namespace(ns), map[string]any{
		"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
		"metadata": map[string]any{"name": lq, "namespace": ns},
		"spec":     map[string]any{"clusterQueue": cq},
	})
	waitFor(ctx, t, dyn.Resource(clusterQueues), cq, "ClusterQueue Active", func(u *unstructured.Unstructured) bool {
		s, _, _ := condition(u, "Active")
		return s == "True"
	})
	waitFor(ctx, t, dyn.Resource(localQueues).Namespace(ns), lq, "LocalQueue Active", func(u *unstructured.Unstructured) bool {
		s, _, _ := condition(u, "Active")
		return s == "True"
	})

	first := createPod(ctx, t, cs, ns, "first", lq)
	if !gated(first) || first.Labels[kueuetest.ManagedLabel] != "true" || !slices.Contains(first.Finalizers, kueuetest.ManagedLabel) {
		t.Fatalf("pod first as created: gates %v, labels %v, finalizers %v; want Kueue's gate, managed label and finalizer", first.Spec.SchedulingGates, first.Labels, first.Finalizers)
	}
	// Admission removes the admission gate, and the topology gate the
	// webhook also adds (TopologyAwareScheduling is on by default) when the
	// flavor does not use TAS: the pod is left for kube-scheduler.
	waitFor(ctx, t, dyn.Resource(pods).Namespace(ns), "first", "pod first ungated", func(u *unstructured.Unstructured) bool {
		return len(toPod(t, u).Spec.SchedulingGates) == 0
	})
	wl1 := waitWorkload(ctx, t, dyn, ns, first, "admitted", func(u *unstructured.Unstructured) bool {
		s, _, _ := condition(u, "Admitted")
		return s == "True"
	})
	_, reason, _ := condition(wl1, "QuotaReserved")
	t.Logf("workload %s of pod first: admitted (QuotaReserved reason %q)", wl1.GetName(), reason)
	// Workloads are stored as v1beta2; reading one as v1beta1 goes through
	// Kueue's conversion webhook (/convert, on loopback too).
	old, err := dyn.Resource(workloadsV1beta1).Namespace(ns).Get(ctx, wl1.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("reading workload %s as v1beta1 (conversion webhook): %v", wl1.GetName(), err)
	}
	if old.GetAPIVersion() != "kueue.x-k8s.io/v1beta1" {
		t.Errorf("workload read as v1beta1 has apiVersion %s", old.GetAPIVersion())
	}

	second := createPod(ctx, t, cs, ns, "second", lq)
	wl2 := waitWorkload(ctx, t, dyn, ns, second, "pending for quota", func(u *unstructured.Unstructured) bool {
		s, reason, _ := condition(u, "QuotaReserved")
		return s == "False" && reason == "Pending"
	})
	_, _, msg := condition(wl2, "QuotaReserved")
	t.Logf("workload %s of pod second: pending: %s", wl2.GetName(), msg)
	if !strings.Contains(msg, "insufficient") {
		t.Errorf("workload %s's QuotaReserved message %q does not say the quota is insufficient", wl2.GetName(), msg)
	}
	got, err := cs.CoreV1().Pods(ns).Get(ctx, "second", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !gated(got) {
		t.Fatalf("pod second lost its gate while its workload is pending: %v", got.Spec.SchedulingGates)
	}

	// Kueue's visibility API, straight from its server on loopback.
	pending := pendingWorkloads(ctx, t, k, ns, lq)
	if len(pending) != 1 || pending[0].Name != wl2.GetName() || pending[0].PositionInLocalQueue != 0 {
		t.Errorf("visibility: pending workloads of %s/%s = %+v, want only %s at position 0", ns, lq, pending, wl2.GetName())
	}

	// Deleting an admitted pod: Kueue drops its finalizers (the pod's and
	// the Workload's) but leaves the Workload, admitted, to the garbage
	// collector (its owner reference to the pod); no kube-controller-manager
	// runs here, so the test does what the garbage collector would.
	if err := cs.CoreV1().Pods(ns).Delete(ctx, "first", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(ctx, t, dyn.Resource(pods).Namespace(ns), "first")
	waitFor(ctx, t, dyn.Resource(workloads).Namespace(ns), wl1.GetName(), "workload of first without finalizers", func(u *unstructured.Unstructured) bool {
		return len(u.GetFinalizers()) == 0
	})
	if err := dyn.Resource(workloads).Namespace(ns).Delete(ctx, wl1.GetName(), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, dyn.Resource(pods).Namespace(ns), "second", "pod second ungated", func(u *unstructured.Unstructured) bool {
		return len(toPod(t, u).Spec.SchedulingGates) == 0
	})
	waitFor(ctx, t, dyn.Resource(workloads).Namespace(ns), wl2.GetName(), "workload of second admitted", func(u *unstructured.Unstructured) bool {
		s, _, _ := condition(u, "Admitted")
		return s == "True"
	})

	// A pod that ends (its phase set, as a kubelet would) finishes its
	// Workload and frees the quota for the next.
	third := createPod(ctx, t, cs, ns, "third", lq)
	waitWorkload(ctx, t, dyn, ns, third, "pending for quota", func(u *unstructured.Unstructured) bool {
		s, reason, _ := condition(u, "QuotaReserved")
		return s == "False" && reason == "Pending"
	})
	second, err = cs.CoreV1().Pods(ns).Get(ctx, "second", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	second.Status.Phase = corev1.PodSucceeded
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, second, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("marking pod second Succeeded: %v", err)
	}
	waitFor(ctx, t, dyn.Resource(workloads).Namespace(ns), wl2.GetName(), "workload of second finished", func(u *unstructured.Unstructured) bool {
		s, _, _ := condition(u, "Finished")
		return s == "True"
	})
	waitFor(ctx, t, dyn.Resource(pods).Namespace(ns), "third", "pod third ungated", func(u *unstructured.Unstructured) bool {
		return len(toPod(t, u).Spec.SchedulingGates) == 0
	})
	waitFor(ctx, t, dyn.Resource(pods).Namespace(ns), "second", "pod second without Kueue's finalizer", func(u *unstructured.Unstructured) bool {
		return !slices.Contains(u.GetFinalizers(), kueuetest.ManagedLabel)
	})
}

func create(ctx context.Context, t *testing.T, ri dynamic.ResourceInterface, obj map[string]any) {
	t.Helper()
	if _, err := ri.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating %s: %v", obj["kind"], err)
	}
}

func createPod(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name, queue string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{kueuetest.QueueLabel: queue}},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "main", Image: "example.invalid/none",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("600m")}},
			}},
		},
	}
	got, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s: %v", name, err)
	}
	return got
}

func gated(p *corev1.Pod) bool {
	return slices.ContainsFunc(p.Spec.SchedulingGates, func(g corev1.PodSchedulingGate) bool { return g.Name == kueuetest.AdmissionGate })
}

func toPod(t *testing.T, u *unstructured.Unstructured) *corev1.Pod {
	p := &corev1.Pod{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, p); err != nil {
		t.Fatalf("converting pod: %v", err)
	}
	return p
}

// condition returns status.conditions[type=typ]'s status, reason and message.
func condition(u *unstructured.Unstructured, typ string) (status, reason, message string) {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == typ {
			status, _ = m["status"].(string)
			reason, _ = m["reason"].(string)
			message, _ = m["message"].(string)
		}
	}
	return status, reason, message
}

// waitFor watches the object name of ri until cond holds (1 min at most).
func waitFor(ctx context.Context, t *testing.T, ri dynamic.ResourceInterface, name, what string, cond func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	t.Helper()
	var last *unstructured.Unstructured
	got := until(ctx, t, ri, "metadata.name="+name, what, func(u *unstructured.Unstructured) bool {
		last = u
		return cond(u)
	}, func() string { return fmt.Sprintf("last seen: %v", lastState(last)) })
	return got
}

// waitWorkload waits for a Workload in ns owned by pod for which cond holds.
func waitWorkload(ctx context.Context, t *testing.T, dyn dynamic.Interface, ns string, pod *corev1.Pod, what string, cond func(*unstructured.Unstructured) bool) *unstructured.Unstructured {
	t.Helper()
	var last *unstructured.Unstructured
	return until(ctx, t, dyn.Resource(workloads).Namespace(ns), "", "workload of pod "+pod.Name+" "+what, func(u *unstructured.Unstructured) bool {
		if !slices.ContainsFunc(u.GetOwnerReferences(), func(o metav1.OwnerReference) bool { return o.UID == pod.UID }) {
			return false
		}
		last = u
		return cond(u)
	}, func() string { return fmt.Sprintf("last seen: %v", lastState(last)) })
}

func lastState(u *unstructured.Unstructured) any {
	if u == nil {
		return "nothing"
	}
	st, _, _ := unstructured.NestedFieldNoCopy(u.Object, "status")
	gates, _, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "schedulingGates")
	return map[string]any{"name": u.GetName(), "status": st, "schedulingGates": gates}
}

func until(ctx context.Context, t *testing.T, ri dynamic.ResourceInterface, fieldSelector, what string, cond func(*unstructured.Unstructured) bool, last func() string) *unstructured.Unstructured {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	began := time.Now()
	defer func() { t.Logf("%s: %s", what, time.Since(began).Round(time.Millisecond)) }()
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = fieldSelector
			return ri.List(wctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = fieldSelector
			return ri.Watch(wctx, o)
		},
	}
	ev, err := watchtools.UntilWithSync(wctx, lw, &unstructured.Unstructured{}, nil, func(e watch.Event) (bool, error) {
		u, ok := e.Object.(*unstructured.Unstructured)
		if !ok || e.Type == watch.Deleted {
			return false, nil
		}
		return cond(u), nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (%s)", what, err, last())
	}
	return ev.Object.(*unstructured.Unstructured)
}

// waitGone waits until the object name of ri is deleted.
func waitGone(ctx context.Context, t *testing.T, ri dynamic.ResourceInterface, name string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = "metadata.name=" + name
			return ri.List(wctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = "metadata.name=" + name
			return ri.Watch(wctx, o)
		},
	}
	_, err := watchtools.UntilWithSync(wctx, lw, &unstructured.Unstructured{}, func(store cache.Store) (bool, error) {
		return len(store.List()) == 0, nil
	}, func(e watch.Event) (bool, error) { return e.Type == watch.Deleted, nil })
	if err != nil {
		u, gerr := ri.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(gerr) {
			return
		}
		t.Fatalf("waiting for %s to be deleted: %v (now: finalizers %v, deletionTimestamp %v)", name, err, u.GetFinalizers(), u.GetDeletionTimestamp())
	}
}

type pendingWorkload struct {
	Name                   string
	PositionInClusterQueue int32
	PositionInLocalQueue   int32
}

// pendingWorkloads asks Kueue's visibility server, directly on loopback with
// the admin's client certificate (it authenticates and authorizes by
// delegation to kube-apiserver), for the pending workloads of a LocalQueue.
func pendingWorkloads(ctx context.Context, t *testing.T, k *kueuetest.Kueue, ns, lq string) []pendingWorkload {
	t.Helper()
	hc, err := rest.HTTPClientFor(k.VisibilityConfig(env.Config))
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("%s/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/%s/localqueues/%s/pendingworkloads", k.VisibilityURL, ns, lq)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("visibility: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("visibility: GET %s: %s: %s", url, resp.Status, body)
	}
	t.Logf("visibility: %s", body)
	var summary struct {
		Items []struct {
			Metadata               metav1.ObjectMeta `json:"metadata"`
			PositionInClusterQueue int32             `json:"positionInClusterQueue"`
			PositionInLocalQueue   int32             `json:"positionInLocalQueue"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &summary); err != nil {
		t.Fatalf("visibility: %v: %s", err, body)
	}
	var out []pendingWorkload
	for _, it := range summary.Items {
		out = append(out, pendingWorkload{it.Metadata.Name, it.PositionInClusterQueue, it.PositionInLocalQueue})
	}
	return out
}
