// Package controllers holds jobrun's reconcilers.
package controllers

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/guard"
	"jobrun.dev/jobrun/internal/paramschema"
)

// DefaultRunnerServiceAccount is the service account of run pods whose
// JobType's template names none. The install creates it with the runner's
// least-privilege Role.
const DefaultRunnerServiceAccount = "jobrun-runner"

// The manager serves its own namespace: every rule is namespaced (a Role);
// the chart's manager.clusterWide grants them in every namespace instead.
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobruns,verbs=get;list;watch;update;patch;delete,namespace=system
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobruns/status,verbs=get;update;patch,namespace=system
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobtypes,verbs=get;list;watch,namespace=system
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;create;delete,namespace=system
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch,namespace=system
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;delete,namespace=system

// JobRunReconciler turns pending runs into pods and pods' outcomes into run
// status; it enforces deadlines and cancel grace periods, retries failed
// attempts and deletes finished runs after their TTL or history limit.
type JobRunReconciler struct {
	client client.Client
	// cache reads what client does not cache (Kueue's Workloads).
	cache client.Reader
	// apiReader reads around the cache, to confirm that something the cache
	// lacks is really gone before acting on its absence.
	apiReader client.Reader
	scheme    *runtime.Scheme
	recorder  events.EventRecorder
	clock     clock.PassiveClock
	policy    PodPolicy
	metrics   *runMetrics
	workers   int
	notifier  Notifier
	// written is the controller's own last write of each run, until the
	// cache catches up with it.
	written writtenRuns
	// archive, if set, receives finished runs; archiveLiveTTL is how long
	// they stay in the API server after (jobrun_archive.go).
	archive        Archive
	archiveLiveTTL time.Duration
	archiveBackoff archiveBackoff
	// kueue, if set, puts run pods in Kueue's LocalQueues (kueue.go);
	// ensuredQueues are the LocalQueues seen to exist.
	kueue         *KueueQueues
	ensuredQueues sync.Map
	// kueuePositions, if set, reads queued runs' positions into positions
	// (kueue_position.go).
	kueuePositions *KueuePositions
	positions      sync.Map
	// backlog orders the first passes of teams' new runs (podlessFirst).
	backlog teamBacklog
}

// Notifier sends the completion email of a finished run.
type Notifier interface {
	Send(ctx context.Context, run *jobsv1alpha1.JobRun) error
}

// NewJobRunReconciler returns a reconciler that uses mgr's client, cache and
// event recorder.
func NewJobRunReconciler(mgr ctrl.Manager, opts ...Option) *JobRunReconciler {
	o := newOptions(opts)
	return &JobRunReconciler{
		client:         mgr.GetClient(),
		cache:          mgr.GetCache(),
		apiReader:      mgr.GetAPIReader(),
		scheme:         mgr.GetScheme(),
		recorder:       mgr.GetEventRecorder("jobrun-controller"),
		clock:          o.clock,
		policy:         o.policy,
		metrics:        defaultRunMetrics,
		workers:        o.workers,
		notifier:       o.notifier,
		archive:        o.archive,
		archiveLiveTTL: o.archiveLiveTTL,
		kueue:          o.kueue,
		kueuePositions: o.kueuePositions,
	}
}

// conflictRetryDelay is how soon a run whose status write lost a race is
// looked at again.
const conflictRetryDelay = 100 * time.Millisecond

// indexProjectJobType indexes runs by (project, job type), for history limits.
const indexProjectJobType = "jobrun.projectJobType"

func projectJobTypeKey(run *jobsv1alpha1.JobRun) string {
	return run.Spec.ProjectID + "/" + run.Spec.JobType
}

