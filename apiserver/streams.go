package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// Event streams (server-sent events) of runs: GET /v1/jobs/{runId}/events
// and GET /v1/teams/{teamId}/jobs/events, fed by the Broker. The README's
// "Live streams" section and openapi.json describe them for clients.

// DefaultStreamHeartbeat is how often an idle stream gets a comment, so
// that proxies do not close it.
const DefaultStreamHeartbeat = 15 * time.Second

// streamRetry is the reconnection delay streams advise (the SSE retry:
// field), in milliseconds.
const streamRetry = 3000

// streamWriteTimeout bounds each write to a stream's connection (the
// server's WriteTimeout bounds a whole response, which a stream outlives).
const streamWriteTimeout = 30 * time.Second

// overflowEvent is the last event of a stream whose client fell behind.
var overflowEvent = []byte(`{"error":{"code":"slow_consumer","message":"the client fell behind the stream's buffer; reconnect with Last-Event-ID to resume"}}`)

// sse writes a stream's events, one flush each.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

// startSSE answers 200 with an event stream and its retry advice. The
// connection's read deadline (the server's ReadTimeout) is lifted: it would
// end the stream.
func startSSE(w http.ResponseWriter) *sse {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer
	w.WriteHeader(http.StatusOK)
	s := &sse{w: w, rc: rc}
	_ = s.write(fmt.Appendf(nil, "retry: %d\n\n", streamRetry))
	return s
}

func (s *sse) write(p []byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := s.w.Write(p); err != nil {
		return err
	}
	return s.rc.Flush()
}

// event writes one event; id 0 writes none (the client keeps its last).
func (s *sse) event(name string, id uint64, data []byte) error {
	buf := make([]byte, 0, len(data)+64)
	buf = append(buf, "event: "...)
	buf = append(buf, name...)
	buf = append(buf, '\n')
	if id > 0 {
		buf = strconv.AppendUint(append(buf, "id: "...), id, 10)
		buf = append(buf, '\n')
	}
	buf = append(buf, "data: "...)
	buf = append(buf, data...) // one line: JSON has no raw newlines
	buf = append(buf, "\n\n"...)
	if err := s.write(buf); err != nil {
		return err
	}
	streamEventsSent.WithLabelValues(name).Inc()
	return nil
}

// lastEventID is the id a reconnecting client saw last: the Last-Event-ID
// header (EventSource's reconnect) or ?last_event_id= (a page that opens a
// new EventSource with a new ticket); 0 if none or not an id.
func lastEventID(r *http.Request) uint64 {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("last_event_id")
	}
	id, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0
	}
	return id
}

// streamParams are the query parameters every stream accepts.
var streamParams = []string{"ticket", "last_event_id"}

// checkStreamQuery refuses query parameters a stream does not take;
// listOnly are list parameters that are not for streams.
func checkStreamQuery(v url.Values, allowed []string) error {
	for name := range v {
		switch {
		case slices.Contains(allowed, name), slices.Contains(streamParams, name):
		case slices.Contains([]string{"since", "until", "cursor", "limit"}, name):
			return badRequest("%s is a parameter of the list, not of streams: a stream sends changes from now on (list first, then stream)", name)
		default:
			return badRequest("unknown query parameter %q", clip(name))
		}
	}
	return nil
}

// streamable answers 503 if the server has no broker.
func (s *Server) streamable(w http.ResponseWriter, r *http.Request) bool {
	if s.broker == nil {
		writeError(w, r, errorf(http.StatusServiceUnavailable, codeUnavailable, "event streams are not enabled on this server"))
		return false
	}
	return true
}

// headOnly answers a HEAD (served by the GET route) with a stream's
// headers and no stream.
func headOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodHead {
		return false
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	return true
}

// A stream keeps the rights of its credential, not of the moment it
// opened: every heartbeat, the stream's authenticator (streamRecheck, put
// in its context by the middleware that authenticated it) authenticates the
// credential again, and the handler's access check runs on the answer. A
// credential that expired or was revoked, or lost the stream's team, ends
// the stream with a revoked event; the client's reconnect then gets the
// 401 or 404 a new stream would.

