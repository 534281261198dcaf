package apiserver

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// apiSeries counts the series of the REST API's request metrics.
func apiSeries(t *testing.T) int {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "jobrun_api_request") {
			n += len(f.GetMetric())
		}
	}
	return n
}

func randomToken(rng *rand.Rand, alphabet string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}

// rawRequest sends one request without a credential and returns its status,
// headers and body.
func rawRequest(t *testing.T, c *http.Client, method, url string, header http.Header) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%.40s %.100s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(data)
}

// TestMetricsSeriesAreBounded: thousands of requests without a credential,
// with made-up methods (some 64 KiB long) and random paths, add no metric
// series once each kind of path has been seen once.
func TestMetricsSeriesAreBounded(t *testing.T) {
	a := newAPI(t)
	templates := []string{"/%s", "/v1/%s", "/v1/jobs/%s", "/v1/jobs/%s/cancel", "/v1/jobs/%s/%s", "/v1/teams/%s/jobs",
		"/v1/teams/%s/jobs/trigger", "/v1/teams/%s/%s", "/healthz/%s", "/openapi.json"}
	path := func(rng *rand.Rand, tmpl string) string {
		args := []any{}
		for range strings.Count(tmpl, "%s") {
			args = append(args, randomToken(rng, "abcdefghijklmnopqrstuvwxyz0123456789-._~", 1+rng.IntN(60)))
		}
		return fmt.Sprintf(tmpl, args...)
	}
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer c.CloseIdleConnections()
	rng := rand.New(rand.NewPCG(1, 2))
	// Each kind of path once, with a made-up method and with each standard
	// one: every (route, method, code) the flood can produce.
	for _, tmpl := range templates {
		for _, m := range []string{"XWARM", http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions, http.MethodTrace} {
			rawRequest(t, c, m, a.url+path(rng, tmpl), nil)
		}
	}
	before := apiSeries(t)

	const requests, workers = 4000, 8
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			for i := range requests / workers {
				n := 1 + rng.IntN(40)
				if i%500 == 0 {
					n = 64 << 10
				}
				method := "X" + randomToken(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ", n)
				status, _, body := rawRequest(t, c, method, a.url+path(rng, templates[rng.IntN(len(templates))]), nil)
				if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
					t.Errorf("made-up method: %d %.200s, want 404 or 405", status, body)
					return
				}
			}
		}()
	}
	wg.Wait()
	if after := apiSeries(t); after != before {
		t.Errorf("%d requests with made-up methods and random paths added %d metric series (%d before)", requests, after-before, before)
	}
}

// TestRoutingBeforeCredentials: unknown paths and methods are answered as
// such (404; 405 with Allow) without a credential, HEAD is GET without a
// body, and OPTIONS without CORS configured is a 405 too.
func TestRoutingBeforeCredentials(t *testing.T) {
	a := newAPI(t)
	a.createRun("run-1", "team-1", nil)
	bearer := http.Header{"Authorization": {"Bearer " + userToken(t)}}
	tests := []struct {
		method, path string
		header       http.Header
		want         int
		allow        string
	}{
		{http.MethodGet, "/v1/nothing-here", nil, http.StatusNotFound, ""},
		{http.MethodGet, "/v1/jobs/run-1/nothing", nil, http.StatusNotFound, ""},
		{http.MethodDelete, "/v1/jobs/run-1", nil, http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodGet, "/v1/jobs/run-1/cancel", nil, http.StatusMethodNotAllowed, "POST"},
		{http.MethodHead, "/v1/jobs/run-1/cancel", nil, http.StatusMethodNotAllowed, "POST"},
		{http.MethodOptions, "/v1/jobs/run-1", nil, http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodPut, "/v1/teams/team-1/jobs", nil, http.StatusMethodNotAllowed, "GET, HEAD"},
		{"BREW", "/v1/teams/team-1/jobs/trigger", nil, http.StatusMethodNotAllowed, "POST"},
		{http.MethodGet, "/v1/jobs/run-1", nil, http.StatusUnauthorized, ""},
		{http.MethodHead, "/v1/jobs/run-1", nil, http.StatusUnauthorized, ""},
		{http.MethodHead, "/v1/jobs/run-1", bearer, http.StatusOK, ""},
		{http.MethodHead, "/healthz", nil, http.StatusOK, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			status, h, body := rawRequest(t, http.DefaultClient, tt.method, a.url+tt.path, tt.header)
			if status != tt.want || h.Get("Allow") != tt.allow {
				t.Errorf("%d Allow %q %.200s, want %d Allow %q", status, h.Get("Allow"), body, tt.want, tt.allow)
			}
			if tt.method == http.MethodHead {
				if body != "" {
					t.Errorf("HEAD answered a body: %.200s", body)
				}
			} else if h.Get("Content-Type") != "application/json" || !strings.Contains(body, `"message"`) {
				t.Errorf("not a JSON error: %s %.200s", h.Get("Content-Type"), body)
			}
		})
	}
}