// SetupWithManager registers the reconciler: it watches runs and the pods
// they own.
func (r *JobRunReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &jobsv1alpha1.JobRun{}, indexProjectJobType, func(o client.Object) []string {
		return []string{projectJobTypeKey(o.(*jobsv1alpha1.JobRun))}
	}); err != nil {
		return fmt.Errorf("failed to index JobRuns by project and job type: %w", err)
	}
	runInformer, err := mgr.GetCache().GetInformer(ctx, &jobsv1alpha1.JobRun{})
	if err != nil {
		return fmt.Errorf("failed to get the JobRun informer: %w", err)
	}
	if _, err := runInformer.AddEventHandler(r.written.seen()); err != nil {
		return fmt.Errorf("failed to watch JobRuns for the controller's own writes: %w", err)
	}
	b := ctrl.NewControllerManagedBy(mgr).
		For(&jobsv1alpha1.JobRun{}, builder.WithPredicates(notConsistencyMarker, leftToPodlessFirst, predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{},
			predicate.LabelChangedPredicate{}, statusPhaseChanged{}))).
		// A new run's first pass (its pod) ahead of the bookkeeping of
		// runs that have one.
		Watches(&jobsv1alpha1.JobRun{}, r.podlessFirst()).
		Owns(&corev1.Pod{})
	if r.kueue != nil {
		// A run's Workload admitted, or why it waits.
		wl := &unstructured.Unstructured{}
		wl.SetGroupVersionKind(workloadGVK)
		b = b.Watches(wl, workloadEvents).
			// A run's start (what its user waits to see) and its end
			// (its quota back): ahead of a team's backlog.
			Watches(&jobsv1alpha1.JobRun{}, startsAndEndsFirst, builder.WithPredicates(notConsistencyMarker)).
			Watches(&corev1.Pod{}, startsAndEndsFirst)
		if r.kueuePositions != nil {
			// A queued run whose position changed.
			reporter, err := newPositionReporter(r, *r.kueuePositions)
			if err != nil {
				return err
			}
			if err := mgr.Add(reporter); err != nil {
				return err
			}
			b = b.WatchesRawSource(source.Channel(reporter.events, &handler.EnqueueRequestForObject{}))
		}
	}
	return b.WithOptions(controller.Options{MaxConcurrentReconciles: r.workers}).
		Named("jobrun").
		Complete(r)
}

// dispatchPriority is the work queue priority of a run that has no pod yet:
// its pod is what a user waits for; recording that other runs started or
// ended can wait while the controller is busy (under an overload, until new
// runs stop arriving faster than it creates their pods).
const dispatchPriority = 10

// systemDispatchPriority is dispatchPriority for a system run (no team):
// the system lane is never held behind a team's burst, in the controller's
// queue either.
const systemDispatchPriority = dispatchPriority + 1

// runDispatchPriority is the dispatch priority of run o.
func runDispatchPriority(o client.Object) int {
	if run, ok := o.(*jobsv1alpha1.JobRun); ok && run.Spec.TeamID == "" {
		return systemDispatchPriority
	}
	return dispatchPriority
}

// addAt queues req at priority (at the normal one when q has no
// priorities).
func addAt(q workqueue.TypedRateLimitingInterface[reconcile.Request], req reconcile.Request, priority int) {
	if pq, ok := q.(priorityqueue.PriorityQueue[reconcile.Request]); ok {
		pq.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(priority)}, req)
		return
	}
	q.Add(req)
}

// podlessFirst queues a run created without an attempt yet (or found so when
// the manager starts) at dispatchPriority (at the normal one when the queue
// has no priorities), for one pass: Reconcile's results ask for the normal
// priority again. It is the only handler that queues such a run's creation
// (leftToPodlessFirst): queued twice, the run could be taken by a worker
// between the two, and then passed over again at once, before the cache
// shows the pod the first pass created (a pod create refused as existing).
// A team's first passes wait lower the more of them its backlog holds
// (teamBacklog).
func (r *JobRunReconciler) podlessFirst() handler.Funcs {
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if !podless(e.Object) {
				return
			}
			req := reconcile.Request{NamespacedName: client.ObjectKeyFromObject(e.Object)}
			priority := runDispatchPriority(e.Object)
			if team := e.Object.(*jobsv1alpha1.JobRun).Spec.TeamID; team != "" {
				priority = r.backlog.add(req.NamespacedName, team)
			}
			addAt(q, req, priority)
		},
	}
}

