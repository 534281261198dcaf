package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// Defaults of BrokerOptions.
const (
	// DefaultStreamRing is how many recent changes a Broker keeps for
	// clients that resume with Last-Event-ID.
	DefaultStreamRing = 4096
	// DefaultStreamBuffer is how many changes a subscriber may fall behind
	// before it is disconnected.
	DefaultStreamBuffer = 256
)

var (
	streamsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "jobrun_api_streams_open",
		Help: "Open event streams of the REST API, by kind: run or team.",
	}, []string{"kind"})
	streamEventsSent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jobrun_api_stream_events_sent_total",
		Help: "Events written to event streams, by SSE event name (snapshot, update, final, run, reset, overflow, revoked, deleted).",
	}, []string{"event"})
	streamSlowDisconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "jobrun_api_stream_slow_disconnects_total",
		Help: "Event streams disconnected because the client fell a full buffer behind.",
	})
)

func init() {
	metrics.Registry.MustRegister(streamsOpen, streamEventsSent, streamSlowDisconnects)
}

// BrokerOptions size a Broker.
type BrokerOptions struct {
	// Ring is how many recent changes are kept for resumes (default
	// DefaultStreamRing).
	Ring int
	// Buffer is each subscriber's buffer (default DefaultStreamBuffer).
	Buffer int
}

// runEvent is one visible change of a team run: its resourceVersion (the
// event id), the run (the informer's object, shared: never changed) and its
// body, {"job_run": {...}}, marshalled once for every subscriber.
type runEvent struct {
	rv   uint64
	run  *jobsv1alpha1.JobRun
	body []byte
	// deleted: the run was deleted before it finished (run is its last
	// state). Such events have no id and are not in the ring: a stream
	// resumed after one finds no run.
	deleted bool
}

// Broker fans the JobRun informer's changes out to event streams. It is one
// more event handler on the informer the RunIndex uses: no API-server
// request per stream or per event. A change is an add or an update whose
// API representation (toJobRun) differs from the previous one; deletions
// are not changes (a run deleted by its TTL did not change), nor are runs
// without a team (system runs and the consistency marker).
//
// Event ids are the run's resourceVersion, which the API server gives every
// write in increasing order and a watch delivers in that order; so ids mean
// the same on every replica. The broker keeps the last Ring changes in
// arrival order; floor is the greatest id below which it cannot replay: the
// last change that left the ring, or a change that arrived out of order (a
// list the informer replays at its start or after a watch expired). A
// client that saw id X can resume here iff floor < X <= top: every change
// after X is then in the ring, in order.
//
// Publishing never blocks: a subscriber whose buffer is full is dropped
// (its stream then tells the client to resume), so a slow client never
// slows the informer or the other subscribers.
type Broker struct {
	mu     sync.Mutex
	ring   []runEvent // circular, len(ring) == cap
	start  int        // index of the oldest event
	n      int        // events in the ring
	top    uint64     // greatest id published
	floor  uint64
	subs   map[*subscriber]struct{}
	buffer int
	closed bool
	done   chan struct{}
}

// subscriber is one stream's subscription: match selects its events, ch
// buffers them, dropped is closed when it fell behind.
type subscriber struct {
	match   func(*jobsv1alpha1.JobRun) bool
	ch      chan runEvent
	dropped chan struct{}
}

// NewBroker returns a Broker; Register feeds it.
func NewBroker(o BrokerOptions) *Broker {
	if o.Ring <= 0 {
		o.Ring = DefaultStreamRing
	}
	if o.Buffer <= 0 {
		o.Buffer = DefaultStreamBuffer
	}
	return &Broker{ring: make([]runEvent, o.Ring), subs: map[*subscriber]struct{}{}, buffer: o.Buffer, done: make(chan struct{})}
}

// Register subscribes the broker to the JobRun informer of c.
func (b *Broker) Register(ctx context.Context, c cache.Informers) error {
	inf, err := c.GetInformer(ctx, &jobsv1alpha1.JobRun{})
	if err != nil {
		return err
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if run, ok := obj.(*jobsv1alpha1.JobRun); ok {
				b.change(nil, run, initial)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*jobsv1alpha1.JobRun)
			if run, ok := obj.(*jobsv1alpha1.JobRun); ok {
				b.change(o, run, false)
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj // the watch missed the delete; a relist saw it
			}
			if run, ok := obj.(*jobsv1alpha1.JobRun); ok {
				b.deleted(run)
			}
		},
	})
	return err
}

