package controllers

import (
	"bytes"
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/benchstat"
	"jobrun.dev/jobrun/test/testenv"
)

var (
	dispatchSeconds  = flag.Int("dispatch-seconds", 5, "BenchmarkDispatch: how long runs are created at each rate.")
	dispatchRates    = flag.String("dispatch-rates", "20,50,100", "BenchmarkDispatch: the creation rates (runs/s), comma-separated.")
	dispatchWorkers  = flag.Int("dispatch-workers", 0, "BenchmarkDispatch: the JobRun controller's workers (0: its default).")
	dispatchBare     = flag.Bool("dispatch-bare", false, "BenchmarkDispatch: create runs without the status label (as kubectl would), not as NewJobRun makes them.")
	dispatchComplete = flag.Bool("dispatch-complete", false, "BenchmarkDispatch: play the kubelet (each pod runs, then succeeds) and count the manager's requests over the runs' whole lives.")
	dispatchVerbose  = flag.Bool("dispatch-verbose", false, "BenchmarkDispatch: log every kind of request the manager made, with its latency.")
)

// BenchmarkDispatch measures the JobRun controller alone, as the issue-16
// comparison with the Job controller does: pending runs (made by
// NewJobRun, as the REST trigger and the schedules make them) are created
// straight in the API server at a fixed rate, no kubelet runs (pods are
// created, never started), and it reports creation → pod created (seen on a
// watch) p50 and p99, and the manager's requests to the API server per run by
// kind. It asserts nothing about time. Run it with
//
//	go test ./controllers/ -run '^$' -bench Dispatch -benchtime 1x [-dispatch-rates 20,50,100] [-dispatch-seconds 5]
func BenchmarkDispatch(b *testing.B) {
	ctrl.SetLogger(logr.Discard())
	for _, s := range strings.Split(*dispatchRates, ",") {
		var rate int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &rate); err != nil || rate <= 0 {
			b.Fatalf("-dispatch-rates: %q is not a rate", s)
		}
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			for b.Loop() {
				dispatchOnce(b, rate, *dispatchSeconds)
			}
		})
	}
}