// backlogStep is how many of a team's first passes wait at one priority:
// its first backlogStep at dispatchPriority, the next one lower, and so
// on, never below 1 (still ahead of the normal priority's bookkeeping).
const backlogStep = 50

// teamBacklog counts, per team, the runs podlessFirst queued whose first
// pass has not come yet, so that one team's burst does not queue another
// team's new runs behind it: within a priority the queue is first come,
// first served.
type teamBacklog struct {
	mu     sync.Mutex
	teams  map[string]int
	queued map[types.NamespacedName]string
}

// add counts run's first pass in team's backlog (once, however often it is
// queued) and returns its priority.
func (b *teamBacklog) add(run types.NamespacedName, team string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.teams == nil {
		b.teams, b.queued = map[string]int{}, map[types.NamespacedName]string{}
	}
	ahead := b.teams[team]
	if _, ok := b.queued[run]; !ok {
		b.queued[run] = team
		b.teams[team]++
	} else {
		ahead--
	}
	return max(dispatchPriority-ahead/backlogStep, 1)
}

// done takes run's first pass out of its team's backlog.
func (b *teamBacklog) done(run types.NamespacedName) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if team, ok := b.queued[run]; ok {
		delete(b.queued, run)
		if b.teams[team]--; b.teams[team] == 0 {
			delete(b.teams, team)
		}
	}
}

// leftToPodlessFirst keeps the JobRun handler from queueing the creations
// podlessFirst queues.
var leftToPodlessFirst = predicate.Funcs{CreateFunc: func(e event.CreateEvent) bool { return !podless(e.Object) }}

// podless reports whether o is a run, not the consistency marker, that has
// not ended and whose status records no attempt: its next pass creates or
// finds its first pod.
func podless(o client.Object) bool {
	run, ok := o.(*jobsv1alpha1.JobRun)
	return ok && run.Status.Attempts == 0 && !run.CurrentPhase().IsTerminal() && !jobsv1alpha1.IsConsistencyMarker(run)
}

// notConsistencyMarker leaves out the REST API's consistency marker, a
// JobRun that is not a run and changes on every consistent read.
var notConsistencyMarker = predicate.NewPredicateFuncs(func(o client.Object) bool {
	return !jobsv1alpha1.IsConsistencyMarker(o)
})

// statusPhaseChanged lets through updates that change what the controller
// decides from (phase, attempts), not the runner's frequent progress writes.
type statusPhaseChanged struct{ predicate.Funcs }

func (statusPhaseChanged) Update(e event.UpdateEvent) bool {
	oldRun, ok1 := e.ObjectOld.(*jobsv1alpha1.JobRun)
	newRun, ok2 := e.ObjectNew.(*jobsv1alpha1.JobRun)
	if !ok1 || !ok2 {
		return true
	}
	return oldRun.Status.Phase != newRun.Status.Phase || oldRun.Status.Attempts != newRun.Status.Attempts
}

// Reconcile brings one run one step closer to its end. A pass it asks for
// later waits at the normal priority, whatever this one's (podlessFirst).
func (r *JobRunReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.backlog.done(req.NamespacedName)
	res, err := r.reconcile(ctx, req)
	if err == nil {
		res.Priority = ptr.To(0)
	}
	return res, err
}

