// Command devcluster is jobrun's local default (`make dev`): a real control
// plane on loopback with jobrun installed and running (internal/localcluster),
// the samples applied, and a PostgreSQL for the run archive whose data is
// kept in <dir>/postgres between runs (the control plane starts empty each
// time; the archive keeps history), until Ctrl-C (or SIGTERM) stops
// everything in reverse order, PostgreSQL last.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"jobrun.dev/jobrun/internal/localcluster"
	"jobrun.dev/jobrun/internal/pgserver"
)

type options struct {
	root          string
	dir           string
	namespace     string
	binary        string
	probeAddr     string
	metricsAddr   string
	apiAddr       string
	attachControl bool
	archive       bool
	postgresPort  int
	kueue         bool
	// out gets the ready message (os.Stderr when nil).
	out io.Writer
}

func main() {
	var o options
	flag.StringVar(&o.root, "root", ".", "Repository root (CRDs, config/, bin/).")
	flag.StringVar(&o.dir, "dir", ".dev", "Folder for the kubeconfig, logs, pods' work folders and the archive's PostgreSQL data (postgres/, kept between runs) (git-ignored).")
	flag.StringVar(&o.namespace, "namespace", "jobrun-system", "Namespace of jobrun's objects and the manager's lease.")
	flag.StringVar(&o.binary, "jobrun", "bin/jobrun", "The jobrun binary: manager, dev node agent and the image jobrun:dev.")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", "127.0.0.1:8081", "Manager's /healthz and /readyz.")
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", "127.0.0.1:8082", "Manager's /metrics (plain HTTP on loopback).")
	flag.StringVar(&o.apiAddr, "api-bind-address", "127.0.0.1:8080", "The Jobs REST API.")
	flag.BoolVar(&o.attachControl, "attach-control-plane-output", false, "Print etcd's and kube-apiserver's logs.")
	flag.BoolVar(&o.archive, "archive", true, "Start a local PostgreSQL (the distribution's server binaries, make tools-pg; data kept in <dir>/postgres) and run the manager with --archive-dsn pointing at it.")
	flag.IntVar(&o.postgresPort, "postgres-port", 15432, "The archive's PostgreSQL port on 127.0.0.1; 0: a free one.")
	flag.BoolVar(&o.kueue, "kueue", true, "Start a real Kueue (bin/kueue, make tools-kueue) with jobrun's queues (jobrun-teams: 20 runs at once, fairly shared by the teams; jobrun-system: 2) and run the manager with --kueue.")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintf(os.Stderr, "devcluster: %v\n", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[devcluster] "+format+"\n", args...)
}

func abs(root, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(root, path)
}

func run(ctx context.Context, o options) (err error) {
	root, err := filepath.Abs(o.root)
	if err != nil {
		return err
	}
	dir := abs(root, o.dir)
	var archive *localcluster.ArchiveOptions
	if o.archive {
		archive = &localcluster.ArchiveOptions{Dir: filepath.Join(dir, "postgres"), Port: o.postgresPort}
	}
	var kueueOpts *localcluster.KueueOptions
	kueueLine := "Kueue is off (--kueue=false): runs get their pods first come, first served."
	if o.kueue {
		kueueOpts = &localcluster.KueueOptions{TeamRuns: 20, SystemRuns: 2}
		kueueLine = fmt.Sprintf(`Kueue admits the run pods: a team's runs wait in LocalQueue jobrun-team-<team>, fairly sharing
ClusterQueue %s (%d at once); system runs in jobrun-system (%s, %d). Log: %s/kueue/kueue.log`,
			localcluster.KueueTeamsQueue, kueueOpts.TeamRuns, localcluster.KueueSystemQueue, kueueOpts.SystemRuns, dir)
	}
	c, err := localcluster.Start(ctx, localcluster.Options{
		Root: root, Dir: dir, Namespace: o.namespace, Binary: abs(root, o.binary),
		ProbeAddr: o.probeAddr, MetricsAddr: o.metricsAddr, APIAddr: o.apiAddr, Samples: true,
		AttachControlPlaneOutput: o.attachControl, Archive: archive, Kueue: kueueOpts, Log: logf,
	})
	if errors.Is(err, pgserver.ErrPortTaken) {
		return fmt.Errorf("%w\n(another port: make dev DEV_ARGS=--postgres-port=15433; no archive: make dev DEV_ARGS=--archive=false)", err)
	}
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Stop()) }()

	mint := exec.CommandContext(ctx, abs(root, o.binary), "token", "--team", "demo-team", "--sub", "demo-user")
	mint.Env = append(os.Environ(), "JOBRUN_JWT_SECRET="+c.JWTSecret)
	out, err := mint.Output()
	if err != nil {
		return fmt.Errorf("minting a dev token: %w", err)
	}
	token := strings.TrimSpace(string(out))
	link, err := signInLink(ctx, o.apiAddr, token)
	if err != nil {
		return err
	}
	archiveLine := "The run archive is off (--archive=false)."
	if c.ArchiveDSN != "" {
		archiveLine = fmt.Sprintf(`The run archive is on: PostgreSQL on 127.0.0.1, data kept in %s between runs,
the manager runs with --archive-dsn:
  psql "%s"`, archive.Dir, c.ArchiveDSN)
	}
	w := o.out
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, `
jobrun is running on a local control plane (%s).

  export KUBECONFIG=%s
  %s get jobruns,jobtypes,jobschedules,projects -n %s
  %s create -n %s -f %s/config/samples/jobs_v1alpha1_jobrun.yaml   # start a demo_sync run
  %s get jobruns -n %s -w       # watch it move, with live progress
  curl http://%s/readyz      # manager readiness
  curl http://%s/metrics     # manager metrics

The Jobs REST API on http://%s (team demo-team, project demo-project), with a dev token
(more with: JOBRUN_JWT_SECRET=$(cat %s/jwt-secret) %s token --team demo-team):
  export JOBRUN_TOKEN=%s
  curl -H "Authorization: Bearer $JOBRUN_TOKEN" http://%s/v1/teams/demo-team/jobs

The console, signed in as demo-user of demo-team in one click (the link works once, within 15 minutes):
  http://%s%s
  (later: http://%s/ui/ and paste $JOBRUN_TOKEN, or a new link:
   curl -X POST -H "Authorization: Bearer $JOBRUN_TOKEN" http://%s/v1/sign-in-links)

%s

%s

Logs (manager, dev node agent, controller-manager, scheduler, postgres): %s/logs
Job pods' output: %s/pods/<namespace>/<pod>/handler.log
Press Ctrl-C to stop everything.
`, c.Config.Host, c.Kubeconfig, c.Kubectl, o.namespace, c.Kubectl, o.namespace, root, c.Kubectl, o.namespace, o.probeAddr, o.metricsAddr,
		o.apiAddr, dir, abs(root, o.binary), token, o.apiAddr, o.apiAddr, link, o.apiAddr, o.apiAddr, archiveLine, kueueLine, dir, dir)
	// The marker tells scripts and tests that everything is up.
	ready := filepath.Join(dir, "ready")
	if err := os.WriteFile(ready, []byte(c.Config.Host+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(ready)

	select {
	case <-ctx.Done():
		logf("stopping")
		return nil
	case what := <-c.Exited():
		return fmt.Errorf("%s", what)
	}
}

// signInLink asks the REST API at addr for a console sign-in link with
// token (POST /v1/sign-in-links): its path.
func signInLink(ctx context.Context, addr, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/sign-in-links", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("asking for the console's sign-in link: %w", err)
	}
	defer resp.Body.Close()
	var got struct {
		URL string `json:"url"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&got); err != nil || resp.StatusCode != http.StatusCreated || got.URL == "" {
		return "", fmt.Errorf("asking for the console's sign-in link: %s (%v)", resp.Status, err)
	}
	return got.URL, nil
}