func dispatchOnce(b *testing.B, rate, seconds int) {
	ctx := context.Background()
	ns := env.Namespace(b)
	createJobType(b, ns)

	// The manager's requests, counted by kind on their way out.
	requests := &requestCounter{}
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS = -1 // as cmd/jobrun's restConfig
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return requests.wrap(rt) })
	mgr := env.NewManagerWithConfig(b, cfg, ns)
	var opts []Option
	if *dispatchWorkers > 0 {
		opts = append(opts, WithWorkers(*dispatchWorkers))
	}
	// The real clock (the default): runs are timed in real time. The
	// manager's other controllers too, as cmd/jobrun sets them up: they
	// share its cache (the JobType informer is started with it, not by the
	// first run).
	if err := NewJobRunReconciler(mgr, opts...).SetupWithManager(ctx, mgr); err != nil {
		b.Fatal(err)
	}
	if err := NewJobTypeReconciler(mgr, opts...).SetupWithManager(mgr); err != nil {
		b.Fatal(err)
	}
	if err := NewJobScheduleReconciler(mgr, opts...).SetupWithManager(mgr); err != nil {
		b.Fatal(err)
	}
	// When the manager's cache first holds each run: the watch's share.
	informer, err := mgr.GetCache().GetInformer(ctx, &jobsv1alpha1.JobRun{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		if run, ok := obj.(*jobsv1alpha1.JobRun); ok {
			requests.step(run.Name, stepCached)
		}
	}}); err != nil {
		b.Fatal(err)
	}
	stop := testenv.StartManager(b, mgr)
	defer stop()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		b.Fatal("cache did not sync")
	}

	// The benchmark's own client: no client-side limit (env.Client's would
	// hold back the runs and the kubelet's writes).
	cfg = rest.CopyConfig(env.Config)
	cfg.QPS = -1
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	// A watch the API server closes (it does, under load) is resumed from
	// its last version: no pod goes unseen.
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		b.Fatal(err)
	}
	pods := &corev1.PodList{}
	if err := wc.List(ctx, pods, client.InNamespace(ns)); err != nil {
		b.Fatal(err)
	}
	podW, err := watchtools.NewRetryWatcherWithContext(ctx, pods.ResourceVersion, &toolscache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return wc.Watch(ctx, &corev1.PodList{}, client.InNamespace(ns), &client.ListOptions{Raw: &opts})
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer podW.Stop()
	var mu sync.Mutex
	podAt := map[string]time.Time{}
	go func() {
		for ev := range podW.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type == watch.Added {
				mu.Lock()
				if _, seen := podAt[p.Labels[jobsv1alpha1.LabelRun]]; !seen {
					podAt[p.Labels[jobsv1alpha1.LabelRun]] = time.Now()
				}
				mu.Unlock()
				if *dispatchComplete && p.Labels[jobsv1alpha1.LabelRun] != "warmup" {
					go runPod(b, c, p)
				}
			}
		}
	}()

	// The controllers start a moment after the cache: one run through
	// first, so that the figures are the steady state's.
	warmup := jobsv1alpha1.NewJobRun(ns, "warmup", jobsv1alpha1.JobRunSpec{JobType: "demo_sync", TeamID: "team-1", ProjectID: "warmup", TriggeredBy: "manual:user:u1"}, time.Now())
	if err := env.Client.Create(ctx, warmup); err != nil {
		b.Fatal(err)
	}
	warmupStart := time.Now()
	testenv.Eventually(b, time.Minute, func(ctx context.Context) error {
		return env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: jobsv1alpha1.PodName(warmup.Name, 1)}, &corev1.Pod{})
	})
	b.Logf("warm-up run's pod after %v (the controllers start)", time.Since(warmupStart).Round(time.Millisecond))
	requests.waitQuiet(200*time.Millisecond, 10*time.Second)

	before := gatherReconcileMetrics(b)
	requests.reset()
	n := rate * seconds
	createdAt := make(map[string]time.Time, n)
	var cmu sync.Mutex
	start := time.Now()
	benchstat.AtRate(time.Second/time.Duration(rate), n, func(i int) {
		run := jobsv1alpha1.NewJobRun(ns, fmt.Sprintf("run-%05d", i), jobsv1alpha1.JobRunSpec{
			JobType: "demo_sync", TeamID: "team-1", ProjectID: fmt.Sprintf("project-%d", i), TriggeredBy: "manual:user:u1",
		}, time.Now())
		if *dispatchBare {
			delete(run.Labels, jobsv1alpha1.LabelStatus)
		}
		at := time.Now()
		if err := c.Create(ctx, run); err != nil {
			b.Error(err)
			return
		}
		cmu.Lock()
		createdAt[run.Name] = at
		cmu.Unlock()
	})
	created := time.Since(start)
	testenv.Eventually(b, 5*time.Minute, func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if len(podAt) < n {
			return fmt.Errorf("%d of %d pods created; the manager's requests: %v", len(podAt), n, requests.snapshot())
		}
		return nil
	})
	if *dispatchComplete {
		testenv.Eventually(b, 5*time.Minute, func(ctx context.Context) error {
			runs, err := testenv.Runs(ctx, c, ns)
			if err != nil {
				return err
			}
			done := 0
			for _, r := range runs {
				if r.Status.Phase == jobsv1alpha1.JobRunCompleted {
					done++
				}
			}
			if done < n {
				return fmt.Errorf("%d of %d runs completed", done, n)
			}
			return nil
		})
	}
	// The writes after the pod (status, label, events) land too.
	requests.waitQuiet(time.Second, time.Minute)
	after := gatherReconcileMetrics(b)

	mu.Lock()
	var lat []time.Duration
	var segments [4][]time.Duration
	for name, at := range createdAt {
		lat = append(lat, podAt[name].Sub(at))
		steps := requests.steps(name)
		for i, from := range []time.Time{at, steps[stepCached], steps[stepPOST], steps[stepCreated]} {
			to := podAt[name]
			if i < 3 {
				to = steps[i]
			}
			if !from.IsZero() && !to.IsZero() {
				segments[i] = append(segments[i], to.Sub(from))
			}
		}
	}
	mu.Unlock()
	if *dispatchVerbose {
		names := slices.Collect(maps.Keys(createdAt))
		slices.SortFunc(names, func(a, b string) int { return cmp.Compare(podAt[b].Sub(createdAt[b]), podAt[a].Sub(createdAt[a])) })
		for _, name := range names[:min(5, len(names))] {
			st := requests.steps(name)
			b.Logf("slow: %s created at +%v: cached +%v, POST +%v, answered +%v, seen +%v", name, createdAt[name].Sub(start).Round(time.Millisecond),
				st[stepCached].Sub(createdAt[name]).Round(time.Millisecond), st[stepPOST].Sub(createdAt[name]).Round(time.Millisecond),
				st[stepCreated].Sub(createdAt[name]).Round(time.Millisecond), podAt[name].Sub(createdAt[name]).Round(time.Millisecond))
		}
	}
	for i, what := range []string{"created -> in the manager's cache", "cached -> pod POST sent (queue, reconcile)", "pod POST sent -> answered", "answered -> pod seen on a watch"} {
		b.Logf("%-44s p50 %7.1f ms  p99 %7.1f ms", what, benchstat.Millis(benchstat.Percentile(segments[i], 0.5)), benchstat.Millis(benchstat.Percentile(segments[i], 0.99)))
	}
	b.ReportMetric(float64(n)/created.Seconds(), "created/s")
	b.ReportMetric(benchstat.Millis(benchstat.Percentile(lat, 0.5)), "p50-ms")
	b.ReportMetric(benchstat.Millis(benchstat.Percentile(lat, 0.99)), "p99-ms")
	counts := requests.snapshot()
	var writes, conflicts float64
	for k, c := range counts {
		if k.method != http.MethodGet {
			writes += float64(c.n)
		}
		conflicts += float64(c.conflicts)
	}
	b.ReportMetric(writes/float64(n), "writes/run")
	// 409s: a status patch's conflict, a pod create's AlreadyExists.
	b.ReportMetric(conflicts/float64(n), "409s/run")
	for _, k := range sortedKeys(counts) {
		c := counts[k]
		if k.method == http.MethodGet && !*dispatchVerbose {
			continue
		}
		b.Logf("%-6s %-22s %6.2f/run  409s %5.2f/run  mean %6.1f ms  max %6.0f ms  failed %v", k.method, k.resource, float64(c.n)/float64(n), float64(c.conflicts)/float64(n), benchstat.Millis(c.total)/float64(c.n), benchstat.Millis(c.max), c.failed)
	}
	for name, v := range after {
		v.sub(before[name])
		if name == "workqueue_work_duration_seconds" {
			b.ReportMetric(v.count/float64(n), "reconciles/run")
		}
		if v.count > 0 {
			b.Logf("%-40s %8.2f/run  mean %6.1f ms", name, v.count/float64(n), 1000*v.sum/v.count)
		}
	}
}