func (r *JobRunReconciler) reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	// The cache may not show this controller's last write yet: start from
	// that write, not from the version it replaced.
	run, err := r.written.read(ctx, r.client, req.NamespacedName)
	if err != nil {
		return ctrl.Result{}, getError(err, "JobRun", req.NamespacedName)
	}
	if jobsv1alpha1.IsConsistencyMarker(run) {
		return ctrl.Result{}, nil // not a run
	}
	if run.CurrentPhase().IsTerminal() {
		return r.reconcileFinished(ctx, run)
	}

	jobType, err := r.jobType(ctx, run)
	if err != nil {
		return ctrl.Result{}, err
	}
	var pod *corev1.Pod
	switch {
	case jobType == nil:
	case run.Status.Attempts > 0:
		if pod, err = r.currentPod(ctx, run); err != nil {
			return ctrl.Result{}, err
		}
	default:
		pod = r.unrecordedPod(ctx, run)
	}

	var paramsErr error
	if jobType != nil && run.Status.Attempts == 0 {
		paramsErr = paramschema.Validate(jobType.Spec.ParamsSchema, run.Spec.Params)
	}
	var workload *workloadObs
	var position *queuePosition
	if r.kueue != nil && jobType != nil && run.Status.Attempts == 0 && pod == nil {
		if workload, err = r.workloadState(ctx, run); err != nil {
			return ctrl.Result{}, err
		}
		position = r.queuePosition(run)
	}
	d := decide(observation{run: run, jobType: jobType, pod: pod, paramsErr: paramsErr,
		kueue: r.kueue != nil, workload: workload, position: position, now: r.clock.Now()})

	if d.createWorkload {
		if d, err = r.createWorkload(ctx, run, jobType, d); err != nil {
			return ctrl.Result{}, err
		}
	}
	if d.createAttempt > 0 {
		if d, err = r.createAttempt(ctx, run, jobType, d); err != nil {
			return ctrl.Result{}, err
		}
	}
	if d.firstAttemptUnrecorded(run) || d.workloadUnrecorded(run) {
		// A run created without the status label (kubectl) still gets it,
		// and the archive's finalizer.
		return ctrl.Result{RequeueAfter: d.requeueAfter}, r.syncMetadata(ctx, run)
	}
	// A finishing run's row goes to the archive before its end is recorded.
	r.archiveOnFinish(ctx, run, &d)
	// Record the decision before acting on the pod: had the pod gone first
	// and the status write failed, the next pass would see a lost pod.
	if err := r.patchStatus(ctx, run, d.status); err != nil {
		if apierrors.IsConflict(err) {
			// The run changed since it was read (often the runner's progress
			// write): decide again on the new version soon, without the
			// growing backoff of an error.
			return ctrl.Result{RequeueAfter: conflictRetryDelay}, nil
		}
		return ctrl.Result{}, err
	}
	if err := r.act(ctx, run, pod, d); err != nil {
		return ctrl.Result{}, err
	}
	if d.finished && r.kueue != nil {
		// Its quota back to Kueue in this pass, not the finished run's next
		// one (which does it again if this failed): under a flood, the
		// next pass waits behind every queued run's bookkeeping.
		if err := r.finishWorkload(ctx, run); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: d.requeueAfter}, nil
}

// createAttempt creates the pod of the attempt d starts. A template the
// policy refuses, or one the API server finds invalid, fails the run instead
// (retrying cannot help); a pod the API server forbids is handled as
// podRefused says.
func (r *JobRunReconciler) createAttempt(ctx context.Context, run *jobsv1alpha1.JobRun, jt *jobsv1alpha1.JobType, d decision) (decision, error) {
	if violations := r.policy.Violations(&jt.Spec.Template.Spec); len(violations) > 0 {
		// A JobType admitted before the admission policy existed (or
		// with the policy removed) still gets no pod; retrying cannot help.
		d = decision{status: d.status}
		d.finish(jobsv1alpha1.JobRunFailed, jobsv1alpha1.ReasonTemplateNotAllowed, templateRefusal(violations), r.clock.Now())
		return d, nil
	}
	err := r.createPod(ctx, run, jt, d.createAttempt)
	switch {
	case err == nil:
		return d, nil
	case apierrors.IsInvalid(err):
		// The JobType's template cannot make a valid pod: retrying
		// would fail forever.
		d = decision{status: d.status}
		d.finish(jobsv1alpha1.JobRunFailed, jobsv1alpha1.ReasonHandlerFailed, "the JobType's pod template is invalid: "+err.Error(), r.clock.Now())
		return d, nil
	case apierrors.IsForbidden(err) || apierrors.IsInternalError(err):
		// Forbidden, or an admission webhook that cannot be called (such
		// as Kueue's while it restarts, failurePolicy Fail): refused.
		return podRefused(observation{run: run, jobType: jt, now: r.clock.Now()}, d, err), nil
	default:
		return d, fmt.Errorf("failed to create pod %s for JobRun %s: %w", jobsv1alpha1.PodName(run.Name, d.createAttempt), client.ObjectKeyFromObject(run), err)
	}
}

