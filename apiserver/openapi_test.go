package apiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/golang-jwt/jwt/v5"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// TestResponsesMatchOpenAPI checks every endpoint's responses, successes and
// errors, against the served OpenAPI document.
func TestResponsesMatchOpenAPI(t *testing.T) {
	a := newAPI(t)
	a.seed()

	resp, err := http.Get(a.url + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(served, openAPIDocument) {
		t.Fatal("GET /openapi.json does not serve the document kept in the repository")
	}
	doc, err := openapi3.NewLoader().LoadFromData(served)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is invalid: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: a.url}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}

	tok := userToken(t)
	readOnly := token(t, jwt.SigningMethodHS256, secret, func(c jwt.MapClaims) { c["permissions"] = []string{PermJobsRead} })
	a.createRun("run-done", "team-1", func(jr *jobsv1alpha1.JobRun) {
		jr.Status.Phase = jobsv1alpha1.JobRunCompleted
		jr.Status.Progress = jobsv1alpha1.NewProgress(3, 3, "done")
		jr.Status.Result = jr.Spec.Params
	})
	a.waitListed(map[string]string{"run-done": "completed"}) // so that the lists below check a run against the document
	calls := []struct {
		method, path, token, body string
		want                      int
	}{
		{"POST", "/v1/teams/team-1/jobs/trigger", tok, `{"job_type":"revenuecat_sync","project_id":"project-1","params":{"integration_id":"i"},"notify":true}`, 201},
		{"POST", "/v1/teams/team-1/jobs/trigger", tok, `{"job_type":"revenuecat_sync","project_id":"project-1"}`, 409},
		{"POST", "/v1/teams/team-1/jobs/trigger", tok, `{"job_type":"cleanup","project_id":"project-1"}`, 400},
		{"POST", "/v1/teams/team-1/jobs/trigger", readOnly, `{"job_type":"revenuecat_sync","project_id":"project-2"}`, 403},
		{"POST", "/v1/teams/team-2/jobs/trigger", tok, `{"job_type":"revenuecat_sync","project_id":"project-x"}`, 404},
		{"GET", "/v1/jobs/run-done", tok, "", 200},
		{"GET", "/v1/jobs/run-done", "", "", 401},
		{"GET", "/v1/jobs/missing", tok, "", 404},
		{"POST", "/v1/jobs/run-done/cancel", tok, "", 400},
		{"GET", "/v1/teams/team-1/jobs", tok, "", 200},
		{"GET", "/v1/teams/team-1/jobs?limit=1", tok, "", 200},
		{"GET", "/v1/teams/team-1/jobs?project_id=none", tok, "", 200},
		{"GET", "/v1/teams/team-1/jobs?limit=0", tok, "", 400},
		// Streams: run-done has finished, so its stream ends (snapshot,
		// final); a team stream is cut by the client after its headers.
		{"GET", "/v1/jobs/run-done/events", tok, "", 200},
		{"GET", "/v1/jobs/run-done/events", "", "", 401},
		{"GET", "/v1/jobs/missing/events", tok, "", 404},
		{"GET", "/v1/jobs/run-done/events?access_token=" + tok, "", "", 401},
		{"GET", "/v1/teams/team-1/jobs/events?status=running", tok, "", 200},
		{"GET", "/v1/teams/team-1/jobs/events?limit=3", tok, "", 400},
		{"GET", "/v1/teams/team-2/jobs/events", tok, "", 404},
		{"POST", "/v1/stream-tickets", tok, `{"path":"/v1/jobs/run-done/events"}`, 201},
		{"POST", "/v1/stream-tickets", tok, `{"path":"/v1/jobs/run-done"}`, 400},
		{"POST", "/v1/stream-tickets", "", `{"path":"/v1/jobs/run-done/events"}`, 401},
		{"POST", "/v1/sign-in-links", tok, "", 201},
		{"POST", "/v1/sign-in-links", "", "", 401},
	}
	for _, c := range calls {
		t.Run(c.method+" "+c.path+" "+http.StatusText(c.want), func(t *testing.T) {
			var body io.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
			}
			req, _ := http.NewRequest(c.method, a.url+c.path, body)
			if c.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req = req.WithContext(ctx)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			stream := resp.Header.Get("Content-Type") == "text/event-stream"
			if path, _, _ := strings.Cut(c.path, "?"); strings.HasSuffix(path, "/events") && resp.StatusCode == http.StatusOK && !stream {
				t.Errorf("a stream's Content-Type: %q", resp.Header.Get("Content-Type"))
			}
			var data []byte
			if stream && strings.Contains(c.path, "/teams/") {
				cancel() // a team stream does not end by itself
			} else {
				data, _ = io.ReadAll(resp.Body)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.want, data)
			}
			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Fatalf("no route in the document: %v", err)
			}
			in := &openapi3filter.ResponseValidationInput{
				RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
					Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
				Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(data)),
				// An event stream's body is not a document a schema can
				// check (kin-openapi has no text/event-stream decoder): its
				// status and content type are checked here, its events by
				// streams_test.go.
				Options: &openapi3filter.Options{IncludeResponseStatus: true, ExcludeResponseBody: stream},
			}
			if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
				var pretty bytes.Buffer
				_ = json.Indent(&pretty, data, "", "  ")
				t.Errorf("response does not match the document: %v\n%s", err, pretty.String())
			}
		})
	}
}
