// Command bench measures jobrun on this machine: it starts its own local
// cluster (etcd, kube-apiserver, controller-manager, scheduler, the dev node
// agent and the jobrun manager, all on loopback), runs each scenario and
// prints a table of figures, each beside its natural ceiling measured in the
// same run, and writes them as JSON.
//
//	go run ./hack/bench [-out bench.json] [-list-runs 10000,50000]
//
// make bench builds the binaries first. docs/benchmarks.md records a run.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/localcluster"
	"jobrun.dev/jobrun/sdk"
)

const ns = "jobrun-system"

var loadSeconds int

// Figure is one measured value, with its ceiling when it has one.
type Figure struct {
	Scenario string  `json:"scenario"`
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Ceiling  float64 `json:"ceiling,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	Target   string  `json:"target,omitempty"`
	Met      *bool   `json:"met,omitempty"`
}

type bench struct {
	cl      *localcluster.Cluster
	c       client.Client
	cfg     *rest.Config
	api     string
	metrics string
	http    *http.Client
	token   string
	figures []Figure
	log     func(string, ...any)
}

func main() {
	out := flag.String("out", "bench.json", "Where the figures go as JSON.")
	listRuns := flag.String("list-runs", "10000,50000", "Team sizes of the list scenario, ascending.")
	dispatchSeconds := flag.Int("dispatch-seconds", 10, "How long triggers arrive at 50/s in the dispatch scenario.")
	flag.IntVar(&loadSeconds, "load-seconds", 60, "How long 200 clients send mixed REST traffic.")
	flag.Parse()
	if err := run(*out, *listRuns, *dispatchSeconds); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func run(out, listRuns string, dispatchSeconds int) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "jobrun-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "[bench] "+format+"\n", args...) }
	quiet := func(string, ...any) {}
	api, metricsAddr := freeAddr(), freeAddr()
	ctrl.SetLogger(logr.Discard())
	ctx := context.Background()
	cl, err := localcluster.Start(ctx, localcluster.Options{
		Root: root, Dir: dir, Namespace: ns, Binary: filepath.Join(root, "bin", "jobrun"),
		ProbeAddr: freeAddr(), MetricsAddr: metricsAddr, APIAddr: api, Log: quiet,
	})
	if err != nil {
		return err
	}
	defer cl.Stop()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { // Ctrl-C: stop the cluster, not only this process
		<-sig
		cl.Stop()
		os.Exit(130)
	}()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "bench", "teams": []string{"bench", "bench-list"}, "role": "admin", "exp": time.Now().Add(24 * time.Hour).Unix(),
	}).SignedString([]byte(cl.JWTSecret))
	if err != nil {
		return err
	}
	cfg := rest.CopyConfig(cl.Config)
	cfg.QPS, cfg.Burst = -1, 1000
	c, err := client.New(cfg, client.Options{Scheme: cl.Scheme})
	if err != nil {
		return err
	}
	b := &bench{cl: cl, c: c, cfg: cfg, api: "http://" + api, metrics: "http://" + metricsAddr + "/metrics", token: tok, log: logf,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128, MaxConnsPerHost: 128}}}
	if err := b.setup(ctx); err != nil {
		return err
	}

	// With the controllers: dispatch and end-to-end throughput, then 200
	// clients of mixed traffic for a minute.
	if err := b.dispatch(ctx, dispatchSeconds, 0, "dispatch"); err != nil {
		return err
	}
	if err := b.load(ctx, loadSeconds); err != nil {
		return err
	}
	// The controller alone: with no node, pods are created but never run,
	// so trigger -> pod created is the controller's own latency.
	cl.KillNode()
	if err := b.dispatch(ctx, dispatchSeconds, 3000, "controller"); err != nil {
		return err
	}

	// An API-only manager (no controllers, so runs stay pending): the REST
	// path alone, the list cache, the runner's progress writes.
	cl.KillManager()
	if err := cl.StartManager("--run-controllers=false", "--leader-elect=false"); err != nil {
		return err
	}
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	if err := b.progress(ctx); err != nil {
		return err
	}
	if err := b.triggers(ctx); err != nil {
		return err
	}
	var sizes []int
	for _, s := range strings.Split(listRuns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("-list-runs: %w", err)
		}
		sizes = append(sizes, n)
	}
	if err := b.lists(ctx, sizes); err != nil {
		return err
	}

	b.print()
	data, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "figures": b.figures}, "", "  ")
	return os.WriteFile(out, data, 0o644)
}

func (b *bench) add(f Figure) {
	if f.Ceiling > 0 {
		f.Ratio = f.Value / f.Ceiling
	}
	b.figures = append(b.figures, f)
	b.log("%s: %s = %.3g %s", f.Scenario, f.Name, f.Value, f.Unit)
}

func met(ok bool) *bool { return &ok }

func (b *bench) print() {
	fmt.Printf("%-12s %-52s %12s %-8s %12s %7s  %s\n", "scenario", "figure", "value", "unit", "ceiling", "ratio", "target")
	for _, f := range b.figures {
		ceiling, ratio := "", ""
		if f.Ceiling > 0 {
			ceiling, ratio = fmt.Sprintf("%.4g", f.Ceiling), fmt.Sprintf("%.2f", f.Ratio)
		}
		target := f.Target
		if f.Met != nil {
			target += map[bool]string{true: " (met)", false: " (MISSED)"}[*f.Met]
		}
		fmt.Printf("%-12s %-52s %12.4g %-8s %12s %7s  %s\n", f.Scenario, f.Name, f.Value, f.Unit, ceiling, ratio, target)
	}
}

// setup creates the demo_sync JobType (from the sample, no retries) and the
// projects the scenarios trigger for.
func (b *bench) setup(ctx context.Context) error {
	data, err := os.ReadFile(filepath.Join("config", "samples", "jobs_v1alpha1_jobtype_demo_sync.yaml"))
	if err != nil {
		return err
	}
	jt := &jobsv1alpha1.JobType{}
	if err := yaml.UnmarshalStrict(data, jt); err != nil {
		return err
	}
	jt.Namespace = ns
	jt.Spec.RetryLimit = ptr.To[int32](0)
	if err := b.c.Create(ctx, jt); err != nil {
		return err
	}
	b.log("creating 24,000 projects (the trigger scenario uses up to ~15,000 from 6,000 on a fast machine)")
	return parallel(32, 24000, func(i int) error {
		return b.c.Create(ctx, &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p-%05d", i)}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "bench"}})
	})
}

// parallel runs f(0..n-1) on workers goroutines and returns the first error.
func parallel(workers, n int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func (b *bench) do(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, b.api+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := b.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

func (b *bench) trigger(project int, params map[string]any) (string, error) {
	status, body, err := b.do(http.MethodPost, "/v1/teams/bench/jobs/trigger", map[string]any{"job_type": "demo_sync", "project_id": fmt.Sprintf("p-%05d", project), "params": params})
	if err != nil {
		return "", err
	}
	if status != http.StatusCreated {
		return "", fmt.Errorf("trigger: %d %s", status, body)
	}
	var r struct {
		JobRun struct {
			ID string `json:"id"`
		} `json:"job_run"`
	}
	return r.JobRun.ID, json.Unmarshal(body, &r)
}

func (b *bench) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if status, _, err := b.do(http.MethodGet, "/readyz", nil); err == nil && status == http.StatusOK {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the REST API did not become ready")
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(math.Ceil(p*float64(len(s))))-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// dispatch triggers demo_sync runs (one item, no wait) through the REST API
// at 50/s and times, from a watch in this process, trigger -> pod created,
// trigger -> running, and the completion rate.
func (b *bench) dispatch(ctx context.Context, seconds, firstProject int, scenario string) error {
	b.log("%s: 50 triggers/s for %d s", scenario, seconds)
	wc, err := client.NewWithWatch(b.cfg, client.Options{Scheme: b.cl.Scheme})
	if err != nil {
		return err
	}
	podW, err := wc.Watch(ctx, &corev1.PodList{}, client.InNamespace(ns))
	if err != nil {
		return err
	}
	defer podW.Stop()
	runW, err := wc.Watch(ctx, &jobsv1alpha1.JobRunList{}, client.InNamespace(ns))
	if err != nil {
		return err
	}
	defer runW.Stop()

	var mu sync.Mutex
	podAt, runningAt, endAt := map[string]time.Time{}, map[string]time.Time{}, map[string]time.Time{}
	var failed atomic.Int64
	go func() {
		for ev := range podW.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok && ev.Type == watch.Added {
				run := p.Labels[jobsv1alpha1.LabelRun]
				mu.Lock()
				if _, seen := podAt[run]; !seen {
					podAt[run] = time.Now()
				}
				mu.Unlock()
			}
		}
	}()
	go func() {
		for ev := range runW.ResultChan() {
			jr, ok := ev.Object.(*jobsv1alpha1.JobRun)
			if !ok {
				continue
			}
			now := time.Now()
			mu.Lock()
			phase := jr.CurrentPhase()
			if _, seen := runningAt[jr.Name]; !seen && (phase == jobsv1alpha1.JobRunRunning || phase.IsTerminal() && jr.Status.StartedAt != nil) {
				runningAt[jr.Name] = now
			}
			if _, seen := endAt[jr.Name]; !seen && phase.IsTerminal() {
				endAt[jr.Name] = now
				if phase != jobsv1alpha1.JobRunCompleted {
					failed.Add(1)
				}
			}
			mu.Unlock()
		}
	}()

	n := 50 * seconds
	triggeredAt := make(map[string]time.Time, n)
	var tmu sync.Mutex
	tick := time.NewTicker(20 * time.Millisecond)
	var wg sync.WaitGroup
	var terr atomic.Value
	start := time.Now()
	for i := range n {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			at := time.Now()
			id, err := b.trigger(firstProject+i, map[string]any{"items": 1, "item_ms": 0})
			if err != nil {
				terr.Store(err)
				return
			}
			tmu.Lock()
			triggeredAt[id] = at
			tmu.Unlock()
		}()
	}
	tick.Stop()
	wg.Wait()
	if err, _ := terr.Load().(error); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		mu.Lock()
		done := len(endAt)
		if scenario == "controller" {
			done = len(podAt)
		}
		mu.Unlock()
		if done >= n {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dispatch: only %d of %d runs ended within 10 minutes", done, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	var toPod, toRunning []time.Duration
	var last time.Time
	for id, at := range triggeredAt {
		if p, ok := podAt[id]; ok {
			toPod = append(toPod, p.Sub(at))
		}
		if r, ok := runningAt[id]; ok {
			toRunning = append(toRunning, r.Sub(at))
		}
		if endAt[id].After(last) {
			last = endAt[id]
		}
	}
	b.add(Figure{Scenario: scenario, Name: "trigger -> pod created p50 (50 triggers/s)", Value: ms(percentile(toPod, 0.5)), Unit: "ms"})
	b.add(Figure{Scenario: scenario, Name: "trigger -> pod created p99", Value: ms(percentile(toPod, 0.99)), Unit: "ms"})
	if scenario == "controller" {
		return nil
	}
	b.add(Figure{Scenario: "dispatch", Name: "trigger -> running p50", Value: ms(percentile(toRunning, 0.5)), Unit: "ms"})
	b.add(Figure{Scenario: "dispatch", Name: "trigger -> running p99", Value: ms(percentile(toRunning, 0.99)), Unit: "ms"})
	rate := float64(n) / last.Sub(start).Seconds()
	b.add(Figure{Scenario: "end-to-end", Name: fmt.Sprintf("demo_sync runs completed per second (%d runs, %d not completed)", n, failed.Load()), Value: rate, Unit: "runs/s", Ceiling: 50, Target: "the trigger rate (50/s)", Met: met(rate >= 49)})
	return nil
}

// countingTransport counts status writes and their bytes.
type countingTransport struct {
	next           http.RoundTripper
	patches, bytes atomic.Int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPatch && strings.HasSuffix(req.URL.Path, "/status") {
		t.patches.Add(1)
		t.bytes.Add(req.ContentLength)
	}
	return t.next.RoundTrip(req)
}

// progress runs the real runner in this process with a handler that calls
// Progress 100,000 times over about 5 s, and counts the status writes.
func (b *bench) progress(ctx context.Context) error {
	b.log("progress: 100,000 Progress calls")
	counter := &countingTransport{}
	cfg := rest.CopyConfig(b.cfg)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.next = rt; return counter }
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: b.cl.Scheme})
	if err != nil {
		return err
	}
	jr := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "progress-"},
		Spec: jobsv1alpha1.JobRunSpec{JobType: "bench_progress", TriggeredBy: "manual:user:bench", Params: &runtime.RawExtension{Raw: []byte(`{}`)}}}
	if err := b.c.Create(ctx, jr); err != nil {
		return err
	}
	const calls = 100000
	start := time.Now()
	code := sdk.Serve(ctx, sdk.Config{Client: wc, Namespace: ns, Name: jr.Name, Attempt: 1,
		Handlers: map[string]sdk.Handler{"bench_progress": func(ctx context.Context, run *sdk.Run) (any, error) {
			for i := int64(1); i <= calls; i++ {
				run.Progress(i, calls, "Synced "+strconv.FormatInt(i, 10)+" users")
				if i%20 == 0 {
					time.Sleep(time.Millisecond)
				}
			}
			return map[string]int{"synced": calls}, nil
		}}})
	if code != 0 {
		return fmt.Errorf("progress run exited %d", code)
	}
	took := time.Since(start)
	// The last patch is the result; the rest are progress.
	b.add(Figure{Scenario: "progress", Name: fmt.Sprintf("status patches per 100,000 Progress calls (over %.1f s, 1 s interval)", took.Seconds()), Value: float64(counter.patches.Load()), Unit: "patches", Ceiling: calls, Target: "coalesced: about one per second"})
	b.add(Figure{Scenario: "progress", Name: "bytes written per 100,000 Progress calls", Value: float64(counter.bytes.Load()), Unit: "bytes"})
	return nil
}

// triggers measures REST triggers per second (distinct projects) at several
// concurrencies against the raw rate of creating the same JobRuns with a Go
// client (the ceiling), each for 5 s.
func (b *bench) triggers(ctx context.Context) error {
	var next atomic.Int64
	next.Store(6000) // projects below were used by the dispatch, load and controller scenarios
	for _, workers := range []int{8, 32, 64} {
		b.log("triggers: %d clients", workers)
		rest := b.rate(workers, func() error {
			_, err := b.trigger(int(next.Add(1)-1), map[string]any{"items": 1})
			return err
		})
		raw := b.rate(workers, func() error {
			now := metav1.NewMicroTime(time.Now())
			return b.c.Create(ctx, &jobsv1alpha1.JobRun{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "raw-", Labels: map[string]string{jobsv1alpha1.LabelTeam: "bench-raw", jobsv1alpha1.LabelProject: "raw", jobsv1alpha1.LabelJobType: "demo_sync"}},
				Spec:       jobsv1alpha1.JobRunSpec{JobType: "demo_sync", TeamID: "bench-raw", ProjectID: "raw", TriggeredBy: "manual:user:bench", Params: &runtime.RawExtension{Raw: []byte(`{"items":1}`)}, CreatedAt: &now},
			})
		})
		b.add(Figure{Scenario: "trigger", Name: fmt.Sprintf("REST triggers/s, %d clients, distinct projects", workers), Value: rest, Unit: "req/s", Ceiling: raw, Target: ">= 0.7 of raw creates", Met: met(rest >= 0.7*raw)})
	}
	return nil
}

// rate runs f on workers goroutines for 5 s and returns successful calls
// per second.
func (b *bench) rate(workers int, f func() error) float64 {
	var n atomic.Int64
	var failures atomic.Int64
	end := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				if err := f(); err != nil {
					if failures.Add(1) == 1 {
						b.log("error: %v", err)
					}
					continue
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds()
}

// lists fills the team bench-list to each size and measures list latency
// through the REST API against a label-selected LIST from the API server,
// and the API-only manager's resident memory.
func (b *bench) lists(ctx context.Context, sizes []int) error {
	rssBase, err := b.rss()
	if err != nil {
		return err
	}
	heapBase, _ := b.metric("go_memstats_heap_inuse_bytes")
	have := 0
	base := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Millisecond)
	for _, size := range sizes {
		b.log("list: creating runs up to %d", size)
		from := have
		if err := parallel(32, size-from, func(i int) error {
			k := from + i
			at := metav1.NewMicroTime(base.Add(time.Duration(k) * time.Second))
			project := fmt.Sprintf("lp-%03d", k%100)
			return b.c.Create(ctx, &jobsv1alpha1.JobRun{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "l-", Labels: map[string]string{jobsv1alpha1.LabelTeam: "bench-list", jobsv1alpha1.LabelProject: project, jobsv1alpha1.LabelJobType: "demo_sync"}},
				Spec:       jobsv1alpha1.JobRunSpec{JobType: "demo_sync", TeamID: "bench-list", ProjectID: project, TriggeredBy: "manual:user:bench", CreatedAt: &at},
			})
		}); err != nil {
			return err
		}
		have = size
		// The cache has caught up when the oldest run is listed (until is
		// exclusive).
		if err := b.waitListed(base); err != nil {
			return err
		}
		time.Sleep(2 * time.Second)

		label := fmt.Sprintf("%dk runs", size/1000)
		first := b.latency("/v1/teams/bench-list/jobs", 300)
		filtered := b.latency("/v1/teams/bench-list/jobs?project_id=lp-042&job_type=demo_sync", 300)
		deep, err := b.deepPage(100)
		if err != nil {
			return err
		}
		deepLat := b.latency(deep, 300)
		ceiling := b.directList(ctx, 300)
		for _, x := range []struct {
			name string
			d    []time.Duration
		}{{"first page", first}, {"project+type filter, first page", filtered}, {"page 100 via cursor", deepLat}} {
			p99 := ms(percentile(x.d, 0.99))
			b.add(Figure{Scenario: "list", Name: fmt.Sprintf("GET jobs %s p50, %s", x.name, label), Value: ms(percentile(x.d, 0.5)), Unit: "ms", Ceiling: ms(percentile(ceiling, 0.5))})
			f := Figure{Scenario: "list", Name: fmt.Sprintf("GET jobs %s p99, %s", x.name, label), Value: p99, Unit: "ms", Ceiling: ms(percentile(ceiling, 0.99))}
			if size >= 50000 {
				f.Target, f.Met = "p99 < 5 ms at 50k", met(p99 < 5)
			}
			b.add(f)
		}
		if size == sizes[len(sizes)-1] {
			if err := b.readLoad(label); err != nil {
				return err
			}
		}
		rss, err := b.rss()
		if err != nil {
			return err
		}
		b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("API-only manager RSS with %s cached (%.0f MiB before)", label, rssBase), Value: rss, Unit: "MiB"})
		b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("RSS per 10,000 cached runs (%s)", label), Value: (rss - rssBase) / (float64(size) / 10000), Unit: "MiB"})
		if heap, err := b.metric("go_memstats_heap_inuse_bytes"); err == nil {
			b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("Go heap in use with %s cached (%.0f MiB before)", label, heapBase/(1<<20)), Value: heap / (1 << 20), Unit: "MiB"})
			b.add(Figure{Scenario: "memory", Name: fmt.Sprintf("heap per 10,000 cached runs (%s)", label), Value: (heap - heapBase) / (1 << 20) / (float64(size) / 10000), Unit: "MiB"})
		}
	}
	return nil
}

// readLoad sends consistent reads from 200 clients, lists and then gets,
// and counts what they cost the API server: the REST API's consistency
// rounds (one marker write each) and all of the manager's API-server
// requests, per 1,000 reads. Before consistent reads a list cost none (and
// could miss runs) and a get one GET.
func (b *bench) readLoad(label string) error {
	status, body, err := b.do(http.MethodGet, "/v1/teams/bench-list/jobs?limit=200", nil)
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("listing ids for gets: %d %v", status, err)
	}
	var page struct {
		JobRuns []struct {
			ID string `json:"id"`
		} `json:"job_runs"`
	}
	if err := json.Unmarshal(body, &page); err != nil || len(page.JobRuns) == 0 {
		return fmt.Errorf("listing ids for gets: %v", err)
	}
	for _, x := range []struct {
		name, today string
		path        func(w, i int) string
	}{
		{"list (first page)", "0, not read-your-writes", func(w, i int) string { return "/v1/teams/bench-list/jobs" }},
		{"get", "1,000", func(w, i int) string { return "/v1/jobs/" + page.JobRuns[(w*7+i)%len(page.JobRuns)].ID }},
	} {
		const clients, seconds = 200, 10
		rounds0, err := b.metricSum("jobrun_api_consistency_rounds_total")
		if err != nil {
			return err
		}
		requests0, err := b.metricSum("rest_client_requests_total")
		if err != nil {
			return err
		}
		var mu sync.Mutex
		var lat []time.Duration
		var failed atomic.Int64
		end := time.Now().Add(seconds * time.Second)
		var wg sync.WaitGroup
		for w := range clients {
			wg.Go(func() {
				for i := 0; time.Now().Before(end); i++ {
					start := time.Now()
					status, _, err := b.do(http.MethodGet, x.path(w, i), nil)
					d := time.Since(start)
					if err != nil || status != http.StatusOK {
						failed.Add(1)
						continue
					}
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		rounds1, _ := b.metricSum("jobrun_api_consistency_rounds_total")
		requests1, _ := b.metricSum("rest_client_requests_total")
		n := float64(len(lat))
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s: reads/s from %d clients, %s (%d failed)", x.name, clients, label, failed.Load()), Value: n / seconds, Unit: "req/s"})
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s under load p50 / p99 = %.1f ms /", x.name, ms(percentile(lat, 0.5))), Value: ms(percentile(lat, 0.99)), Unit: "ms"})
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s: consistency rounds (marker writes) per 1,000 (before: %s)", x.name, x.today), Value: (rounds1 - rounds0) / n * 1000, Unit: "req"})
		b.add(Figure{Scenario: "consistency", Name: fmt.Sprintf("%s: all manager API-server requests per 1,000", x.name), Value: (requests1 - requests0) / n * 1000, Unit: "req"})
	}
	return nil
}

func (b *bench) waitListed(oldest time.Time) error {
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		status, body, err := b.do(http.MethodGet, "/v1/teams/bench-list/jobs?limit=1&until="+oldest.Add(time.Millisecond).UTC().Format("2006-01-02T15:04:05.000Z"), nil)
		if err == nil && status == http.StatusOK && bytes.Contains(body, []byte(`"id"`)) {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("the REST API's cache did not get the runs within 5 minutes")
}

func (b *bench) latency(path string, n int) []time.Duration {
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		status, _, err := b.do(http.MethodGet, path, nil)
		if err != nil || status != http.StatusOK {
			b.log("GET %s: %d %v", path, status, err)
			continue
		}
		out = append(out, time.Since(start))
	}
	return out
}

// deepPage follows the cursor to page n and returns that page's path.
func (b *bench) deepPage(n int) (string, error) {
	path := "/v1/teams/bench-list/jobs"
	for range n - 1 {
		status, body, err := b.do(http.MethodGet, path, nil)
		if err != nil || status != http.StatusOK {
			return "", fmt.Errorf("paging: %d %v", status, err)
		}
		var page struct {
			Cursor string `json:"cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil || page.Cursor == "" {
			return "", fmt.Errorf("paging: no cursor")
		}
		path = "/v1/teams/bench-list/jobs?cursor=" + page.Cursor
	}
	return path, nil
}