// act carries out decision d once its status is recorded: it stops the pod
// if asked, announces and counts the transition, and labels the run with its
// phase.
func (r *JobRunReconciler) act(ctx context.Context, run *jobsv1alpha1.JobRun, pod *corev1.Pod, d decision) error {
	if d.deletePod && pod != nil {
		if err := r.deletePod(ctx, run, pod); err != nil {
			return err
		}
	}
	// Only now is the transition recorded; count and announce it once.
	var related runtime.Object
	if pod != nil {
		related = pod
	}
	for _, e := range d.events {
		r.recorder.Eventf(run, related, e.eventType, e.reason, e.reason, "%s", e.message)
	}
	if d.started {
		r.metrics.started(run)
	}
	if d.finished {
		r.metrics.finished(run)
	}
	return r.syncMetadata(ctx, run)
}

// jobType finds the run's JobType, confirming a cache miss with the API
// server: a JobType created a moment ago must not fail a run.
func (r *JobRunReconciler) jobType(ctx context.Context, run *jobsv1alpha1.JobRun) (*jobsv1alpha1.JobType, error) {
	key := client.ObjectKey{Namespace: run.Namespace, Name: jobsv1alpha1.JobTypeObjectName(run.Spec.JobType)}
	jt := &jobsv1alpha1.JobType{}
	found, err := r.getConfirmed(ctx, key, jt)
	switch {
	case err != nil:
		return nil, fmt.Errorf("failed to get JobType %s for JobRun %s: %w", key.Name, client.ObjectKeyFromObject(run), err)
	case !found || jt.Spec.JobType != run.Spec.JobType:
		return nil, nil
	}
	return jt, nil
}

// currentPod returns the pod of run's current attempt, or nil when the API
// server confirms it does not exist: a pod created a moment ago may not be in
// the cache yet.
func (r *JobRunReconciler) currentPod(ctx context.Context, run *jobsv1alpha1.JobRun) (*corev1.Pod, error) {
	key := client.ObjectKey{Namespace: run.Namespace, Name: jobsv1alpha1.PodName(run.Name, run.Status.Attempts)}
	pod := &corev1.Pod{}
	found, err := r.getConfirmed(ctx, key, pod)
	switch {
	case err != nil:
		return nil, fmt.Errorf("failed to get pod %s of JobRun %s: %w", key.Name, client.ObjectKeyFromObject(run), err)
	case !found:
		return nil, nil
	}
	return pod, nil
}

// unrecordedPod returns the first attempt's pod of a run whose status
// records no attempt yet (see firstAttemptUnrecorded), as the cache shows it,
// or nil. A pod the cache does not show yet is created again and found to
// exist; its event brings the next pass.
func (r *JobRunReconciler) unrecordedPod(ctx context.Context, run *jobsv1alpha1.JobRun) *corev1.Pod {
	pod := &corev1.Pod{}
	if err := r.client.Get(ctx, client.ObjectKey{Namespace: run.Namespace, Name: jobsv1alpha1.PodName(run.Name, 1)}, pod); err != nil || !metav1.IsControlledBy(pod, run) {
		return nil
	}
	return pod
}