// runPod plays the kubelet for pod: it runs, then succeeds.
func runPod(b *testing.B, c client.Client, pod *corev1.Pod) {
	ctx := context.Background()
	for _, phase := range []corev1.PodPhase{corev1.PodRunning, corev1.PodSucceeded} {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if err := c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
				return err
			}
			now := metav1.Now()
			pod.Status.Phase = phase
			pod.Status.StartTime = &now
			state := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}
			if phase == corev1.PodSucceeded {
				state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Completed", StartedAt: now, FinishedAt: now}}
			}
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "handler", Image: "jobrun:dev", State: state}}
			return c.Status().Update(ctx, pod)
		})
		if err != nil {
			b.Errorf("pod %s %s: %v", pod.Name, phase, err)
			return
		}
	}
}

// requestKey is a kind of request: its method and what it addresses
// (resource or resource/subresource).
type requestKey struct{ method, resource string }

type requestCount struct {
	n, conflicts int
	total, max   time.Duration
	// failed counts the answers other than 2xx and 409, by status code (0:
	// no answer).
	failed map[int]int
}

// requestCounter counts requests by kind, with their latency and conflicts,
// and notes when each run reached the steps of its dispatch.
type requestCounter struct {
	mu     sync.Mutex
	counts map[requestKey]*requestCount
	last   time.Time
	times  map[string]*[3]time.Time
}

// The steps of a run's dispatch, after its creation and before its pod is
// seen on a watch.
const (
	stepCached  = iota // in the manager's cache
	stepPOST           // its first pod create sent
	stepCreated        // that create answered
)

// step notes the first time run reached step i.
func (c *requestCounter) step(run string, i int) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.times == nil {
		c.times = map[string]*[3]time.Time{}
	}
	t := c.times[run]
	if t == nil {
		t = &[3]time.Time{}
		c.times[run] = t
	}
	if t[i].IsZero() {
		t[i] = now
	}
}

func (c *requestCounter) steps(run string) [3]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.times[run]; t != nil {
		return *t
	}
	return [3]time.Time{}
}

