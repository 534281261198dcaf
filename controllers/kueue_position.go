package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// A queued run's position comes from Kueue's visibility API
// (visibility.kueue.x-k8s.io: the pending workloads of a LocalQueue, in
// the order Kueue will consider them), the only place Kueue says it. A
// leader-only loop reads it for each of jobrun's LocalQueues that has
// pending runs, every interval, the first limit runs of each, and queues
// the runs whose position changed: Reconcile puts the position in the
// Queued condition's message. A run behind the first limit shows none.

// The controller reads the pending workloads of its LocalQueues.
// +kubebuilder:rbac:groups=visibility.kueue.x-k8s.io,resources=localqueues/pendingworkloads,verbs=get,namespace=system

// KueuePositions configures the positions of queued runs (WithKueuePositions).
type KueuePositions struct {
	// Interval is how often positions are read.
	Interval time.Duration
	// Limit is how many runs of each LocalQueue get a position, from the
	// front.
	Limit int
	// Config reaches Kueue's visibility API: the API server's (which
	// Kueue's APIService serves) or Kueue's visibility server itself.
	Config *rest.Config
}

// WithKueuePositions puts a queued run's position in its Queued condition.
func WithKueuePositions(p KueuePositions) Option { return func(o *options) { o.kueuePositions = &p } }

// queuePosition is where a queued run's pod stands, from 0 (next), as
// Kueue counts.
type queuePosition struct {
	local, cluster int32
}

// pendingWorkloads is the answer of Kueue's visibility API.
type pendingWorkloads struct {
	Items []struct {
		Metadata struct {
			OwnerReferences []struct {
				Kind string `json:"kind"`
				Name string `json:"name"`
			} `json:"ownerReferences"`
		} `json:"metadata"`
		PositionInClusterQueue int32 `json:"positionInClusterQueue"`
		PositionInLocalQueue   int32 `json:"positionInLocalQueue"`
	} `json:"items"`
}

// positionReporter reads the positions of queued runs and queues a run
// when its position changes (a manager Runnable, on the leader only).
type positionReporter struct {
	r      *JobRunReconciler
	opts   KueuePositions
	http   *http.Client
	events chan event.GenericEvent
	// seen are the positions of the last read.
	seen map[types.NamespacedName]queuePosition
}

func newPositionReporter(r *JobRunReconciler, opts KueuePositions) (*positionReporter, error) {
	hc, err := rest.HTTPClientFor(opts.Config)
	if err != nil {
		return nil, fmt.Errorf("kueue visibility client: %w", err)
	}
	return &positionReporter{r: r, opts: opts, http: hc, events: make(chan event.GenericEvent, 1024), seen: map[types.NamespacedName]queuePosition{}}, nil
}

// NeedLeaderElection: only the leader writes runs' status.
func (p *positionReporter) NeedLeaderElection() bool { return true }

// Start reads positions every interval until ctx ends.
func (p *positionReporter) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("kueue-positions")
	tick := time.NewTicker(p.opts.Interval)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := p.read(ctx); err != nil {
			if !failing { // once per outage, not every tick
				log.Error(err, "failed to read queued runs' positions from Kueue's visibility API; runs keep the last positions read")
			}
			failing = true
			continue
		}
		failing = false
	}
}

// read reads the positions of every jobrun LocalQueue with pending runs and
// queues the runs whose position changed.
func (p *positionReporter) read(ctx context.Context) error {
	lqs := &unstructured.UnstructuredList{}
	lqs.SetGroupVersionKind(localQueueGVK.GroupVersion().WithKind("LocalQueueList"))
	if err := p.r.cache.List(ctx, lqs, client.MatchingLabels{"app.kubernetes.io/managed-by": "jobrun-manager"}); err != nil {
		return err
	}
	now := map[types.NamespacedName]queuePosition{}
	for _, lq := range lqs.Items {
		if pending, _, _ := unstructured.NestedInt64(lq.Object, "status", "pendingWorkloads"); pending == 0 {
			continue
		}
		list, err := p.pending(ctx, lq.GetNamespace(), lq.GetName())
		if err != nil {
			return err
		}
		for _, wl := range list.Items {
			for _, ref := range wl.Metadata.OwnerReferences {
				if ref.Kind == "JobRun" {
					now[types.NamespacedName{Namespace: lq.GetNamespace(), Name: ref.Name}] = queuePosition{local: wl.PositionInLocalQueue, cluster: wl.PositionInClusterQueue}
				}
			}
		}
	}
	var changed []types.NamespacedName
	for key, pos := range now {
		if old, ok := p.seen[key]; !ok || old != pos {
			p.r.positions.Store(key, pos)
			changed = append(changed, key)
		}
	}
	for key := range p.seen {
		if _, ok := now[key]; !ok {
			p.r.positions.Delete(key)
			changed = append(changed, key)
		}
	}
	p.seen = now
	for _, key := range changed {
		run := &jobsv1alpha1.JobRun{}
		run.Namespace, run.Name = key.Namespace, key.Name
		select {
		case p.events <- event.GenericEvent{Object: run}:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// pending asks Kueue's visibility API for the first runs of LocalQueue
// ns/name.
func (p *positionReporter) pending(ctx context.Context, ns, name string) (*pendingWorkloads, error) {
	base, _, err := rest.DefaultServerUrlFor(p.opts.Config)
	if err != nil {
		return nil, err
	}
	u := fmt.Sprintf("%s/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/%s/localqueues/%s/pendingworkloads?limit=%d",
		base, url.PathEscape(ns), url.PathEscape(name), p.opts.Limit)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pending workloads of LocalQueue %s/%s: %w", ns, name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("pending workloads of LocalQueue %s/%s: %s: %.300s", ns, name, resp.Status, body)
	}
	list := &pendingWorkloads{}
	if err := json.Unmarshal(body, list); err != nil {
		return nil, fmt.Errorf("pending workloads of LocalQueue %s/%s: %w", ns, name, err)
	}
	return list, nil
}

// queuePosition is the position of run as last read, or nil.
func (r *JobRunReconciler) queuePosition(run *jobsv1alpha1.JobRun) *queuePosition {
	if v, ok := r.positions.Load(types.NamespacedName{Namespace: run.Namespace, Name: run.Name}); ok {
		pos := v.(queuePosition)
		return &pos
	}
	return nil
}
