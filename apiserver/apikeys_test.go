package apiserver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

func TestAPIKeys(t *testing.T) {
	a := newAPI(t)
	a.seed()
	ctx := context.Background()
	rw, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead, PermJobsWrite}, "ci@example.com")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead}, "")
	if err != nil {
		t.Fatal(err)
	}
	other, err := CreateAPIKey(ctx, env.Client, a.ns, "team-2", []string{PermJobsRead, PermJobsWrite}, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{rw, ro, other} {
		a.waitForKey(k)
	}

	// Only the hash is stored.
	secrets := &corev1.SecretList{}
	if err := env.Client.List(ctx, secrets, client.InNamespace(a.ns), client.MatchingLabels{LabelAPIKey: "true"}); err != nil || len(secrets.Items) != 3 {
		t.Fatalf("%d key secrets (%v)", len(secrets.Items), err)
	}
	for _, s := range secrets.Items {
		for k, v := range s.Data {
			if strings.Contains(rw, string(v)) && k != "team" && k != "permissions" && k != "email" {
				t.Errorf("secret %s stores part of the key in %s", s.Name, k)
			}
		}
	}

	body := map[string]any{"job_type": "revenuecat_sync", "project_id": "project-1"}
	status, resp := a.do(http.MethodPost, "/v1/teams/team-1/jobs/trigger", rw, body)
	if status != http.StatusCreated {
		t.Fatalf("trigger with a read-write key: %d %v", status, resp)
	}
	jr := jobRunOf(resp)
	id := strings.Split(strings.TrimPrefix(rw, apiKeyPrefix), "_")[0]
	if jr["triggered_by"] != "manual:api_key:"+id {
		t.Errorf("triggered_by %v, want manual:api_key:%s", jr["triggered_by"], id)
	}
	stored := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: a.ns, Name: jr["id"].(string)}, stored); err != nil || stored.Spec.NotifyEmail != "ci@example.com" {
		t.Errorf("notify email %q (%v)", stored.Spec.NotifyEmail, err)
	}
	runID := jr["id"].(string)

	// A key with its last character changed, and rw's secret under another
	// id (the secret may itself contain '_').
	last := byte('A')
	if rw[len(rw)-1] == last {
		last = 'B'
	}
	tampered := rw[:len(rw)-1] + string(last)
	rwSecret := rw[len("jrk_0123456789abcdef_"):]
	tests := []struct {
		name, method, path, key string
		want                    int
	}{
		{"read-only key reads", http.MethodGet, "/v1/jobs/" + runID, ro, http.StatusOK},
		{"read-only key lists", http.MethodGet, "/v1/teams/team-1/jobs", ro, http.StatusOK},
		{"read-only key cannot trigger", http.MethodPost, "/v1/teams/team-1/jobs/trigger", ro, http.StatusForbidden},
		{"read-only key cannot cancel", http.MethodPost, "/v1/jobs/" + runID + "/cancel", ro, http.StatusForbidden},
		{"another team's key does not see the run", http.MethodGet, "/v1/jobs/" + runID, other, http.StatusNotFound},
		{"another team's key does not see the team", http.MethodGet, "/v1/teams/team-1/jobs", other, http.StatusNotFound},
		{"tampered key", http.MethodGet, "/v1/jobs/" + runID, tampered, http.StatusUnauthorized},
		{"unknown key id", http.MethodGet, "/v1/jobs/" + runID, "jrk_0000000000000000_" + rwSecret, http.StatusUnauthorized},
		{"malformed key", http.MethodGet, "/v1/jobs/" + runID, "jrk_short", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b any
			if tt.method == http.MethodPost && strings.HasSuffix(tt.path, "trigger") {
				b = map[string]any{"job_type": "revenuecat_sync", "project_id": "project-2"}
			}
			if status, resp := a.do(tt.method, tt.path, tt.key, b); status != tt.want {
				t.Errorf("%d %v, want %d", status, resp, tt.want)
			}
		})
	}

	if _, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{"jobs:admin"}, ""); err == nil {
		t.Error("a key with an unknown permission was created")
	}
	if _, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead}, "not an address"); err == nil {
		t.Error("a key with an email no run can store was created")
	}
}

