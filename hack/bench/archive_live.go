package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/benchstat"
	"jobrun.dev/jobrun/internal/localcluster"
)

// archiveTeam is the team of the runs archiveLiveWindow makes.
const archiveTeam = "bench-archive"

// archiveKeepsUp triggers runs at 50/s through the REST API, run to the
// end by the dev node (the dispatch scenario's load), and compares the rate
// at which they finished with the rate at which their rows reached the
// archive, and the lag between the two, from the rows: completed_at is the
// manager's end of the run, archived_at PostgreSQL's now() of the row's
// last write (the upsert sets it again on conflict), on the same clock.
func (b *bench) archiveKeepsUp(ctx context.Context, db *archiveDB) error {
	n := 50 * archiveSeconds
	okBefore, errBefore, err := b.archiveWrites(ctx)
	if err != nil {
		return err
	}
	b.log("archive: %d triggers at 50/s, run by the dev node, archived by the manager", n)
	d, err := b.triggerAtRate(ctx, n, false)
	if err != nil {
		return err
	}
	ids := slices.Collect(maps.Keys(d.triggeredAt))
	var have int
	if !waitFor(2*time.Minute, 200*time.Millisecond, func() bool {
		err = db.pool.QueryRow(ctx, "SELECT count(*) FROM archived_runs WHERE namespace = $1 AND id = ANY($2)", ns, ids).Scan(&have)
		return err == nil && have >= n
	}) {
		return fmt.Errorf("archive: %d of %d finished runs archived within 2 minutes of the last end (%v)", have, n, err)
	}
	rows, err := db.pool.Query(ctx, "SELECT id, completed_at, archived_at FROM archived_runs WHERE namespace = $1 AND id = ANY($2)", ns, ids)
	if err != nil {
		return err
	}
	// lags are from the rows; seen, from the run's end to this process's
	// watch seeing it: the row is committed before the end is written, so
	// that bounds the row's commit from above.
	var lags, seen []time.Duration
	var lastCompleted, lastArchived time.Time
	for rows.Next() {
		var id string
		var completed *time.Time
		var archived time.Time
		if err := rows.Scan(&id, &completed, &archived); err != nil {
			rows.Close()
			return err
		}
		if completed == nil {
			rows.Close()
			return fmt.Errorf("archive: a finished run's row has no completed_at")
		}
		lags = append(lags, archived.Sub(*completed))
		if at, ok := d.endAt[id]; ok {
			seen = append(seen, at.Sub(*completed))
		}
		if completed.After(lastCompleted) {
			lastCompleted = *completed
		}
		if archived.After(lastArchived) {
			lastArchived = archived
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	okAfter, errAfter, err := b.archiveWrites(ctx)
	if err != nil {
		return err
	}
	finished := float64(n) / lastCompleted.Sub(d.start).Seconds()
	archived := float64(n) / lastArchived.Sub(d.start).Seconds()
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("runs finished per second (%d triggered at 50/s, dev node, %d not completed)", n, d.failed), Value: finished, Unit: "runs/s"})
	b.add(Figure{Scenario: "archive", Name: "runs archived per second (ceiling: finished per second)", Value: archived, Unit: "runs/s", Ceiling: finished, Target: "keeps up (>= 0.99 of finished)", Met: met(archived >= 0.99*finished)})
	p := func(q float64) float64 { return benchstat.Millis(benchstat.Percentile(lags, q)) }
	b.add(Figure{Scenario: "archive", Name: "archive lag (row's archived_at - completed_at) p50", Value: p(0.5), Unit: "ms"})
	b.add(Figure{Scenario: "archive", Name: "archive lag p99", Value: p(0.99), Unit: "ms"})
	b.add(Figure{Scenario: "archive", Name: "archive lag max", Value: p(1), Unit: "ms"})
	// archived_at is the write's transaction start (now()): the figures
	// above leave out its commit. The end a client sees comes after it.
	b.add(Figure{Scenario: "archive", Name: "run's end -> seen by a watch (row committed before) p50", Value: benchstat.Millis(benchstat.Percentile(seen, 0.5)), Unit: "ms"})
	b.add(Figure{Scenario: "archive", Name: "run's end -> seen by a watch p99", Value: benchstat.Millis(benchstat.Percentile(seen, 0.99)), Unit: "ms"})
	// More than one write per run is a rewrite of the same row (the
	// upsert is idempotent): a pass whose status write conflicted after
	// its row was written.
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("archive writes per run (jobrun_archive_writes_total; %.0f failed)", errAfter-errBefore), Value: (okAfter - okBefore) / float64(n), Unit: "writes", Target: "no failed writes", Met: met(errAfter == errBefore)})
	return nil
}