// change publishes run's change from old (nil for an add). Runs the
// informer lists at its start are history, not changes: they only raise
// the floor.
func (b *Broker) change(old, run *jobsv1alpha1.JobRun, initial bool) {
	if run.Spec.TeamID == "" {
		return
	}
	if old != nil && old.ResourceVersion == run.ResourceVersion {
		return // a resync, or a relist of an unchanged run
	}
	rv, err := parseResourceVersion(run.ResourceVersion)
	if err != nil {
		return
	}
	if initial {
		b.mu.Lock()
		b.floor, b.top = max(b.floor, rv), max(b.top, rv)
		b.mu.Unlock()
		return
	}
	body := marshalRun(run)
	if old != nil && old.Spec.TeamID != "" && bytes.Equal(body, marshalRun(old)) {
		return // nothing the API shows changed (annotations, finalizers)
	}
	b.publish(runEvent{rv: rv, run: run, body: body})
}

// deleted tells the subscribers of run that it was deleted, if it had not
// finished (a finished run's streams have ended; deleting it, by its TTL or
// by hand, changes nothing the API showed).
func (b *Broker) deleted(run *jobsv1alpha1.JobRun) {
	if run.Spec.TeamID == "" || run.CurrentPhase().IsTerminal() {
		return
	}
	ev := runEvent{run: run, body: marshalRun(run), deleted: true}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.handOutLocked(ev)
}

func marshalRun(run *jobsv1alpha1.JobRun) []byte {
	data, _ := json.Marshal(map[string]any{"job_run": toJobRun(run)})
	return data
}

// publish adds ev to the ring and hands it to every matching subscriber,
// without blocking.
func (b *Broker) publish(ev runEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if ev.rv <= b.top {
		// Out of order (a replayed list): ids before top can no longer be
		// resumed exactly.
		b.floor = b.top
	}
	b.top = max(b.top, ev.rv)
	if b.n == len(b.ring) {
		b.floor = max(b.floor, b.ring[b.start].rv)
		b.ring[b.start] = runEvent{}
		b.start = (b.start + 1) % len(b.ring)
		b.n--
	}
	b.ring[(b.start+b.n)%len(b.ring)] = ev
	b.n++
	b.handOutLocked(ev)
}

// handOutLocked gives ev to every matching subscriber, dropping those whose
// buffer is full.
func (b *Broker) handOutLocked(ev runEvent) {
	if b.closed {
		return
	}
	for s := range b.subs {
		if !s.match(ev.run) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			b.dropLocked(s)
			streamSlowDisconnects.Inc()
		}
	}
}

func (b *Broker) dropLocked(s *subscriber) {
	if _, ok := b.subs[s]; ok {
		delete(b.subs, s)
		close(s.dropped)
	}
}

// subscription is what subscribe returns: the subscriber, the changes after
// the id asked for (if resumable), and top, the id the stream is at.
type subscription struct {
	*subscriber
	backlog   []runEvent
	resumable bool
	top       uint64
}

// subscribe adds a subscriber of the runs match selects. With after > 0
// (a Last-Event-ID), it also returns the ring's matching changes after it,
// in order, if the ring holds every change after it (resumable). The
// subscriber is added and the backlog taken under one lock: every change is
// in exactly one of them.
func (b *Broker) subscribe(match func(*jobsv1alpha1.JobRun) bool, after uint64) subscription {
	s := &subscriber{match: match, ch: make(chan runEvent, b.buffer), dropped: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	sub := subscription{subscriber: s, top: b.top}
	if b.closed {
		close(s.dropped)
		return sub
	}
	b.subs[s] = struct{}{}
	if after > 0 && b.floor < after && after <= b.top {
		sub.resumable = true
		for i := range b.n {
			ev := b.ring[(b.start+i)%len(b.ring)]
			if ev.rv > after && match(ev.run) {
				sub.backlog = append(sub.backlog, ev)
			}
		}
	}
	return sub
}

// unsubscribe removes s.
func (b *Broker) unsubscribe(s *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.subs, s)
}

// Close ends every stream (the server shuts down); later subscriptions end
// at once.
func (b *Broker) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
}