// getConfirmed reads key into obj from the cache, confirming a miss with the
// API server, and reports whether obj exists.
func (r *JobRunReconciler) getConfirmed(ctx context.Context, key client.ObjectKey, obj client.Object) (bool, error) {
	err := r.client.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) {
		err = r.apiReader.Get(ctx, key, obj)
	}
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// getError is what Reconcile returns when reading the object it reconciles,
// kind key, failed with err: nothing when the object is gone (there is
// nothing left to do), else err naming it.
func getError(err error, kind string, key client.ObjectKey) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return fmt.Errorf("failed to get %s %s: %w", kind, key, err)
}

// createPod creates the pod of one attempt. AlreadyExists is success: the
// name is deterministic, so it can only be this attempt's pod.
func (r *JobRunReconciler) createPod(ctx context.Context, run *jobsv1alpha1.JobRun, jt *jobsv1alpha1.JobType, attempt int32) error {
	pod := buildPod(run, jt, attempt, r.policy.RunnerServiceAccount)
	if err := controllerutil.SetControllerReference(run, pod, r.scheme); err != nil {
		return err
	}
	err := r.client.Create(ctx, pod)
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		logf.FromContext(ctx).Info("created pod", "pod", pod.Name, "attempt", attempt)
	}
	return err
}

// runnerPodLabels are Kubernetes' recommended labels of a runner pod, so
// that `kubectl get pods -l app.kubernetes.io/component=runner` finds them.
var runnerPodLabels = map[string]string{
	"app.kubernetes.io/component":  "runner",
	"app.kubernetes.io/part-of":    "jobrun",
	"app.kubernetes.io/managed-by": "jobrun-manager",
}

// buildPod is the pod of one attempt: the JobType's template, the run's
// identity in every container's environment, never restarted in place.
func buildPod(run *jobsv1alpha1.JobRun, jt *jobsv1alpha1.JobType, attempt int32, serviceAccount string) *corev1.Pod {
	tmpl := jt.Spec.Template.DeepCopy()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        jobsv1alpha1.PodName(run.Name, attempt),
			Namespace:   run.Namespace,
			Labels:      tmpl.Labels,
			Annotations: tmpl.Annotations,
		},
		Spec: tmpl.Spec,
	}
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[jobsv1alpha1.LabelRun] = run.Name
	pod.Labels[jobsv1alpha1.LabelJobType] = run.Spec.JobType
	// The recommended labels, unless the template chose its own.
	for k, v := range runnerPodLabels {
		if _, ok := pod.Labels[k]; !ok {
			pod.Labels[k] = v
		}
	}
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	if pod.Spec.ServiceAccountName == "" {
		pod.Spec.ServiceAccountName = serviceAccount
	}
	if jt.Spec.ActiveDeadlineSeconds != nil && pod.Spec.ActiveDeadlineSeconds == nil {
		// The kubelet enforces it too, should the controller be down.
		pod.Spec.ActiveDeadlineSeconds = ptr.To(*jt.Spec.ActiveDeadlineSeconds + ptr.Deref(jt.Spec.CancelGracePeriodSeconds, 30))
	}
	pod.Spec = restrictedPodSpec(pod.Spec)
	env := []corev1.EnvVar{
		{Name: jobsv1alpha1.EnvRunName, Value: run.Name},
		{Name: jobsv1alpha1.EnvRunNamespace, Value: run.Namespace},
		{Name: jobsv1alpha1.EnvJobType, Value: run.Spec.JobType},
		{Name: jobsv1alpha1.EnvAttempt, Value: strconv.Itoa(int(attempt))},
	}
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].Env = append(pod.Spec.Containers[i].Env, env...)
	}
	return pod
}

