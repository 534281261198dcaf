// Package guard allows one pending or running JobRun per (job type,
// project), whichever replica or door (a REST trigger, a JobSchedule) starts
// it.
//
// The protocol, in full:
//
//   - The guard of a pair is a coordination.k8s.io Lease named
//     jobsv1alpha1.GuardName(jobType, projectID) in the runs' namespace. Its
//     spec.holderIdentity is the name of the run it admits, and its creation
//     timestamp, set by the API server, is when that run acquired it.
//   - Take, before the run is created: create the Lease with the new run as
//     holder. The API server's create-if-absent makes exactly one of any
//     number of racing takers win. A taker that finds the Lease decides
//     whether it is stale (below); a live guard refuses it with a HeldError
//     naming the holder. A stale guard is taken over by deleting it with UID
//     and resourceVersion preconditions (so of several takers of one stale
//     guard at most one deletes it) and creating it anew, create-if-absent
//     again. A guard released or changed between a taker's read and its
//     delete makes the taker start over, never report it missing.
//   - Abandon: a taker whose run could not be created deletes the guard it
//     took (UID precondition), so the pair is not blocked.
//   - Release, when the run ends (the JobRun controller): delete the Lease
//     with UID and resourceVersion preconditions, only if the run holds it.
//     A guard taken over by a newer run meanwhile is left alone.
//   - Staleness: a guard is stale when its holder run, read live from the
//     API server, has ended (its release was missed), or does not exist and
//     the guard was created more than Grace ago by the API server's clock
//     (the run was deleted before it ended, or its taker died before
//     creating it). No replica's own clock takes part. A holder that cannot
//     be read is an error, never a verdict: the caller answers "retry", not
//     "held".
//
// The guard is not owned by its run: an owner reference would cost a third
// write per trigger, and a run deleted before it ends leaves a guard whose
// holder is gone, which the next taker finds stale.
package guard

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// Grace is how long a guard whose holder run does not exist is taken to
// belong to a taker still creating that run; after that it is stale.
const Grace = 30 * time.Second

// takeAttempts bounds how often Take starts over when the guard it read
// vanished or changed before its update.
const takeAttempts = 5

// HeldError is Take's answer when another pending or running run holds the
// pair's guard.
type HeldError struct {
	// Holder is the name of the run that holds the guard.
	Holder string
}

func (e *HeldError) Error() string {
	return "the guard is held by run " + e.Holder
}

// Guards takes and releases guards. Reader must read the API server live
// (a manager's API reader), not a cache: a guard or holder run missing from
// a stale cache would hand the pair out twice.
type Guards struct {
	reader client.Reader
	writer client.Writer
	grace  time.Duration
}

// New returns Guards reading through reader and writing through writer.
// They tell no time of their own: see Stale.
func New(reader client.Reader, writer client.Writer) *Guards {
	return &Guards{reader: reader, writer: writer, grace: Grace}
}

// Key is the object key of the guard of run's (job type, project).
func Key(run *jobsv1alpha1.JobRun) client.ObjectKey {
	return client.ObjectKey{Namespace: run.Namespace, Name: jobsv1alpha1.GuardName(run.Spec.JobType, run.Spec.ProjectID)}
}

// Take acquires the guard of run's (job type, project) for run, which need
// not exist yet. It returns the guard held, a *HeldError when another live
// run holds it, or the API server's error.
func (g *Guards) Take(ctx context.Context, run *jobsv1alpha1.JobRun) (*coordinationv1.Lease, error) {
	for attempt := 1; ; attempt++ {
		lease, retry, err := g.take(ctx, run)
		if !retry {
			return lease, err
		}
		if attempt == takeAttempts {
			return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("guard %s changed under %d attempts to take it: %v", Key(run), takeAttempts, err))
		}
	}
}

