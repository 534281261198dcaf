package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/cachetrim"

	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

var env *testenv.Env

// TestMain drops the logs of the managers and caches that the tests start
// (an error of theirs ends the manager, which the test reports).
func TestMain(m *testing.M) {
	logf.SetLogger(logr.Discard())
	testenv.Main(m, &env)
}

var secret = []byte("test-secret-of-enough-length-for-hs256")

// api is the Jobs API over a namespace of its own on the real API server.
type api struct {
	t   testing.TB
	ns  string
	url string
	// cache is the server's manager cache, the one its JobType and Project
	// lookups and its run list read, for tests to wait on.
	cache cache.Cache
	// server is the API server; broker feeds its event streams.
	server *Server
	broker *Broker
}

func newAPI(t testing.TB) *api {
	t.Helper()
	return startAPI(t, env.Namespace(t))
}

// replica is a second API server over the same namespace, as a second REST
// replica would be.
func (a *api) replica() *api { return startAPI(a.t, a.ns) }

// rawJSON is a request body sent as is.
type rawJSON string

func startAPI(t testing.TB, ns string) *api {
	t.Helper()
	return startAPIVia(t, ns, env.Config, nil)
}

// startAPIVia starts an API server wired as cmd/jobrun/manager.go wires it:
// a controller-runtime manager whose client serves JobType and Project
// lookups from its cache (a miss confirmed by its API reader), whose API
// reader serves runs and guards, and whose cache feeds the RunIndex. The
// manager reaches the Kubernetes API server through cfg; its cache alone
// goes through cacheCfg when that is set, so a test can cut the cache off
// and know it is stale.
func startAPIVia(t testing.TB, ns string, cfg, cacheCfg *rest.Config) *api {
	t.Helper()
	return startAPIWith(t, ns, cfg, cacheCfg, apiOptions{})
}

// apiOptions change how startAPIWith wires its server.
type apiOptions struct {
	// wrapReader, if set, wraps the manager's API reader, through which the
	// server reads runs and guards, so a test can fail or delay a read.
	wrapReader func(client.Reader) client.Reader
	// now, if set, is the server's clock.
	now func() time.Time
	// wrapTransport, if set, wraps the manager's HTTP transport to the
	// Kubernetes API server (reads, writes and, without cacheCfg, its cache).
	wrapTransport func(http.RoundTripper) http.RoundTripper
	// consistencyTimeout, if set, bounds the run index's consistency rounds.
	consistencyTimeout time.Duration
	// corsOrigins are the server's CORS allowed origins.
	corsOrigins []string
	// jwt, if set, authenticates JWTs instead of HS256(secret).
	jwt Authenticator
	// archive, if set, is the run archive (Options.Archive).
	archive ArchiveReader
	// broker sizes the event streams' broker.
	broker BrokerOptions
	// heartbeat, if set, is the streams' heartbeat interval.
	heartbeat time.Duration
	// requestTimeout, if set, is Options.RequestTimeout.
	requestTimeout time.Duration
	// httpServer, if set, adjusts the test's HTTP server before it starts
	// (e.g. its timeouts).
	httpServer func(*http.Server)
}

