package main

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/controllers"
	"jobrun.dev/jobrun/internal/archive"
)

// errArchiveNotOpen: the archive has not been opened yet (its database
// unreachable since the manager started, or its migrations not applied).
var errArchiveNotOpen = errors.New("the run archive is not open yet: its database has not answered since the manager started")

// archiveConn is the run archive as the manager uses it, opened whenever
// its database answers: a manager starts, runs and finishes runs while the
// archive is down (they wait, unarchived, with the archive's finalizer),
// and its readiness never depends on the archive. Until it is open, every
// call fails with errArchiveNotOpen: archiving is retried, and lists that
// need the archive answer 503.
type archiveConn struct {
	dsn   string
	log   logr.Logger
	store atomic.Pointer[archive.Store]
}

// archiveOpenTimeout bounds the first try to open the archive at start.
const archiveOpenTimeout = 5 * time.Second

// openArchive tries once, briefly, to open the archive of dsn, so that a
// manager whose database is up archives from its first run; if that fails
// the manager's runnable (Start) goes on trying.
func openArchive(ctx context.Context, dsn string, log logr.Logger) *archiveConn {
	a := &archiveConn{dsn: dsn, log: log}
	ctx, cancel := context.WithTimeout(ctx, archiveOpenTimeout)
	defer cancel()
	a.tryOpen(ctx)
	return a
}

func (a *archiveConn) tryOpen(ctx context.Context) bool {
	store, err := archive.Open(ctx, a.dsn)
	if err != nil {
		a.log.Info("the run archive cannot be opened yet; retrying (runs finish meanwhile and are archived later)", "error", err.Error())
		return false
	}
	a.store.Store(store)
	a.log.Info("the run archive is open")
	return true
}

// Start opens the archive if it is not, retrying with a backoff (1 s,
// doubling to 30 s), and closes it when ctx ends.
func (a *archiveConn) Start(ctx context.Context) error {
	wait := time.Second
	for a.store.Load() == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		a.tryOpen(octx)
		cancel()
		wait = min(2*wait, 30*time.Second)
	}
	<-ctx.Done()
	a.store.Load().Close()
	return nil
}

// NeedLeaderElection is false: every replica reads the archive.
func (a *archiveConn) NeedLeaderElection() bool { return false }

func (a *archiveConn) open() (*archive.Store, error) {
	if s := a.store.Load(); s != nil {
		return s, nil
	}
	return nil, errArchiveNotOpen
}

func (a *archiveConn) Upsert(ctx context.Context, runs ...*jobsv1alpha1.JobRun) error {
	s, err := a.open()
	if err != nil {
		return err
	}
	return s.Upsert(ctx, runs...)
}

func (a *archiveConn) DeleteFinishedBefore(ctx context.Context, t time.Time, batch int) (int64, error) {
	s, err := a.open()
	if err != nil {
		return 0, err
	}
	return s.DeleteFinishedBefore(ctx, t, batch)
}

func (a *archiveConn) List(ctx context.Context, q archive.Query) ([]*jobsv1alpha1.JobRun, bool, error) {
	s, err := a.open()
	if err != nil {
		return nil, false, err
	}
	return s.List(ctx, q)
}

func (a *archiveConn) Get(ctx context.Context, namespace, id string) (*jobsv1alpha1.JobRun, error) {
	s, err := a.open()
	if err != nil {
		return nil, err
	}
	return s.Get(ctx, namespace, id)
}

// setupArchive opens the archive of --archive-dsn (nil without one) and
// adds its runnables to mgr: the connection and, with the controllers, the
// archive's retention.
func setupArchive(ctx context.Context, mgr ctrl.Manager, f *managerFlags) (*archiveConn, error) {
	if f.archive.dsn == "" {
		return nil, nil
	}
	a := openArchive(ctx, f.archive.dsn, ctrl.Log.WithName("archive"))
	if err := mgr.Add(a); err != nil {
		return nil, err
	}
	if f.runControllers && f.archive.retention > 0 {
		if err := mgr.Add(&controllers.ArchiveRetentionRunner{Archive: a, Retention: f.archive.retention}); err != nil {
			return nil, err
		}
	}
	return a, nil
}
