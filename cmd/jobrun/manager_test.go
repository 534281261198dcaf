package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"jobrun.dev/jobrun/internal/pgtest"
	"jobrun.dev/jobrun/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

// manager is one `jobrun manager` process: replicas are separate processes,
// as in a cluster.
type manager struct {
	probeAddr, metricsAddr string
	cmd                    *exec.Cmd
	done                   chan error
}

// buildJobrun builds the jobrun binary once per test run.
var buildJobrun = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "jobrun-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "jobrun")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func startManager(t *testing.T, leaseNamespace string) *manager {
	t.Helper()
	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	m := &manager{probeAddr: testenv.FreeAddr(t), metricsAddr: testenv.FreeAddr(t), done: make(chan error, 1)}
	m.cmd = exec.Command(bin, "manager",
		"--kubeconfig", env.Kubeconfig,
		"--health-probe-bind-address", m.probeAddr,
		"--metrics-bind-address", m.metricsAddr,
		"--metrics-secure=false",
		"--leader-election-namespace", leaseNamespace,
	)
	m.cmd.Stdout, m.cmd.Stderr = os.Stderr, os.Stderr
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := m.cmd
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() { m.stop(t) })
	return m
}

// stop sends SIGTERM, as the kubelet does, and waits for a clean exit; a
// manager that does not stop fails the test rather than leaking.
func (m *manager) stop(t *testing.T) {
	t.Helper()
	if m.cmd == nil {
		return
	}
	cmd := m.cmd
	m.cmd = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-m.done:
		if err != nil {
			t.Errorf("manager exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Error("manager did not stop within 30s of SIGTERM")
	}
}

func get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func expectOK(url string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		code, body, err := get(ctx, url)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %s", url, code, body)
		}
		return nil
	}
}

func leaseHolder(ctx context.Context, ns string) (string, error) {
	lease := &coordinationv1.Lease{}
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: leaderElectionID}, lease); err != nil {
		return "", err
	}
	if lease.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *lease.Spec.HolderIdentity, nil
}

func TestManagerProbesMetricsAndLeaderElection(t *testing.T) {
	ns := env.Namespace(t)

	first := startManager(t, ns)
	testenv.Eventually(t, 30*time.Second, expectOK("http://"+first.probeAddr+"/healthz"))
	testenv.Eventually(t, 30*time.Second, expectOK("http://"+first.probeAddr+"/readyz"))

	var firstHolder string
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		holder, err := leaseHolder(ctx, ns)
		if err != nil || holder == "" {
			return fmt.Errorf("no leader yet: %v", err)
		}
		firstHolder = holder
		return nil
	})

	leaderMetric := fmt.Sprintf(`leader_election_master_status{name=%q} 1`, leaderElectionID)
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		code, body, err := get(ctx, "http://"+first.metricsAddr+"/metrics")
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(body, leaderMetric) {
			return fmt.Errorf("metrics (%d) lack %q", code, leaderMetric)
		}
		return nil
	})

	// A second replica is ready (a standby can take over at once) but does
	// not lead while the first holds the lease.
	second := startManager(t, ns)
	testenv.Eventually(t, 30*time.Second, expectOK("http://"+second.probeAddr+"/readyz"))
	ctx := testenv.Context(t)
	if holder, err := leaseHolder(ctx, ns); err != nil || holder != firstHolder {
		t.Fatalf("lease holder with two replicas = %q (%v), want the first %q", holder, err, firstHolder)
	}

	// The leader stops: it releases the lease on the way out, so the standby
	// takes over within a retry period (2s) instead of a whole lease
	// duration (15s).
	first.stop(t)
	testenv.Eventually(t, 10*time.Second, func(ctx context.Context) error {
		holder, err := leaseHolder(ctx, ns)
		if err != nil {
			return err
		}
		if holder == "" || holder == firstHolder {
			return fmt.Errorf("lease still held by %q", holder)
		}
		return nil
	})
}

func TestManagerRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--run-controllers=false"},
		{"--leader-elect=maybe"},
		{"stray-argument"},
		{"--leader-elect-lease-duration=5s"}, // not longer than the 10s renew deadline
		{"--leader-elect-renew-deadline=1s", "--leader-elect-retry-period=1s"}, // not longer than the retry period
		{"--leader-elect-retry-period=0s"},
		{"--smtp-retry-window=0s"},
		{"--api-cors-allowed-origins=app.example.com"},
		{"--jwks-url=https://idp.example/jwks"},                                      // no issuer, no audience
		{"--jwks-url=https://idp.example/jwks", "--jwt-issuer=https://idp.example"},  // no audience
		{"--jwks-url=http://idp.example/jwks", "--jwt-issuer=i", "--jwt-audience=a"}, // plain http off loopback
		{"--jwks-url=idp.example/jwks", "--jwt-issuer=i", "--jwt-audience=a"},        // no scheme
		{"--jwt-max-token-lifetime=0s"},
		{"--kube-api-qps=0"},
		{"--kube-api-burst=-1"},
		{"--kueue", "--kueue-position-interval=-1s"},
		{"--kueue", "--kueue-position-limit=0"},
		{"--kueue", "--kueue-visibility-url=http://kueue-visibility:8082"},
	} {
		if _, err := parseManagerFlags(args); err == nil {
			t.Errorf("parseManagerFlags(%q) accepted", args)
		}
	}
	f, err := parseManagerFlags([]string{"--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=500ms"})
	if err != nil || f.leaseDuration != 4*time.Second || f.renewDeadline != 3*time.Second || f.retryPeriod != 500*time.Millisecond {
		t.Errorf("short lease timings: %+v, %v", f, err)
	}
	for _, c := range []struct {
		args []string
		want time.Duration
	}{{nil, 3 * time.Hour}, {[]string{"--smtp-retry-window=90m"}, 90 * time.Minute}} {
		f, err := parseManagerFlags(c.args)
		if err != nil {
			t.Errorf("parseManagerFlags(%q): %v", c.args, err)
		} else if got := f.smtp.RetryFor(); got != c.want {
			t.Errorf("parseManagerFlags(%q): SMTP retry window %s, want %s", c.args, got, c.want)
		}
	}
	if f, err := parseManagerFlags([]string{"--jwks-url=http://127.0.0.1:9/jwks", "--jwt-issuer=https://idp.example", "--jwt-audience=jobrun", "--jwt-max-token-lifetime=1h"}); err != nil || f.jwtMaxLifetime != time.Hour {
		t.Errorf("JWKS on loopback with issuer and audience: %+v, %v", f, err)
	}
	if f, err := parseManagerFlags(nil); err != nil || f.jwtMaxLifetime != 24*time.Hour {
		t.Errorf("default token lifetime: %+v, %v", f, err)
	}
	if f, err := parseManagerFlags([]string{"--api-cors-allowed-origins= https://a.example.com, http://localhost:3000 ,"}); err != nil || !slices.Equal(f.corsOrigins(), []string{"https://a.example.com", "http://localhost:3000"}) {
		t.Errorf("CORS origins: %v (%v)", f, err)
	}
	for _, c := range []struct {
		args  []string
		qps   float32
		burst int
	}{
		{nil, -1, 0},
		{[]string{"--kube-api-qps=200"}, 200, 400},
		{[]string{"--kube-api-qps=200", "--kube-api-burst=300"}, 200, 300},
		{[]string{"--kube-api-qps=0.2"}, 0.2, 1},
	} {
		f, err := parseManagerFlags(c.args)
		if err != nil {
			t.Errorf("parseManagerFlags(%q): %v", c.args, err)
			continue
		}
		if qps, burst := f.clientLimits(); qps != c.qps || burst != c.burst {
			t.Errorf("parseManagerFlags(%q): client limits %g/s burst %d, want %g/s burst %d", c.args, qps, burst, c.qps, c.burst)
		}
	}
	if _, err := parseManagerFlags([]string{"--leader-elect=false", "--leader-elect-lease-duration=1s"}); err != nil {
		t.Errorf("lease timings are not checked without leader election: %v", err)
	}
}

// TestAPIOnlyReplica runs `jobrun manager` as a stateless REST API replica:
// no controllers, no leader election.
func TestAPIOnlyReplica(t *testing.T) {
	ns := env.Namespace(t)
	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	probe, api := testenv.FreeAddr(t), testenv.FreeAddr(t)
	secret := "0123456789abcdef0123456789abcdef"
	// A stream left open: the manager must end it when it stops, promptly
	// (cleanups run last first: stopping is noted, the manager stopped,
	// then the stream checked).
	var stopping time.Time
	var streamEnded chan time.Time // set when the stream is open
	t.Cleanup(func() {
		if streamEnded == nil {
			return
		}
		select {
		case at := <-streamEnded:
			if d := at.Sub(stopping); d > 5*time.Second {
				t.Errorf("an open stream ended %s after the manager was told to stop", d)
			}
		case <-time.After(5 * time.Second):
			t.Error("an open stream did not end when the manager stopped")
		}
	})
	startJobrun(t, []string{"JOBRUN_JWT_SECRET=" + secret}, "--kubeconfig", env.Kubeconfig, "--run-controllers=false", "--leader-elect=false",
		"--metrics-bind-address=0", "--health-probe-bind-address", probe, "--api-bind-address", api, "--namespace", ns)
	t.Cleanup(func() { stopping = time.Now() })
	testenv.Eventually(t, 30*time.Second, expectOK("http://"+api+"/readyz"))
	noSecret := exec.Command(bin, "token", "--team", "team-1")
	noSecret.Env = []string{"PATH=" + os.Getenv("PATH")}
	tok, err := noSecret.Output()
	if err == nil {
		t.Fatal("jobrun token without a secret succeeded")
	}
	mint := exec.Command(bin, "token", "--team", "team-1")
	mint.Env = append(os.Environ(), "JOBRUN_JWT_SECRET="+secret)
	if tok, err = mint.Output(); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+api+"/v1/jobs/no-such-run", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET a missing run: %d, want 404", resp.StatusCode)
	}
	// The event streams are wired, with a ticket for browsers; the stream
	// is left open: the manager must end it when it stops (startJobrun
	// fails on an unclean exit).
	treq, _ := http.NewRequest(http.MethodPost, "http://"+api+"/v1/stream-tickets", strings.NewReader(`{"path":"/v1/teams/team-1/jobs/events"}`))
	treq.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	tresp, err := http.DefaultClient.Do(treq)
	if err != nil {
		t.Fatal(err)
	}
	var ticket struct {
		Ticket string `json:"ticket"`
	}
	err = json.NewDecoder(tresp.Body).Decode(&ticket)
	tresp.Body.Close()
	if err != nil || tresp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /v1/stream-tickets: %d %v", tresp.StatusCode, err)
	}
	stream, err := http.Get("http://" + api + "/v1/teams/team-1/jobs/events?ticket=" + ticket.Ticket)
	if err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(stream.Body)
	first, err := rd.ReadString('\n')
	if stream.StatusCode != http.StatusOK || stream.Header.Get("Content-Type") != "text/event-stream" || err != nil || first != "retry: 3000\n" {
		t.Errorf("team event stream: %d %q, first line %q %v", stream.StatusCode, stream.Header.Get("Content-Type"), first, err)
	}
	streamEnded = make(chan time.Time, 1)
	go func() {
		_, _ = io.Copy(io.Discard, rd)
		streamEnded <- time.Now()
		stream.Body.Close()
	}()
	// No leader election: no lease.
	if _, err := leaseHolder(context.Background(), ns); err == nil {
		t.Error("an API-only replica took the leader lease")
	}
}