// startAPIWith is startAPIVia wired as o says.
func startAPIWith(t testing.TB, ns string, cfg, cacheCfg *rest.Config, o apiOptions) *api {
	t.Helper()
	cfg = rest.CopyConfig(cfg)
	cfg.QPS = -1 // no client-side limit, as the manager's restConfig
	if o.wrapTransport != nil {
		cfg.Wrap(o.wrapTransport)
	}
	index := NewRunIndex()
	if o.consistencyTimeout != 0 {
		index.timeout = o.consistencyTimeout
	}
	opts := ctrl.Options{
		Scheme:  env.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		// The cache as the manager has it (trimmed by cachetrim; Secrets:
		// API keys only; JobRun lists noted by the run index), over the
		// test's namespace only.
		Cache: cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}, DefaultTransform: cachetrim.Transform(),
			ByObject:    map[client.Object]cache.ByObject{&corev1.Secret{}: APIKeySecretsCache(ns)},
			NewInformer: index.NewInformer},
	}
	if cacheCfg != nil {
		opts.NewCache = func(_ *rest.Config, o cache.Options) (cache.Cache, error) {
			o.HTTPClient = nil // connections of its own, through cacheCfg
			return cache.New(cacheCfg, o)
		}
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := index.Register(context.Background(), mgr.GetCache(), mgr.GetClient(), ns); err != nil {
		t.Fatal(err)
	}
	keys, err := NewAPIKeyAuthenticator(context.Background(), mgr.GetCache(), ns)
	if err != nil {
		t.Fatal(err)
	}
	broker := NewBroker(o.broker)
	if err := broker.Register(context.Background(), mgr.GetCache()); err != nil {
		t.Fatal(err)
	}
	testenv.StartManager(t, mgr)
	syncCtx, syncCancel := context.WithTimeout(context.Background(), time.Minute)
	defer syncCancel()
	if !mgr.GetCache().WaitForCacheSync(syncCtx) {
		t.Fatal("the run cache did not sync within a minute")
	}
	reader := mgr.GetAPIReader()
	if o.wrapReader != nil {
		reader = o.wrapReader(reader)
	}
	var jwtAuth Authenticator = HS256(secret)
	if o.jwt != nil {
		jwtAuth = o.jwt
	}
	var archived RunLister
	if o.archive != nil {
		archived = NewArchiveLister(o.archive)
	}
	s, err := New(Options{Namespace: ns, Reader: reader, Cache: mgr.GetClient(), Writer: mgr.GetClient(), Lister: index, Archive: archived, Ready: func(ctx context.Context) bool { return index.Synced(ctx) && keys.Synced(ctx) }, Now: o.now, CORSAllowedOrigins: o.corsOrigins,
		Auth: Authenticators{JWT: jwtAuth, APIKey: keys}, Log: testLogger(t),
		Broker: broker, StreamHeartbeat: o.heartbeat, RequestTimeout: o.requestTimeout, TicketKey: StreamTicketKey(secret)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(s.Handler())
	if o.httpServer != nil {
		o.httpServer(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(s.CloseStreams) // before srv.Close, which waits for the streams
	return &api{t: t, ns: ns, url: srv.URL, cache: mgr.GetCache(), server: s, broker: broker}
}

// testLogger logs through t in tests and nowhere in benchmarks.
func testLogger(tb testing.TB) logr.Logger {
	if t, ok := tb.(*testing.T); ok {
		return testr.New(t)
	}
	return logr.Discard()
}

// get sends a GET.
func (a *api) get(path, tok string) (int, map[string]any) {
	a.t.Helper()
	return a.do(http.MethodGet, path, tok, nil)
}

// token mints a JWT; mutate adjusts its claims.
func token(t testing.TB, method jwt.SigningMethod, key any, mutate func(jwt.MapClaims)) string {
	t.Helper()
	c := jwt.MapClaims{
		"sub": "user-1", "email": "u1@example.com", "teams": []string{"team-1"},
		"role": "member", "permissions": []string{PermJobsRead, PermJobsWrite},
		"exp": time.Now().Add(time.Hour).Unix(),
	}
	if mutate != nil {
		mutate(c)
	}
	s, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func userToken(t testing.TB) string { return token(t, jwt.SigningMethodHS256, secret, nil) }

// do sends a request and decodes the JSON body.
func (a *api) do(method, path, tok string, body any) (int, map[string]any) {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case rawJSON:
		rd = strings.NewReader(string(b))
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		a.t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	out := map[string]any{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		a.t.Fatalf("%s %s: body is not JSON: %v", method, path, err)
	}
	return resp.StatusCode, out
}

func (a *api) createRun(name, team string, mutate func(*jobsv1alpha1.JobRun)) *jobsv1alpha1.JobRun {
	a.t.Helper()
	jr := testrun.Make(a.ns, name).JobType("revenuecat_sync").Team(team).Project("project-1").TriggeredBy("manual:user:user-1").
		Params(`{"project_id":"project-1","integration_id":"int-1"}`).CreatedAt(time.Date(2024, 1, 15, 10, 30, 0, 0, time.UTC)).Obj()
	if team == "" {
		jr.Spec.ProjectID = ""
	}
	if err := env.Client.Create(context.Background(), jr); err != nil {
		a.t.Fatal(err)
	}
	if mutate != nil {
		mutate(jr)
		if err := env.Client.Status().Update(context.Background(), jr); err != nil {
			a.t.Fatal(err)
		}
	}
	return jr
}

func errorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	code, _ := e["code"].(string)
	if msg, _ := e["message"].(string); code != "" && msg == "" {
		return code + " (without message)"
	}
	return code
}

func TestAuthentication(t *testing.T) {
	a := newAPI(t)
	a.createRun("run-1", "team-1", nil)
	wrongKey := []byte("another-secret-of-enough-length-xxxx")
	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"no credential", "", http.StatusUnauthorized},
		{"garbage", "not-a-jwt", http.StatusUnauthorized},
		{"wrong signature", token(t, jwt.SigningMethodHS256, wrongKey, nil), http.StatusUnauthorized},
		{"alg none", token(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, nil), http.StatusUnauthorized},
		{"another HMAC algorithm", token(t, jwt.SigningMethodHS512, secret, nil), http.StatusUnauthorized},
		{"expired", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() }), http.StatusUnauthorized},
		{"no exp", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { delete(c, "exp") }), http.StatusUnauthorized},
		{"no sub", token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { delete(c, "sub") }), http.StatusUnauthorized},
		{"valid", userToken(t), http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := a.do(http.MethodGet, "/v1/jobs/run-1", tt.token, nil)
			if status != tt.want {
				t.Errorf("status %d, want %d (body %v)", status, tt.want, body)
			}
			if tt.want == http.StatusUnauthorized && errorCode(body) != codeUnauthorized {
				t.Errorf("error body %v", body)
			}
		})
	}
}

