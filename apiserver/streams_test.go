package apiserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testrun"
)

// sseEvent is one event of a stream as a client parses it.
type sseEvent struct {
	name, id, data string
}

// jobRun is the event's data, decoded.
func (e sseEvent) body(t testing.TB) map[string]any {
	t.Helper()
	out := map[string]any{}
	if err := json.Unmarshal([]byte(e.data), &out); err != nil {
		t.Fatalf("event %s %s: data is not JSON: %v: %q", e.name, e.id, err, e.data)
	}
	return out
}

func (e sseEvent) run(t testing.TB) map[string]any {
	t.Helper()
	run, _ := e.body(t)["job_run"].(map[string]any)
	if run == nil {
		t.Fatalf("event %s %s has no job_run: %s", e.name, e.id, e.data)
	}
	return run
}

// sseStream is an open stream read by a goroutine: its events (closed at
// the end of the stream), its comments, and its retry advice.
type sseStream struct {
	t        testing.TB
	resp     *http.Response
	events   chan sseEvent
	comments chan string
	retry    atomic.Value
}

// streamResponse sends GET path with the token (if any) and headers.
func (a *api) streamResponse(c *http.Client, path, tok string, header map[string]string) *http.Response {
	a.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url+path, nil)
	if err != nil {
		a.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// openStream opens a stream that must answer 200 and reads it.
func (a *api) openStream(path, tok string, header map[string]string) *sseStream {
	a.t.Helper()
	resp := a.streamResponse(http.DefaultClient, path, tok, header)
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		a.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, data)
	}
	return readStream(a.t, resp)
}

func readStream(t testing.TB, resp *http.Response) *sseStream {
	st := &sseStream{t: t, resp: resp, events: make(chan sseEvent, 10000), comments: make(chan string, 100)}
	go func() {
		defer close(st.events)
		rd := bufio.NewReader(resp.Body)
		var ev sseEvent
		var data []string
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if ev.name != "" || data != nil {
					ev.data = strings.Join(data, "\n")
					st.events <- ev
				}
				ev, data = sseEvent{}, nil
			case strings.HasPrefix(line, ":"):
				select {
				case st.comments <- line:
				default:
				}
			default:
				field, value, _ := strings.Cut(line, ":")
				value = strings.TrimPrefix(value, " ")
				switch field {
				case "event":
					ev.name = value
				case "id":
					ev.id = value
				case "data":
					data = append(data, value)
				case "retry":
					st.retry.Store(value)
				}
			}
		}
	}()
	return st
}

// next is the stream's next event; it fails the test if none comes within
// 20 s or the stream ends.
func (st *sseStream) next() sseEvent {
	st.t.Helper()
	select {
	case ev, ok := <-st.events:
		if !ok {
			st.t.Fatal("the stream ended; want an event")
		}
		return ev
	case <-time.After(20 * time.Second):
		st.t.Fatal("no event within 20 s")
	}
	return sseEvent{}
}

// expectEnd fails unless the stream ends within d, without another event.
func (st *sseStream) expectEnd(d time.Duration) {
	st.t.Helper()
	select {
	case ev, ok := <-st.events:
		if ok {
			st.t.Fatalf("event %s %s %s; want the end of the stream", ev.name, ev.id, ev.data)
		}
	case <-time.After(d):
		st.t.Fatalf("the stream did not end within %s", d)
	}
}

// patchStatus writes a run's status as the runner or the controller does,
// and returns its new resourceVersion.
func patchStatus(t testing.TB, run *jobsv1alpha1.JobRun, mutate func(*jobsv1alpha1.JobRun)) string {
	t.Helper()
	orig := run.DeepCopy()
	mutate(run)
	if err := env.Client.Status().Patch(context.Background(), run, client.MergeFrom(orig)); err != nil {
		t.Fatal(err)
	}
	return run.ResourceVersion
}

func setProgress(n int64) func(*jobsv1alpha1.JobRun) {
	return func(jr *jobsv1alpha1.JobRun) {
		jr.Status.Progress = jobsv1alpha1.NewProgress(n, 10, fmt.Sprintf("step %d", n))
	}
}

