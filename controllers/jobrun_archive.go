package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// Archive is where finished runs go (internal/archive.Store): rows in
// PostgreSQL, written idempotently by the run's namespace and name, so that
// a second write of the same run (a restart, a retry whose first answer was
// lost, a second replica) overwrites it and never adds one.
type Archive interface {
	Upsert(ctx context.Context, runs ...*jobsv1alpha1.JobRun) error
}

// ArchiveRetention is the archive's side of retention.
type ArchiveRetention interface {
	DeleteFinishedBefore(ctx context.Context, t time.Time, batch int) (int64, error)
}

// WithArchive archives finished runs in a: the JobRun controller writes a
// run's row when it finishes (in the same pass that records the end), marks
// the run Archived, and removes the run's FinalizerArchive, so that nothing
// deletes a run before its row is written; archived runs leave the API
// server liveTTL after they finished (or their JobType's shorter TTL). The
// JobSchedule controller creates runs with the finalizer.
func WithArchive(a Archive, liveTTL time.Duration) Option {
	return func(o *options) { o.archive, o.archiveLiveTTL = a, liveTTL }
}

// archiveTimeout bounds one archive write, so that a slow archive delays a
// worker by at most that much; the run then finishes unarchived (Archived
// False) and is archived later.
const archiveTimeout = 3 * time.Second

// archiveRetryMax is the longest wait between two tries to archive a run.
const archiveRetryMax = 30 * time.Second

var (
	archiveWrites = func() *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jobrun_archive_writes_total",
			Help: "Finished runs written to the run archive, by result (ok, error).",
		}, []string{"result"})
		metrics.Registry.MustRegister(c)
		return c
	}()
	archiveLag = func() prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "jobrun_archive_lag_seconds",
			Help:    "Time from a run's end to its row being written to the run archive.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 18), // 5 ms to ~22 min
		})
		metrics.Registry.MustRegister(h)
		return h
	}()
	archiveRetentionDeleted = func() prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jobrun_archive_retention_deleted_total",
			Help: "Archived runs deleted because they finished longer ago than --archive-retention.",
		})
		metrics.Registry.MustRegister(c)
		return c
	}()
)

// isArchived reports whether run's status records its row in the archive.
func isArchived(run *jobsv1alpha1.JobRun) bool {
	return meta.IsStatusConditionTrue(run.Status.Conditions, jobsv1alpha1.JobRunConditionArchived)
}

// archiveBackoff remembers, per run, the failures to archive it in a row, for
// the retry's backoff; a run archived, or gone, is forgotten.
type archiveBackoff struct {
	mu       sync.Mutex
	failures map[types.NamespacedName]int
}

func (b *archiveBackoff) failed(key types.NamespacedName) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures == nil {
		b.failures = map[types.NamespacedName]int{}
	}
	b.failures[key]++
	n := min(b.failures[key], 6)
	return min(time.Second<<(n-1), archiveRetryMax) // 1 s, 2 s, ... 30 s
}

func (b *archiveBackoff) forget(key types.NamespacedName) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.failures, key)
}

// writeArchive writes run's row, run as it will be once status is written,
// and returns the Archived condition to record.
func (r *JobRunReconciler) writeArchive(ctx context.Context, run *jobsv1alpha1.JobRun, status *jobsv1alpha1.JobRunStatus, now time.Time) (metav1.Condition, error) {
	final := run.DeepCopy()
	final.Status = *status
	wctx, cancel := context.WithTimeout(ctx, archiveTimeout)
	defer cancel()
	cond := metav1.Condition{Type: jobsv1alpha1.JobRunConditionArchived, ObservedGeneration: status.ObservedGeneration, LastTransitionTime: metav1.NewTime(now)}
	if err := r.archive.Upsert(wctx, final); err != nil {
		archiveWrites.WithLabelValues("error").Inc()
		cond.Status, cond.Reason = metav1.ConditionFalse, jobsv1alpha1.ReasonArchivePending
		cond.Message = clipTo("archiving failed, retrying: "+err.Error(), 1024)
		return cond, err
	}
	archiveWrites.WithLabelValues("ok").Inc()
	if status.CompletedAt != nil {
		// From the end the run records to the row written, the write
		// included (now is when this pass began).
		archiveLag.Observe(r.clock.Now().Sub(status.CompletedAt.Time).Seconds())
	}
	r.archiveBackoff.forget(client.ObjectKeyFromObject(run))
	cond.Status, cond.Reason, cond.Message = metav1.ConditionTrue, jobsv1alpha1.ReasonArchived, "the run is in the run archive"
	return cond, nil
}