// directList times a label-selected LIST of 50 runs from the API server.
func (b *bench) directList(ctx context.Context, n int) []time.Duration {
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		l := &jobsv1alpha1.JobRunList{}
		if err := b.c.List(ctx, l, client.InNamespace(ns), client.MatchingLabels{jobsv1alpha1.LabelTeam: "bench-list"}, client.Limit(50)); err != nil {
			b.log("LIST: %v", err)
			continue
		}
		out = append(out, time.Since(start))
	}
	return out
}

// rss is the manager's resident set size in MiB, from /proc.
func (b *bench) rss() (float64, error) {
	pid := b.cl.ManagerPID()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// metric reads one unlabelled value from the manager's /metrics.
func (b *bench) metric(name string) (float64, error) {
	v, found, err := b.scrape(name)
	if err == nil && !found {
		err = fmt.Errorf("no metric %s", name)
	}
	return v, err
}

// metricSum adds up every series of a metric on the manager's /metrics (0
// if it has none yet).
func (b *bench) metricSum(name string) (float64, error) {
	v, _, err := b.scrape(name)
	return v, err
}

// scrape reads the manager's /metrics and adds up the series of name.
func (b *bench) scrape(name string) (sum float64, found bool, err error) {
	resp, err := b.http.Get(b.metrics)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || (f[0] != name && !strings.HasPrefix(f[0], name+"{")) {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return 0, false, err
		}
		sum, found = sum+v, true
	}
	return sum, found, nil
}