func running(jr *jobsv1alpha1.JobRun) {
	started := metav1.NewMicroTime(time.Date(2024, 1, 15, 10, 30, 1, 0, time.UTC))
	jr.Status.Phase = jobsv1alpha1.JobRunRunning
	jr.Status.StartedAt = &started
	jr.Status.Progress = jobsv1alpha1.NewProgress(1, 10, "step 1")
}

func completed(jr *jobsv1alpha1.JobRun) {
	done := metav1.NewMicroTime(time.Date(2024, 1, 15, 10, 31, 0, 0, time.UTC))
	jr.Status.Phase = jobsv1alpha1.JobRunCompleted
	jr.Status.CompletedAt = &done
}

// expectRun checks an event's name, id (the resourceVersion of the write
// it shows, when rv is set) and progress.
func expectRun(t testing.TB, ev sseEvent, name, rv string, processed float64) {
	t.Helper()
	if ev.name != name || (rv != "" && ev.id != rv) {
		t.Fatalf("event %q id %q, want %q id %q: %s", ev.name, ev.id, name, rv, ev.data)
	}
	p, _ := ev.run(t)["progress"].(map[string]any)
	if p == nil || p["processed"] != processed {
		t.Fatalf("event %s %s: progress %v, want processed %v", ev.name, ev.id, p, processed)
	}
}

func TestRunStream(t *testing.T) {
	a := newAPI(t)
	run := a.createRun("run-s", "team-1", running)
	a.createRun("run-other", "team-2", running)
	tok := userToken(t)

	status, got := a.get("/v1/jobs/run-s", tok)
	if status != http.StatusOK {
		t.Fatalf("GET: %d %v", status, got)
	}
	st := a.openStream("/v1/jobs/run-s/events", tok, nil)
	for h, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if v := st.resp.Header.Get(h); v != want {
			t.Errorf("%s: %q, want %q", h, v, want)
		}
	}
	snap := st.next()
	if snap.name != "snapshot" {
		t.Fatalf("first event %q, want snapshot", snap.name)
	}
	if diff := cmp.Diff(got, snap.body(t)); diff != "" {
		t.Errorf("snapshot differs from GET's body (-GET +snapshot):\n%s", diff)
	}
	if _, err := strconv.ParseUint(snap.id, 10, 64); err != nil {
		t.Errorf("snapshot id %q is not a resourceVersion: %v", snap.id, err)
	}
	if r, _ := st.retry.Load().(string); r != "3000" {
		t.Errorf("retry: %q, want 3000", r)
	}

	// Each status write is an update, in order, with its resourceVersion
	// as id; a change the API does not show (a cancel request) is none.
	var rvs []string
	for n := int64(2); n <= 4; n++ {
		rvs = append(rvs, patchStatus(t, run, setProgress(n)))
	}
	orig := run.DeepCopy()
	run.RequestCancel(time.Now())
	if err := env.Client.Patch(context.Background(), run, client.MergeFrom(orig)); err != nil {
		t.Fatal(err)
	}
	rvs = append(rvs, patchStatus(t, run, setProgress(5)))
	for i, n := range []float64{2, 3, 4, 5} {
		expectRun(t, st.next(), "update", rvs[i], n)
	}
	// A terminal phase: final, and the stream ends.
	rv := patchStatus(t, run, completed)
	final := st.next()
	expectRun(t, final, "final", rv, 5)
	if s := final.run(t)["status"]; s != "completed" {
		t.Errorf("final status %v", s)
	}
	st.expectEnd(5 * time.Second)

	// A finished run: snapshot, final, end.
	st = a.openStream("/v1/jobs/run-s/events", tok, nil)
	if ev := st.next(); ev.name != "snapshot" {
		t.Errorf("finished run: first event %q", ev.name)
	}
	if ev := st.next(); ev.name != "final" {
		t.Errorf("finished run: second event %q", ev.name)
	}
	st.expectEnd(5 * time.Second)

	// HEAD: the headers, no stream.
	req, _ := http.NewRequest(http.MethodHead, a.url+"/v1/jobs/run-s/events", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := http.DefaultClient.Do(req.WithContext(ctx)); err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("HEAD: %v %v", resp, err)
	}

	// GET's rules.
	for _, c := range []struct {
		path, tok string
		want      int
		code      string
	}{
		{"/v1/jobs/run-other/events", tok, http.StatusNotFound, codeNotFound},
		{"/v1/jobs/no-such-run/events", tok, http.StatusNotFound, codeNotFound},
		{"/v1/jobs/run-s/events", "", http.StatusUnauthorized, codeUnauthorized},
		{"/v1/jobs/run-s/events?limit=3", tok, http.StatusBadRequest, codeInvalidRequest},
	} {
		resp := a.streamResponse(http.DefaultClient, c.path, c.tok, nil)
		body := map[string]any{}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != c.want || errorCode(body) != c.code {
			t.Errorf("GET %s: %d %v, want %d %s", c.path, resp.StatusCode, body, c.want, c.code)
		}
	}
}

