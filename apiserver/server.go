// Package apiserver serves the Jobs REST API (spec/jobs-api.txt) on top of
// JobRun resources. It is a translator: requests become JobRuns and
// annotations, JobRuns become responses; it never writes a run's status.
package apiserver

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/go-chi/cors"
	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"jobrun.dev/jobrun/internal/guard"
)

// openAPIDocument describes the API; it is kept in the repository and tests
// check the server's responses against it.
//
//go:embed openapi.json
var openAPIDocument []byte

// Options configure a Server.
type Options struct {
	// Addr is the address to listen on, such as 127.0.0.1:8080.
	Addr string
	// Namespace holds the runs, job types and projects the API serves.
	Namespace string
	// Reader reads around any cache, for read-your-writes.
	Reader client.Reader
	// Cache, if set, serves JobType and Project lookups (a miss is
	// confirmed with Reader, so a just-created project is never refused).
	Cache client.Reader
	// Writer creates and patches runs.
	Writer client.Client
	// Lister serves run lists (a RunIndex fed by an informer).
	Lister RunLister
	// Archive, if set, serves finished runs that left the API server
	// (NewArchiveReader): lists merge it with Lister, gets fall back to
	// it, and triggered runs carry its finalizer until they are archived.
	Archive RunLister
	// Auth authenticates bearer credentials.
	Auth Authenticator
	// Log receives request logs.
	Log logr.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Ready reports whether the server can answer (its list cache has
	// synced); nil means always.
	Ready func(context.Context) bool
	// CORSAllowedOrigins are the origins whose browser pages may call the
	// API (such as https://app.example.com; "*" for any). Empty: no CORS
	// headers at all, and browsers keep cross-origin pages out.
	CORSAllowedOrigins []string
	// Broker, if set, feeds the event streams (GET /v1/jobs/{runId}/events
	// and /v1/teams/{teamId}/jobs/events); without one they answer 503.
	Broker *Broker
	// StreamHeartbeat is how often an idle stream gets a comment (default
	// DefaultStreamHeartbeat).
	StreamHeartbeat time.Duration
	// TicketKey signs stream tickets. Replicas behind one load balancer
	// must share it (a ticket issued by one is presented to another); empty:
	// a random key of this process, so tickets need sticky sessions.
	TicketKey []byte
	// RequestTimeout bounds the work of a request other than a stream
	// (default DefaultRequestTimeout).
	RequestTimeout time.Duration
}

// DefaultRequestTimeout bounds a request's work (API server calls included);
// event streams are not bounded.
const DefaultRequestTimeout = 20 * time.Second

// Server is the Jobs API. It runs as a controller-runtime Runnable (on
// every replica, not only the leader) or on its own.
type Server struct {
	addr      string
	namespace string
	reader    client.Reader
	cache     client.Reader
	writer    client.Client
	lister    RunLister
	// archive is Options.Archive: nil without one.
	archive RunLister
	log     logr.Logger
	now     func() time.Time
	guards  *guard.Guards
	// auth is the middleware that requires a credential; each route that
	// needs one uses it, so that routing (404, 405) and CORS preflights
	// come first.
	auth func(http.Handler) http.Handler
	// timeout is the middleware that bounds a request's work; event
	// streams go without it.
	timeout func(http.Handler) http.Handler
	// Event streams: their broker, heartbeat, tickets, and streamsDone,
	// closed when the server shuts down to end them.
	broker    *Broker
	heartbeat time.Duration
	tickets   *tickets
	// sessions are the console's (console_session.go).
	sessions    *sessions
	streamsDone chan struct{}
	closeOnce   sync.Once
	router      *chi.Mux
	handler     http.Handler
}

// New returns a Server; Start serves it.
func New(o Options) (*Server, error) {
	if o.Auth == nil {
		return nil, errors.New("apiserver: an Authenticator is required")
	}
	if o.Lister == nil {
		return nil, errors.New("apiserver: a RunLister is required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Cache == nil {
		o.Cache = o.Reader
	}
	if o.StreamHeartbeat <= 0 {
		o.StreamHeartbeat = DefaultStreamHeartbeat
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	lister, err := withArchive(o)
	if err != nil {
		return nil, err
	}
	s := &Server{addr: o.Addr, namespace: o.Namespace, reader: o.Reader, cache: o.Cache, writer: o.Writer, lister: lister, archive: o.Archive,
		log: o.Log, now: o.Now, guards: guard.New(o.Reader, o.Writer), auth: authenticate(o.Auth),
		timeout: middleware.Timeout(o.RequestTimeout), broker: o.Broker, heartbeat: o.StreamHeartbeat, tickets: newTickets(o.TicketKey, o.Now),
		streamsDone: make(chan struct{})}
	s.sessions = newSessions(s.tickets, o.Auth, o.Now)
	r := chi.NewRouter()
	s.router = r
	r.Use(middleware.RequestID, s.logRequests, instrument, recoverJSON)
	if len(o.CORSAllowedOrigins) > 0 {
		// Preflights are answered here, before any route or credential: a
		// browser sends none with them.
		r.Use(cors.Handler(cors.Options{
			AllowedOrigins: o.CORSAllowedOrigins,
			AllowedMethods: []string{http.MethodGet, http.MethodHead, http.MethodPost},
			AllowedHeaders: []string{"Authorization", "Content-Type"},
			ExposedHeaders: []string{"Retry-After", "WWW-Authenticate"},
			// Bearer credentials only: no cookies, so no credentialed CORS.
			AllowCredentials: false,
			MaxAge:           600,
		}))
	}
	// HEAD is GET without the body, on every GET route.
	r.Use(middleware.GetHead)
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if o.Ready != nil && !o.Ready(r.Context()) {
			writeError(w, r, errorf(http.StatusServiceUnavailable, codeUnavailable, "not ready: the run cache has not synced"))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	r.Get("/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPIDocument)
	})
	r.Route("/v1", func(r chi.Router) {
		// A request's work (API server calls included) ends after
		// RequestTimeout: each route but the event streams has s.timeout.
		r.Route("/jobs", runsResource{s}.routes)
		r.Route("/teams", teamsResource{s}.routes)
		r.With(s.timeout, s.auth).Post("/stream-tickets", s.issueTicket)
		r.With(s.timeout, s.auth).Post("/sign-in-links", s.issueSignInLink)
	})
	// The console: pages with the session cookie, never the API's bearer
	// routes (which never read cookies).
	r.Route("/ui", consoleResource{s}.routes)
	r.Get("/ui", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusMovedPermanently) })
	notFound := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errorf(http.StatusNotFound, codeNotFound, "no such endpoint: "+clip(r.Method)+" "+clip(r.URL.Path)))
	}
	r.NotFound(notFound)
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		allowed := s.allowedMethods(r.URL.Path)
		if len(allowed) == 0 {
			// chi calls every method it does not know "not allowed",
			// whatever the path.
			notFound(w, r)
			return
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, r, errorf(http.StatusMethodNotAllowed, "method_not_allowed", clip(r.Method)+" is not allowed on "+clip(r.URL.Path)+" (allowed: "+strings.Join(allowed, ", ")+")"))
	})
	s.handler = r
	return s, nil
}

