package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/guard"
)

// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobschedules,verbs=get;list;watch,namespace=system
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobschedules/status,verbs=get;update;patch,namespace=system
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobruns,verbs=create;delete,namespace=system
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;delete,namespace=system

// JobSchedule condition reasons.
const (
	reasonScheduled       = "Scheduled"
	reasonInvalidSchedule = "InvalidSchedule"
	reasonSuspended       = "Suspended"
)

// JobScheduleReconciler starts runs on a JobSchedule's cron schedule. It
// never writes the schedule's spec, so GitOps tools see no drift.
type JobScheduleReconciler struct {
	client client.Client
	// apiReader reads around the cache: guards, and the run holding one.
	apiReader client.Reader
	guards    *guard.Guards
	recorder  events.EventRecorder
	clock     clock.PassiveClock
	// archived: runs are created with the archive's finalizer.
	archived bool
}

// NewJobScheduleReconciler returns a reconciler using mgr's client and
// recorder; of opts it uses the clock and whether there is an archive.
func NewJobScheduleReconciler(mgr ctrl.Manager, opts ...Option) *JobScheduleReconciler {
	o := newOptions(opts)
	return &JobScheduleReconciler{client: mgr.GetClient(), apiReader: mgr.GetAPIReader(), guards: guard.New(mgr.GetAPIReader(), mgr.GetClient()),
		recorder: mgr.GetEventRecorder("jobschedule-controller"), clock: o.clock, archived: o.archive != nil}
}

// SetupWithManager watches schedules and the runs they own.
func (r *JobScheduleReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&jobsv1alpha1.JobSchedule{}).
		Owns(&jobsv1alpha1.JobRun{}).
		Named("jobschedule").
		Complete(r)
}

// scheduledRunName is the run of schedule s for scheduled time t: a UUID
// derived from both, so a restarted controller (or a stale cache) can never
// start a schedule time's run twice.
func scheduledRunName(s *jobsv1alpha1.JobSchedule, t time.Time) string {
	space, err := uuid.Parse(string(s.UID))
	if err != nil {
		space = uuid.NewSHA1(uuid.NameSpaceOID, []byte(s.Namespace+"/"+s.Name))
	}
	return uuid.NewSHA1(space, []byte(t.UTC().Format(time.RFC3339))).String()
}

// Reconcile starts the run that is due, if any, and keeps status current.
func (r *JobScheduleReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	s := &jobsv1alpha1.JobSchedule{}
	if err := r.client.Get(ctx, req.NamespacedName, s); err != nil {
		return ctrl.Result{}, getError(err, "JobSchedule", req.NamespacedName)
	}
	orig := s.DeepCopy()
	now := r.clock.Now()
	s.Status.ObservedGeneration = s.Generation

	sched, loc, err := parseSchedule(s.Spec.Schedule, s.Spec.TimeZone)
	if err != nil {
		r.setReady(s, metav1.ConditionFalse, reasonInvalidSchedule, err.Error(), now)
		if perr := r.patchStatus(ctx, orig, s); perr != nil {
			return ctrl.Result{}, perr
		}
		r.recorder.Eventf(s, nil, corev1.EventTypeWarning, reasonInvalidSchedule, "Validate", "%s", err.Error())
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("invalid schedule of JobSchedule %s: %w", client.ObjectKeyFromObject(s), err))
	}

	runs := &jobsv1alpha1.JobRunList{}
	if err := r.client.List(ctx, runs, client.InNamespace(s.Namespace), client.MatchingLabels{jobsv1alpha1.LabelSchedule: s.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("failed to list the runs of JobSchedule %s: %w", client.ObjectKeyFromObject(s), err)
	}
	active := observeRuns(s, runs.Items)

	since := s.CreationTimestamp.Time
	if s.Status.LastScheduleTime != nil {
		since = s.Status.LastScheduleTime.Time
	}
	plan := planSchedule(sched, loc, since, now)
	s.Status.NextScheduleTime = &metav1.Time{Time: plan.next}

	switch {
	case ptr.Deref(s.Spec.Suspend, false):
		// Times pass unhandled; on resume only the latest may still start.
		r.setReady(s, metav1.ConditionTrue, reasonSuspended, "suspended: no new runs start", now)
	case plan.due.IsZero():
		r.setReady(s, metav1.ConditionTrue, reasonScheduled, "next run at "+plan.next.UTC().Format(time.RFC3339), now)
	default:
		// The due time is handled now, whatever happens to it, and the
		// times before it are counted as missed: none is ever started
		// twice, nor late in a burst.
		s.Status.MissedRuns += plan.skipped
		s.Status.LastScheduleTime = &metav1.Time{Time: plan.due}
		started, err := r.startDue(ctx, s, plan.due, now, runs.Items, active)
		if err != nil {
			return ctrl.Result{}, err
		}
		if started != nil {
			active = append(active, started)
		}
		r.setReady(s, metav1.ConditionTrue, reasonScheduled, "next run at "+plan.next.UTC().Format(time.RFC3339), now)
	}

	s.Status.ActiveRuns = nil
	for _, run := range active {
		s.Status.ActiveRuns = append(s.Status.ActiveRuns, run.Name)
	}
	slices.Sort(s.Status.ActiveRuns)
	if err := r.pruneHistory(ctx, s, runs.Items); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.patchStatus(ctx, orig, s); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: plan.next.Sub(now)}, nil
}