// waitForKey waits until the server accepts key: its Secret has reached the
// server's cache (the informer's watch event).
func (a *api) waitForKey(key string) time.Duration {
	a.t.Helper()
	start := time.Now()
	testenv.Eventually(a.t, 30*time.Second, func(context.Context) error {
		// An accepted key is a 404 for a run that does not exist.
		if status, body := a.get("/v1/jobs/no-such-run", key); status != http.StatusNotFound {
			return fmt.Errorf("a key just created: %d %v", status, body)
		}
		return nil
	})
	return time.Since(start)
}

// countingTransport counts the requests to the Kubernetes API server.
type countingTransport struct {
	next http.RoundTripper
	n    atomic.Int64
	on   atomic.Bool
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.on.Load() {
		c.n.Add(1)
	}
	return c.next.RoundTrip(r)
}

// TestMadeUpAPIKeysCostNoAPIServerRequests: 10,000 requests with random
// well-formed API keys are each a 401 without one request from the server
// to the Kubernetes API server; a key created after them is accepted as
// soon as the cache's watch has delivered it.
func TestMadeUpAPIKeysCostNoAPIServerRequests(t *testing.T) {
	counter := &countingTransport{}
	a := startAPIWith(t, env.Namespace(t), env.Config, nil, apiOptions{wrapTransport: func(rt http.RoundTripper) http.RoundTripper {
		counter.next = rt
		return counter
	}})
	ctx := context.Background()
	known, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead}, "")
	if err != nil {
		t.Fatal(err)
	}
	a.waitForKey(known)

	counter.on.Store(true)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer c.CloseIdleConnections()
	const requests, workers = 10000, 8
	var wg sync.WaitGroup
	var accepted atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range requests / workers {
				key := "jrk_" + randomToken(rng, "0123456789abcdef", 16) + "_" + randomToken(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 43)
				if i%2 == 1 { // a known id with a made-up secret
					key = known[:len("jrk_0123456789abcdef_")] + key[len("jrk_0123456789abcdef_"):]
				}
				status, _, body := rawRequest(t, c, http.MethodGet, a.url+"/v1/teams/team-1/jobs", http.Header{"Authorization": {"Bearer " + key}})
				if status != http.StatusUnauthorized {
					accepted.Add(1)
					t.Errorf("made-up key %s: %d %.200s, want 401", key, status, body)
					return
				}
			}
		}()
	}
	wg.Wait()
	counter.on.Store(false)
	if n := counter.n.Load(); n != 0 {
		t.Errorf("%d requests with made-up API keys cost %d requests to the Kubernetes API server, want 0", requests, n)
	}

	// A key created now works once its watch event is in (usually ms).
	fresh, err := CreateAPIKey(ctx, env.Client, a.ns, "team-1", []string{PermJobsRead}, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a new API key was accepted %v after its Secret was created", a.waitForKey(fresh))
}

// TestAPIKeyCacheReadiness: the authenticator is not Synced until its cache
// has listed the API-key Secrets, then is; other Secrets are not cached.
func TestAPIKeyCacheReadiness(t *testing.T) {
	ns := env.Namespace(t)
	c, err := cache.New(env.Config, cache.Options{Scheme: env.Scheme, ByObject: map[client.Object]cache.ByObject{&corev1.Secret{}: APIKeySecretsCache(ns)}})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := NewAPIKeyAuthenticator(context.Background(), c, ns)
	if err != nil {
		t.Fatal(err)
	}
	if auth.Synced(context.Background()) {
		t.Error("Synced before the cache started")
	}
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "not-a-key"}, StringData: map[string]string{"x": "y"}}
	if err := env.Client.Create(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Start(ctx) }()
	testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
		if !auth.Synced(ctx) {
			return errors.New("not synced")
		}
		return nil
	})
	list := &corev1.SecretList{}
	if err := c.List(ctx, list); err != nil || len(list.Items) != 0 {
		t.Errorf("the API-key cache holds %d Secrets (%v), want none: no key was made", len(list.Items), err)
	}
}