// podRun is the run whose pod a pod create sends; it leaves the request's
// body as it found it.
func podRun(req *http.Request) string {
	if req.Body == nil {
		return ""
	}
	data, err := io.ReadAll(req.Body)
	req.Body.Close()
	req.Body = io.NopCloser(bytes.NewReader(data))
	if err != nil {
		return ""
	}
	// JSON or, as controller-runtime sends built-in kinds, protobuf.
	obj, _, err := serializer.NewCodecFactory(env.Scheme).UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		return ""
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		return pod.Labels[jobsv1alpha1.LabelRun]
	}
	return ""
}

func (c *requestCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		if req.URL.Query().Get("watch") == "true" {
			return rt.RoundTrip(req)
		}
		var run string
		if req.Method == http.MethodPost && resourceOf(req.URL.Path) == "pods" {
			if run = podRun(req); run != "" {
				c.step(run, stepPOST)
			}
		}
		start := time.Now()
		resp, err := rt.RoundTrip(req)
		d := time.Since(start)
		if run != "" {
			c.step(run, stepCreated)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.counts == nil {
			c.counts = map[requestKey]*requestCount{}
		}
		k := requestKey{req.Method, resourceOf(req.URL.Path)}
		rc := c.counts[k]
		if rc == nil {
			rc = &requestCount{}
			c.counts[k] = rc
		}
		rc.n++
		rc.total += d
		rc.max = max(rc.max, d)
		switch {
		case resp != nil && resp.StatusCode == http.StatusConflict:
			rc.conflicts++
		case resp == nil || resp.StatusCode >= 300:
			if rc.failed == nil {
				rc.failed = map[int]int{}
			}
			code := 0
			if resp != nil {
				code = resp.StatusCode
			}
			rc.failed[code]++
		}
		if req.Method != http.MethodGet {
			c.last = time.Now()
		}
		return resp, err
	})
}

// resourceOf is the resource (and subresource) of an API path such as
// /api/v1/namespaces/ns/pods or /apis/g/v/namespaces/ns/jobruns/name/status.
func resourceOf(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range parts {
		if p == "namespaces" && i+2 < len(parts) {
			rest := parts[i+2:]
			if len(rest) >= 3 {
				return rest[0] + "/" + rest[2]
			}
			return rest[0]
		}
	}
	return path
}

func (c *requestCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts = nil
	c.times = nil
}

func (c *requestCounter) snapshot() map[requestKey]requestCount {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[requestKey]requestCount{}
	for k, v := range c.counts {
		out[k] = *v
	}
	return out
}

// waitQuiet waits until no write has gone out for quiet, at most limit.
func (c *requestCounter) waitQuiet(quiet, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		last := c.last
		c.mu.Unlock()
		if time.Since(last) >= quiet {
			return
		}
		time.Sleep(quiet / 4)
	}
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func sortedKeys(m map[requestKey]requestCount) []requestKey {
	keys := make([]requestKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].method != keys[j].method {
			return keys[i].method < keys[j].method
		}
		return keys[i].resource < keys[j].resource
	})
	return keys
}

// histo is a histogram's or counter's running count and sum.
type histo struct{ count, sum float64 }

func (h *histo) sub(o histo) { h.count -= o.count; h.sum -= o.sum }

// gatherReconcileMetrics reads the jobrun controller's reconcile and
// workqueue metrics from controller-runtime's registry (shared by every
// manager in the process, so callers take differences).
func gatherReconcileMetrics(b *testing.B) map[string]histo {
	families, err := crmetrics.Registry.Gather()
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]histo{}
	for _, f := range families {
		name := f.GetName()
		switch name {
		case "controller_runtime_reconcile_time_seconds", "workqueue_queue_duration_seconds", "workqueue_work_duration_seconds", "controller_runtime_reconcile_total":
		default:
			continue
		}
		for _, m := range f.GetMetric() {
			if !labelled(m, "jobrun") {
				continue
			}
			key := name
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					key += "{" + l.GetValue() + "}"
				}
			}
			h := out[key]
			if hist := m.GetHistogram(); hist != nil {
				h.count += float64(hist.GetSampleCount())
				h.sum += hist.GetSampleSum()
			} else if c := m.GetCounter(); c != nil {
				h.count += c.GetValue()
			}
			out[key] = h
		}
	}
	return out
}

func labelled(m *dto.Metric, controller string) bool {
	for _, l := range m.GetLabel() {
		if (l.GetName() == "controller" || l.GetName() == "name") && l.GetValue() == controller {
			return true
		}
	}
	return false
}