// archiveOnFinish writes the row of a run that d finishes, before d's status
// is written, and records the outcome in d: the row first, so that once the
// status says Archived the row exists. A failure does not hold the run's end
// back: it finishes Archived False and reconcileFinished retries.
func (r *JobRunReconciler) archiveOnFinish(ctx context.Context, run *jobsv1alpha1.JobRun, d *decision) {
	if r.archive == nil || !d.finished {
		return
	}
	cond, err := r.writeArchive(ctx, run, &d.status, r.clock.Now())
	if err != nil {
		logf.FromContext(ctx).Info("archiving the finished run failed; it stays in the API server until a retry succeeds", "error", err.Error())
	}
	meta.SetStatusCondition(&d.status.Conditions, cond)
}

// archiveFinished archives a finished run that is not yet (its first try
// failed, or it finished before the archive was configured), and reports
// how long to wait before trying again when it failed.
func (r *JobRunReconciler) archiveFinished(ctx context.Context, run *jobsv1alpha1.JobRun) (time.Duration, error) {
	if r.archive == nil || isArchived(run) {
		return 0, nil
	}
	key := client.ObjectKeyFromObject(run)
	status := run.Status.DeepCopy()
	cond, archiveErr := r.writeArchive(ctx, run, status, r.clock.Now())
	if archiveErr != nil {
		// Keep the first failure's time: it says since when.
		if prev := meta.FindStatusCondition(status.Conditions, jobsv1alpha1.JobRunConditionArchived); prev != nil && prev.Status == metav1.ConditionFalse {
			cond.LastTransitionTime, cond.Message = prev.LastTransitionTime, prev.Message
		}
	}
	meta.SetStatusCondition(&status.Conditions, cond)
	if err := r.patchStatus(ctx, run, *status); err != nil {
		if apierrors.IsConflict(err) {
			return conflictRetryDelay, nil
		}
		return 0, err
	}
	if archiveErr != nil {
		wait := r.archiveBackoff.failed(key)
		logf.FromContext(ctx).Info("archiving the finished run failed; retrying", "in", wait.String(), "error", archiveErr.Error())
		return wait, nil
	}
	return 0, nil
}

// liveTTL is how long finished run stays in the API server: its JobType's
// TTL (jt may be nil: none), shortened to the archive's live TTL when there
// is an archive; 0 when it has none (no JobType, no archive).
func (r *JobRunReconciler) liveTTL(jt *jobsv1alpha1.JobType) time.Duration {
	var ttl time.Duration
	if jt != nil {
		ttl = time.Duration(ptr.Deref(jt.Spec.TTLSecondsAfterFinished, 604800)) * time.Second
	}
	if r.archive != nil && (ttl == 0 || r.archiveLiveTTL < ttl) {
		ttl = r.archiveLiveTTL
	}
	return ttl
}

// deletable reports whether retention may delete run now: always without an
// archive, else once it is archived (its finalizer would hold a deletion
// back anyway; not asking keeps it from lingering as Terminating).
func (r *JobRunReconciler) deletable(run *jobsv1alpha1.JobRun) bool {
	return !r.wantsArchiveFinalizer(run)
}

// wantsArchiveFinalizer reports whether run must carry FinalizerArchive: there
// is an archive and the run is not in it yet.
func (r *JobRunReconciler) wantsArchiveFinalizer(run *jobsv1alpha1.JobRun) bool {
	return r.archive != nil && !isArchived(run)
}

