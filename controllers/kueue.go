package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// Fair dispatch through Kueue (kubernetes-sigs/kueue), with a Workload per
// run: jobrun is a Kueue integration, as JobSet or Argo are. With
// WithKueue, a pending run's first pass creates its Workload (named as the
// run, owned by it: one pod set of one pod, the handler's pod spec, the
// JobType's priority) in its lane's LocalQueue: a team's runs
// jobrun-team-<team>, system runs (no team) jobrun-system. The controller
// creates a team's LocalQueue, in the runs' namespace, the first time it
// dispatches a run of that team, pointing at the teams' ClusterQueue; the
// system LocalQueue points at the system ClusterQueue, whose quota team runs
// cannot take. The ClusterQueues (quotas, fair sharing) are the cluster
// operator's (the chart renders them). Until Kueue admits the Workload the
// run has no pod: it stays pending with condition Queued=True (decide), its
// start timeout counted from admission. Once admitted, its pods are created
// as without Kueue (retries keep the admission); when the run ends, its
// Workload is marked Finished, which gives its quota back at once.
//
// (Kueue's plain-Pod integration, which gates each pod and makes its
// Workload, was tried first: its pod controller, one queue for every pod,
// ~7 passes a pod, fell behind under a flood on two cores, holding other
// teams' and system runs behind one team's backlog; docs/benchmarks.md.)

// The Kueue names jobrun uses.
const (
	// KueueSystemLocalQueue is the LocalQueue of system runs.
	KueueSystemLocalQueue = "jobrun-system"
	// kueueTeamQueuePrefix starts a team's LocalQueue name.
	kueueTeamQueuePrefix = "jobrun-team-"
	// kueuePodSet names the one pod set of a run's Workload.
	kueuePodSet = "main"
	// kueueFieldOwner writes the Finished condition of a run's Workload.
	kueueFieldOwner = "jobrun-manager"
)

// The controller creates the teams' LocalQueues in its namespace, and a
// Workload per run, which it marks Finished when the run ends.
// +kubebuilder:rbac:groups=kueue.x-k8s.io,resources=localqueues,verbs=get;list;watch;create,namespace=system
// +kubebuilder:rbac:groups=kueue.x-k8s.io,resources=workloads,verbs=get;list;watch;create,namespace=system
// +kubebuilder:rbac:groups=kueue.x-k8s.io,resources=workloads/status,verbs=patch,namespace=system
// It reads the value of a JobType's WorkloadPriorityClass.
// +kubebuilder:rbac:groups=kueue.x-k8s.io,resources=workloadpriorityclasses,verbs=get

// localQueueGVK and workloadGVK are Kueue's LocalQueue and Workload (read
// and created as unstructured, so that jobrun does not depend on Kueue's Go
// module).
var (
	localQueueGVK = schema.GroupVersionKind{Group: "kueue.x-k8s.io", Version: "v1beta2", Kind: "LocalQueue"}
	workloadGVK   = schema.GroupVersionKind{Group: "kueue.x-k8s.io", Version: "v1beta2", Kind: "Workload"}
	priorityGVK   = schema.GroupVersionKind{Group: "kueue.x-k8s.io", Version: "v1beta2", Kind: "WorkloadPriorityClass"}
)

// workloadObs is what the cache shows of a run's Workload.
type workloadObs struct {
	// admitted: Kueue admitted it (condition Admitted=True).
	admitted bool
	// reason and message say why it is not admitted yet (its QuotaReserved
	// condition, or Admitted while admission checks are pending).
	reason, message string
	// created is when it was created.
	created time.Time
}

// workload reads run's Workload from the cache, or nil.
func (r *JobRunReconciler) workload(ctx context.Context, run *jobsv1alpha1.JobRun) (*unstructured.Unstructured, error) {
	wl := &unstructured.Unstructured{}
	wl.SetGroupVersionKind(workloadGVK)
	err := r.cache.Get(ctx, client.ObjectKey{Namespace: run.Namespace, Name: run.Name}, wl)
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("failed to get the Workload of JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	if !metav1.IsControlledBy(wl, run) {
		return nil, fmt.Errorf("workload %s/%s exists and is not JobRun %s's", wl.GetNamespace(), wl.GetName(), run.Name)
	}
	return wl, nil
}

// workloadCondition is condition typ of wl.
func workloadCondition(wl *unstructured.Unstructured, typ string) (status, reason, message string) {
	conds, _, _ := unstructured.NestedSlice(wl.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == typ {
			status, _ = m["status"].(string)
			reason, _ = m["reason"].(string)
			message, _ = m["message"].(string)
		}
	}
	return
}