// patchStatus writes status if it changed, based on the exact version read:
// a stale read gets a conflict and a retry, never a lost terminal state.
func (r *JobRunReconciler) patchStatus(ctx context.Context, run *jobsv1alpha1.JobRun, status jobsv1alpha1.JobRunStatus) error {
	if equality.Semantic.DeepEqual(run.Status, status) {
		return nil
	}
	orig := run.DeepCopy()
	run.Status = status
	if err := r.client.Status().Patch(ctx, run, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("failed to patch the status of JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	r.written.wrote(orig.ResourceVersion, run)
	return nil
}

// reconcileFinished keeps a finished run's pod from running on and deletes
// the run once its TTL has passed or its history limit is exceeded; the
// garbage collector then deletes its pods.
func (r *JobRunReconciler) reconcileFinished(ctx context.Context, run *jobsv1alpha1.JobRun) (ctrl.Result, error) {
	archiveRetry, err := r.archiveFinished(ctx, run)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.syncMetadata(ctx, run); err != nil {
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: conflictRetryDelay}, nil
		}
		return ctrl.Result{}, err
	}
	if err := r.stopPods(ctx, run); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.releaseGuard(ctx, run); err != nil {
		return ctrl.Result{}, err
	}
	if r.kueue != nil {
		// Its quota back to Kueue; a run that ended queued leaves the
		// queue.
		if err := r.finishWorkload(ctx, run); err != nil {
			return ctrl.Result{}, err
		}
	}
	if run.DeletionTimestamp != nil {
		// Deleted (kubectl, a schedule's history, the garbage collector):
		// once archived, its finalizer is gone and so is the run.
		return ctrl.Result{RequeueAfter: archiveRetry}, nil
	}
	// A run is not deleted while its email is still owed.
	if wait, err := r.notify(ctx, run); err != nil || wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, err
	}
	if !r.deletable(run) {
		return ctrl.Result{RequeueAfter: archiveRetry}, nil
	}
	jt, err := r.jobType(ctx, run)
	if err != nil {
		return ctrl.Result{}, err
	}
	// Without its JobType (confirmed: a cache that lags must not keep a run
	// forever) a run has no TTL of its own; it stays until deleted, or the
	// archive's live TTL ends.
	ttl := r.liveTTL(jt)
	if ttl == 0 {
		return ctrl.Result{}, nil
	}
	now := r.clock.Now()
	finishedAt := run.CreatedAt()
	if run.Status.CompletedAt != nil {
		finishedAt = run.Status.CompletedAt.Time
	}
	if left := finishedAt.Add(ttl).Sub(now); left > 0 {
		// Not yet due: prune the (project, job type) history instead, which
		// may include this run, and look again when the TTL ends.
		if jt != nil {
			deletedSelf, err := r.pruneHistory(ctx, run, jt)
			if err != nil || deletedSelf {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{RequeueAfter: left}, nil
	}
	logf.FromContext(ctx).Info("deleting finished run after its TTL", "ttl", ttl)
	return ctrl.Result{}, r.deleteRun(ctx, run)
}

// stopPods deletes the run's pods that still run: a deadline or an ignored
// cancel ended the run, and the pod must not go on working for it.
func (r *JobRunReconciler) stopPods(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	pods := &corev1.PodList{}
	if err := r.client.List(ctx, pods, client.InNamespace(run.Namespace), client.MatchingLabels{jobsv1alpha1.LabelRun: run.Name}); err != nil {
		return fmt.Errorf("failed to list the pods of JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		if err := r.deletePod(ctx, run, pod); err != nil {
			return err
		}
	}
	return nil
}

// deletePod deletes run's pod, if it is still the one that was read.
func (r *JobRunReconciler) deletePod(ctx context.Context, run *jobsv1alpha1.JobRun, pod *corev1.Pod) error {
	err := r.client.Delete(ctx, pod, client.Preconditions{UID: &pod.UID})
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("failed to delete pod %s of JobRun %s: %w", pod.Name, client.ObjectKeyFromObject(run), err)
	}
	if err == nil {
		logf.FromContext(ctx).Info("deleted pod of a finished run", "pod", pod.Name)
	}
	return nil
}