// createTeamRun creates a run of team, project and job type.
func (a *api) createTeamRun(name, team, project, jobType string) *jobsv1alpha1.JobRun {
	a.t.Helper()
	jr := testrun.Make(a.ns, name).JobType(jobType).Team(team).Project(project).TriggeredBy("manual:user:user-1").
		CreatedAt(time.Date(2024, 1, 15, 10, 30, 0, 0, time.UTC)).Obj()
	if err := env.Client.Create(context.Background(), jr); err != nil {
		a.t.Fatal(err)
	}
	return jr
}

// expectRunEvents reads len(want) events and checks they are run events of
// the runs named, with the statuses given, in order.
func expectRunEvents(t testing.TB, st *sseStream, want ...string) {
	t.Helper()
	var got []string
	for range want {
		ev := st.next()
		if ev.name != "run" {
			t.Fatalf("event %q: %s", ev.name, ev.data)
		}
		r := ev.run(t)
		got = append(got, fmt.Sprintf("%s/%s", r["id"], r["status"]))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("run events (-want +got):\n%s", diff)
	}
}

func TestTeamStream(t *testing.T) {
	a := newAPI(t)
	tok := userToken(t)
	all := a.openStream("/v1/teams/team-1/jobs/events", tok, nil)
	filtered := a.openStream("/v1/teams/team-1/jobs/events?project_id=project-1&job_type=revenuecat_sync", tok, nil)
	runningOnly := a.openStream("/v1/teams/team-1/jobs/events?status=running", tok, nil)
	for _, st := range []*sseStream{all, filtered, runningOnly} {
		if ev := st.next(); ev.name != "reset" || ev.body(t)["reason"] != "start" {
			t.Fatalf("first event %q %s, want reset (start)", ev.name, ev.data)
		}
	}

	match := a.createTeamRun("match", "team-1", "project-1", "revenuecat_sync")
	a.createTeamRun("other-project", "team-1", "project-2", "revenuecat_sync")
	a.createTeamRun("other-type", "team-1", "project-1", "cleanup")
	other := a.createTeamRun("other-team", "team-2", "project-1", "revenuecat_sync")
	patchStatus(t, other, running)
	patchStatus(t, match, running)
	patchStatus(t, match, completed)
	a.createTeamRun("sentinel", "team-1", "project-1", "revenuecat_sync")

	expectRunEvents(t, filtered, "match/pending", "match/running", "match/completed", "sentinel/pending")
	expectRunEvents(t, all, "match/pending", "other-project/pending", "other-type/pending", "match/running", "match/completed", "sentinel/pending")
	patchStatus(t, match.DeepCopy(), func(*jobsv1alpha1.JobRun) {}) // no change: no event
	s2 := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: a.ns, Name: "sentinel"}, s2); err != nil {
		t.Fatal(err)
	}
	patchStatus(t, s2, running)
	expectRunEvents(t, runningOnly, "match/running", "sentinel/running")

	for _, c := range []struct {
		path, tok string
		want      int
		inMessage string
	}{
		{"/v1/teams/team-1/jobs/events?since=1h", tok, http.StatusBadRequest, "since"},
		{"/v1/teams/team-1/jobs/events?cursor=x", tok, http.StatusBadRequest, "cursor"},
		{"/v1/teams/team-1/jobs/events?limit=5", tok, http.StatusBadRequest, "limit"},
		{"/v1/teams/team-1/jobs/events?status=done", tok, http.StatusBadRequest, "status"},
		{"/v1/teams/team-1/jobs/events?x=1", tok, http.StatusBadRequest, "x"},
		{"/v1/teams/team-2/jobs/events", tok, http.StatusNotFound, "team"},
		{"/v1/teams/team-1/jobs/events", "", http.StatusUnauthorized, "bearer"},
	} {
		resp := a.streamResponse(http.DefaultClient, c.path, c.tok, nil)
		body := map[string]any{}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		msg, _ := body["error"].(map[string]any)["message"].(string)
		if resp.StatusCode != c.want || !strings.Contains(msg, c.inMessage) {
			t.Errorf("GET %s: %d %v, want %d naming %q", c.path, resp.StatusCode, body, c.want, c.inMessage)
		}
	}
}

