package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobtypes,verbs=get;list;watch,namespace=system
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobtypes/status,verbs=get;update;patch,namespace=system

// JobTypeReconciler tells in each JobType's Ready condition whether its pod
// template is within the manager's PodPolicy, naming the fields that are
// not, so that the author of a JobType admitted before the admission policy
// existed sees why its runs fail.
type JobTypeReconciler struct {
	client   client.Client
	recorder events.EventRecorder
	clock    clock.PassiveClock
	policy   PodPolicy
}

// NewJobTypeReconciler returns a reconciler that judges templates by the pod
// policy of opts (the runner's and the allowed service accounts), the same
// as the JobRun reconciler's.
func NewJobTypeReconciler(mgr ctrl.Manager, opts ...Option) *JobTypeReconciler {
	o := newOptions(opts)
	return &JobTypeReconciler{client: mgr.GetClient(), recorder: mgr.GetEventRecorder("jobtype-controller"), clock: o.clock, policy: o.policy}
}

// SetupWithManager registers the reconciler for spec changes of JobTypes.
func (r *JobTypeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&jobsv1alpha1.JobType{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Named("jobtype").
		Complete(r)
}

// Reconcile writes the Ready condition of one JobType.
func (r *JobTypeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	jt := &jobsv1alpha1.JobType{}
	if err := r.client.Get(ctx, req.NamespacedName, jt); err != nil {
		return ctrl.Result{}, getError(err, "JobType", req.NamespacedName)
	}
	orig := jt.DeepCopy()
	cond := metav1.Condition{
		Type: jobsv1alpha1.JobTypeConditionReady, Status: metav1.ConditionTrue,
		Reason: jobsv1alpha1.ReasonTemplateAllowed, Message: "runs of this job type can start",
		ObservedGeneration: jt.Generation, LastTransitionTime: metav1.NewTime(r.clock.Now()),
	}
	if v := r.policy.Violations(&jt.Spec.Template.Spec); len(v) > 0 {
		cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, jobsv1alpha1.ReasonTemplateNotAllowed, templateRefusal(v)
	}
	jt.Status.ObservedGeneration = jt.Generation
	meta.SetStatusCondition(&jt.Status.Conditions, cond)
	if equality.Semantic.DeepEqual(orig.Status, jt.Status) {
		return ctrl.Result{}, nil
	}
	if err := r.client.Status().Patch(ctx, jt, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return ctrl.Result{}, fmt.Errorf("failed to patch the status of JobType %s: %w", client.ObjectKeyFromObject(jt), err)
	}
	if prev := meta.FindStatusCondition(orig.Status.Conditions, cond.Type); cond.Status == metav1.ConditionFalse && (prev == nil || prev.Message != cond.Message) {
		r.recorder.Eventf(jt, nil, corev1.EventTypeWarning, cond.Reason, cond.Reason, "%s", cond.Message)
	}
	return ctrl.Result{}, nil
}