// releaseGuard releases the (job type, project) guard run holds, if any
// (internal/guard), so the next run of the pair may start.
func (r *JobRunReconciler) releaseGuard(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	// Read live: leases are not worth a cluster-wide informer.
	released, err := guard.New(r.apiReader, r.client).Release(ctx, run)
	if released {
		logf.FromContext(ctx).Info("released the guard", "guard", guard.Key(run).Name)
	}
	if err != nil {
		return fmt.Errorf("failed to release the guard of JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	return nil
}

// deleteRun deletes run's pods, then run, if it is still the one that was
// read. The garbage collector would delete the pods after the run, but at
// kube-controller-manager's client rate (20 requests/s by default, a lookup
// and a delete per pod): runs that leave faster (a short live TTL with the
// archive) would leave their pods behind in etcd and in every cache, growing
// with history. It still deletes any pod this pass did not see.
func (r *JobRunReconciler) deleteRun(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	pods := &corev1.PodList{}
	if err := r.client.List(ctx, pods, client.InNamespace(run.Namespace), client.MatchingLabels{jobsv1alpha1.LabelRun: run.Name}); err != nil {
		return fmt.Errorf("failed to list the pods of JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.DeletionTimestamp != nil || !metav1.IsControlledBy(pod, run) {
			continue
		}
		if err := r.client.Delete(ctx, pod, client.Preconditions{UID: &pod.UID}); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("failed to delete pod %s of finished JobRun %s: %w", pod.Name, client.ObjectKeyFromObject(run), err)
		}
	}
	err := r.client.Delete(ctx, run, client.Preconditions{UID: &run.UID}, client.PropagationPolicy(metav1.DeletePropagationBackground))
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("failed to delete finished JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	return nil
}

// pruneHistory deletes the finished runs of run's (project, job type) beyond
// the newest historyLimit. Every finished run's pass prunes the whole group,
// so the runs that fell out of the history when a newer one finished go too,
// without waiting for their own TTL. A run whose email is still owed stays:
// its own pass prunes it once the email is done. It reports whether run
// itself went.
func (r *JobRunReconciler) pruneHistory(ctx context.Context, run *jobsv1alpha1.JobRun, jt *jobsv1alpha1.JobType) (bool, error) {
	limit := int(ptr.Deref(jt.Spec.HistoryLimit, 100))
	list := &jobsv1alpha1.JobRunList{}
	if err := r.client.List(ctx, list, client.InNamespace(run.Namespace), client.MatchingFields{indexProjectJobType: projectJobTypeKey(run)}); err != nil {
		return false, fmt.Errorf("failed to list the runs of project %q and job type %q for JobRun %s: %w", run.Spec.ProjectID, run.Spec.JobType, client.ObjectKeyFromObject(run), err)
	}
	finished := list.Items[:0]
	for _, other := range list.Items {
		if other.CurrentPhase().IsTerminal() && other.DeletionTimestamp == nil {
			finished = append(finished, other)
		}
	}
	if len(finished) <= limit {
		return false, nil
	}
	sort.Slice(finished, func(i, j int) bool { return newerFinished(&finished[i], &finished[j]) })
	deletedSelf := false
	for i := range finished[limit:] {
		old := &finished[limit+i]
		// The cache may show an earlier notification state, never a later
		// one: an email shown as done is done, and one shown as owed waits
		// for its run's own pass, which knows it is done.
		if old.UID == run.UID {
			old = run
		}
		if notificationOwed(old) || !r.deletable(old) {
			continue
		}
		logf.FromContext(ctx).Info("deleting finished run beyond the history limit", "deleted", old.Name, "limit", limit)
		if err := r.deleteRun(ctx, old); err != nil {
			return false, err
		}
		deletedSelf = deletedSelf || old.UID == run.UID
	}
	return deletedSelf, nil
}

// newerFinished orders finished runs newest first, by completion time, then
// name, so every reconcile agrees on which ones to keep.
func newerFinished(a, b *jobsv1alpha1.JobRun) bool {
	ta, tb := finishTime(a), finishTime(b)
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	return a.Name > b.Name
}

func finishTime(run *jobsv1alpha1.JobRun) time.Time {
	if run.Status.CompletedAt != nil {
		return run.Status.CompletedAt.Time
	}
	return run.CreatedAt()
}
