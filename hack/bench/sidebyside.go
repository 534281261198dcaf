package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/benchstat"
)

const (
	// sideNS holds the side-by-side scenario's Jobs, JobRuns and pods, apart
	// from the other scenarios' runs.
	sideNS = "jobrun-sidebyside"
	// sideJobType is the scenario's JobType, whose pods are never scheduled.
	sideJobType = "sidebyside"
	// noScheduler is a scheduler nobody runs: pods that name it stay
	// pending with no write from kube-scheduler, so only the two
	// controllers' writes and latencies are measured.
	noScheduler = "jobrun-bench-none"
)

// jobControllerFlags are the Job controller's client limits, raised to
// match jobrun's manager, whose client has no client-side limit (QPS -1,
// cmd/jobrun restConfig); kube-controller-manager's defaults are 20/30.
var jobControllerFlags = []string{"--kube-api-qps=1000", "--kube-api-burst=2000"}

// sideRow is one rate of the side-by-side table.
type sideRow struct {
	rate, seconds int
	job, run      sidePhase
}

// sidePhase is what one phase (one controller at one rate) measured.
type sidePhase struct {
	p50, p99 time.Duration
	// seenP50 is create returned -> the object itself seen on a watch in
	// the bench (as the controller's informer would see it): the API
	// server's part, before the controller can act.
	seenP50 time.Duration
	// writes is API-server writes per object, breakdown by verb and
	// resource (see writeKey).
	writes    float64
	breakdown map[string]float64
}

// sideBySide creates Kubernetes Jobs and, separately, JobRuns directly (Go
// client creates, not REST) at each rate for seconds, all with pods that are
// never scheduled, and times, for each, the create returning to its first
// pod seen by a watch in this process; and counts kube-apiserver's writes
// per object from before the first create until the controller has written
// its last. The Job controller runs in a kube-controller-manager of its own
// for the scenario, with client limits that match jobrun's.
func (b *bench) sideBySide(ctx context.Context, rates []int, seconds int) error {
	b.log("sidebyside: kube-controller-manager --controllers=job-controller %s; rates %v/s for %d s each", strings.Join(jobControllerFlags, " "), rates, seconds)
	if err := b.cl.InstallRunner(ctx, sideNS); err != nil {
		return err
	}
	jt := &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Namespace: sideNS, Name: jobsv1alpha1.JobTypeObjectName(sideJobType)},
		Spec: jobsv1alpha1.JobTypeSpec{
			JobType: sideJobType, Scope: jobsv1alpha1.JobTypeScopeProject, Template: unscheduledPod(),
			RetryLimit: ptr.To[int32](0), StartTimeoutSeconds: ptr.To[int64](86400),
		},
	}
	if err := b.c.Create(ctx, jt); err != nil {
		return err
	}
	if err := b.cl.StartJobController(jobControllerFlags...); err != nil {
		return err
	}
	defer b.cl.StopJobController()
	s, err := b.newSide(ctx)
	if err != nil {
		return err
	}
	defer s.stop()

	jobs := sideKind{create: s.createJob, ownCreate: "POST jobs"}
	runs := sideKind{create: s.createRun, ownCreate: "POST jobruns"}
	// Warm up: the Job controller's caches synced, jobrun's cache of the
	// new namespace's JobType; neither is recorded.
	if _, err := s.phase(ctx, jobs, "warm-up-job", 1, 1); err != nil {
		return fmt.Errorf("the Job controller did not start: %w", err)
	}
	if _, err := s.phase(ctx, runs, "warm-up-run", 1, 1); err != nil {
		return err
	}
	for _, rate := range rates {
		row := sideRow{rate: rate, seconds: seconds}
		if row.job, err = s.phase(ctx, jobs, fmt.Sprintf("job-%d", rate), rate, seconds); err != nil {
			return err
		}
		if row.run, err = s.phase(ctx, runs, fmt.Sprintf("run-%d", rate), rate, seconds); err != nil {
			return err
		}
		b.addSideRow(row)
	}
	return nil
}

// sideKind is what one controller is measured with.
type sideKind struct {
	// create creates the object called name and returns its owner key
	// (jobKey, runKey).
	create func(ctx context.Context, name string) (string, error)
	// ownCreate is the writeKey of the bench's own creates.
	ownCreate string
}