// load sends mixed REST traffic from 200 clients for seconds: lists (with
// and without filters), gets, triggers on 50 projects (409 while one of
// theirs is active) and cancels. Only 409s are expected errors. Goroutines
// and memory of the manager are compared before and after a settle.
func (b *bench) load(ctx context.Context, seconds int) error {
	b.log("load: 200 clients for %d s", seconds)
	goBefore, _ := b.metric("go_goroutines")
	rssBefore, _ := b.rss()
	var ids []string
	var idsMu sync.Mutex
	codes := map[int]int{}
	var codesMu sync.Mutex
	var requests atomic.Int64
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	var wg sync.WaitGroup
	for w := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				var status int
				var body []byte
				var err error
				switch k := (w + i) % 20; {
				case k < 12:
					q := []string{"", "?status=completed", "?project_id=p-00007", "?job_type=demo_sync&limit=200", "?since=1h"}[k%5]
					status, body, err = b.do(http.MethodGet, "/v1/teams/bench/jobs"+q, nil)
				case k < 16:
					idsMu.Lock()
					id := "00000000-0000-0000-0000-000000000000"
					if len(ids) > 0 {
						id = ids[(w*31+i)%len(ids)]
					}
					idsMu.Unlock()
					status, body, err = b.do(http.MethodGet, "/v1/jobs/"+id, nil)
					if status == http.StatusNotFound && id == "00000000-0000-0000-0000-000000000000" {
						status = http.StatusOK // nothing triggered yet: a documented 404
					}
				case k < 19:
					status, body, err = b.do(http.MethodPost, "/v1/teams/bench/jobs/trigger", map[string]any{
						"job_type": "demo_sync", "project_id": fmt.Sprintf("p-%05d", 5000+(w+i)%50), "params": map[string]any{"items": 5, "item_ms": 100}})
					if status == http.StatusCreated {
						var r struct {
							JobRun struct {
								ID string `json:"id"`
							} `json:"job_run"`
						}
						if json.Unmarshal(body, &r) == nil {
							idsMu.Lock()
							ids = append(ids, r.JobRun.ID)
							idsMu.Unlock()
						}
					}
				default:
					idsMu.Lock()
					var id string
					if len(ids) > 0 {
						id = ids[len(ids)-1]
					}
					idsMu.Unlock()
					if id == "" {
						continue
					}
					status, body, err = b.do(http.MethodPost, "/v1/jobs/"+id+"/cancel", nil)
					if status == http.StatusBadRequest && bytes.Contains(body, []byte("not in running status")) {
						status = http.StatusOK // not running (pending or ended): the documented 400
					}
				}
				requests.Add(1)
				if err != nil {
					status = -1
				}
				codesMu.Lock()
				codes[status]++
				codesMu.Unlock()
			}
		}()
	}
	wg.Wait()
	var unexpected []string
	for code, n := range codes {
		if code != http.StatusOK && code != http.StatusCreated && code != http.StatusConflict {
			unexpected = append(unexpected, fmt.Sprintf("%d x%d", code, n))
		}
	}
	b.add(Figure{Scenario: "load", Name: fmt.Sprintf("requests/s from 200 clients over %d s (codes %v)", seconds, codes), Value: float64(requests.Load()) / float64(seconds), Unit: "req/s"})
	b.add(Figure{Scenario: "load", Name: "unexpected responses (not 200/201/409) " + strings.Join(unexpected, " "), Value: float64(len(unexpected)), Unit: "kinds", Target: "none", Met: met(len(unexpected) == 0)})
	// Our idle keep-alive connections hold server goroutines until the
	// server's idle timeout: close them, then let in-flight runs end.
	b.http.CloseIdleConnections()
	time.Sleep(15 * time.Second)
	goAfter, _ := b.metric("go_goroutines")
	rssAfter, _ := b.rss()
	b.add(Figure{Scenario: "load", Name: fmt.Sprintf("manager goroutines after the load settled (%.0f before)", goBefore), Value: goAfter, Unit: "", Target: "no growth", Met: met(goAfter <= goBefore*1.1+20)})
	b.add(Figure{Scenario: "load", Name: fmt.Sprintf("manager RSS after the load settled (%.0f MiB before)", rssBefore), Value: rssAfter, Unit: "MiB"})
	return nil
}