// waitBroker waits until the broker has published rv.
func (a *api) waitBroker(rv string) {
	a.t.Helper()
	want, _ := strconv.ParseUint(rv, 10, 64)
	deadline := time.Now().Add(20 * time.Second)
	for {
		a.broker.mu.Lock()
		top := a.broker.top
		a.broker.mu.Unlock()
		if top >= want {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("the broker did not see resourceVersion %s within 20 s (at %d)", rv, top)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStreamResume(t *testing.T) {
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{broker: BrokerOptions{Ring: 8}})
	tok := userToken(t)
	run := a.createRun("run-r", "team-1", running)

	st := a.openStream("/v1/jobs/run-r/events", tok, nil)
	if ev := st.next(); ev.name != "snapshot" {
		t.Fatalf("first event %q", ev.name)
	}
	rv1 := patchStatus(t, run, setProgress(2))
	expectRun(t, st.next(), "update", rv1, 2)
	team := a.openStream("/v1/teams/team-1/jobs/events", tok, nil)
	if ev := team.next(); ev.name != "reset" {
		t.Fatalf("team: first event %q", ev.name)
	}
	st.resp.Body.Close()
	team.resp.Body.Close()

	// Missed while disconnected: exactly these, in order, then live ones.
	var missed []string
	for n := int64(3); n <= 5; n++ {
		missed = append(missed, patchStatus(t, run, setProgress(n)))
	}
	a.waitBroker(missed[2])
	st = a.openStream("/v1/jobs/run-r/events", tok, map[string]string{"Last-Event-ID": rv1})
	for i, n := range []float64{3, 4, 5} {
		expectRun(t, st.next(), "update", missed[i], n)
	}
	rv6 := patchStatus(t, run, setProgress(6))
	expectRun(t, st.next(), "update", rv6, 6)
	// The team stream resumes from its reset: the same changes, by query
	// parameter (a page that opens a new EventSource).
	team = a.openStream("/v1/teams/team-1/jobs/events?last_event_id="+rv1, tok, nil)
	expectRunEvents(t, team, "run-r/running", "run-r/running", "run-r/running", "run-r/running")

	rvDone := patchStatus(t, run, completed)
	expectRun(t, st.next(), "final", rvDone, 6)
	st.expectEnd(5 * time.Second)
	expectRunEvents(t, team, "run-r/completed")
	team.resp.Body.Close()

	// Resuming after the final event: 204, EventSource's "stop".
	if resp := a.streamResponse(http.DefaultClient, "/v1/jobs/run-r/events", tok, map[string]string{"Last-Event-ID": rvDone}); resp.StatusCode != http.StatusNoContent {
		t.Errorf("resume after final: %d, want 204", resp.StatusCode)
	}

	// An id the ring no longer holds: a fresh snapshot, or a reset.
	other := a.createRun("run-busy", "team-2", running)
	var last string
	for n := int64(1); n <= 10; n++ {
		last = patchStatus(t, other, setProgress(n))
	}
	a.waitBroker(last)
	run2 := a.createRun("run-r2", "team-1", running)
	st = a.openStream("/v1/jobs/run-r2/events", tok, map[string]string{"Last-Event-ID": rv1})
	if ev := st.next(); ev.name != "snapshot" || ev.run(t)["id"] != "run-r2" {
		t.Errorf("resume from an id older than the ring: %q %s, want a snapshot", ev.name, ev.data)
	}
	rv := patchStatus(t, run2, setProgress(2))
	expectRun(t, st.next(), "update", rv, 2)
	team = a.openStream("/v1/teams/team-1/jobs/events", tok, map[string]string{"Last-Event-ID": rv1})
	if ev := team.next(); ev.name != "reset" || ev.body(t)["reason"] != "resume_unavailable" {
		t.Errorf("team resume from an id older than the ring: %q %s, want reset (resume_unavailable)", ev.name, ev.data)
	}
	// An id that is no id: a snapshot too.
	st = a.openStream("/v1/jobs/run-r2/events", tok, map[string]string{"Last-Event-ID": "garbage"})
	if ev := st.next(); ev.name != "snapshot" {
		t.Errorf("resume from garbage: %q, want snapshot", ev.name)
	}
}

// stalledClient is an HTTP client whose connections take almost nothing
// into their receive buffers, so that a stream it does not read stalls the
// server's writes soon.
func stalledClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		_ = c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableCompression: true}}
}