// unscheduledPod is the pod template of both controllers' objects: the
// demo_sync handler's, on a scheduler nobody runs.
func unscheduledPod() corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		RestartPolicy: corev1.RestartPolicyNever,
		SchedulerName: noScheduler,
		Containers: []corev1.Container{{
			Name: "handler", Image: "jobrun:dev", Args: []string{"runner"},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
			},
		}},
	}}
}

// side is the scenario's state: a pod watch, and the first pod seen of each
// object of the current phase.
type side struct {
	b       *bench
	stop    func()
	metrics *http.Client

	mu      sync.Mutex
	podAt   map[string]time.Time // by owner key (jobKey, runKey)
	objAt   map[string]time.Time // the object itself, by the same key
	watchOK bool
}

func jobKey(name string) string { return "job/" + name }
func runKey(name string) string { return "run/" + name }

func (b *bench) newSide(ctx context.Context) (*side, error) {
	hc, err := rest.HTTPClientFor(b.cfg)
	if err != nil {
		return nil, err
	}
	wc, err := client.NewWithWatch(b.cfg, client.Options{Scheme: b.cl.Scheme})
	if err != nil {
		return nil, err
	}
	s := &side{b: b, metrics: hc, podAt: map[string]time.Time{}, objAt: map[string]time.Time{}, watchOK: true}
	var stops []func()
	s.stop = func() {
		for _, stop := range stops {
			stop()
		}
	}
	// The first pod of each object, and each object itself, as a watch in
	// the bench sees them (Jobs and pods in protobuf, JobRuns in JSON: as
	// each controller's informer gets them).
	for _, w := range []struct {
		list  client.ObjectList
		into  map[string]time.Time
		keyOf func(runtime.Object) string
	}{
		{&corev1.PodList{}, s.podAt, func(o runtime.Object) string {
			p, ok := o.(*corev1.Pod)
			switch {
			case !ok:
				return ""
			case p.Labels[batchv1.JobNameLabel] != "":
				return jobKey(p.Labels[batchv1.JobNameLabel])
			case p.Labels[jobsv1alpha1.LabelRun] != "":
				return runKey(p.Labels[jobsv1alpha1.LabelRun])
			}
			return ""
		}},
		{&batchv1.JobList{}, s.objAt, func(o runtime.Object) string {
			if j, ok := o.(*batchv1.Job); ok {
				return jobKey(j.Name)
			}
			return ""
		}},
		{&jobsv1alpha1.JobRunList{}, s.objAt, func(o runtime.Object) string {
			if r, ok := o.(*jobsv1alpha1.JobRun); ok {
				return runKey(r.Name)
			}
			return ""
		}},
	} {
		// A watch the API server closes (it does, under load: a watcher
		// that falls behind) is resumed from its last version.
		if err := wc.List(ctx, w.list, client.InNamespace(sideNS)); err != nil {
			s.stop()
			return nil, err
		}
		list := w.list
		watcher, err := watchtools.NewRetryWatcherWithContext(ctx, list.GetResourceVersion(), &toolscache.ListWatch{
			WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
				return wc.Watch(ctx, list.DeepCopyObject().(client.ObjectList), client.InNamespace(sideNS), &client.ListOptions{Raw: &opts})
			},
		})
		if err != nil {
			s.stop()
			return nil, err
		}
		stops = append(stops, watcher.Stop)
		go func() {
			for ev := range watcher.ResultChan() {
				if ev.Type != watch.Added {
					continue
				}
				now := time.Now()
				key := w.keyOf(ev.Object)
				s.mu.Lock()
				if _, seen := w.into[key]; !seen && key != "" {
					w.into[key] = now
				}
				s.mu.Unlock()
			}
			s.mu.Lock()
			s.watchOK = false
			s.mu.Unlock()
		}()
	}
	return s, nil
}

// createJob creates a Job and returns its owner key.
func (s *side) createJob(ctx context.Context, name string) (string, error) {
	err := s.b.c.Create(ctx, &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: sideNS, Name: name},
		Spec: batchv1.JobSpec{
			Parallelism: ptr.To[int32](1), Completions: ptr.To[int32](1), BackoffLimit: ptr.To[int32](0),
			Template: unscheduledPod(),
		},
	})
	return jobKey(name), err
}