// ticketStreamMaxAge bounds a stream opened with a ticket, which holds the
// rights of the credential that asked for it but not the credential: past
// it, the stream ends (revoked) and the client asks for a new ticket with
// its credential.
const ticketStreamMaxAge = 15 * time.Minute

// streamRecheck authenticates a stream's credential again: its principal
// now, or an error (errUnauthenticated, a 401 apiError: the credential is
// no good; another error: it could not be checked now).
type streamRecheck func(context.Context) (*Principal, error)

type recheckKey struct{}

func withRecheck(ctx context.Context, f streamRecheck) context.Context {
	return context.WithValue(ctx, recheckKey{}, f)
}

// revokedEvent is the last event of a stream whose credential no longer
// gives it access.
func revokedEvent(why string) []byte {
	data, _ := json.Marshal(map[string]any{"error": map[string]string{"code": codeUnauthorized, "message": why}})
	return data
}

// stillAllowed says why the stream of ctx must end ("" if it must not):
// its credential authenticated again, and allowed, its access check, on the
// principal that answers. A credential that cannot be checked now (the
// authenticator is unavailable) keeps its stream.
func stillAllowed(ctx context.Context, allowed func(*Principal) error) string {
	recheck, _ := ctx.Value(recheckKey{}).(streamRecheck)
	if recheck == nil {
		return ""
	}
	p, err := recheck(ctx)
	switch {
	case err == nil:
	case credentialRefused(err):
		return "the stream's credential is no longer valid (expired, revoked, or a ticket stream past its " + ticketStreamMaxAge.String() + "): reconnect with a valid one"
	default:
		return ""
	}
	if err := allowed(p); err != nil {
		return "the stream's credential no longer gives access to it"
	}
	return ""
}

// streamLoop forwards sub's live events through send until send says the
// stream is done, the client falls behind, leaves, or loses access
// (allowed, checked every heartbeat), or the server closes.
func (s *Server) streamLoop(ctx context.Context, out *sse, sub subscription, allowed func(*Principal) error, send func(runEvent) (done bool, err error)) {
	heartbeat := time.NewTicker(s.heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case ev := <-sub.ch:
			if done, err := send(ev); done || err != nil {
				return
			}
		case <-sub.dropped:
			_ = out.event("overflow", 0, overflowEvent)
			return
		case <-heartbeat.C:
			if why := stillAllowed(ctx, allowed); why != "" {
				_ = out.event("revoked", 0, revokedEvent(why))
				return
			}
			if out.write([]byte(": ping\n\n")) != nil {
				return
			}
		case <-ctx.Done():
			return
		case <-s.streamsDone:
			return
		case <-s.broker.done:
			return
		}
	}
}

