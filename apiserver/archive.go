package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/types"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/archive"
)

// archiveLister is the API's one view of live and archived runs: the live
// index (every run the API server still holds) and the archive (finished
// runs, which leave the API server after --archive-live-ttl). A list merges
// both under the same filters and cursor, newest first, each run once: a
// run the live index holds is taken from there (the live copy wins), so an
// archived row counts only for a run that is no longer live. Clients cannot
// tell where a run came from.
type archiveLister struct {
	live    RunLister
	archive RunLister
	// isLive reports whether the live index holds a run (after the live
	// list's consistent read, so at least as new as it).
	isLive func(namespace, name string) bool
}

// errArchiveUnavailable wraps a failed archive read: a 503 to retry, never a
// page that silently lacks archived runs.
type errArchiveUnavailable struct{ err error }

func (e errArchiveUnavailable) Error() string { return "reading the run archive: " + e.err.Error() }
func (e errArchiveUnavailable) Unwrap() error { return e.err }

func (e errArchiveUnavailable) apiError() *apiError {
	ae := errorf(http.StatusServiceUnavailable, codeUnavailable, "the run archive cannot be read; retry")
	ae.cause = e
	return ae
}

// archiveHolds reports whether the archive can hold runs q asks for: it
// holds finished runs only.
func archiveHolds(q RunQuery) bool {
	return q.Status == "" || jobsv1alpha1.JobRunPhase(q.Status).IsTerminal()
}

// ListRuns reads the live page first (consistently: every write that
// completed before the call is in it), then the archive: a run that left
// the API server before the live read was archived before it left (its
// finalizer), so it is in the archive read that follows.
//
// Both sources are read one run past the page (has_more is exact) and the
// archive only as far as the live page reaches. An archived row of a live
// run is skipped; such rows are at most the live page's runs (plus runs
// whose live copy changed filters meanwhile), so the archive is read again,
// past the last row, only when skipped rows leave it short.
func (m *archiveLister) ListRuns(ctx context.Context, q RunQuery) ([]*jobsv1alpha1.JobRun, bool, error) {
	need := q.Limit + 1
	lq := q
	lq.Limit = need
	live, liveMore, err := m.live.ListRuns(ctx, lq)
	if err != nil {
		return nil, false, err
	}
	if !archiveHolds(q) {
		return pageOf(live, q.Limit, liveMore)
	}
	inPage := make(map[string]bool, len(live))
	for _, run := range live {
		inPage[run.Name] = true
	}
	aq := q
	var last *jobsv1alpha1.JobRun // the live page's last run: the archive is read down to it
	if len(live) == need {
		last = live[need-1]
		if at := sortTime(last); aq.Since.IsZero() || aq.Since.Before(at) {
			aq.Since = at
		}
	}
	var archived []*jobsv1alpha1.JobRun
	for {
		aq.Limit = need - len(archived) + len(live)
		rows, more, err := m.archive.ListRuns(ctx, aq)
		if err != nil {
			return nil, false, errArchiveUnavailable{err}
		}
		for _, run := range rows {
			if last != nil && !newerRun(run, last) {
				continue // at or past the live page's last run
			}
			if inPage[run.Name] || m.isLive(run.Namespace, run.Name) {
				continue
			}
			archived = append(archived, run)
		}
		if len(archived) >= need || !more || len(rows) == 0 {
			break
		}
		c := cursorOf(rows[len(rows)-1])
		aq.After = &c
	}
	merged := make([]*jobsv1alpha1.JobRun, 0, min(len(live)+len(archived), need))
	i, j := 0, 0
	for len(merged) < need && (i < len(live) || j < len(archived)) {
		if j == len(archived) || (i < len(live) && newerRun(live[i], archived[j])) {
			merged = append(merged, live[i])
			i++
		} else {
			merged = append(merged, archived[j])
			j++
		}
	}
	return pageOf(merged, q.Limit, false)
}

