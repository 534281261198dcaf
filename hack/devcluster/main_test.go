package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"jobrun.dev/jobrun/internal/pgserver"
	"jobrun.dev/jobrun/test/testenv"
)

// TestDevCluster runs the local default end to end: everything comes up, the
// samples are there for kubectl, the sample run goes to completed with live
// progress, the manager is ready, and a child's death (Kueue's) stops it,
// leaving nothing running. The archive's PostgreSQL is off here (options' zero
// value); TestDevClusterArchive covers it.
func TestDevCluster(t *testing.T) {
	var printed syncBuffer
	root := testenv.Root()
	tmp := t.TempDir()
	manager := buildManager(t, tmp)

	o := options{
		root:        root,
		dir:         mustRel(t, root, filepath.Join(tmp, "dev")),
		namespace:   "jobrun-system",
		binary:      manager,
		probeAddr:   testenv.FreeAddr(t),
		metricsAddr: testenv.FreeAddr(t),
		apiAddr:     testenv.FreeAddr(t),
		out:         &printed,
		kueue:       true,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}) // closed when run returns; runErr is its result
	var runErr error
	go func() {
		defer close(done)
		runErr = run(ctx, o)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	dir := filepath.Join(tmp, "dev")
	ready := filepath.Join(dir, "ready")
	testenv.Eventually(t, 90*time.Second, func(context.Context) error {
		select {
		case <-done:
			t.Fatalf("devcluster returned before it was ready: %v", runErr)
		default:
		}
		_, err := os.Stat(ready)
		return err
	})
	host, err := os.ReadFile(ready)
	if err != nil {
		t.Fatal(err)
	}

	// "Ready" means ready, at once, with no waiting: the REST API and the
	// manager answer, the manager leads, the node takes pods.
	for _, url := range []string{"http://" + o.apiAddr + "/readyz", "http://" + o.probeAddr + "/readyz"} {
		if code, body := httpGet(t, url); code != http.StatusOK {
			t.Errorf("GET %s right after ready: %d %s", url, code, body)
		}
	}
	if _, metrics := httpGet(t, "http://"+o.metricsAddr+"/metrics"); !strings.Contains(metrics, `leader_election_master_status{name="jobrun-manager.jobs.jobrun.dev"} 1`) {
		t.Errorf("the manager does not lead right after ready")
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kubectl := filepath.Join(root, "bin", "k8s", "kubectl")
	out, err := exec.Command(kubectl, "--kubeconfig", kubeconfig, "get", "node", "jobrun-dev-node", "-o",
		`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints}`).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "True" {
		t.Errorf("node right after ready: %q (%v), want Ready and untainted", out, err)
	}
	out, err = exec.Command(kubectl, "--kubeconfig", kubeconfig, "get", "jobruns,jobtypes,jobschedules,projects", "-A").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get: %v\n%s", err, out)
	}
	for _, want := range []string{"demo_sync", "demo_maintenance", "nightly-maintenance", "maintenance-every-minute", "demo-project"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl get lacks sample %s:\n%s", want, out)
		}
	}

	// What the README tells a new user to do: create the sample run and
	// watch it go through its states with live progress, to completed.
	out, err = exec.Command(kubectl, "--kubeconfig", kubeconfig, "create", "-n", "jobrun-system", "-o", "name",
		"-f", filepath.Join(root, "config", "samples", "jobs_v1alpha1_jobrun.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl create the sample run: %v\n%s", err, out)
	}
	run := strings.TrimSpace(string(out))
	seen := map[string]bool{}
	testenv.Eventually(t, 60*time.Second, func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "get", "-n", "jobrun-system", run, "--no-headers").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		// NAME TYPE PROJECT STATUS PROGRESS AGE
		fields := strings.Fields(string(out))
		if len(fields) >= 5 && fields[3] == "running" {
			seen["running "+fields[4]] = true
		}
		if len(fields) < 5 || fields[3] != "completed" || fields[4] != "200/200" {
			return fmt.Errorf("kubectl get %s: %s", run, out)
		}
		return nil
	})
	if len(seen) < 2 {
		t.Errorf("saw the run running with progress %v; want it seen at least twice, moving", seen)
	}
	// It went through Kueue: its Workload (named as the run) was in its
	// team's LocalQueue, which the manager created, and Kueue admitted it.
	out, err = exec.Command(kubectl, "--kubeconfig", kubeconfig, "get", "workload", strings.TrimPrefix(run, "jobrun.jobs.jobrun.dev/"), "-n", "jobrun-system",
		"-o", `jsonpath={.spec.queueName} {.status.conditions[?(@.type=="Admitted")].status}`).CombinedOutput()
	if err != nil || string(out) != "jobrun-team-demo-team True" {
		t.Errorf("the sample run's Workload: %q (%v), want it in LocalQueue jobrun-team-demo-team, admitted", out, err)
	}
	out, err = exec.Command(kubectl, "--kubeconfig", kubeconfig, "get", "localqueue", "jobrun-team-demo-team", "-n", "jobrun-system", "-o", "jsonpath={.spec.clusterQueue}").CombinedOutput()
	if err != nil || string(out) != "jobrun-teams" {
		t.Errorf("the team's LocalQueue: %q (%v), want it pointing at jobrun-teams", out, err)
	}

	// The REST API, with the token the printed command mints.
	secret, err := os.ReadFile(filepath.Join(dir, "jwt-secret"))
	if err != nil {
		t.Fatal(err)
	}
	mint := exec.Command(manager, "token", "--team", "demo-team", "--sub", "demo-user")
	mint.Env = append(os.Environ(), "JOBRUN_JWT_SECRET="+string(secret))
	tok, err := mint.Output()
	if err != nil {
		t.Fatalf("jobrun token: %v", err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+o.apiAddr+"/v1/jobs/"+strings.TrimPrefix(run, "jobrun.jobs.jobrun.dev/"), nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		JobRun struct {
			Status   string `json:"status"`
			Progress struct {
				Processed int `json:"processed"`
			} `json:"progress"`
		} `json:"job_run"`
	}
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || got.JobRun.Status != "completed" || got.JobRun.Progress.Processed != 200 {
		t.Errorf("GET the run through the REST API: %d %+v %v", resp.StatusCode, got, err)
	}

	// The console, through the printed one-click link: its page, then its
	// button, signs in as demo-user of demo-team.
	m := regexp.MustCompile(`http://\S+/ui/sign-in\?link=\S+`).FindString(printed.String())
	if m == "" {
		t.Fatalf("no sign-in link printed:\n%s", printed.String())
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	code, page := get(t, browser, m)
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if code != http.StatusOK || csrf == nil || !strings.Contains(page, "Continue as demo-user") {
		t.Fatalf("the printed link's page: %d\n%s", code, page)
	}
	link, _ := url.Parse(m)
	resp, err = browser.PostForm("http://"+o.apiAddr+"/ui/sign-in", url.Values{"csrf": {csrf[1]}, "link": {link.Query().Get("link")}})
	if err != nil {
		t.Fatal(err)
	}
	page = readAll(t, resp)
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/ui/teams/demo-team/runs" || !strings.Contains(page, "Signed in as demo-user") {
		t.Errorf("the link's button: %d at %s\n%s", resp.StatusCode, resp.Request.URL, page)
	}

	// An API key, created with the command, is accepted once the watch of
	// the manager's API-key cache has delivered its Secret (milliseconds).
	key, err := exec.Command(manager, "apikey", "create", "--kubeconfig", kubeconfig, "--team", "demo-team", "--permissions", "jobs:read").Output()
	if err != nil {
		t.Fatalf("jobrun apikey create: %v", err)
	}
	created := time.Now()
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		resp, err := http.DefaultClient.Do(req.Clone(ctx))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET with the API key: %d", resp.StatusCode)
		}
		return nil
	})
	t.Logf("the API key was accepted %v after jobrun apikey create returned", time.Since(created))
	// The every-minute sample schedule: a demo_maintenance run appears in
	// kubectl get jobruns at the next minute and completes.
	testenv.Eventually(t, 90*time.Second, func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kubeconfig, "get", "jobruns", "-n", "jobrun-system",
			"-l", "jobs.jobrun.dev/schedule=maintenance-every-minute", "-o",
			`jsonpath={range .items[*]}{.metadata.annotations.jobs\.jobrun\.dev/scheduled-time} {.spec.createdAt} {.status.phase}{"\n"}{end}`).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && f[2] == "completed" {
				due, err1 := time.Parse(time.RFC3339, f[0])
				created, err2 := time.Parse(time.RFC3339Nano, f[1])
				if err1 != nil || err2 != nil {
					return fmt.Errorf("scheduled run %q: %v %v", line, err1, err2)
				}
				t.Logf("scheduled run for %s created %s after its schedule time", f[0], created.Sub(due))
				return nil
			}
		}
		return fmt.Errorf("no completed run of the every-minute schedule yet: %q", out)
	})

	testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
		resp, err := http.Get("http://" + o.probeAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("manager /readyz: %d", resp.StatusCode)
		}
		return nil
	})

	// Find the children before stopping, to check they are gone after.
	pids := childPIDs(t, os.Getpid())
	if len(pids) < 6 {
		t.Fatalf("expected etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the dev node agent and the manager as children, found pids %v", pids)
	}

	// Kueue dies: make dev says so and stops everything, as for any other
	// child (Ctrl-C is TestDevClusterArchive's).
	kueuePID := 0
	for _, pid := range pids {
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmdline), filepath.Join("bin", "kueue", "kueue")) {
			kueuePID = pid
		}
	}
	if kueuePID == 0 {
		t.Fatalf("no Kueue among the children %v", pids)
	}
	if err := syscall.Kill(kueuePID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		if runErr == nil || !strings.Contains(runErr.Error(), "kueue exited") {
			t.Errorf("devcluster stopped with %v after Kueue was killed, want an error saying Kueue exited", runErr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("devcluster did not stop within 60s of Kueue's death")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil && !isZombie(pid) {
			t.Errorf("process %d still running after devcluster stopped", pid)
		}
	}
	if _, err := os.Stat(kubeconfig); !os.IsNotExist(err) {
		t.Errorf("kubeconfig of the stopped control plane left behind: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(string(host)), "https://"), "/"), time.Second); err == nil {
		conn.Close()
		t.Errorf("kube-apiserver at %s still answers", host)
	}
}

// buildManager builds the jobrun binary into dir.
func buildManager(t *testing.T, dir string) string {
	t.Helper()
	manager := filepath.Join(dir, "jobrun")
	build := exec.Command("go", "build", "-o", manager, "./cmd/jobrun")
	build.Dir = testenv.Root()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the manager: %v\n%s", err, out)
	}
	return manager
}

// TestDevClusterArchive: make dev's PostgreSQL keeps its data between runs
// in <dir>/postgres, the manager runs with --archive-dsn pointing at it, and
// each Ctrl-C leaves no process of it (nor of anything else) running.
func TestDevClusterArchive(t *testing.T) {
	root := testenv.Root()
	// As root PostgreSQL runs as another user, who must be able to enter the
	// directory (t.TempDir is closed to others).
	tmp, err := os.MkdirTemp("", "jobrun-devcluster-")
	if err == nil {
		err = os.Chmod(tmp, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	dir := filepath.Join(tmp, "dev")
	_, port, _ := net.SplitHostPort(testenv.FreeAddr(t))
	pgPort, _ := strconv.Atoi(port)
	o := options{
		root:         root,
		dir:          dir,
		namespace:    "jobrun-system",
		binary:       buildManager(t, tmp),
		probeAddr:    testenv.FreeAddr(t),
		metricsAddr:  testenv.FreeAddr(t),
		apiAddr:      testenv.FreeAddr(t),
		archive:      true,
		postgresPort: pgPort,
	}
	wantDSN := "postgres://postgres@127.0.0.1:" + port + "/jobrun?sslmode=disable"

	// session runs devcluster until ready, calls use with the manager's
	// --archive-dsn, then stops it as Ctrl-C does and checks that nothing
	// is left running.
	session := func(use func(conn *pgx.Conn)) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		var runErr error
		go func() {
			defer close(done)
			runErr = run(ctx, o)
		}()
		stopped := false
		defer func() {
			if !stopped {
				cancel()
				<-done
			}
		}()
		testenv.Eventually(t, 90*time.Second, func(context.Context) error {
			select {
			case <-done:
				t.Fatalf("devcluster returned before it was ready: %v", runErr)
			default:
			}
			_, err := os.Stat(filepath.Join(dir, "ready"))
			return err
		})

		children := childPIDs(t, os.Getpid())
		var dsn string
		var postgres []int
		for _, pid := range children {
			args := cmdline(pid)
			if len(args) > 1 && filepath.Base(args[0]) == "jobrun" && args[1] == "manager" {
				for _, a := range args {
					if v, ok := strings.CutPrefix(a, "--archive-dsn="); ok {
						dsn = v
					}
				}
			}
			if len(args) > 0 && filepath.Base(args[0]) == "postgres" {
				postgres = append(postgres, pid)
				postgres = append(postgres, pgserver.ChildPids(pid)...)
			}
		}
		if dsn != wantDSN {
			t.Fatalf("the manager's --archive-dsn = %q, want %q", dsn, wantDSN)
		}
		if len(postgres) < 2 {
			t.Fatalf("devcluster's children %v: want a postgres postmaster with its workers", children)
		}
		ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel2()
		conn, err := pgx.Connect(ctx2, dsn)
		if err != nil {
			t.Fatalf("connecting to the manager's --archive-dsn: %v", err)
		}
		var dataDir string
		if err := conn.QueryRow(ctx2, "SHOW data_directory").Scan(&dataDir); err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(dir, "postgres", "data"); dataDir != want {
			t.Errorf("PostgreSQL's data_directory = %s, want %s", dataDir, want)
		}
		use(conn)
		conn.Close(context.Background())

		stopped = true
		cancel()
		select {
		case <-done:
			if runErr != nil {
				t.Errorf("devcluster stopped with %v", runErr)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("devcluster did not stop within 60s")
		}
		for _, pid := range append(children, postgres...) {
			if err := syscall.Kill(pid, 0); err == nil && !isZombie(pid) {
				t.Errorf("process %d (%q) still running after devcluster stopped", pid, cmdline(pid))
			}
		}
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
			c.Close()
			t.Errorf("PostgreSQL still answers on 127.0.0.1:%s", port)
		}
	}

	session(func(conn *pgx.Conn) {
		if _, err := conn.Exec(context.Background(), "CREATE TABLE kept (id text PRIMARY KEY); INSERT INTO kept VALUES ('from the first session')"); err != nil {
			t.Fatal(err)
		}
	})
	session(func(conn *pgx.Conn) {
		var got string
		if err := conn.QueryRow(context.Background(), "SELECT id FROM kept").Scan(&got); err != nil || got != "from the first session" {
			t.Errorf("the second session's archive database: %q, %v; want the first session's row", got, err)
		}
	})
}

// cmdline is the command line of process pid.
func cmdline(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}

// httpGet GETs url and returns the status code and body; a failed request
// fails t.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	return get(t, &http.Client{Timeout: 10 * time.Second}, url)
}

func mustRel(t *testing.T, base, path string) string {
	t.Helper()
	rel, err := filepath.Rel(base, path)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

// childPIDs lists the direct children of pid, from /proc.
func childPIDs(t *testing.T, pid int) []int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var pids []int
	if err == nil {
		for _, f := range strings.Fields(string(data)) {
			var p int
			fmt.Sscan(f, &p)
			pids = append(pids, p)
		}
	}
	// Children of other threads of this process.
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	seen := map[int]bool{}
	for _, p := range pids {
		seen[p] = true
	}
	for _, task := range tasks {
		data, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			var p int
			fmt.Sscan(f, &p)
			if !seen[p] {
				seen[p] = true
				pids = append(pids, p)
			}
		}
	}
	return pids
}

func isZombie(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	fields := strings.Fields(string(data))
	return len(fields) > 2 && fields[2] == "Z"
}

// syncBuffer is a bytes.Buffer for one writer and another reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// get GETs url with c: the status and body.
func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, readAll(t, resp)
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