// observeRuns returns those of the schedule's runs that have not finished,
// and moves s's lastSuccessfulTime to the latest completion among the others.
func observeRuns(s *jobsv1alpha1.JobSchedule, runs []jobsv1alpha1.JobRun) []*jobsv1alpha1.JobRun {
	var active []*jobsv1alpha1.JobRun
	for i := range runs {
		run := &runs[i]
		if !run.CurrentPhase().IsTerminal() {
			active = append(active, run)
		} else if run.Status.Phase == jobsv1alpha1.JobRunCompleted && run.Status.CompletedAt != nil &&
			(s.Status.LastSuccessfulTime == nil || run.Status.CompletedAt.After(s.Status.LastSuccessfulTime.Time)) {
			s.Status.LastSuccessfulTime = &metav1.Time{Time: run.Status.CompletedAt.Time}
		}
	}
	return active
}

// startDue starts the run for scheduled time due unless it exists already,
// the starting deadline passed or the concurrency policy forbids it; runs
// are the schedule's runs, active those of them that have not finished.
func (r *JobScheduleReconciler) startDue(ctx context.Context, s *jobsv1alpha1.JobSchedule, due, now time.Time, runs []jobsv1alpha1.JobRun, active []*jobsv1alpha1.JobRun) (*jobsv1alpha1.JobRun, error) {
	name := scheduledRunName(s, due)
	for i := range runs {
		if runs[i].Name == name {
			// A pass whose status write was lost (a conflict, a restart)
			// started it: the time is handled, and its run is neither late
			// nor a concurrent run to skip or replace.
			return nil, nil
		}
	}
	if d := s.Spec.StartingDeadlineSeconds; d != nil && now.Sub(due) > time.Duration(*d)*time.Second {
		s.Status.MissedRuns++
		r.recorder.Eventf(s, nil, corev1.EventTypeWarning, "MissedSchedule", "Start", "Run for %s not started: %s late, past the starting deadline of %ds", due.UTC().Format(time.RFC3339), now.Sub(due).Round(time.Second), *d)
		return nil, nil
	}
	run := s.NewRun(name, due, now)
	if r.archived {
		// Created with the archive's finalizer: no write to add it later.
		controllerutil.AddFinalizer(run, jobsv1alpha1.FinalizerArchive)
	}
	if s.Spec.ProjectID != "" {
		return r.startGuarded(ctx, s, due, now, run, active)
	}
	if len(active) > 0 {
		switch s.Spec.ConcurrencyPolicy {
		case jobsv1alpha1.ConcurrencyAllow:
		case jobsv1alpha1.ConcurrencyReplace:
			for _, run := range active {
				if err := annotateCancel(ctx, r.client, run, now); err != nil {
					return nil, fmt.Errorf("failed to replace a run of JobSchedule %s: %w", client.ObjectKeyFromObject(s), err)
				}
				r.recorder.Eventf(s, run, corev1.EventTypeNormal, "Replaced", "Cancel", "Cancelling run %s to start the one for %s", run.Name, due.UTC().Format(time.RFC3339))
			}
		default: // Forbid
			s.Status.MissedRuns++
			r.recorder.Eventf(s, nil, corev1.EventTypeNormal, "SkippedConcurrent", "Start", "Run for %s skipped: %d run(s) still active and concurrencyPolicy is Forbid", due.UTC().Format(time.RFC3339), len(active))
			return nil, nil
		}
	}
	return r.create(ctx, s, due, now, run)
}

