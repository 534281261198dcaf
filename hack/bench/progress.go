package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/sdk"
	"jobrun.dev/jobrun/test/testrun"
)

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
	// No controller runs here: record the attempt as it would.
	if err := testrun.RecordAttempt(ctx, b.c, jr, 1); err != nil {
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