// archiveWrites reads the manager's jobrun_archive_writes_total, by result.
func (b *bench) archiveWrites(ctx context.Context) (ok, failed float64, err error) {
	m := b.cl.Manager()
	if m == nil {
		return 0, 0, fmt.Errorf("no manager runs")
	}
	text, err := m.Metrics(ctx)
	if err != nil {
		return 0, 0, err
	}
	ok, _ = localcluster.MetricValue(text, `jobrun_archive_writes_total{result="ok"}`)
	failed, _ = localcluster.MetricValue(text, `jobrun_archive_writes_total{result="error"}`)
	return ok, failed, nil
}

// liveSample is the manager's live heap and the JobRuns (all, and
// archiveTeam's) and pods in etcd at a moment.
type liveSample struct {
	heap               float64 // MiB
	runs, ofTeam, pods int
}

func (b *bench) sampleLive(ctx context.Context) (liveSample, error) {
	heap, err := b.liveHeap()
	if err != nil {
		return liveSample{}, err
	}
	all, err := b.countRuns(ctx, nil)
	if err != nil {
		return liveSample{}, err
	}
	team, err := b.countRuns(ctx, client.MatchingLabels{jobsv1alpha1.LabelTeam: archiveTeam})
	if err != nil {
		return liveSample{}, err
	}
	pods := &metav1.PartialObjectMetadataList{}
	pods.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	err = b.c.List(ctx, pods, client.InNamespace(ns))
	return liveSample{heap: heap / (1 << 20), runs: all, ofTeam: team, pods: len(pods.Items)}, err
}

// countRuns counts the JobRuns in the API server (a consistent LIST of
// their metadata, in pages).
func (b *bench) countRuns(ctx context.Context, sel client.ListOption) (int, error) {
	n, cont := 0, ""
	for {
		l := &metav1.PartialObjectMetadataList{}
		l.SetGroupVersionKind(jobsv1alpha1.GroupVersion.WithKind("JobRunList"))
		opts := []client.ListOption{client.InNamespace(ns), client.Limit(5000), client.Continue(cont)}
		if sel != nil {
			opts = append(opts, sel)
		}
		if err := b.c.List(ctx, l, opts...); err != nil {
			return 0, err
		}
		n += len(l.Items)
		if cont = l.GetContinue(); cont == "" {
			return n, nil
		}
	}
}