func TestGetRun(t *testing.T) {
	a := newAPI(t)
	started := metav1.NewMicroTime(time.Date(2024, 1, 15, 10, 30, 1, 0, time.UTC))
	a.createRun("run-running", "team-1", func(jr *jobsv1alpha1.JobRun) {
		jr.Status.Phase = jobsv1alpha1.JobRunRunning
		jr.Status.StartedAt = &started
		jr.Status.Progress = jobsv1alpha1.NewProgress(45, 200, "Synced 38 users, 7 skipped")
	})

	status, body := a.do(http.MethodGet, "/v1/jobs/run-running", userToken(t), nil)
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, body)
	}
	// The spec's example, field for field.
	want := map[string]any{"job_run": map[string]any{
		"id": "run-running", "job_type": "revenuecat_sync", "status": "running",
		"team_id": "team-1", "project_id": "project-1", "triggered_by": "manual:user:user-1",
		"params":   map[string]any{"project_id": "project-1", "integration_id": "int-1"},
		"progress": map[string]any{"processed": float64(45), "total": float64(200), "message": "Synced 38 users, 7 skipped"},
		"result":   nil, "error": nil, "notify": false,
		"started_at": "2024-01-15T10:30:01.000Z", "completed_at": nil, "created_at": "2024-01-15T10:30:00.000Z",
	}}
	if diff := cmp.Diff(want, body); diff != "" {
		t.Errorf("GET /v1/jobs/run-running (-want +got):\n%s", diff)
	}

	// A run just created is visible at once (no cache in the way).
	a.createRun("run-new", "team-1", nil)
	if status, body := a.do(http.MethodGet, "/v1/jobs/run-new", userToken(t), nil); status != http.StatusOK || body["job_run"].(map[string]any)["status"] != "pending" {
		t.Errorf("new run: %d %v", status, body)
	}
}