// createRun creates a JobRun, for a project of its own, and returns its
// owner key.
func (s *side) createRun(ctx context.Context, name string) (string, error) {
	run := jobsv1alpha1.NewJobRun(sideNS, name, jobsv1alpha1.JobRunSpec{
		JobType: sideJobType, TeamID: "bench-side", ProjectID: name, TriggeredBy: "manual:user:bench",
	}, time.Now())
	return runKey(name), s.b.c.Create(ctx, run)
}

// phase creates rate objects of kind k per second for seconds, named
// after label, waits for each one's first pod, and returns the latencies
// and writes per object; it deletes the objects (and waits until they and
// their pods are gone) before it returns.
func (s *side) phase(ctx context.Context, k sideKind, label string, rate, seconds int) (sidePhase, error) {
	n := rate * seconds
	s.mu.Lock()
	clear(s.podAt)
	clear(s.objAt)
	s.mu.Unlock()
	before, err := s.writes(ctx)
	if err != nil {
		return sidePhase{}, err
	}

	createdAt := make(map[string]time.Time, n)
	var cmu sync.Mutex
	var errs []error
	benchstat.AtRate(time.Second/time.Duration(rate), n, func(i int) {
		key, err := k.create(ctx, fmt.Sprintf("%s-%05d", label, i))
		at := time.Now()
		cmu.Lock()
		defer cmu.Unlock()
		if err != nil {
			errs = append(errs, err)
			return
		}
		createdAt[key] = at
	})
	if len(errs) > 0 {
		return sidePhase{}, fmt.Errorf("sidebyside %s: %d creates failed, the first: %w", label, len(errs), errs[0])
	}

	var seen int
	watching := true
	if !waitFor(10*time.Minute, 100*time.Millisecond, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		seen, watching = len(s.podAt), s.watchOK
		return seen >= n || !watching
	}) || !watching {
		return sidePhase{}, fmt.Errorf("sidebyside %s: %d of %d pods seen (pod watch open: %v)", label, seen, n, watching)
	}
	after, err := s.settle(ctx)
	if err != nil {
		return sidePhase{}, err
	}

	var lat, seenLat []time.Duration
	s.mu.Lock()
	for key, at := range createdAt {
		lat = append(lat, s.podAt[key].Sub(at))
		if seenAt, ok := s.objAt[key]; ok {
			seenLat = append(seenLat, seenAt.Sub(at))
		}
	}
	s.mu.Unlock()
	out := sidePhase{p50: benchstat.Percentile(lat, 0.5), p99: benchstat.Percentile(lat, 0.99), seenP50: benchstat.Percentile(seenLat, 0.5), breakdown: map[string]float64{}}
	for key, v := range after {
		d := v - before[key]
		if key == k.ownCreate {
			d -= float64(n)
		}
		if d != 0 {
			out.breakdown[key] = d / float64(n)
			out.writes += d / float64(n)
		}
	}
	s.b.log("sidebyside %s: p50 %s p99 %s (the object itself seen p50 %s), %.2f writes per object: %s", label, out.p50.Round(time.Millisecond), out.p99.Round(time.Millisecond), out.seenP50.Round(10*time.Microsecond), out.writes, breakdown(out.breakdown))
	start := time.Now()
	if err := s.clean(ctx); err != nil {
		return out, err
	}
	s.b.log("sidebyside %s: %d objects and their pods deleted in %s", label, n, time.Since(start).Round(100*time.Millisecond))
	return out, nil
}