// panickingReader panics on every read, as a bug in a handler would.
type panickingReader struct{ client.Reader }

func (panickingReader) Get(context.Context, client.ObjectKey, client.Object, ...client.GetOption) error {
	panic("a bug")
}

// TestPanicIsAJSONError: a handler's panic answers the documented JSON 500.
func TestPanicIsAJSONError(t *testing.T) {
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{wrapReader: func(r client.Reader) client.Reader { return panickingReader{r} }})
	status, body := a.do(http.MethodPost, "/v1/jobs/run-1/cancel", userToken(t), nil)
	if status != http.StatusInternalServerError || errorCode(body) != codeInternal {
		t.Errorf("a panic answered %d %v, want 500 with a JSON error", status, body)
	}
}

// TestTimeParamsThatOverflow: relative times beyond time.Duration (~292
// years) are a 400, not a wrapped-round time.
func TestTimeParamsThatOverflow(t *testing.T) {
	a := newAPI(t)
	for _, q := range []string{"since=999999w", "until=999999w", "since=999999d", "until=9999999h", "since=15251w"} {
		if status, body := a.get("/v1/teams/team-1/jobs?"+q, userToken(t)); status != http.StatusBadRequest || errorCode(body) != codeInvalidRequest {
			t.Errorf("%s: %d %v, want 400", q, status, body)
		}
	}
	if status, body := a.get("/v1/teams/team-1/jobs?since=15250w", userToken(t)); status != http.StatusOK {
		t.Errorf("since=15250w (within range): %d %v", status, body)
	}
}

// TestCORS: with allowed origins, a browser's preflight is answered before
// any credential (it carries none) and real answers carry the CORS headers
// for those origins only; without, nothing CORS-related is sent.
func TestCORS(t *testing.T) {
	ns := env.Namespace(t)
	a := startAPIWith(t, ns, env.Config, nil, apiOptions{corsOrigins: []string{"https://app.example.com"}})
	a.createRun("run-1", "team-1", nil)
	preflight := func(origin, method string) http.Header {
		return http.Header{"Origin": {origin}, "Access-Control-Request-Method": {method}, "Access-Control-Request-Headers": {"authorization, content-type"}}
	}
	for _, p := range []struct{ method, path string }{{http.MethodGet, "/v1/jobs/run-1"}, {http.MethodPost, "/v1/teams/team-1/jobs/trigger"}, {http.MethodGet, "/v1/teams/team-1/jobs"}} {
		status, h, body := rawRequest(t, http.DefaultClient, http.MethodOptions, a.url+p.path, preflight("https://app.example.com", p.method))
		if status >= 300 || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
			!strings.Contains(h.Get("Access-Control-Allow-Methods"), p.method) || !strings.Contains(strings.ToLower(h.Get("Access-Control-Allow-Headers")), "authorization") {
			t.Errorf("preflight of %s %s: %d %v %.200s", p.method, p.path, status, h, body)
		}
	}
	// The real request from the allowed origin.
	status, h, body := rawRequest(t, http.DefaultClient, http.MethodGet, a.url+"/v1/jobs/run-1",
		http.Header{"Origin": {"https://app.example.com"}, "Authorization": {"Bearer " + userToken(t)}})
	if status != http.StatusOK || h.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("GET from the allowed origin: %d %v %.200s", status, h, body)
	}
	// Another origin gets no CORS headers, so its browser keeps the answer.
	for _, hdr := range []http.Header{preflight("https://evil.example", http.MethodGet), {"Origin": {"https://evil.example"}, "Authorization": {"Bearer " + userToken(t)}}} {
		method := http.MethodGet
		if hdr.Get("Access-Control-Request-Method") != "" {
			method = http.MethodOptions
		}
		_, h, _ := rawRequest(t, http.DefaultClient, method, a.url+"/v1/jobs/run-1", hdr)
		if h.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s from another origin: Access-Control-Allow-Origin %q", method, h.Get("Access-Control-Allow-Origin"))
		}
	}

	// Unconfigured: not one Access-Control-* header, nor Vary: Origin.
	plain := startAPI(t, ns)
	for _, hdr := range []http.Header{preflight("https://app.example.com", http.MethodGet), {"Origin": {"https://app.example.com"}, "Authorization": {"Bearer " + userToken(t)}}} {
		method := http.MethodGet
		if hdr.Get("Access-Control-Request-Method") != "" {
			method = http.MethodOptions
		}
		_, h, _ := rawRequest(t, http.DefaultClient, method, plain.url+"/v1/jobs/run-1", hdr)
		for k := range h {
			if strings.HasPrefix(k, "Access-Control-") || (k == "Vary" && strings.Contains(h.Get("Vary"), "Origin")) {
				t.Errorf("%s without CORS configured sent %s: %s", method, k, h.Get(k))
			}
		}
	}
}