func TestStreamSlowClient(t *testing.T) {
	const buffer, events = 64, 2000
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{broker: BrokerOptions{Buffer: buffer}})
	tok := userToken(t)
	fast := a.openStream("/v1/teams/team-1/jobs/events", tok, nil)
	if ev := fast.next(); ev.name != "reset" {
		t.Fatalf("first event %q", ev.name)
	}
	// A client that reads nothing (after the headers).
	stalledResp := a.streamResponse(stalledClient(), "/v1/teams/team-1/jobs/events", tok, nil)
	if stalledResp.StatusCode != http.StatusOK {
		t.Fatalf("stalled client: %d", stalledResp.StatusCode)
	}
	drops := testutil.ToFloat64(streamSlowDisconnects)

	// The informer's path: 2,000 changes of 8 KB each, far more than the
	// stalled connection's socket buffers and its subscriber's buffer, in
	// batches of half the buffer that the fast client reads as they come.
	// The pushes must never wait for the stalled client.
	a.broker.mu.Lock()
	base := a.broker.top + 1
	a.broker.mu.Unlock()
	msg := strings.Repeat("x", 8<<10)
	var slowest time.Duration
	for from := uint64(0); from < events; from += buffer / 2 {
		pushed := make(chan time.Duration, 1)
		go func() {
			var longest time.Duration
			for i := from; i < min(from+buffer/2, events); i++ {
				jr := testrun.Make(a.ns, fmt.Sprintf("synthetic-%d", i)).JobType("revenuecat_sync").Team("team-1").Project("project-1").
					ResourceVersion(strconv.FormatUint(base+i, 10)).Obj()
				jr.Status.Progress = jobsv1alpha1.NewProgress(int64(i), events, msg)
				start := time.Now()
				a.broker.change(nil, jr, false)
				longest = max(longest, time.Since(start))
			}
			pushed <- longest
		}()
		select {
		case d := <-pushed:
			slowest = max(slowest, d)
		case <-time.After(10 * time.Second):
			t.Fatalf("pushing events %d.. blocked: a stalled client holds up the informer", from)
		}
		for i := from; i < min(from+buffer/2, events); i++ {
			ev := fast.next()
			if ev.name != "run" || ev.id != strconv.FormatUint(base+i, 10) {
				t.Fatalf("fast client: event %d is %q id %q, want run id %d", i, ev.name, ev.id, base+i)
			}
		}
	}
	t.Logf("%d events: the slowest push took %s", events, slowest)
	if got := testutil.ToFloat64(streamSlowDisconnects) - drops; got != 1 {
		t.Errorf("slow disconnects: %v, want 1 (the stalled client only)", got)
	}

	// The stalled client, reading at last, finds the events it could take,
	// then the hint to resume, then the end.
	stalled := readStream(t, stalledResp)
	var n int
	for ev := range stalled.events {
		if ev.name == "overflow" {
			if errorCode(ev.body(t)) != "slow_consumer" {
				t.Errorf("overflow event %s", ev.data)
			}
			stalled.expectEnd(5 * time.Second)
			if n >= events-buffer {
				t.Errorf("the stalled client got %d events of %d before its disconnect", n, events)
			}
			t.Logf("the stalled client got %d of %d events, then overflow", n, events)
			return
		}
		n++
	}
	t.Fatalf("the stalled client's stream ended after %d events without an overflow event", n)
}