// archiveLiveWindow makes archiveLiveRuns runs with the node gone: the
// bench creates each run (as a trigger does, with the archive's finalizer)
// and plays the kubelet, marking its pod Succeeded as soon as the pod
// appears; the controller finishes, archives and, after the live TTL,
// deletes the run. At most 300 runs are unfinished at a time, so the rate
// is what the controller and API server sustain. The manager's live heap
// and etcd's JobRun count, before, halfway and at the end, show what the
// live window holds: bounded by rate x TTL, not by the runs made.
func (b *bench) archiveLiveWindow(ctx context.Context, db *archiveDB) error {
	n := archiveLiveRuns
	before, err := b.sampleLive(ctx)
	if err != nil {
		return err
	}
	wctx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()

	// The kubelet's part: each new pod of ours ends at once.
	pods := make(chan string, 4096)
	var kubeletErr atomic.Value
	var watches sync.WaitGroup
	podsDone, err := b.watchAll(wctx, &corev1.PodList{}, func(ev watch.Event) {
		p, ok := ev.Object.(*corev1.Pod)
		if ok && ev.Type == watch.Added && strings.HasPrefix(p.Labels[jobsv1alpha1.LabelRun], "arc-") && p.Status.Phase != corev1.PodSucceeded {
			pods <- p.Name
		}
	})
	if err != nil {
		return err
	}
	go func() {
		<-podsDone
		close(pods)
	}()
	for range 8 {
		watches.Go(func() {
			for name := range pods {
				patch := fmt.Sprintf(`{"status":{"phase":"Succeeded","startTime":%q}}`, time.Now().UTC().Format(time.RFC3339))
				pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
				if err := b.c.Status().Patch(ctx, pod, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil && !apierrors.IsNotFound(err) {
					kubeletErr.Store(err)
				}
			}
		})
	}

	inflight := make(chan struct{}, 300)
	var ended atomic.Int64
	var failed atomic.Int64
	seen := map[string]bool{}
	runsDone, err := b.watchAll(wctx, &jobsv1alpha1.JobRunList{}, func(ev watch.Event) {
		jr, ok := ev.Object.(*jobsv1alpha1.JobRun)
		if !ok || jr.Spec.TeamID != archiveTeam || seen[jr.Name] || !jr.CurrentPhase().IsTerminal() {
			return
		}
		seen[jr.Name] = true
		if jr.CurrentPhase() != jobsv1alpha1.JobRunCompleted {
			failed.Add(1)
		}
		ended.Add(1)
		<-inflight
	})
	if err != nil {
		return err
	}
	var half liveSample
	var halfErr error
	halfDone := make(chan struct{})
	go func() {
		defer close(halfDone)
		for ended.Load() < int64(n/2) {
			time.Sleep(200 * time.Millisecond)
			if kubeletErr.Load() != nil {
				return
			}
		}
		half, halfErr = b.sampleLive(ctx)
	}()

	b.log("archive: %d runs through a live window of %s (pods completed by the bench; at most 300 unfinished)", n, archiveLiveTTL)
	start := time.Now()
	params := &runtime.RawExtension{Raw: []byte(`{"items":1}`)}
	if err := parallel(16, n, func(i int) error {
		inflight <- struct{}{}
		project := fmt.Sprintf("ap-%03d", i%500)
		run := jobsv1alpha1.NewJobRun(ns, fmt.Sprintf("arc-%07d", i), jobsv1alpha1.JobRunSpec{
			JobType: "demo_sync", TeamID: archiveTeam, ProjectID: project, Params: params, TriggeredBy: "manual:user:bench",
		}, time.Now())
		controllerutil.AddFinalizer(run, jobsv1alpha1.FinalizerArchive)
		if err := b.c.Create(ctx, run); err != nil {
			return fmt.Errorf("archive: creating run %d: %w", i, err)
		}
		if i > 0 && i%10000 == 0 {
			b.log("archive: %d runs created, %d ended", i, ended.Load())
		}
		return nil
	}); err != nil {
		return err
	}
	if !waitFor(10*time.Minute, 200*time.Millisecond, func() bool { return ended.Load() >= int64(n) || kubeletErr.Load() != nil }) {
		return fmt.Errorf("archive: only %d of %d runs ended within 10 minutes of the last create", ended.Load(), n)
	}
	if err, _ := kubeletErr.Load().(error); err != nil {
		return fmt.Errorf("archive: completing a pod: %w", err)
	}
	took := time.Since(start)
	stopWatches()
	<-runsDone
	watches.Wait()
	<-halfDone
	if halfErr != nil {
		return halfErr
	}
	var rows int
	if !waitFor(2*time.Minute, 200*time.Millisecond, func() bool {
		err = db.pool.QueryRow(ctx, "SELECT count(*) FROM archived_runs WHERE namespace = $1 AND team_id = $2", ns, archiveTeam).Scan(&rows)
		return err == nil && rows >= n
	}) {
		return fmt.Errorf("archive: %d of %d runs archived within 2 minutes of the last end (%v)", rows, n, err)
	}
	end, err := b.sampleLive(ctx)
	if err != nil {
		return err
	}
	// One live TTL later (and the controller's pass), the window has
	// emptied: what etcd held was the window, not history.
	time.Sleep(archiveLiveTTL + 10*time.Second)
	settled, err := b.sampleLive(ctx)
	if err != nil {
		return err
	}

	rate := float64(n) / took.Seconds()
	window := rate * archiveLiveTTL.Seconds()
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("runs made through a %s live window (%d, %.0f s; %d not completed)", archiveLiveTTL, n, took.Seconds(), failed.Load()), Value: rate, Unit: "runs/s"})
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("archived rows of those %d runs", n), Value: float64(rows), Unit: "rows", Target: fmt.Sprint(n), Met: met(rows == n)})
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("their JobRuns in etcd at %d runs (%d at %d, %d one TTL later)", n, half.ofTeam, n/2, settled.ofTeam), Value: float64(end.ofTeam), Unit: "runs",
		Target: fmt.Sprintf("<= 2x rate x TTL (%.0f)", 2*window), Met: met(float64(end.ofTeam) <= 2*window),
		Breakdown: map[string]float64{"before": float64(before.ofTeam), "half": float64(half.ofTeam), "end": float64(end.ofTeam), "one TTL later": float64(settled.ofTeam)}})
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("all JobRuns in etcd at the end (%d before, %d at half, %d one TTL later)", before.runs, half.runs, settled.runs), Value: float64(end.runs), Unit: "runs"})
	// A deleted run's pod goes with it through kube-controller-manager's
	// garbage collector (background propagation): the pods left show how
	// far that lags the runs.
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("pods in etcd at the end (%d before, %d at half, %d one TTL later)", before.pods, half.pods, settled.pods), Value: float64(end.pods), Unit: "pods",
		Target: fmt.Sprintf("<= 2x rate x TTL (%.0f)", 2*window), Met: met(float64(end.pods) <= 2*window)})
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("manager live heap after %d runs (%.1f MiB before, %.1f at half, %.1f one TTL later)", n, before.heap, half.heap, settled.heap), Value: end.heap, Unit: "MiB",
		Breakdown: map[string]float64{"before": before.heap, "half": half.heap, "end": end.heap, "one TTL later": settled.heap}})
	b.log("archive: live window samples before %+v, half %+v, end %+v, one TTL later %+v", before, half, end, settled)
	return nil
}