// take makes one attempt; retry says that the guard changed under it.
func (g *Guards) take(ctx context.Context, run *jobsv1alpha1.JobRun) (lease *coordinationv1.Lease, retry bool, err error) {
	key := Key(run)
	lease = &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
			Labels: map[string]string{jobsv1alpha1.LabelJobType: run.Spec.JobType, jobsv1alpha1.LabelProject: run.Spec.ProjectID}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(run.Name)},
	}
	err = g.writer.Create(ctx, lease)
	if err == nil {
		return lease, false, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, false, fmt.Errorf("creating guard %s: %w", key, err)
	}
	existing := &coordinationv1.Lease{}
	if err := g.reader.Get(ctx, key, existing); err != nil {
		// Not found: released since our create (its run just ended).
		return nil, apierrors.IsNotFound(err), fmt.Errorf("reading guard %s: %w", key, err)
	}
	holder := ptr.Deref(existing.Spec.HolderIdentity, "")
	if holder == run.Name {
		return existing, false, nil // ours already (a retried take)
	}
	stale, err := g.Stale(ctx, existing)
	if err != nil {
		return nil, false, err
	}
	if !stale {
		return nil, false, &HeldError{Holder: holder}
	}
	// Take it over: delete it as read (UID and resourceVersion
	// preconditions, so of several takers of one stale guard one deletes
	// it) and create it anew, so that its creation time, the API server's,
	// is always the time it was acquired.
	err = g.writer.Delete(ctx, existing, client.Preconditions{UID: &existing.UID, ResourceVersion: &existing.ResourceVersion})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return nil, false, fmt.Errorf("taking over guard %s: %w", key, err)
	}
	// Deleted by us, released, or changed by another taker since our read:
	// start over, and see who holds it now.
	return nil, true, fmt.Errorf("taking over guard %s: it changed under us", key)
}

// Stale reports whether lease no longer protects a live run: its holder,
// read live, has ended, or does not exist and the guard was created more
// than Grace ago. Both times in that comparison are the API server's (the
// guard's creation timestamp, and the creation timestamp the API server
// gives a dry-run create now), never this process's clock, so replicas
// whose clocks disagree agree on a guard. An error reading the holder or
// the API server's time is returned, not guessed at.
func (g *Guards) Stale(ctx context.Context, lease *coordinationv1.Lease) (bool, error) {
	holder := ptr.Deref(lease.Spec.HolderIdentity, "")
	if holder == "" {
		return true, nil
	}
	run := &jobsv1alpha1.JobRun{}
	err := g.reader.Get(ctx, client.ObjectKey{Namespace: lease.Namespace, Name: holder}, run)
	switch {
	case err == nil:
		return run.CurrentPhase().IsTerminal(), nil
	case apierrors.IsNotFound(err):
		// Its taker may still be creating the run.
		now, err := g.serverNow(ctx, lease.Namespace)
		if err != nil {
			return false, err
		}
		return now.Sub(lease.CreationTimestamp.Time) > g.grace, nil
	default:
		return false, fmt.Errorf("reading run %s, holder of guard %s: %w", holder, lease.Name, err)
	}
}

// serverNow is the API server's time: the creation timestamp it gives a
// Lease created with dry run (validated and timestamped, never stored).
// Seconds are its precision, enough against a Grace of seconds.
func (g *Guards) serverNow(ctx context.Context, namespace string) (time.Time, error) {
	probe := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, GenerateName: "jobrun-guard-clock-"}}
	if err := g.writer.Create(ctx, probe, client.DryRunAll); err != nil {
		return time.Time{}, fmt.Errorf("reading the API server's time: %w", err)
	}
	if probe.CreationTimestamp.IsZero() {
		return time.Time{}, fmt.Errorf("reading the API server's time: a dry-run create returned no creation timestamp")
	}
	return probe.CreationTimestamp.Time, nil
}

// Abandon deletes a guard that Take returned for a run that was then not
// created, so it does not block the pair until it is stale.
func (g *Guards) Abandon(ctx context.Context, lease *coordinationv1.Lease) error {
	return client.IgnoreNotFound(g.writer.Delete(ctx, lease, client.Preconditions{UID: &lease.UID}))
}

// Release deletes the guard of run's (job type, project) if run holds it,
// so the next run of the pair may start; it reports whether it did. A guard
// held by another run, or taken over while being released, is left alone.
func (g *Guards) Release(ctx context.Context, run *jobsv1alpha1.JobRun) (bool, error) {
	if run.Spec.ProjectID == "" {
		return false, nil // system runs take no guard
	}
	lease := &coordinationv1.Lease{}
	if err := g.reader.Get(ctx, Key(run), lease); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	if ptr.Deref(lease.Spec.HolderIdentity, "") != run.Name {
		return false, nil
	}
	err := g.writer.Delete(ctx, lease, client.Preconditions{UID: &lease.UID, ResourceVersion: &lease.ResourceVersion})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return false, nil // taken over by a newer run, or released, meanwhile
	}
	return err == nil, err
}