// startGuarded starts run, of a project-scoped schedule, only if it can take
// the (job type, project) guard (internal/guard), as a REST trigger does:
// the pair has at most one active run whichever door started it, and the
// run started holds the guard, so the JobRun controller releases it when the
// run ends. A pair already busy — with one of the schedule's own runs or
// any other, an API-triggered one included — is active for the concurrency
// policy, and no policy can start a second run beside it: Forbid and Allow
// skip the time; Replace asks the pair's active run to stop and skips the
// time too, so the next scheduled time starts once that run has stopped.
// Each skip is counted in missedRuns, with an Event saying why.
func (r *JobScheduleReconciler) startGuarded(ctx context.Context, s *jobsv1alpha1.JobSchedule, due, now time.Time, run *jobsv1alpha1.JobRun, active []*jobsv1alpha1.JobRun) (*jobsv1alpha1.JobRun, error) {
	if len(active) > 0 {
		// Its own run holds the guard (or, started before schedules took
		// guards, should): no need to ask.
		return nil, r.skipBusy(ctx, s, due, now, active[0].Name)
	}
	lease, err := r.guards.Take(ctx, run)
	var held *guard.HeldError
	if errors.As(err, &held) {
		return nil, r.skipBusy(ctx, s, due, now, held.Holder)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to take the guard for the run for %s of JobSchedule %s: %w", due.UTC().Format(time.RFC3339), client.ObjectKeyFromObject(s), err)
	}
	// A run that exists already (started before a restart) holds the guard
	// under its own name, so Take returned it as ours and create finds it.
	started, err := r.create(ctx, s, due, now, run)
	if err != nil {
		if aerr := r.guards.Abandon(context.WithoutCancel(ctx), lease); aerr != nil {
			logf.FromContext(ctx).Error(aerr, "releasing the guard of a run that was not created", "guard", lease.Name)
		}
	}
	return started, err
}

// skipBusy handles a due time of a project-scoped schedule whose (job type,
// project) has the active run holder, by s's concurrency policy.
func (r *JobScheduleReconciler) skipBusy(ctx context.Context, s *jobsv1alpha1.JobSchedule, due, now time.Time, holder string) error {
	s.Status.MissedRuns++
	when := due.UTC().Format(time.RFC3339)
	switch s.Spec.ConcurrencyPolicy {
	case jobsv1alpha1.ConcurrencyReplace:
		run := &jobsv1alpha1.JobRun{}
		err := r.apiReader.Get(ctx, client.ObjectKey{Namespace: s.Namespace, Name: holder}, run)
		if client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("failed to get JobRun %s, active for the project of JobSchedule %s: %w", holder, client.ObjectKeyFromObject(s), err)
		}
		if err == nil && !run.CurrentPhase().IsTerminal() {
			if err := annotateCancel(ctx, r.client, run, now); err != nil {
				return fmt.Errorf("failed to replace the active run of JobSchedule %s: %w", client.ObjectKeyFromObject(s), err)
			}
		}
		r.recorder.Eventf(s, nil, corev1.EventTypeNormal, "Replaced", "Cancel", "Cancelling run %s; the run for %s is not started: one run of job type %s may be active for project %s, and the next scheduled time starts once %s has stopped", holder, when, s.Spec.JobType, s.Spec.ProjectID, holder)
	case jobsv1alpha1.ConcurrencyAllow:
		r.recorder.Eventf(s, nil, corev1.EventTypeNormal, "SkippedConcurrent", "Start", "Run for %s skipped: run %s is active, and even with concurrencyPolicy Allow one run of job type %s may be active for project %s", when, holder, s.Spec.JobType, s.Spec.ProjectID)
	default: // Forbid
		r.recorder.Eventf(s, nil, corev1.EventTypeNormal, "SkippedConcurrent", "Start", "Run for %s skipped: run %s is active for job type %s and project %s, and concurrencyPolicy is Forbid", when, holder, s.Spec.JobType, s.Spec.ProjectID)
	}
	return nil
}

