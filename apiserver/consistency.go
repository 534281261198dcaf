package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// The REST API writes its consistency marker (and creates it if missing).
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobruns,verbs=patch,resourceNames=jobrun-consistency-marker,namespace=system

// Consistent reads from the run cache.
//
// The RunIndex is fed by a watch, which lags behind the writes: a run that
// one replica just answered 201 for may not be in another replica's index
// yet. So a read first makes sure that the index has seen every JobRun write
// that completed before the read arrived, the way kube-apiserver serves
// consistent reads from its watch cache (KEP-2340), and only then answers
// from the index.
//
// kube-apiserver learns that its watch cache is current by asking etcd for a
// progress notification. A client has no such request: an informer's
// resourceVersion only moves with events of its own resource (and with a
// bookmark about once a minute), so a quorum read's resourceVersion, which
// every other resource's writes move too, may never be reached by an idle
// JobRun informer. What a client can do is cause an event of its own: a
// round writes the consistency marker — one JobRun per namespace, which is
// not a run (jobsv1alpha1.ConsistencyMarkerName) — and waits until the index
// has handled an event at or past the resourceVersion of that write. A watch
// delivers a resource's events in resourceVersion order, and every write
// that completed before the marker's has a smaller resourceVersion, so by
// then the index holds all of them.
//
// One round serves every read that arrived before it started: reads that
// arrive while a round is under way wait for the next one, which starts when
// it ends. Under load, one marker write serves many reads.
//
// A list replayed by the informer (at its start, or after a watch ended with
// 410 Gone) needs care: see Relists below.

// defaultConsistencyTimeout bounds a round: a cache that has not caught up
// by then gets the read a 503.
const defaultConsistencyTimeout = 5 * time.Second

var (
	consistencyRounds = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jobrun_api_consistency_rounds_total",
		Help: "Consistent-read rounds of the REST API's run cache (one marker write each), by result: ok, unavailable (the marker could not be written) or behind (the cache did not catch up in time).",
	}, []string{"result"})
	consistencyReads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "jobrun_api_consistent_reads_total",
		Help: "Reads (lists and gets) served from the run cache after a consistency round.",
	})
	consistencyWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "jobrun_api_consistency_round_seconds",
		Help:    "How long a consistency round took: the marker write and the wait for its event.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms to ~4 s
	})
)

func init() {
	metrics.Registry.MustRegister(consistencyRounds, consistencyReads, consistencyWait)
}

// errCacheBehind is a read refused because the run cache did not catch up
// in time: a 503 the client retries.
var errCacheBehind = errorf(http.StatusServiceUnavailable, codeUnavailable, "the run cache has not caught up with the Kubernetes API server; retry")

// marker writes a namespace's consistency marker.
type marker struct {
	client    client.Client
	namespace string
}

// touch writes the marker (creating it if it is missing) and returns the
// resourceVersion of the write. Each write changes the nonce, so it is never
// a no-op (which would not move the resourceVersion nor make an event).
func (m marker) touch(ctx context.Context) (uint64, error) {
	for range 3 {
		obj := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: m.namespace, Name: jobsv1alpha1.ConsistencyMarkerName}}
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, jobsv1alpha1.AnnotationMarkerNonce, uuid.NewString())
		err := m.client.Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(patch)))
		if apierrors.IsNotFound(err) {
			obj = newMarker(m.namespace)
			if err = m.client.Create(ctx, obj); apierrors.IsAlreadyExists(err) {
				continue // created meanwhile (another replica): patch it
			}
		}
		if err != nil {
			return 0, err
		}
		return parseResourceVersion(obj.ResourceVersion)
	}
	return 0, errors.New("the consistency marker was deleted and re-created repeatedly")
}

func newMarker(namespace string) *jobsv1alpha1.JobRun {
	return &jobsv1alpha1.JobRun{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: jobsv1alpha1.ConsistencyMarkerName,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "jobrun"},
			Annotations: map[string]string{
				jobsv1alpha1.AnnotationMarkerNonce: uuid.NewString(),
				"jobs.jobrun.dev/purpose":          "not a run: the Jobs REST API writes this object to learn that its run cache is current (consistent reads); the controllers ignore it, and it is re-created if deleted",
			},
		},
		Spec: jobsv1alpha1.JobRunSpec{JobType: jobsv1alpha1.ConsistencyMarkerJobType, TriggeredBy: "jobrun:consistency-marker"},
	}
}

func parseResourceVersion(rv string) (uint64, error) {
	n, err := strconv.ParseUint(rv, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("resourceVersion %q is not a number: the run cache cannot tell whether it is current", rv)
	}
	return n, nil
}