func TestStreamHeartbeatAndShutdown(t *testing.T) {
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{heartbeat: 50 * time.Millisecond})
	a.createRun("run-h", "team-1", running)
	tok := userToken(t)
	st := a.openStream("/v1/jobs/run-h/events", tok, nil)
	team := a.openStream("/v1/teams/team-1/jobs/events", tok, nil)
	st.next()
	team.next()
	select {
	case c := <-st.comments:
		if c != ": ping" {
			t.Errorf("comment %q, want : ping", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat on an idle stream within 5 s")
	}
	a.server.CloseStreams()
	st.expectEnd(2 * time.Second)
	team.expectEnd(2 * time.Second)
}

// TestStreamOutlivesTimeouts: the request timeout and the HTTP server's
// read and write timeouts bound requests, not streams.
func TestStreamOutlivesTimeouts(t *testing.T) {
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{requestTimeout: 200 * time.Millisecond, heartbeat: 100 * time.Millisecond,
		httpServer: func(s *http.Server) { s.ReadTimeout, s.WriteTimeout = 300*time.Millisecond, 300*time.Millisecond }})
	run := a.createRun("run-t", "team-1", running)
	st := a.openStream("/v1/jobs/run-t/events", userToken(t), nil)
	if ev := st.next(); ev.name != "snapshot" {
		t.Fatalf("first event %q", ev.name)
	}
	time.Sleep(1500 * time.Millisecond) // past every timeout, several times
	rv := patchStatus(t, run, setProgress(7))
	expectRun(t, st.next(), "update", rv, 7)
}

func TestStreamTickets(t *testing.T) {
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	ns := env.Namespace(t)
	a := startAPIWith(t, ns, env.Config, nil, apiOptions{now: func() time.Time { return *now.Load() }})
	a.createRun("run-k", "team-1", running)
	a.createRun("run-2", "team-2", running)
	tok := userToken(t)
	ticket := func(a *api, tok, path string) string {
		t.Helper()
		status, body := a.do(http.MethodPost, "/v1/stream-tickets", tok, map[string]string{"path": path})
		tk, _ := body["ticket"].(string)
		if status != http.StatusCreated || tk == "" || body["expires_at"] == nil {
			t.Fatalf("POST /v1/stream-tickets %s: %d %v", path, status, body)
		}
		return tk
	}
	unauthorized := func(path string) {
		t.Helper()
		resp := a.streamResponse(http.DefaultClient, path, "", nil)
		body := map[string]any{}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != http.StatusUnauthorized || errorCode(body) != codeUnauthorized {
			t.Errorf("GET %s: %d %v, want 401", path, resp.StatusCode, body)
		}
	}

	// Once, for its path, without Authorization.
	tk := ticket(a, tok, "/v1/jobs/run-k/events")
	st := a.openStream("/v1/jobs/run-k/events?ticket="+tk, "", nil)
	if ev := st.next(); ev.name != "snapshot" {
		t.Errorf("with a ticket: %q", ev.name)
	}
	unauthorized("/v1/jobs/run-k/events?ticket=" + tk)

	// Another path, another kind of stream.
	tk = ticket(a, tok, "/v1/jobs/run-k/events")
	unauthorized("/v1/jobs/run-2/events?ticket=" + tk)
	unauthorized("/v1/teams/team-1/jobs/events?ticket=" + tk)

	// A team stream by ticket.
	tk = ticket(a, tok, "/v1/teams/team-1/jobs/events")
	team := a.openStream("/v1/teams/team-1/jobs/events?status=running&ticket="+tk, "", nil)
	if ev := team.next(); ev.name != "reset" {
		t.Errorf("team stream with a ticket: %q", ev.name)
	}

	// Expired: 60 s after its issue.
	tk = ticket(a, tok, "/v1/jobs/run-k/events")
	later := start.Add(61 * time.Second)
	now.Store(&later)
	unauthorized("/v1/jobs/run-k/events?ticket=" + tk)
	now.Store(&start)

	// Long-lived credentials in the URL, a forged ticket, none at all.
	unauthorized("/v1/jobs/run-k/events?ticket=" + tok)
	unauthorized("/v1/jobs/run-k/events?access_token=" + tok)
	forged := strings.Replace(ticket(a, tok, "/v1/jobs/run-k/events"), "jst1.", "jst1.A", 1)
	unauthorized("/v1/jobs/run-k/events?ticket=" + forged)
	unauthorized("/v1/jobs/run-k/events")

	// No more rights than the credential that asked: another team's run
	// is still not found.
	tk = ticket(a, tok, "/v1/jobs/run-2/events")
	resp := a.streamResponse(http.DefaultClient, "/v1/jobs/run-2/events?ticket="+tk, "", nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("another team's run by ticket: %d, want 404", resp.StatusCode)
	}

	// Another replica (sharing the ticket key) accepts a ticket this one
	// issued.
	b := startAPIWith(t, ns, env.Config, nil, apiOptions{})
	tk = ticket(a, tok, "/v1/jobs/run-k/events")
	st = b.openStream("/v1/jobs/run-k/events?ticket="+tk, "", nil)
	if ev := st.next(); ev.name != "snapshot" {
		t.Errorf("ticket on another replica: %q", ev.name)
	}

	// Issuing: a credential, and a stream's path.
	for _, c := range []struct {
		tok, body string
		want      int
	}{
		{"", `{"path":"/v1/jobs/run-k/events"}`, http.StatusUnauthorized},
		{tok, `{"path":"/v1/jobs/run-k"}`, http.StatusBadRequest},
		{tok, `{"path":"/v1/jobs/a/b/events"}`, http.StatusBadRequest},
		{tok, `{"path":"/v1/jobs/run-k/events","x":1}`, http.StatusBadRequest},
		{token(t, jwt.SigningMethodHS256, secret, nil), `{"path":"/v1/teams/team-9/jobs/events"}`, http.StatusCreated},
	} {
		if status, body := a.do(http.MethodPost, "/v1/stream-tickets", c.tok, rawJSON(c.body)); status != c.want {
			t.Errorf("POST /v1/stream-tickets %s: %d %v, want %d", c.body, status, body, c.want)
		}
	}
}