// pageOf cuts runs (read one past the page) to limit.
func pageOf(runs []*jobsv1alpha1.JobRun, limit int, more bool) ([]*jobsv1alpha1.JobRun, bool, error) {
	if len(runs) > limit {
		return runs[:limit], true, nil
	}
	return runs, more, nil
}

// newerRun orders runs as the list does: newest first, ties by the greater
// id first.
func newerRun(a, b *jobsv1alpha1.JobRun) bool {
	return cursorOf(a).precedes(sortTime(b), b.Name)
}

// GetRun reads the live run, else the archived one.
func (m *archiveLister) GetRun(ctx context.Context, namespace, name string) (*jobsv1alpha1.JobRun, error) {
	run, err := m.live.GetRun(ctx, namespace, name)
	if err != nil || run != nil {
		return run, err
	}
	return getArchived(ctx, m.archive, namespace, name)
}

// getArchived reads the archived run namespace/name (nil if none); a failure
// is errArchiveUnavailable.
func getArchived(ctx context.Context, archive RunLister, namespace, name string) (*jobsv1alpha1.JobRun, error) {
	run, err := archive.GetRun(ctx, namespace, name)
	if err != nil {
		return nil, errArchiveUnavailable{err}
	}
	return run, nil
}

// Has reports whether the index holds the run namespace/name now, without a
// consistency round: for a caller that just made one.
func (x *RunIndex) Has(namespace, name string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	_, ok := x.runs[types.NamespacedName{Namespace: namespace, Name: name}]
	return ok
}

// withArchive returns the lister of o: the live one, merged with the
// archive when there is one.
func withArchive(o Options) (RunLister, error) {
	if o.Archive == nil {
		return o.Lister, nil
	}
	idx, ok := o.Lister.(interface {
		Has(namespace, name string) bool
	})
	if !ok {
		return nil, fmt.Errorf("apiserver: an archive needs a live lister that can say which runs it holds (a RunIndex), not %T", o.Lister)
	}
	return &archiveLister{live: o.Lister, archive: o.Archive, isLive: idx.Has}, nil
}

// asArchiveError maps an archive read's failure to its API error.
func asArchiveError(err error) (*apiError, bool) {
	var ae errArchiveUnavailable
	if errors.As(err, &ae) {
		return ae.apiError(), true
	}
	return nil, false
}

// ArchiveReader is the run archive as the REST API reads it
// (internal/archive.Store).
type ArchiveReader interface {
	List(ctx context.Context, q archive.Query) ([]*jobsv1alpha1.JobRun, bool, error)
	Get(ctx context.Context, namespace, id string) (*jobsv1alpha1.JobRun, error)
}

// archiveReadTimeout bounds one archive read: a slow archive answers 503
// within it rather than holding the request to its end.
const archiveReadTimeout = 5 * time.Second

// NewArchiveLister serves a as a RunLister (Options.Archive); it never makes
// a consistency round: the archive is written before a run leaves the API
// server, and read after the live index (archiveLister).
func NewArchiveLister(a ArchiveReader) RunLister { return archiveRunLister{a} }

type archiveRunLister struct{ a ArchiveReader }

func (l archiveRunLister) ListRuns(ctx context.Context, q RunQuery) ([]*jobsv1alpha1.JobRun, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, archiveReadTimeout)
	defer cancel()
	aq := archive.Query{Namespace: q.Namespace, TeamID: q.TeamID, JobType: q.JobType, Status: q.Status, ProjectID: q.ProjectID,
		Since: q.Since, Until: q.Until, Limit: q.Limit}
	if q.After != nil {
		aq.AfterCreatedAt, aq.AfterID = q.After.CreatedAt, q.After.ID
	}
	return l.a.List(ctx, aq)
}

func (l archiveRunLister) GetRun(ctx context.Context, namespace, name string) (*jobsv1alpha1.JobRun, error) {
	ctx, cancel := context.WithTimeout(ctx, archiveReadTimeout)
	defer cancel()
	return l.a.Get(ctx, namespace, name)
}
