package apiserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/btree"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// The index is an informer of the namespace's runs; a run is also read live.
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobruns,verbs=get;list;watch,namespace=system

// RunIndex is the RunLister of live runs: it keeps every team's runs sorted
// newest first (created_at to the millisecond, then id), per team and per
// team with one filter (project, job type or status), fed by the informer's
// events. A page is a walk from the cursor — O(log n + page) — instead of a
// selection and a sort of the whole team per request; the runs are the
// informer's own objects, never copied. System runs (no team) are not
// indexed: they are never listed.
//
// Its reads are consistent (consistency.go): ListRuns and GetRun first wait
// until the index has seen every JobRun write that completed before they
// were called.
type RunIndex struct {
	mu    sync.RWMutex
	trees map[string]*btree.BTreeG[indexEntry]
	// runs are the indexed runs by namespace and name (the run's own
	// strings: no key to allocate per run): where each one sits in the
	// trees follows from it (indexKeys, sortTime).
	runs   map[types.NamespacedName]*jobsv1alpha1.JobRun
	synced atomic.Pointer[func() bool]

	// seen is the greatest resourceVersion of the JobRun events handled;
	// progress is closed, and replaced, whenever it grows. replaying, if
	// not 0, is the resourceVersion of a list the informer replays: done
	// once an event past it is handled (consistency.go, Relists).
	progressMu sync.Mutex
	seen       uint64
	progress   chan struct{}
	replaying  uint64
	listsNoted atomic.Bool

	marker  *marker
	rounds  rounds
	timeout time.Duration
}

// indexEntry is a run's place in a tree: its sortTime in Unix
// milliseconds, and the run (whose name breaks ties). Each run has four, so
// they are small: 16 bytes, not a time.Time and a name besides.
type indexEntry struct {
	at  int64
	run *jobsv1alpha1.JobRun
}

// newerFirst orders entries newest first, ties by the greater id first, as
// the API's list and cursor do.
func newerFirst(a, b indexEntry) bool {
	if a.at != b.at {
		return a.at > b.at
	}
	return a.run.Name > b.run.Name
}

// pivot is an entry where a walk starts: at t (rounded up to the
// millisecond, so that no run before t is passed over) with id name.
func pivot(t time.Time, name string) indexEntry {
	at := t.Truncate(time.Millisecond)
	if at.Before(t) {
		at = at.Add(time.Millisecond)
	}
	return indexEntry{at: at.UnixMilli(), run: &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Name: name}}}
}

// NewRunIndex returns an empty index; Register feeds it.
func NewRunIndex() *RunIndex {
	return &RunIndex{trees: map[string]*btree.BTreeG[indexEntry]{}, runs: map[types.NamespacedName]*jobsv1alpha1.JobRun{},
		progress: make(chan struct{}), timeout: defaultConsistencyTimeout}
}

// Register subscribes the index to the JobRun informer of c; its reads
// write the consistency marker of namespace (the namespace the API serves)
// through w.
func (x *RunIndex) Register(ctx context.Context, c cache.Informers, w client.Client, namespace string) error {
	x.marker = &marker{client: w, namespace: namespace}
	inf, err := c.GetInformer(ctx, &jobsv1alpha1.JobRun{})
	if err != nil {
		return err
	}
	if !x.listsNoted.Load() {
		return errors.New("the run index needs the cache built with its NewInformer (cache.Options.NewInformer), to know when the informer replays a list")
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { x.set(obj) },
		UpdateFunc: func(_, obj any) { x.set(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if run, ok := obj.(*jobsv1alpha1.JobRun); ok {
				x.remove(client.ObjectKeyFromObject(run))
				x.observe(run)
			}
		},
	})
	if err != nil {
		return err
	}
	hasSynced := reg.HasSynced
	x.synced.Store(&hasSynced)
	return nil
}

// Synced reports whether the index holds every run the informer listed at
// its start (for readiness).
func (x *RunIndex) Synced(context.Context) bool {
	f := x.synced.Load()
	return f != nil && (*f)()
}

func indexKeys(run *jobsv1alpha1.JobRun) []string {
	if run.Spec.TeamID == "" {
		return nil
	}
	team := run.Namespace + "/" + run.Spec.TeamID
	return []string{team, team + "|project=" + run.Spec.ProjectID, team + "|job_type=" + run.Spec.JobType, team + "|status=" + string(run.CurrentPhase())}
}

func queryKey(q RunQuery) string {
	team := q.Namespace + "/" + q.TeamID
	switch {
	case q.ProjectID != "":
		return team + "|project=" + q.ProjectID
	case q.JobType != "":
		return team + "|job_type=" + q.JobType
	case q.Status != "":
		return team + "|status=" + q.Status
	}
	return team
}

func entryOf(run *jobsv1alpha1.JobRun) indexEntry {
	return indexEntry{at: sortTime(run).UnixMilli(), run: run}
}

func (x *RunIndex) set(obj any) {
	run, ok := obj.(*jobsv1alpha1.JobRun)
	if !ok {
		return
	}
	x.put(run)
	x.observe(run)
}

// observe records that the index has handled run's event.
func (x *RunIndex) observe(run *jobsv1alpha1.JobRun) {
	rv, err := parseResourceVersion(run.ResourceVersion)
	if err != nil {
		return // no progress to record; a round then waits in vain (503)
	}
	x.progressMu.Lock()
	defer x.progressMu.Unlock()
	if x.replaying != 0 && rv > x.replaying {
		x.replaying = 0 // past the list: its replay is done
	}
	if rv > x.seen {
		x.seen = rv
		close(x.progress)
		x.progress = make(chan struct{})
	}
}

