package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// Fair dispatch through Kueue (kubernetes-sigs/kueue, its plain-Pod
// integration). With WithKueue, every run pod carries the label
// kueue.x-k8s.io/queue-name of its lane: a team's runs the LocalQueue
// jobrun-team-<team>, system runs (no team) jobrun-system. The controller
// creates a team's LocalQueue, in the runs' namespace, the first time it
// dispatches a run of that team, pointing at the teams' ClusterQueue; the
// system LocalQueue points at the system ClusterQueue, whose quota team runs
// cannot take. The ClusterQueues (quotas, fair sharing) are the cluster
// operator's (the chart renders them). Kueue's pod webhook gates each pod
// (kueue.x-k8s.io/admission) until it admits it: the run stays pending with
// condition Queued=True (decide), its start timeout counted from admission.

// The Kueue names jobrun uses.
const (
	// KueueQueueLabel names a pod's LocalQueue.
	KueueQueueLabel = "kueue.x-k8s.io/queue-name"
	// KueueAdmissionGate is the scheduling gate Kueue's pod webhook adds and
	// its admission removes.
	KueueAdmissionGate = "kueue.x-k8s.io/admission"
	// KueueSystemLocalQueue is the LocalQueue of system runs.
	KueueSystemLocalQueue = "jobrun-system"
	// KueuePriorityLabel names a pod's WorkloadPriorityClass (the
	// JobType's priorityClassName).
	KueuePriorityLabel = "kueue.x-k8s.io/priority-class"
	// kueueTeamQueuePrefix starts a team's LocalQueue name.
	kueueTeamQueuePrefix = "jobrun-team-"
)

// The controller creates the teams' LocalQueues in its namespace, and reads
// the Workloads Kueue makes of run pods (why a run waits).
// +kubebuilder:rbac:groups=kueue.x-k8s.io,resources=localqueues,verbs=get;list;watch;create,namespace=system
// +kubebuilder:rbac:groups=kueue.x-k8s.io,resources=workloads,verbs=get;list;watch,namespace=system
// It checks that a JobType's WorkloadPriorityClass exists.
// +kubebuilder:rbac:groups=kueue.x-k8s.io,resources=workloadpriorityclasses,verbs=get

// localQueueGVK and workloadGVK are Kueue's LocalQueue and Workload (read
// and created as unstructured, so that jobrun does not depend on Kueue's Go
// module).
var (
	localQueueGVK = schema.GroupVersionKind{Group: "kueue.x-k8s.io", Version: "v1beta2", Kind: "LocalQueue"}
	workloadGVK   = schema.GroupVersionKind{Group: "kueue.x-k8s.io", Version: "v1beta2", Kind: "Workload"}
	priorityGVK   = schema.GroupVersionKind{Group: "kueue.x-k8s.io", Version: "v1beta2", Kind: "WorkloadPriorityClass"}
)

// kueueJobUIDLabel is on the Workload of a pod: the pod's UID.
const kueueJobUIDLabel = "kueue.x-k8s.io/job-uid"

// queueState is why a queued pod waits, as its Workload says.
type queueState struct {
	reason, message string
}

// workloadState reads the Workload of pod from the cache: Kueue's reason
// and message for not admitting it yet (its QuotaReserved condition, or
// Admitted when the quota is reserved and admission checks are pending),
// or nil when there is no Workload yet.
func (r *JobRunReconciler) workloadState(ctx context.Context, pod *corev1.Pod) *queueState {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(workloadGVK.GroupVersion().WithKind("WorkloadList"))
	if err := r.cache.List(ctx, list, client.InNamespace(pod.Namespace), client.MatchingLabels{kueueJobUIDLabel: string(pod.UID)}); err != nil || len(list.Items) == 0 {
		return nil
	}
	conds, _, _ := unstructured.NestedSlice(list.Items[0].Object, "status", "conditions")
	find := func(typ string) (status, reason, message string) {
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == typ {
				status, _ = m["status"].(string)
				reason, _ = m["reason"].(string)
				message, _ = m["message"].(string)
			}
		}
		return
	}
	if status, reason, message := find("QuotaReserved"); status == "False" && reason != "" {
		return &queueState{reason: reason, message: message}
	} else if status == "True" {
		if status, reason, message := find("Admitted"); status == "False" && reason != "" {
			return &queueState{reason: reason, message: message}
		}
	}
	return nil
}

// workloadRun maps a Workload to the run of the pod that owns it.
func (r *JobRunReconciler) workloadRun(ctx context.Context, obj client.Object) []reconcile.Request {
	for _, ref := range obj.GetOwnerReferences() {
		if ref.Kind != "Pod" {
			continue
		}
		pod := &corev1.Pod{}
		if err := r.client.Get(ctx, client.ObjectKey{Namespace: obj.GetNamespace(), Name: ref.Name}, pod); err != nil {
			return nil
		}
		if run := pod.Labels[jobsv1alpha1.LabelRun]; run != "" {
			return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: pod.Namespace, Name: run}}}
		}
	}
	return nil
}