// settle waits until the controllers have stopped writing (two reads of
// the write counters a second apart agree) and returns the last counters.
func (s *side) settle(ctx context.Context) (map[string]float64, error) {
	prev, err := s.writes(ctx)
	if err != nil {
		return nil, err
	}
	for range 15 {
		time.Sleep(time.Second)
		cur, err := s.writes(ctx)
		if err != nil {
			return nil, err
		}
		if maps.Equal(prev, cur) {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// clean deletes the scenario's Jobs and JobRuns and, once they are gone,
// their pods (the garbage collector would, but at kube-controller-manager's
// default 20 requests/s: 30 s for 600 pods), and waits until the pods are
// gone and the writes have stopped, so that one phase's deletions (the Job
// controller's removal of its pods' finalizers, the garbage collector's
// late tries) do not count in the next.
func (s *side) clean(ctx context.Context) error {
	c := s.b.c
	if err := c.DeleteAllOf(ctx, &batchv1.Job{}, client.InNamespace(sideNS), client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		return err
	}
	if err := c.DeleteAllOf(ctx, &jobsv1alpha1.JobRun{}, client.InNamespace(sideNS)); err != nil {
		return err
	}
	if err := s.waitGone(ctx, &batchv1.JobList{}, &jobsv1alpha1.JobRunList{}); err != nil {
		return err
	}
	if err := c.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(sideNS)); err != nil {
		return err
	}
	if err := s.waitGone(ctx, &corev1.PodList{}); err != nil {
		return err
	}
	// The garbage collector may still be working through the pods it had
	// queued (a DELETE that finds one gone is a 404).
	_, err := s.settle(ctx)
	return err
}

// waitGone waits until the lists, in the scenario's namespace, are empty.
func (s *side) waitGone(ctx context.Context, lists ...client.ObjectList) error {
	var left int
	var err error
	if !waitFor(5*time.Minute, 200*time.Millisecond, func() bool {
		left = 0
		for _, l := range lists {
			if err = s.b.c.List(ctx, l, client.InNamespace(sideNS)); err != nil {
				return true
			}
			left += meta.LenList(l)
		}
		return left == 0
	}) {
		return fmt.Errorf("sidebyside: %d objects still in %s after 5 minutes", left, sideNS)
	}
	return err
}

// writes reads kube-apiserver's write requests so far (apiserverWrites).
func (s *side) writes(ctx context.Context) (map[string]float64, error) {
	return s.b.apiserverWrites(ctx, s.metrics)
}

// apiserverWrites reads kube-apiserver's apiserver_request_total with hc
// (the bench's credentials) and returns the write requests (POST, PUT,
// PATCH, APPLY, DELETE, DELETECOLLECTION) by writeKey. Leases and nodes
// are left out: they are the background of heartbeats (the manager's
// leader Lease, the dev node's Node and Lease, node-lifecycle), not work on
// the measured objects.
func (b *bench) apiserverWrites(ctx context.Context, hc *http.Client) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(b.cfg.Host, "/")+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("kube-apiserver /metrics: %d", resp.StatusCode)
	}
	out := map[string]float64{}
	const name = "apiserver_request_total{"
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		labels, err := parseLabels(line[len(name):end])
		if err != nil {
			return nil, fmt.Errorf("kube-apiserver /metrics: %q: %w", line, err)
		}
		switch labels["verb"] {
		case "POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION":
		default:
			continue
		}
		if labels["resource"] == "leases" || labels["resource"] == "nodes" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			return nil, fmt.Errorf("kube-apiserver /metrics: %q: %w", line, err)
		}
		out[writeKey(labels)] += v
	}
	return out, nil
}

// writeKey names a write for the breakdown: verb and resource, the
// subresource after a slash, the status code when it is not a success (a
// 409 is an optimistic-lock conflict).
func writeKey(labels map[string]string) string {
	k := labels["verb"] + " " + labels["resource"]
	if sub := labels["subresource"]; sub != "" {
		k += "/" + sub
	}
	if code := labels["code"]; code != "" && !strings.HasPrefix(code, "2") {
		k += " (" + code + ")"
	}
	return k
}

// parseLabels parses the labels of a Prometheus text-format sample,
// `a="x",b="y"`, with its escapes.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || len(s) < eq+2 || s[eq+1] != '"' {
			return nil, errors.New("malformed labels")
		}
		key := s[:eq]
		s = s[eq+2:]
		var v strings.Builder
		i := 0
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					v.WriteByte('\n')
				default:
					v.WriteByte(s[i])
				}
				continue
			}
			v.WriteByte(s[i])
		}
		if i == len(s) {
			return nil, errors.New("unterminated label value")
		}
		out[key] = v.String()
		s = strings.TrimPrefix(s[i+1:], ",")
	}
	return out, nil
}