// errReplaying: the index saw the marker's write, but as part of a list it
// is still replaying.
var errReplaying = errors.New("the index is replaying a list")

// waitSeen waits until the index has handled an event at or past rv (and
// holds every run the informer listed at its start). If it has, but within
// a list still being replayed, it returns errReplaying.
func (x *RunIndex) waitSeen(ctx context.Context, rv uint64) error {
	for {
		x.progressMu.Lock()
		seen, progress, replaying := x.seen, x.progress, x.replaying
		x.progressMu.Unlock()
		synced := x.Synced(ctx)
		if seen >= rv && synced {
			if replaying != 0 {
				return errReplaying
			}
			return nil
		}
		var poll <-chan time.Time
		if !synced {
			poll = time.After(50 * time.Millisecond)
		}
		select {
		case <-progress:
		case <-poll:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fresh returns once the index has seen every JobRun write that completed
// before it was called: it joins the next consistency round.
func (x *RunIndex) fresh(ctx context.Context) error {
	if x.marker == nil {
		return errors.New("the run index is not registered with an informer")
	}
	if err := x.rounds.wait(ctx, x.round); err != nil {
		return err
	}
	consistencyReads.Inc()
	return nil
}

// round writes the marker and waits for its event, within x.timeout.
func (x *RunIndex) round() error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), x.timeout)
	defer cancel()
	for {
		rv, err := x.marker.touch(ctx)
		if err != nil {
			consistencyRounds.WithLabelValues("unavailable").Inc()
			return fmt.Errorf("writing the consistency marker: %w", err)
		}
		err = x.waitSeen(ctx, rv)
		if errors.Is(err, errReplaying) {
			continue // a write after the list: its event comes after the replay
		}
		if err != nil {
			consistencyRounds.WithLabelValues("behind").Inc()
			return errCacheBehind
		}
		break
	}
	consistencyRounds.WithLabelValues("ok").Inc()
	consistencyWait.Observe(time.Since(start).Seconds())
	return nil
}

// GetRun returns the team run namespace/name (nil if the index has no such
// run), consistently.
func (x *RunIndex) GetRun(ctx context.Context, namespace, name string) (*jobsv1alpha1.JobRun, error) {
	if err := x.fresh(ctx); err != nil {
		return nil, err
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.runs[types.NamespacedName{Namespace: namespace, Name: name}], nil
}

// put indexes run (or, for a run without a team, drops it).
func (x *RunIndex) put(run *jobsv1alpha1.JobRun) {
	id := client.ObjectKeyFromObject(run)
	keys, e := indexKeys(run), entryOf(run)
	x.mu.Lock()
	defer x.mu.Unlock()
	// Most updates (progress) change neither the trees a run is in nor its
	// place: replace the object where it is.
	if old, ok := x.runs[id]; ok && (!slices.Equal(indexKeys(old), keys) || entryOf(old).at != e.at) {
		x.removeLocked(id)
	}
	if len(keys) == 0 {
		return
	}
	for _, k := range keys {
		t := x.trees[k]
		if t == nil {
			t = btree.NewG(32, newerFirst)
			x.trees[k] = t
		}
		t.ReplaceOrInsert(e)
	}
	x.runs[id] = run
}

func (x *RunIndex) remove(id types.NamespacedName) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(id)
}

func (x *RunIndex) removeLocked(id types.NamespacedName) {
	old, ok := x.runs[id]
	if !ok {
		return
	}
	e := entryOf(old)
	for _, k := range indexKeys(old) {
		if t := x.trees[k]; t != nil {
			t.Delete(e)
			if t.Len() == 0 {
				delete(x.trees, k)
			}
		}
	}
	delete(x.runs, id)
}

// ListRuns lists a page consistently (fresh, then list).
func (x *RunIndex) ListRuns(ctx context.Context, q RunQuery) ([]*jobsv1alpha1.JobRun, bool, error) {
	if err := x.fresh(ctx); err != nil {
		return nil, false, err
	}
	runs, hasMore := x.list(q)
	return runs, hasMore, nil
}

// list walks the most specific tree from the cursor (or until), checks the
// other filters, and stops at since or after limit+1 runs.
func (x *RunIndex) list(q RunQuery) ([]*jobsv1alpha1.JobRun, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	t := x.trees[queryKey(q)]
	if t == nil {
		return nil, false
	}
	// Where the page starts: after the cursor, and before until (an entry
	// at until with the empty id comes after every run created at until).
	var from *indexEntry
	if !q.Until.IsZero() {
		p := pivot(q.Until, "")
		from = &p
	}
	if q.After != nil {
		c := pivot(q.After.CreatedAt, q.After.ID)
		if from == nil || newerFirst(*from, c) {
			from = &c
		}
	}
	var runs []*jobsv1alpha1.JobRun
	visit := func(e indexEntry) bool {
		at := time.UnixMilli(e.at)
		if !q.Since.IsZero() && at.Before(q.Since) {
			return false // all the rest are older
		}
		run := e.run
		switch {
		case q.After != nil && !q.After.precedes(at, run.Name),
			!q.Until.IsZero() && !at.Before(q.Until),
			q.JobType != "" && run.Spec.JobType != q.JobType,
			q.Status != "" && string(run.CurrentPhase()) != q.Status,
			q.ProjectID != "" && run.Spec.ProjectID != q.ProjectID:
			return true
		}
		runs = append(runs, run)
		return len(runs) <= q.Limit
	}
	if from != nil {
		t.AscendGreaterOrEqual(*from, visit)
	} else {
		t.Ascend(visit)
	}
	if len(runs) > q.Limit {
		return runs[:q.Limit], true
	}
	return runs, false
}