// KueueQueues are the ClusterQueues jobrun's LocalQueues point at.
type KueueQueues struct {
	// Teams is the ClusterQueue of every team's LocalQueue.
	Teams string
	// System is the ClusterQueue of the system LocalQueue.
	System string
}

// WithKueue sends run pods through Kueue: each in its lane's LocalQueue,
// created on demand, pointing at q's ClusterQueues.
func WithKueue(q KueueQueues) Option { return func(o *options) { o.kueue = &q } }

// LocalQueueName is the LocalQueue of run's lane: jobrun-system for system
// runs, jobrun-team-<team> for a team's (the team's id if it makes a valid
// name, else a hash of it).
func LocalQueueName(run *jobsv1alpha1.JobRun) string {
	team := run.Spec.TeamID
	if team == "" {
		return KueueSystemLocalQueue
	}
	name := kueueTeamQueuePrefix + team
	if len(validation.IsDNS1123Label(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(team))
	return kueueTeamQueuePrefix + hex.EncodeToString(sum[:8])
}

// kueueQueued reports whether pod waits for Kueue's admission.
func kueueQueued(pod *corev1.Pod) bool {
	return slices.ContainsFunc(pod.Spec.SchedulingGates, func(g corev1.PodSchedulingGate) bool { return g.Name == KueueAdmissionGate })
}

// ensureLocalQueue creates the LocalQueue of run's lane unless this process
// saw it exist (ensuredQueues: one read per lane, not per pod).
func (r *JobRunReconciler) ensureLocalQueue(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	name := LocalQueueName(run)
	key := client.ObjectKey{Namespace: run.Namespace, Name: name}
	if _, ok := r.ensuredQueues.Load(key); ok {
		return nil
	}
	lq := &unstructured.Unstructured{}
	lq.SetGroupVersionKind(localQueueGVK)
	found, err := r.getConfirmed(ctx, key, lq)
	if err != nil {
		return err
	}
	if found {
		r.ensuredQueues.Store(key, true)
		return nil
	}
	cq := r.kueue.Teams
	if run.Spec.TeamID == "" {
		cq = r.kueue.System
	}
	lq.SetNamespace(run.Namespace)
	lq.SetName(name)
	lq.SetLabels(map[string]string{"app.kubernetes.io/managed-by": "jobrun-manager"})
	if run.Spec.TeamID != "" {
		lq.SetAnnotations(map[string]string{"jobs.jobrun.dev/team": run.Spec.TeamID})
	}
	lq.Object["spec"] = map[string]any{"clusterQueue": cq}
	err = r.client.Create(ctx, lq)
	switch {
	case apierrors.IsAlreadyExists(err):
	case err != nil:
		return fmt.Errorf("failed to create Kueue LocalQueue %s/%s: %w", run.Namespace, name, err)
	default:
		logf.FromContext(ctx).Info("created Kueue LocalQueue", "localQueue", name, "clusterQueue", cq)
	}
	r.ensuredQueues.Store(key, true)
	return nil
}

// priorityClassRecheck is how long a WorkloadPriorityClass seen to exist is
// taken to exist without reading it again.
const priorityClassRecheck = time.Minute

// priorityClassExists reports whether Kueue's WorkloadPriorityClass name
// exists: Kueue makes no Workload for a pod naming a missing class, so its
// run would wait forever. A class seen is not read again for
// priorityClassRecheck.
func (r *JobRunReconciler) priorityClassExists(ctx context.Context, name string) (bool, error) {
	now := r.clock.Now()
	if seen, ok := r.priorityClasses.Load(name); ok && now.Sub(seen.(time.Time)) < priorityClassRecheck {
		return true, nil
	}
	wpc := &unstructured.Unstructured{}
	wpc.SetGroupVersionKind(priorityGVK)
	err := r.apiReader.Get(ctx, client.ObjectKey{Name: name}, wpc)
	switch {
	case apierrors.IsNotFound(err):
		r.priorityClasses.Delete(name)
		return false, nil
	case err != nil:
		return false, fmt.Errorf("failed to get Kueue WorkloadPriorityClass %s: %w", name, err)
	}
	r.priorityClasses.Store(name, now)
	return true, nil
}

// KueueServed checks that Kueue's kinds jobrun uses are served: --kueue
// without Kueue installed fails at start, saying so.
func KueueServed(mapper meta.RESTMapper) error {
	for _, gvk := range []schema.GroupVersionKind{localQueueGVK, workloadGVK, priorityGVK} {
		if _, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return fmt.Errorf("--kueue: Kueue's %s (%s) is not served; install Kueue (v0.17 or later, with its pod framework) first: %w", gvk.Kind, gvk.GroupVersion(), err)
		}
	}
	return nil
}