// TestStreamKeepsOnlyItsCredentialsRights: an open stream is checked again
// every heartbeat, so it ends (revoked) when its JWT expires, when its API
// key moves to another team, and, opened with a ticket, at the ticket
// stream's maximum age; the client's reconnect gets the 401 or 404 a new
// stream would.
func TestStreamKeepsOnlyItsCredentialsRights(t *testing.T) {
	clk := &clock{t: time.Now()}
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{
		jwt: HS256(secret, JWTChecks{Now: clk.now}), now: clk.now, heartbeat: 50 * time.Millisecond})
	ctx := context.Background()
	run := a.createTeamRun("run-1", "team-1", "project-1", "revenuecat_sync")
	patchStatus(t, run, running)
	a.waitBroker(run.ResourceVersion)

	tok := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["exp"] = clk.now().Add(5 * time.Minute).Unix() })
	key, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead}, "")
	if err != nil {
		t.Fatal(err)
	}
	a.waitForKey(key)
	_, ticketBody := a.do(http.MethodPost, "/v1/stream-tickets", tok, map[string]any{"path": "/v1/teams/team-1/jobs/events"})
	ticket, _ := ticketBody["ticket"].(string)

	jwtRun := a.openStream("/v1/jobs/run-1/events", tok, nil)
	jwtTeam := a.openStream("/v1/teams/team-1/jobs/events", tok, nil)
	keyTeam := a.openStream("/v1/teams/team-1/jobs/events", key, nil)
	ticketTeam := a.openStream("/v1/teams/team-1/jobs/events?ticket="+ticket, "", nil)
	if ev := jwtRun.next(); ev.name != "snapshot" {
		t.Fatalf("the run stream starts with %s", ev.name)
	}
	for _, st := range []*sseStream{jwtTeam, keyTeam, ticketTeam} {
		if ev := st.next(); ev.name != "reset" {
			t.Fatalf("a team stream starts with %s", ev.name)
		}
	}
	expectRevoked := func(what string, st *sseStream, why string) {
		t.Helper()
		ev := st.next()
		for ev.name == "run" || ev.name == "update" {
			ev = st.next() // changes sent before the check
		}
		if ev.name != "revoked" || ev.id != "" || !strings.Contains(ev.data, why) {
			t.Fatalf("%s: event %s %q %s, want revoked (no id) saying %q", what, ev.name, ev.id, ev.data, why)
		}
		st.expectEnd(10 * time.Second)
	}

	// The API key moves to team-2: its team stream ends; the others go on.
	secrets := &corev1.SecretList{}
	if err := env.Client.List(ctx, secrets, client.InNamespace(a.ns), client.MatchingLabels{LabelAPIKey: "true"}); err != nil || len(secrets.Items) != 1 {
		t.Fatalf("%d key secrets (%v)", len(secrets.Items), err)
	}
	moved := secrets.Items[0].DeepCopy()
	moved.Data["team"] = []byte("team-2")
	if err := env.Client.Update(ctx, moved); err != nil {
		t.Fatal(err)
	}
	expectRevoked("an API key moved to another team", keyTeam, "no longer gives access")
	if resp := a.streamResponse(http.DefaultClient, "/v1/teams/team-1/jobs/events", key, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the moved key's reconnect: %d, want 404", resp.StatusCode)
	}
	rv := patchStatus(t, run, setProgress(2))
	for what, st := range map[string]*sseStream{"the JWT's team stream": jwtTeam, "the ticket's team stream": ticketTeam} {
		if ev := st.next(); ev.name != "run" || ev.id != rv {
			t.Fatalf("%s after the key moved: %s %s, want the run's change %s", what, ev.name, ev.id, rv)
		}
	}

	// The JWT expires: its streams end; the ticket's, opened with it, lives
	// until its maximum age.
	clk.add(5*time.Minute + DefaultJWTLeeway + time.Second)
	expectRevoked("the JWT's run stream", jwtRun, "no longer valid")
	expectRevoked("the JWT's team stream", jwtTeam, "no longer valid")
	if resp := a.streamResponse(http.DefaultClient, "/v1/jobs/run-1/events", tok, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the expired JWT's reconnect: %d, want 401", resp.StatusCode)
	}
	rv = patchStatus(t, run, setProgress(3))
	if ev := ticketTeam.next(); ev.name != "run" || ev.id != rv {
		t.Fatalf("the ticket's stream before its maximum age: %s %s, want the run's change %s", ev.name, ev.id, rv)
	}
	clk.add(ticketStreamMaxAge)
	expectRevoked("the ticket's stream past its maximum age", ticketTeam, "no longer valid")
}