// workloadState is what decide needs of run's Workload: nil when it has
// none yet (the cache may lag its creation: creating it again is
// AlreadyExists, and its event brings the next pass).
func (r *JobRunReconciler) workloadState(ctx context.Context, run *jobsv1alpha1.JobRun) (*workloadObs, error) {
	wl, err := r.workload(ctx, run)
	if wl == nil || err != nil {
		return nil, err
	}
	obs := &workloadObs{created: wl.GetCreationTimestamp().Time}
	if status, _, _ := workloadCondition(wl, "Admitted"); status == "True" {
		obs.admitted = true
		return obs, nil
	}
	if status, reason, message := workloadCondition(wl, "QuotaReserved"); status == "False" && reason != "" {
		obs.reason, obs.message = reason, message
	} else if status == "True" {
		_, obs.reason, obs.message = workloadCondition(wl, "Admitted")
	}
	return obs, nil
}

// createWorkload creates run's Workload in its lane's LocalQueue (creating
// that first if needed), for the first attempt's pod spec and the JobType's
// priority. A priority class that does not exist fails the run (Kueue
// would never admit it); a refusal (Kueue's webhook down, a quota) keeps
// it queued, saying so, and is retried.
func (r *JobRunReconciler) createWorkload(ctx context.Context, run *jobsv1alpha1.JobRun, jt *jobsv1alpha1.JobType, d decision) (decision, error) {
	now := r.clock.Now()
	// Always a priority: Kueue's visibility API fails on a Workload
	// without one (as its own integrations write, 0 without a class).
	spec := map[string]any{"queueName": LocalQueueName(run), "priority": int64(0)}
	if name := jt.Spec.PriorityClassName; name != "" {
		value, found, err := r.priorityClassValue(ctx, name)
		switch {
		case err != nil:
			return d, err
		case !found:
			d = decision{status: d.status}
			d.finish(jobsv1alpha1.JobRunFailed, jobsv1alpha1.ReasonPriorityClassNotFound,
				fmt.Sprintf("the JobType's priorityClassName %q names no Kueue WorkloadPriorityClass", name), now)
			return d, nil
		}
		spec["priorityClassRef"] = map[string]any{"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": name}
		spec["priority"] = value
	}
	if err := r.ensureLocalQueue(ctx, run); err != nil {
		return d, err
	}
	pod := buildPod(run, jt, 1, r.policy.RunnerServiceAccount)
	podSpec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&pod.Spec)
	if err != nil {
		return d, err
	}
	spec["podSets"] = []any{map[string]any{"name": kueuePodSet, "count": int64(1), "template": map[string]any{"spec": podSpec}}}
	wl := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	wl.SetGroupVersionKind(workloadGVK)
	wl.SetNamespace(run.Namespace)
	wl.SetName(run.Name)
	wl.SetLabels(map[string]string{jobsv1alpha1.LabelRun: run.Name, "app.kubernetes.io/managed-by": "jobrun-manager"})
	if err := controllerutil.SetControllerReference(run, wl, r.scheme); err != nil {
		return d, err
	}
	err = r.client.Create(ctx, wl)
	switch {
	case err == nil:
		logf.FromContext(ctx).V(1).Info("created Kueue Workload", "localQueue", spec["queueName"])
	case apierrors.IsAlreadyExists(err):
	case apierrors.IsForbidden(err) || apierrors.IsInternalError(err) || apierrors.IsInvalid(err):
		// Kueue's webhook refused it, or could not be called (Kueue
		// down): the run waits, saying why, and tries again.
		logf.FromContext(ctx).Error(err, "Kueue refused the run's Workload; retrying")
		d.setCondition(jobsv1alpha1.JobRunConditionQueued, metav1.ConditionTrue, jobsv1alpha1.ReasonWorkloadRefused,
			clipTo("Kueue refused the run's Workload (retrying): "+err.Error(), 1024), metav1.NewTime(now))
		d.requeue(workloadRetry)
	default:
		return d, fmt.Errorf("failed to create the Workload of JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	return d, nil
}

// workloadRetry is how soon a refused Workload is created again.
const workloadRetry = 5 * time.Second

// finishWorkload marks run's Workload Finished, which gives its quota back
// (a finished run's: reason its reason), unless it has none or it is
// finished already.
func (r *JobRunReconciler) finishWorkload(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	wl, err := r.workload(ctx, run)
	if wl == nil || err != nil {
		return client.IgnoreNotFound(err)
	}
	if status, _, _ := workloadCondition(wl, "Finished"); status == "True" {
		return nil
	}
	reason, message := jobsv1alpha1.ReasonCompleted, "the run ended"
	if c := meta.FindStatusCondition(run.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); c != nil {
		reason, message = c.Reason, clipTo(c.Message, 1024)
	}
	patch := &unstructured.Unstructured{Object: map[string]any{"status": map[string]any{"conditions": []any{map[string]any{
		"type": "Finished", "status": "True", "reason": reason, "message": message,
		"lastTransitionTime": r.clock.Now().UTC().Format(time.RFC3339),
	}}}}}
	patch.SetGroupVersionKind(workloadGVK)
	patch.SetNamespace(wl.GetNamespace())
	patch.SetName(wl.GetName())
	if err := r.client.Status().Patch(ctx, patch, client.Apply, client.FieldOwner(kueueFieldOwner), client.ForceOwnership); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("failed to mark the Workload of JobRun %s finished: %w", client.ObjectKeyFromObject(run), err)
	}
	return nil
}