// create creates run, owned by s, for due.
func (r *JobScheduleReconciler) create(ctx context.Context, s *jobsv1alpha1.JobSchedule, due, now time.Time, run *jobsv1alpha1.JobRun) (*jobsv1alpha1.JobRun, error) {
	log := logf.FromContext(ctx)
	if err := controllerutil.SetControllerReference(s, run, r.client.Scheme()); err != nil {
		return nil, fmt.Errorf("failed to make JobSchedule %s the owner of its run %s: %w", client.ObjectKeyFromObject(s), run.Name, err)
	}
	if err := r.client.Create(ctx, run); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil, nil // started before a restart: the name is the schedule time's
		}
		return nil, fmt.Errorf("failed to start run %s for %s of JobSchedule %s: %w", run.Name, due.UTC().Format(time.RFC3339), client.ObjectKeyFromObject(s), err)
	}
	scheduleDelay.Observe(now.Sub(due).Seconds())
	log.Info("started scheduled run", "run", run.Name, "scheduledTime", due, "late", now.Sub(due))
	r.recorder.Eventf(s, run, corev1.EventTypeNormal, "Started", "Start", "Started run %s for %s", run.Name, due.UTC().Format(time.RFC3339))
	return run, nil
}

// annotateCancel asks a run to stop, as the REST API's cancel does.
func annotateCancel(ctx context.Context, c client.Client, run *jobsv1alpha1.JobRun, now time.Time) error {
	patch := client.MergeFrom(run.DeepCopy())
	if !run.RequestCancel(now) {
		return nil
	}
	if err := c.Patch(ctx, run, patch); err != nil {
		return fmt.Errorf("failed to request the cancel of JobRun %s: %w", client.ObjectKeyFromObject(run), err)
	}
	return nil
}

// pruneHistory keeps the newest successfulRunsHistoryLimit completed runs
// and failedRunsHistoryLimit failed or cancelled ones.
func (r *JobScheduleReconciler) pruneHistory(ctx context.Context, s *jobsv1alpha1.JobSchedule, runs []jobsv1alpha1.JobRun) error {
	var ok, bad []*jobsv1alpha1.JobRun
	for i := range runs {
		switch runs[i].CurrentPhase() {
		case jobsv1alpha1.JobRunCompleted:
			ok = append(ok, &runs[i])
		case jobsv1alpha1.JobRunFailed, jobsv1alpha1.JobRunCancelled:
			bad = append(bad, &runs[i])
		}
	}
	for _, group := range []struct {
		runs  []*jobsv1alpha1.JobRun
		limit int32
	}{{ok, ptr.Deref(s.Spec.SuccessfulRunsHistoryLimit, 3)}, {bad, ptr.Deref(s.Spec.FailedRunsHistoryLimit, 1)}} {
		slices.SortFunc(group.runs, func(a, b *jobsv1alpha1.JobRun) int {
			if newerFinished(a, b) {
				return -1
			}
			return 1
		})
		for i := int(group.limit); i < len(group.runs); i++ {
			if err := client.IgnoreNotFound(r.client.Delete(ctx, group.runs[i], client.Preconditions{UID: &group.runs[i].UID})); err != nil {
				return fmt.Errorf("failed to delete JobRun %s beyond the history limit of JobSchedule %s: %w", group.runs[i].Name, client.ObjectKeyFromObject(s), err)
			}
		}
	}
	return nil
}

func (r *JobScheduleReconciler) setReady(s *jobsv1alpha1.JobSchedule, status metav1.ConditionStatus, reason, message string, now time.Time) {
	meta.SetStatusCondition(&s.Status.Conditions, metav1.Condition{
		Type: jobsv1alpha1.JobScheduleConditionReady, Status: status, Reason: reason, Message: strings.TrimSpace(message),
		ObservedGeneration: s.Generation, LastTransitionTime: metav1.NewTime(now),
	})
}

// patchStatus writes status if it changed, based on the version read.
func (r *JobScheduleReconciler) patchStatus(ctx context.Context, orig, s *jobsv1alpha1.JobSchedule) error {
	if equality.Semantic.DeepEqual(orig.Status, s.Status) {
		return nil
	}
	if err := r.client.Status().Patch(ctx, s, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("failed to patch the status of JobSchedule %s: %w", client.ObjectKeyFromObject(s), err)
	}
	return nil
}