// jsonPatchOp is one operation of a JSON patch (RFC 6902).
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// metadataPatch is the JSON patch that gives run the status label of its
// phase and, as wantsArchiveFinalizer says, FinalizerArchive, or nil when
// run has both already. The finalizer is removed at its index after a test
// that it is still there, and added to an empty list only if the run is
// still the version read: the patch never drops a finalizer someone else
// added meanwhile (a merge patch would replace the whole list).
func (r *JobRunReconciler) metadataPatch(run *jobsv1alpha1.JobRun) []jsonPatchOp {
	var ops []jsonPatchOp
	phase := string(run.CurrentPhase())
	if run.Labels[jobsv1alpha1.LabelStatus] != phase {
		if run.Labels == nil {
			ops = append(ops, jsonPatchOp{Op: "add", Path: "/metadata/labels", Value: map[string]string{jobsv1alpha1.LabelStatus: phase}})
		} else {
			ops = append(ops, jsonPatchOp{Op: "add", Path: "/metadata/labels/" + jsonPointerEscape(jobsv1alpha1.LabelStatus), Value: phase})
		}
	}
	has, want := controllerutil.ContainsFinalizer(run, jobsv1alpha1.FinalizerArchive), r.wantsArchiveFinalizer(run)
	switch {
	case has && !want:
		path := fmt.Sprintf("/metadata/finalizers/%d", slices.Index(run.Finalizers, jobsv1alpha1.FinalizerArchive))
		ops = append(ops, jsonPatchOp{Op: "test", Path: path, Value: jobsv1alpha1.FinalizerArchive}, jsonPatchOp{Op: "remove", Path: path})
	case want && !has && run.DeletionTimestamp == nil:
		// (The API server refuses new finalizers on a run being deleted.)
		if len(run.Finalizers) == 0 {
			ops = append(ops, jsonPatchOp{Op: "test", Path: "/metadata/resourceVersion", Value: run.ResourceVersion},
				jsonPatchOp{Op: "add", Path: "/metadata/finalizers", Value: []string{jobsv1alpha1.FinalizerArchive}})
		} else {
			ops = append(ops, jsonPatchOp{Op: "add", Path: "/metadata/finalizers/-", Value: jobsv1alpha1.FinalizerArchive})
		}
	}
	return ops
}

// jsonPointerEscape escapes a key for a JSON pointer (RFC 6901).
func jsonPointerEscape(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// syncMetadata keeps the status label equal to the phase, for selectors,
// and FinalizerArchive on the run while it is to be archived, in one patch.
// A patch whose test failed (the run changed meanwhile) is a conflict.
func (r *JobRunReconciler) syncMetadata(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	ops := r.metadataPatch(run)
	if len(ops) == 0 {
		return nil
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	rv := run.ResourceVersion
	if err := r.client.Patch(ctx, run, client.RawPatch(types.JSONPatchType, body)); err != nil {
		if apierrors.IsInvalid(err) {
			// A test operation failed: the run changed since it was read.
			return apierrors.NewConflict(jobsv1alpha1.GroupVersion.WithResource("jobruns").GroupResource(), run.Name, err)
		}
		return fmt.Errorf("failed to patch the labels and finalizers of JobRun %s (phase %s): %w", client.ObjectKeyFromObject(run), run.CurrentPhase(), err)
	}
	r.written.wrote(rv, run)
	return nil
}

// clipTo cuts s to at most n bytes, for a message with a bound (a
// condition's, a notification's).
func clipTo(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ArchiveRetentionRunner deletes archived runs that finished longer ago than
// Retention, every Interval, in batches of Batch rows, on the leader only.
type ArchiveRetentionRunner struct {
	Archive   ArchiveRetention
	Retention time.Duration
	Interval  time.Duration
	Batch     int
	Now       func() time.Time
}

var _ manager.LeaderElectionRunnable = &ArchiveRetentionRunner{}

// NeedLeaderElection is true: one replica deletes.
func (a *ArchiveRetentionRunner) NeedLeaderElection() bool { return true }

// Start runs until ctx ends; a failed round is logged and tried again at the
// next interval.
func (a *ArchiveRetentionRunner) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("archive-retention")
	interval, batch, now := a.Interval, a.Batch, a.Now
	if interval <= 0 {
		interval = 10 * time.Minute
	}
	if batch <= 0 {
		batch = 1000
	}
	if now == nil {
		now = time.Now
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		before := now().Add(-a.Retention)
		n, err := a.Archive.DeleteFinishedBefore(ctx, before, batch)
		archiveRetentionDeleted.Add(float64(n))
		if err != nil && ctx.Err() == nil {
			log.Info("deleting archived runs past their retention failed; trying again later", "error", err.Error(), "deleted", n)
		} else if n > 0 {
			log.Info("deleted archived runs past their retention", "count", n, "finishedBefore", before)
		}
		t.Reset(interval)
	}
}