func TestRunsOfOtherTeamsAreNotFound(t *testing.T) {
	a := newAPI(t)
	a.createRun("run-other", "team-2", nil)
	a.createRun("run-system", "", nil)
	for _, path := range []string{"/v1/jobs/run-other", "/v1/jobs/run-system", "/v1/jobs/no-such-run"} {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			p := path
			if method == http.MethodPost {
				p += "/cancel"
			}
			status, body := a.do(method, p, userToken(t), nil)
			if status != http.StatusNotFound || errorCode(body) != codeNotFound {
				t.Errorf("%s %s: %d %v, want 404 not_found", method, p, status, body)
			}
		}
	}
}

func TestCancel(t *testing.T) {
	a := newAPI(t)
	a.createRun("run-pending", "team-1", nil)
	run := a.createRun("run-running", "team-1", func(jr *jobsv1alpha1.JobRun) { jr.Status.Phase = jobsv1alpha1.JobRunRunning })
	a.createRun("run-done", "team-1", func(jr *jobsv1alpha1.JobRun) { jr.Status.Phase = jobsv1alpha1.JobRunCompleted })

	for _, name := range []string{"run-pending", "run-done"} {
		status, body := a.do(http.MethodPost, "/v1/jobs/"+name+"/cancel", userToken(t), nil)
		if status != http.StatusBadRequest || errorCode(body) != codeInvalidRequest {
			t.Errorf("cancel %s: %d %v, want 400", name, status, body)
		}
	}

	for range 2 { // cancelling twice is fine
		status, body := a.do(http.MethodPost, "/v1/jobs/run-running/cancel", userToken(t), nil)
		if status != http.StatusOK || !cmp.Equal(body, map[string]any{"cancelled": true}) {
			t.Errorf("cancel: %d %v", status, body)
		}
	}
	got := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(run), got); err != nil {
		t.Fatal(err)
	}
	if !got.IsCancelRequested() {
		t.Error("the run carries no cancel request")
	}
	if got.Status.Phase != jobsv1alpha1.JobRunRunning {
		t.Errorf("the API wrote the run's status (phase %q): only the controller may", got.Status.Phase)
	}
}

func TestUnknownEndpoint(t *testing.T) {
	a := newAPI(t)
	status, body := a.do(http.MethodGet, "/v1/nothing-here", userToken(t), nil)
	if status != http.StatusNotFound || errorCode(body) != codeNotFound {
		t.Errorf("%d %v", status, body)
	}
	status, body = a.do(http.MethodDelete, "/v1/jobs/x", userToken(t), nil)
	if status != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d %v", status, body)
	}
}

func TestProbesAndMetrics(t *testing.T) {
	a := newAPI(t)
	a.createRun("run-m", "team-1", nil)
	for _, p := range []string{"/healthz", "/readyz"} {
		if status, body := a.do(http.MethodGet, p, "", nil); status != http.StatusOK {
			t.Errorf("%s: %d %v", p, status, body)
		}
	}
	before := testutil.ToFloat64(requestsTotal.WithLabelValues("/v1/jobs/{runId}", http.MethodGet, "200"))
	a.do(http.MethodGet, "/v1/jobs/run-m", userToken(t), nil)
	a.do(http.MethodGet, "/v1/jobs/run-m", userToken(t), nil)
	if got := testutil.ToFloat64(requestsTotal.WithLabelValues("/v1/jobs/{runId}", http.MethodGet, "200")) - before; got != 2 {
		t.Errorf("requests counted by route: %v, want 2", got)
	}

	notReady, err := New(Options{Namespace: a.ns, Reader: env.Client, Writer: env.Client, Lister: NewRunIndex(),
		Auth: HS256(secret), Ready: func(context.Context) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	notReady.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("readyz before the cache synced: %d", rec.Code)
	}
}