// watchAll delivers the events of list's kind in ns to f, from a watch
// established before it returns, until ctx ends (done is closed then),
// watching again from the last event's resourceVersion whenever the API
// server ends a watch (as it does now and then under a burst of events).
func (b *bench) watchAll(ctx context.Context, list client.ObjectList, f func(watch.Event)) (done <-chan struct{}, err error) {
	wc, err := client.NewWithWatch(b.cfg, client.Options{Scheme: b.cl.Scheme})
	if err != nil {
		return nil, err
	}
	w, err := wc.Watch(ctx, list, client.InNamespace(ns))
	if err != nil {
		return nil, err
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		rv := ""
		for {
			for ev := range w.ResultChan() {
				if ev.Type == watch.Error {
					if ctx.Err() == nil {
						b.log("watch: %v; watching again from the start", apierrors.FromObject(ev.Object))
					}
					rv = ""
					break
				}
				if o, ok := ev.Object.(client.Object); ok {
					rv = o.GetResourceVersion()
				}
				f(ev)
			}
			w.Stop()
			for {
				if ctx.Err() != nil {
					return
				}
				b.log("watch of %T ended after resourceVersion %s; watching again", list, rv)
				if w, err = wc.Watch(ctx, list, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv}}); err == nil {
					break
				}
				b.log("watch: %v", err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return closed, nil
}