// rounds runs one round at a time and gathers the callers that arrive
// meanwhile into the next.
type rounds struct {
	mu      sync.Mutex
	running bool
	next    *round // the round that starts next; joined until it starts
}

type round struct {
	done    chan struct{}
	err     error
	callers int // how many joined it
}

// wait joins the next round that starts, starting it if none is under way,
// and returns its result.
func (rs *rounds) wait(ctx context.Context, do func() error) error {
	rs.mu.Lock()
	if rs.next == nil {
		rs.next = &round{done: make(chan struct{})}
	}
	r := rs.next
	r.callers++
	if !rs.running {
		rs.running = true
		go rs.loop(do)
	}
	rs.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (rs *rounds) loop(do func() error) {
	for {
		rs.mu.Lock()
		r := rs.next
		rs.next = nil
		if r == nil {
			rs.running = false
			rs.mu.Unlock()
			return
		}
		rs.mu.Unlock()
		r.err = do()
		close(r.done)
	}
}

// Relists. An informer that lists again (its start; a watch that ended with
// 410 Gone) replaces its store with the list and then hands the listed
// changes to the index one by one, in list order — the marker's among them,
// perhaps before the others. So the index notes the list's resourceVersion
// when the list arrives (before the informer replays it); events up to it
// may be replayed, and only an event past it (which the informer hands over
// after the whole replay) shows that the replay is done. A round that sees
// its marker while a replay is pending writes the marker again.

// NewInformer is the manager cache's cache.Options.NewInformer: informers
// as client-go builds them, whose JobRun lists and watch-lists tell the index
// their resourceVersion. Register refuses a cache built without it.
func (x *RunIndex) NewInformer(lw toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, indexers toolscache.Indexers) toolscache.SharedIndexInformer {
	if orig, ok := lw.(*toolscache.ListWatch); ok {
		if _, isRun := obj.(*jobsv1alpha1.JobRun); isRun {
			lw = x.noteLists(orig)
			x.listsNoted.Store(true)
		}
	}
	return toolscache.NewSharedIndexInformer(lw, obj, resync, indexers)
}

// noteLists wraps a JobRun ListWatch: a list's resourceVersion, and a
// watch-list's (from its initial-events-end bookmark), go to x.listed.
func (x *RunIndex) noteLists(orig *toolscache.ListWatch) *toolscache.ListWatch {
	lw := *orig
	lw.ListFunc, lw.WatchFunc = nil, nil // the context versions below serve both
	lw.ListWithContextFunc = func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		list, err := toolscache.ToListerWithContext(orig).ListWithContext(ctx, opts)
		if err == nil {
			if m, merr := meta.ListAccessor(list); merr == nil {
				x.listed(m.GetResourceVersion())
			}
		}
		return list, err
	}
	lw.WatchFuncWithContext = func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
		w, err := toolscache.ToWatcherWithContext(orig).WatchWithContext(ctx, opts)
		if err != nil || opts.SendInitialEvents == nil || !*opts.SendInitialEvents {
			return w, err
		}
		return newInitialEventsWatch(w, x.listed), nil
	}
	return &lw
}

// listed records that the informer is about to replay a list taken at rv.
func (x *RunIndex) listed(rv string) {
	n, err := parseResourceVersion(rv)
	if err != nil {
		return
	}
	x.progressMu.Lock()
	defer x.progressMu.Unlock()
	if n > x.replaying {
		x.replaying = n
	}
}

// initialEventsWatch passes a watch-list's events through, telling end the
// resourceVersion of the bookmark that ends its initial events.
type initialEventsWatch struct {
	watch.Interface
	out  chan watch.Event
	done chan struct{}
	once sync.Once
}

func newInitialEventsWatch(w watch.Interface, end func(rv string)) *initialEventsWatch {
	iw := &initialEventsWatch{Interface: w, out: make(chan watch.Event), done: make(chan struct{})}
	go func() {
		defer close(iw.out)
		for ev := range w.ResultChan() {
			if ev.Type == watch.Bookmark {
				if m, err := meta.Accessor(ev.Object); err == nil && m.GetAnnotations()[metav1.InitialEventsAnnotationKey] == "true" {
					end(m.GetResourceVersion())
				}
			}
			select {
			case iw.out <- ev:
			case <-iw.done:
				return
			}
		}
	}()
	return iw
}

func (iw *initialEventsWatch) ResultChan() <-chan watch.Event { return iw.out }

func (iw *initialEventsWatch) Stop() {
	iw.once.Do(func() { close(iw.done) })
	iw.Interface.Stop()
}