// TestStreamOfDeletedRun: a run deleted before it finished ends its run
// streams with a deleted event (no id; a reconnect is a 404) and shows in
// its team's streams as deleted.
func TestStreamOfDeletedRun(t *testing.T) {
	a := newAPI(t)
	tok := userToken(t)
	run := a.createTeamRun("run-1", "team-1", "project-1", "revenuecat_sync")
	patchStatus(t, run, running)
	a.waitBroker(run.ResourceVersion)
	runStream := a.openStream("/v1/jobs/run-1/events", tok, nil)
	teamStream := a.openStream("/v1/teams/team-1/jobs/events", tok, nil)
	if ev := runStream.next(); ev.name != "snapshot" {
		t.Fatalf("the run stream starts with %s", ev.name)
	}
	if ev := teamStream.next(); ev.name != "reset" {
		t.Fatalf("the team stream starts with %s", ev.name)
	}
	if err := env.Client.Delete(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	for what, st := range map[string]*sseStream{"run": runStream, "team": teamStream} {
		ev := st.next()
		if ev.name != "deleted" || ev.id != "" || ev.run(t)["id"] != "run-1" || ev.run(t)["status"] != "running" {
			t.Fatalf("the %s stream after the delete: %s %q %s, want deleted (no id) with the run as last seen", what, ev.name, ev.id, ev.data)
		}
	}
	runStream.expectEnd(10 * time.Second)
	if resp := a.streamResponse(http.DefaultClient, "/v1/jobs/run-1/events", tok, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a reconnect to the deleted run's stream: %d, want 404", resp.StatusCode)
	}
}
