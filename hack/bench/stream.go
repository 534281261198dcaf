package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/apiserver"
	"jobrun.dev/jobrun/internal/benchstat"
)

// streamEvents opens GET path as an event stream and calls on with each
// event's name and id until ctx ends or the stream does. It returns once the
// response's headers arrived.
func (b *bench) streamEvents(ctx context.Context, c *http.Client, path string, on func(name, id string)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.api+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	go func() {
		defer resp.Body.Close()
		rd := bufio.NewReader(resp.Body)
		var name, id string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			switch line = strings.TrimSuffix(line, "\n"); {
			case line == "":
				if name != "" {
					on(name, id)
				}
				name, id = "", ""
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "id: "):
				id = strings.TrimPrefix(line, "id: ")
			}
		}
	}()
	return nil
}

// streams measures the event streams on the API-only manager: the time from
// a runner's status patch (its start) to the event at a client, the live
// heap per open stream, and the events per second 1,000 streams receive.
func (b *bench) streams(ctx context.Context) error {
	const patches, streams = 300, 1000
	b.log("stream: %d status patches -> events; %d concurrent streams", patches, streams)
	jr := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "stream-"},
		Spec: jobsv1alpha1.JobRunSpec{JobType: "demo_sync", TeamID: "bench", ProjectID: "bench-stream", TriggeredBy: "manual:user:bench",
			Params: &runtime.RawExtension{Raw: []byte(`{}`)}}}
	if err := b.c.Create(ctx, jr); err != nil {
		return err
	}
	orig := jr.DeepCopy()
	jr.Status.Phase = jobsv1alpha1.JobRunRunning
	if err := b.c.Status().Patch(ctx, jr, client.MergeFrom(orig)); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: streams + 1}}

	// Latency: one stream, a patch every 10 ms, as a runner's would be.
	var mu sync.Mutex
	received := map[string]time.Time{}
	if err := b.streamEvents(ctx, c, "/v1/jobs/"+jr.Name+"/events", func(name, id string) {
		if name == "update" {
			mu.Lock()
			received[id] = time.Now()
			mu.Unlock()
		}
	}); err != nil {
		return err
	}
	sent := map[string]time.Time{}
	for i := int64(1); i <= patches; i++ {
		orig := jr.DeepCopy()
		jr.Status.Progress = jobsv1alpha1.NewProgress(i, patches, "Synced "+strconv.FormatInt(i, 10)+" users")
		start := time.Now()
		if err := b.c.Status().Patch(ctx, jr, client.MergeFrom(orig)); err != nil {
			return err
		}
		sent[jr.ResourceVersion] = start
		time.Sleep(10 * time.Millisecond)
	}
	if !waitFor(30*time.Second, 10*time.Millisecond, func() bool { mu.Lock(); defer mu.Unlock(); return len(received) >= patches }) {
		return fmt.Errorf("stream: %d of %d updates arrived within 30 s", len(received), patches)
	}
	var lat []time.Duration
	mu.Lock()
	for rv, at := range sent {
		if got, ok := received[rv]; ok {
			lat = append(lat, got.Sub(at))
		}
	}
	mu.Unlock()
	p99 := benchstat.Millis(benchstat.Percentile(lat, 0.99))
	b.add(Figure{Scenario: "stream", Name: "status patch -> event at the client p50", Value: benchstat.Millis(benchstat.Percentile(lat, 0.5)), Unit: "ms"})
	b.add(Figure{Scenario: "stream", Name: "status patch -> event at the client p99", Value: p99, Unit: "ms", Target: "<= 250 ms", Met: met(p99 <= 250)})

	// 1,000 team streams: the live heap they take, and the events they
	// receive per second while the run is patched as fast as one writer can.
	heapBase, err := b.liveHeap()
	if err != nil {
		return err
	}
	var delivered atomic.Int64
	for range streams {
		if err := b.streamEvents(ctx, c, "/v1/teams/bench/jobs/events?project_id=bench-stream", func(name, _ string) {
			if name == "run" {
				delivered.Add(1)
			}
		}); err != nil {
			return err
		}
	}
	heap, err := b.liveHeap()
	if err != nil {
		return err
	}
	b.add(Figure{Scenario: "stream", Name: fmt.Sprintf("live heap per open stream (%d streams)", streams), Value: (heap - heapBase) / streams, Unit: "bytes"})

	// CPU of the idle streams: two heartbeats each (a ping and the
	// credential checked again), nothing else happening.
	const idle = 2*apiserver.DefaultStreamHeartbeat + time.Second
	cpuIdle, err := b.metric("process_cpu_seconds_total")
	if err != nil {
		return err
	}
	time.Sleep(idle)
	cpu, err := b.metric("process_cpu_seconds_total")
	if err != nil {
		return err
	}
	b.add(Figure{Scenario: "stream", Name: fmt.Sprintf("manager CPU per idle open stream (%d streams, %s)", streams, idle),
		Value: (cpu - cpuIdle) / idle.Seconds() / streams * 1e6, Unit: "µs/s"})

	const burst = 200
	cpuBurst := cpu
	start := time.Now()
	for i := int64(1); i <= burst; i++ {
		orig := jr.DeepCopy()
		jr.Status.Progress = jobsv1alpha1.NewProgress(i, burst, "burst")
		if err := b.c.Status().Patch(ctx, jr, client.MergeFrom(orig)); err != nil {
			return err
		}
	}
	if !waitFor(60*time.Second, 10*time.Millisecond, func() bool { return delivered.Load() >= burst*streams }) {
		return fmt.Errorf("stream: %d of %d events delivered within 60 s", delivered.Load(), burst*streams)
	}
	took := time.Since(start)
	if cpu, err = b.metric("process_cpu_seconds_total"); err != nil {
		return err
	}
	b.add(Figure{Scenario: "stream", Name: fmt.Sprintf("events delivered per second (%d streams, %d patches)", streams, burst), Value: float64(burst*streams) / took.Seconds(), Unit: "events/s"})
	b.add(Figure{Scenario: "stream", Name: fmt.Sprintf("manager CPU per event delivered (%d streams, %d patches)", streams, burst),
		Value: (cpu - cpuBurst) / float64(burst*streams) * 1e6, Unit: "µs"})
	return nil
}