// workloadEvents queues the run of a Workload that changed: at
// dispatchPriority when Kueue just admitted it (the next pass creates the
// pod a user waits for, ahead of recording why other runs still wait),
// else at the normal priority.
var workloadEvents = handler.Funcs{
	CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		addRuns(ctx, q, e.Object, 0)
	},
	UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		priority := 0
		if workloadAdmitted(e.ObjectNew) && !workloadAdmitted(e.ObjectOld) {
			priority = dispatchPriority
		}
		addRuns(ctx, q, e.ObjectNew, priority)
	},
	DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		addRuns(ctx, q, e.Object, 0)
	},
}

// startsAndEndsFirst queues, at dispatchPriority, a run whose pod just
// started running and a run that just ended (its phase, written by its
// runner, or its pod's). With Kueue their number is bounded by the quota's
// turnover, and both are what someone waits for: a run's start is what its
// user waits to see (phase running), its end marks its Workload Finished,
// which gives its quota to the next queued run. At the normal priority both
// waited behind a team's backlog (first passes, Workloads that cannot be
// admitted before quota frees, and every queued run's Queued status): in
// make bench's flood a 1 s run held its quota ~35 s after its pod exited.
var startsAndEndsFirst = handler.Funcs{
	UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		switch o := e.ObjectNew.(type) {
		case *jobsv1alpha1.JobRun:
			if old, ok := e.ObjectOld.(*jobsv1alpha1.JobRun); ok && o.CurrentPhase().IsTerminal() && !old.CurrentPhase().IsTerminal() {
				addAt(q, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(o)}, dispatchPriority)
			}
		case *corev1.Pod:
			if old, ok := e.ObjectOld.(*corev1.Pod); ok && podStage(o) != podStage(old) && podStage(o) != 0 {
				addRuns(ctx, q, o, dispatchPriority)
			}
		}
	},
}

// podStage is 0 for a pod not started yet, 1 for a running one, 2 for one
// whose containers are done for good.
func podStage(pod *corev1.Pod) int {
	switch pod.Status.Phase {
	case corev1.PodRunning:
		return 1
	case corev1.PodSucceeded, corev1.PodFailed:
		return 2
	}
	return 0
}

// addRuns queues the run that controls obj (its Workload, its pod) at
// priority.
func addRuns(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], obj client.Object, priority int) {
	for _, req := range controllingRun(ctx, obj) {
		addAt(q, req, priority)
	}
}

// workloadAdmitted reports whether Workload obj is admitted.
func workloadAdmitted(obj client.Object) bool {
	wl, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	status, _, _ := workloadCondition(wl, "Admitted")
	return status == "True"
}

// controllingRun maps an object a run controls (its Workload, its pod) to
// that run.
func controllingRun(_ context.Context, obj client.Object) []reconcile.Request {
	if ref := metav1.GetControllerOf(obj); ref != nil && ref.Kind == "JobRun" {
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: obj.GetNamespace(), Name: ref.Name}}}
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

// priorityClassValue reads the value of Kueue's WorkloadPriorityClass name
// and reports whether it exists.
func (r *JobRunReconciler) priorityClassValue(ctx context.Context, name string) (int64, bool, error) {
	wpc := &unstructured.Unstructured{}
	wpc.SetGroupVersionKind(priorityGVK)
	err := r.apiReader.Get(ctx, client.ObjectKey{Name: name}, wpc)
	switch {
	case apierrors.IsNotFound(err):
		return 0, false, nil
	case err != nil:
		return 0, false, fmt.Errorf("failed to get Kueue WorkloadPriorityClass %s: %w", name, err)
	}
	value, _, _ := unstructured.NestedInt64(wpc.Object, "value")
	return value, true, nil
}

// KueueServed checks that Kueue's kinds jobrun uses are served: --kueue
// without Kueue installed fails at start, saying so.
func KueueServed(mapper meta.RESTMapper) error {
	for _, gvk := range []schema.GroupVersionKind{localQueueGVK, workloadGVK, priorityGVK} {
		if _, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return fmt.Errorf("--kueue: Kueue's %s (%s) is not served; install Kueue (v0.17 or later) first: %w", gvk.Kind, gvk.GroupVersion(), err)
		}
	}
	return nil
}
