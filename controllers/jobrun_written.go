package controllers

import (
	"context"
	"slices"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// writtenRuns remembers, for each run the controller wrote, the version its
// write returned, until the cache shows a version past it. A run's informer
// event often lags the controller's own write (the pod's Added event, on
// another watch, comes first), and a pass that decided from the version the
// write replaced would redo the pod create (AlreadyExists) and lose its
// status patch to a conflict, then wait and pass again. With it, a pass
// starts from the controller's own write instead.
//
// It never makes a read older than the cache's: a remembered run replaces
// the cached one only when the cached one is a version the remembered write
// replaced. Anything newer (another writer's, or the cache catching up)
// wins, and the status patch's optimistic lock still refuses a decision made
// on an outdated version.
type writtenRuns struct {
	mu   sync.Mutex
	runs map[types.NamespacedName]writtenRun
}

// writtenRun is the run as the controller's last write returned it, and the
// resourceVersions that write and the ones before it replaced: versions
// older than run.
type writtenRun struct {
	run   *jobsv1alpha1.JobRun
	older []string
}

// maxOlder bounds a record's older versions: a chain of writes with no
// event seen in between is short (status, then label).
const maxOlder = 8

// wrote records that the controller turned version before of run into run
// (as the API server returned it).
func (w *writtenRuns) wrote(before string, run *jobsv1alpha1.JobRun) {
	if before == "" || run.ResourceVersion == "" || before == run.ResourceVersion {
		return
	}
	key := types.NamespacedName{Namespace: run.Namespace, Name: run.Name}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.runs == nil {
		w.runs = map[types.NamespacedName]writtenRun{}
	}
	older := []string{before}
	if prev, ok := w.runs[key]; ok && prev.run.UID == run.UID && prev.run.ResourceVersion == before {
		// A write on top of the controller's own unseen write: the
		// versions that one replaced are older still.
		older = append(older, prev.older[:min(len(prev.older), maxOlder-1)]...)
	}
	written := run.DeepCopy()
	written.ManagedFields = nil // as the cache keeps runs
	w.runs[key] = writtenRun{run: written, older: older}
}

// read reads the run key from the cache c, or the controller's last write
// of it when the cache still shows a version that write replaced. The cache
// read and the look at the records are one step: the informer's handler
// (seen) forgets a record only after the cache holds a later version, so a
// read never falls between the two.
func (w *writtenRuns) read(ctx context.Context, c client.Reader, key types.NamespacedName) (*jobsv1alpha1.JobRun, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	run := &jobsv1alpha1.JobRun{}
	if err := c.Get(ctx, key, run); err != nil {
		if apierrors.IsNotFound(err) {
			delete(w.runs, key)
		}
		return nil, err
	}
	return w.fresherLocked(run), nil
}

// fresherLocked is the newer of cached, as the cache has it, and the
// controller's last write of it: that write when the cache still shows a
// version it replaced. w.mu is held.
func (w *writtenRuns) fresherLocked(cached *jobsv1alpha1.JobRun) *jobsv1alpha1.JobRun {
	key := types.NamespacedName{Namespace: cached.Namespace, Name: cached.Name}
	rec, ok := w.runs[key]
	switch {
	case !ok:
		return cached
	case rec.run.UID == cached.UID && slices.Contains(rec.older, cached.ResourceVersion):
		return rec.run.DeepCopy()
	default:
		// The cache has caught up with the write, or moved past it.
		delete(w.runs, key)
		return cached
	}
}

// forget drops what is remembered of the run key (it is gone).
func (w *writtenRuns) forget(key types.NamespacedName) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.runs, key)
}

// len is how many runs are remembered.
func (w *writtenRuns) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.runs)
}

// seen is the run informer's handler: once the cache holds a version of a
// run that no remembered write replaced, the cache has caught up and the
// record goes, also for runs no pass reads again soon.
func (w *writtenRuns) seen() toolscache.ResourceEventHandler {
	caughtUp := func(obj any) {
		run, ok := obj.(*jobsv1alpha1.JobRun)
		if !ok {
			return
		}
		key := types.NamespacedName{Namespace: run.Namespace, Name: run.Name}
		w.mu.Lock()
		defer w.mu.Unlock()
		if rec, ok := w.runs[key]; ok && !(rec.run.UID == run.UID && slices.Contains(rec.older, run.ResourceVersion)) {
			delete(w.runs, key)
		}
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    caughtUp,
		UpdateFunc: func(_, obj any) { caughtUp(obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if run, ok := obj.(*jobsv1alpha1.JobRun); ok {
				w.forget(types.NamespacedName{Namespace: run.Namespace, Name: run.Name})
			}
		},
	}
}