// addSideRow records one rate's figures.
func (b *bench) addSideRow(r sideRow) {
	b.side = append(b.side, r)
	at := fmt.Sprintf("%d/s for %d s", r.rate, r.seconds)
	// The target: at 50 and 100/s, jobrun's p99 no worse than the
	// Job controller's.
	target, ok := "", (*bool)(nil)
	if r.rate == 50 || r.rate == 100 {
		target, ok = "<= the Job controller's", met(r.run.p99 <= r.job.p99)
	}
	b.add(Figure{Scenario: "sidebyside", Name: at + ", Job controller: create -> first pod p50", Value: benchstat.Millis(r.job.p50), Unit: "ms"})
	b.add(Figure{Scenario: "sidebyside", Name: at + ", Job controller: create -> first pod p99", Value: benchstat.Millis(r.job.p99), Unit: "ms"})
	b.add(Figure{Scenario: "sidebyside", Name: at + ", jobrun: create -> first pod p50", Value: benchstat.Millis(r.run.p50), Unit: "ms", Ceiling: benchstat.Millis(r.job.p50)})
	b.add(Figure{Scenario: "sidebyside", Name: at + ", jobrun: create -> first pod p99", Value: benchstat.Millis(r.run.p99), Unit: "ms", Ceiling: benchstat.Millis(r.job.p99), Target: target, Met: ok})
	b.add(Figure{Scenario: "sidebyside", Name: at + ", Job controller: create -> the Job seen on a watch p50", Value: benchstat.Millis(r.job.seenP50), Unit: "ms"})
	b.add(Figure{Scenario: "sidebyside", Name: at + ", jobrun: create -> the JobRun seen on a watch p50", Value: benchstat.Millis(r.run.seenP50), Unit: "ms", Ceiling: benchstat.Millis(r.job.seenP50)})
	b.add(Figure{Scenario: "sidebyside", Name: at + ", Job controller: API-server writes per Job", Value: r.job.writes, Unit: "writes", Breakdown: r.job.breakdown})
	b.add(Figure{Scenario: "sidebyside", Name: at + ", jobrun: API-server writes per JobRun", Value: r.run.writes, Unit: "writes", Ceiling: r.job.writes, Breakdown: r.run.breakdown})
}

// printSideBySide prints the side-by-side table, as issue 16 has it.
func (b *bench) printSideBySide() {
	if len(b.side) == 0 {
		return
	}
	fmt.Printf("\nSide by side: Kubernetes Jobs and JobRuns created directly (Go client) at a fixed rate, pods never scheduled (schedulerName %s).\n", noScheduler)
	fmt.Printf("Latency: the create call returned (bench clock) -> the object's first pod seen by a pod watch in the bench (ratio jobrun / Job controller).\n")
	fmt.Printf("Job controller: kube-controller-manager --controllers=job-controller %s (default --concurrent-job-syncs=5); jobrun: the manager's client has no client-side limit (QPS -1).\n\n", strings.Join(jobControllerFlags, " "))
	fmt.Println("| creation → first pod seen | Job controller | jobrun | ratio p50 / p99 | the object itself seen, p50: Job / JobRun |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range b.side {
		fmt.Printf("| %d/s for %d s, p50 / p99 | %s / %s ms | %s / %s ms | %s / %s | %.1f / %.1f ms |\n", r.rate, r.seconds,
			msStr(r.job.p50), msStr(r.job.p99), msStr(r.run.p50), msStr(r.run.p99),
			ratio(r.run.p50, r.job.p50), ratio(r.run.p99, r.job.p99), benchstat.Millis(r.job.seenP50), benchstat.Millis(r.run.seenP50))
	}
	fmt.Println("\nAPI-server writes per object from creation until the counters settle once its pod is created (kube-apiserver apiserver_request_total,")
	fmt.Println("POST/PUT/PATCH/APPLY/DELETE, after minus before, the bench's own creates subtracted, leases and nodes left out):")
	fmt.Println()
	fmt.Println("| writes per object | Job controller | jobrun |")
	fmt.Println("|---|---|---|")
	for _, r := range b.side {
		fmt.Printf("| %d/s | %.2f (%s) | %.2f (%s) |\n", r.rate, r.job.writes, breakdown(r.job.breakdown), r.run.writes, breakdown(r.run.breakdown))
	}
}

func msStr(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", float64(a)/float64(b))
}

// breakdown lists writes per object by kind, the largest first.
func breakdown(m map[string]float64) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		if m[a] != m[b] {
			if m[a] > m[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