// clip shortens what a client sent (a method, a path) for a message or a
// log line: a method may be up to ~1 MB long.
func clip(s string) string {
	if len(s) > 200 {
		return strings.ToValidUTF8(s[:200], "") + "..."
	}
	return s
}

// allowedMethods are the methods that path has routes for, HEAD with GET.
func (s *Server) allowedMethods(path string) []string {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := m
		if m == http.MethodHead {
			probe = http.MethodGet // middleware.GetHead serves it
		}
		if s.router.Match(chi.NewRouteContext(), probe, path) {
			allowed = append(allowed, m)
		}
	}
	return allowed
}

// recoverJSON turns a handler's panic into the documented JSON 500 (the
// details go to the log with the stack), so a bug never answers a bare
// 500 or drops the connection.
func recoverJSON(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			rv := recover()
			if rv == nil {
				return
			}
			if rv == http.ErrAbortHandler { //nolint:errorlint // the sentinel is panicked as is
				panic(rv) // net/http's way to abort a response: keep it
			}
			ae := errorf(http.StatusInternalServerError, codeInternal, "internal error")
			ae.cause = fmt.Errorf("request handler panicked: %v\n%s", rv, debug.Stack()) // writeError logs it
			writeError(w, r, ae)
		}()
		next.ServeHTTP(w, r)
	})
}

// CloseStreams ends every open event stream (and any opened later): for
// shutdown.
func (s *Server) CloseStreams() {
	s.closeOnce.Do(func() { close(s.streamsDone) })
}

// Handler is the API's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// NeedLeaderElection is false: every replica serves the API.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx ends, then drains in-flight requests for up to 10 s.
func (s *Server) Start(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return logf.IntoContext(context.Background(), s.log) },
	}
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("apiserver: listening on %s: %w", s.addr, err)
	}
	s.log.Info("serving the Jobs API", "addr", l.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.CloseStreams() // Shutdown waits for handlers, and streams do not end by themselves
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}

// logRequests logs each request with its route, status and duration.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		log := s.log.WithValues("requestID", middleware.GetReqID(r.Context()))
		next.ServeHTTP(ww, r.WithContext(logf.IntoContext(r.Context(), log)))
		log.Info("request", "method", clip(r.Method), "path", clip(r.URL.Path), "status", ww.Status(), "duration", time.Since(start))
	})
}

// getConfig reads a JobType or Project: from the cache, and on a miss from
// the API server, so that a stale cache never refuses an object that exists.
func (s *Server) getConfig(ctx context.Context, key client.ObjectKey, obj client.Object) error {
	err := s.cache.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) && s.cache != s.reader {
		err = s.reader.Get(ctx, key, obj)
	}
	return err
}