// runEvents serves GET /v1/jobs/{runId}/events: snapshot, an update per
// change, final when the run has ended. It subscribes before it reads the
// run, so that no change falls between the two; changes the snapshot
// already shows are skipped by their resourceVersion.
func (rr runsResource) events(w http.ResponseWriter, r *http.Request) {
	s := rr.s
	if !s.streamable(w, r) {
		return
	}
	if err := checkStreamQuery(r.URL.Query(), nil); err != nil {
		writeError(w, r, err)
		return
	}
	id, after := chi.URLParam(r, "runId"), lastEventID(r)
	sub := s.broker.subscribe(func(run *jobsv1alpha1.JobRun) bool {
		return run.Name == id && run.Namespace == s.namespace
	}, after)
	defer s.broker.unsubscribe(sub.subscriber)
	run, err := rr.visibleRun(r, PermJobsRead, false)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if headOnly(w, r) {
		return
	}
	allowed := func(p *Principal) error { return runAccess(p, run, PermJobsRead) }
	runRV, _ := parseResourceVersion(run.ResourceVersion) // 0 for an archived run
	if runRV == 0 {
		sub.resumable = false // only archived: snapshot and final
	}
	streamsOpen.WithLabelValues("run").Inc()
	defer streamsOpen.WithLabelValues("run").Dec()

	var last uint64 // resourceVersion of the last change sent
	send := func(out *sse, ev runEvent) (bool, error) {
		if ev.deleted {
			return true, out.event("deleted", 0, ev.body)
		}
		if ev.rv <= last {
			return false, nil // the snapshot or the backlog showed it
		}
		last = ev.rv
		if ev.run.CurrentPhase().IsTerminal() {
			return true, out.event("final", ev.rv, ev.body)
		}
		return false, out.event("update", ev.rv, ev.body)
	}
	if sub.resumable {
		if run.CurrentPhase().IsTerminal() && len(sub.backlog) == 0 && runRV != 0 && runRV <= after {
			// The client saw the final event: 204 tells EventSource not
			// to reconnect again.
			w.WriteHeader(http.StatusNoContent)
			return
		}
		out := startSSE(w)
		last = after
		for _, ev := range sub.backlog {
			if done, err := send(out, ev); done || err != nil {
				return
			}
		}
		s.streamLoop(r.Context(), out, sub, allowed, func(ev runEvent) (bool, error) { return send(out, ev) })
		return
	}
	out := startSSE(w)
	body := marshalRun(run)
	snapshotID := max(runRV, sub.top)
	if err := out.event("snapshot", snapshotID, body); err != nil {
		return
	}
	if run.CurrentPhase().IsTerminal() {
		_ = out.event("final", snapshotID, body)
		return
	}
	last = runRV
	s.streamLoop(r.Context(), out, sub, allowed, func(ev runEvent) (bool, error) { return send(out, ev) })
}

// teamEvents serves GET /v1/teams/{teamId}/jobs/events: a run event per
// change of a team run that matches the filters (after the change). A
// stream that is not a resume starts with a reset event: the client lists
// the runs (GET /v1/teams/{teamId}/jobs), then applies the events; a
// resume that the server cannot serve exactly also gets a reset.
func (tr teamsResource) events(w http.ResponseWriter, r *http.Request) {
	s := tr.s
	if !s.streamable(w, r) {
		return
	}
	v := r.URL.Query()
	if err := checkStreamQuery(v, []string{"job_type", "status", "project_id"}); err != nil {
		writeError(w, r, err)
		return
	}
	filters := url.Values{}
	for _, name := range []string{"job_type", "status", "project_id"} {
		if v.Has(name) {
			filters[name] = v[name]
		}
	}
	q, err := parseListValues(filters, s.now())
	if err != nil {
		writeError(w, r, err)
		return
	}
	if headOnly(w, r) {
		return
	}
	team, after := teamFrom(r.Context()), lastEventID(r)
	sub := s.broker.subscribe(func(run *jobsv1alpha1.JobRun) bool {
		return run.Namespace == s.namespace && run.Spec.TeamID == team &&
			(q.JobType == "" || run.Spec.JobType == q.JobType) &&
			(q.Status == "" || string(run.CurrentPhase()) == q.Status) &&
			(q.ProjectID == "" || run.Spec.ProjectID == q.ProjectID)
	}, after)
	defer s.broker.unsubscribe(sub.subscriber)
	streamsOpen.WithLabelValues("team").Inc()
	defer streamsOpen.WithLabelValues("team").Dec()
	out := startSSE(w)
	send := func(ev runEvent) (bool, error) {
		if ev.deleted {
			return false, out.event("deleted", 0, ev.body)
		}
		return false, out.event("run", ev.rv, ev.body)
	}
	if sub.resumable {
		for _, ev := range sub.backlog {
			if _, err := send(ev); err != nil {
				return
			}
		}
	} else {
		reason := "start"
		if after != 0 {
			reason = "resume_unavailable"
		}
		if out.event("reset", sub.top, []byte(`{"reason":"`+reason+`"}`)) != nil {
			return
		}
	}
	s.streamLoop(r.Context(), out, sub, func(p *Principal) error { return teamAccess(p, team, PermJobsRead) }, send)
}