// TestManagerStopsWhenJWKSCannotBeFetched: a key set that cannot be fetched
// at start stops the manager with a message naming it, instead of serving
// an API that accepts no JWT.
func TestManagerStopsWhenJWKSCannotBeFetched(t *testing.T) {
	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusBadGateway) }))
	defer idp.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "manager", "--kubeconfig", env.Kubeconfig, "--run-controllers=false", "--leader-elect=false",
		"--metrics-bind-address=0", "--health-probe-bind-address", testenv.FreeAddr(t), "--api-bind-address", testenv.FreeAddr(t),
		"--namespace", env.Namespace(t), "--jwks-url", idp.URL+"/jwks", "--jwt-issuer", "https://idp.example", "--jwt-audience", "jobrun")
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("the manager did not stop (%v, %v):\n%s", err, ctx.Err(), out)
	}
	if !strings.Contains(string(out), "loading the JWKS at "+idp.URL+"/jwks") || !strings.Contains(string(out), "502") {
		t.Errorf("the manager's message does not say which key set failed and how:\n%s", out)
	}
}

// TestManagerStartsWithoutItsArchive: a manager whose archive database does
// not answer starts, is ready (probes and REST API), answers 503 where the
// archive is needed, and opens the archive once the database answers: the
// archive never keeps jobrun down.
func TestManagerStartsWithoutItsArchive(t *testing.T) {
	ns := env.Namespace(t)
	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	proxy, dsn := pgtest.Cuttable(t, pgtest.Start(t))
	proxy.Cut()
	probe, api := testenv.FreeAddr(t), testenv.FreeAddr(t)
	secret := "0123456789abcdef0123456789abcdef"
	startJobrun(t, []string{"JOBRUN_JWT_SECRET=" + secret, "JOBRUN_ARCHIVE_DSN=" + dsn}, "--kubeconfig", env.Kubeconfig, "--leader-elect=false",
		"--metrics-bind-address=0", "--health-probe-bind-address", probe, "--api-bind-address", api, "--namespace", ns)
	testenv.Eventually(t, 30*time.Second, expectOK("http://"+probe+"/readyz"))
	testenv.Eventually(t, 30*time.Second, expectOK("http://"+api+"/readyz"))
	mint := exec.Command(bin, "token", "--team", "team-1")
	mint.Env = append(os.Environ(), "JOBRUN_JWT_SECRET="+secret)
	tok, err := mint.Output()
	if err != nil {
		t.Fatal(err)
	}
	getRun := func(ctx context.Context) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+api+"/v1/jobs/no-such-run", nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// Not live, and the archive cannot say: 503, not 404.
	if code, err := getRun(context.Background()); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("GET of a run not live while the archive is unreachable: %d %v, want 503", code, err)
	}
	for _, addr := range []string{probe, api} {
		if err := expectOK("http://" + addr + "/readyz")(context.Background()); err != nil {
			t.Fatalf("not ready while the archive is unreachable: %v", err)
		}
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	// The manager opens it on its own (retries up to 30 s apart).
	testenv.Eventually(t, 90*time.Second, func(ctx context.Context) error {
		code, err := getRun(ctx)
		if err != nil || code != http.StatusNotFound {
			return fmt.Errorf("GET of a run nowhere: %d %v, want 404 once the archive is open", code, err)
		}
		return nil
	})
}
