// Command bench measures jobrun on this machine: it starts its own local
// cluster (etcd, kube-apiserver, controller-manager, scheduler, the dev node
// agent and the jobrun manager, all on loopback), runs each scenario and
// prints a table of figures, each beside its natural ceiling measured in the
// same run, and writes them as JSON.
//
//	go run ./hack/bench [-out bench.json] [-list-runs 10000,50000] [-only sidebyside,dispatch] [-archive-runs 1000000]
//
// make bench builds the binaries first. docs/benchmarks.md records a run.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/golang-jwt/jwt/v5"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"jobrun.dev/jobrun/internal/localcluster"
)

const ns = "jobrun-system"

var (
	loadSeconds int
	// keepDir keeps the cluster's directory (its processes' logs, Kueue's)
	// after the bench.
	keepDir bool
	// only is the scenarios to run, none: all.
	only map[string]bool
	// sideRates and sideSeconds are the side-by-side scenario's creation
	// rates and how long each lasts.
	sideRates   []int
	sideSeconds int
)

// scenarios are the names -only takes, in the order they run.
var scenarios = []string{"sidebyside", "dispatch", "load", "flood", "archive", "controller", "progress", "stream", "trigger", "list"}

// want reports whether scenario runs in this bench.
func want(scenario string) bool { return len(only) == 0 || only[scenario] }

type bench struct {
	cl      *localcluster.Cluster
	c       client.Client
	cfg     *rest.Config
	api     string
	metrics string
	// pprof is the API-only manager's /debug/pprof (the memory figures).
	pprof   string
	http    *http.Client
	token   string
	figures []Figure
	// projects gives each scenario that triggers runs projects of its own.
	projects projects
	// side is the side-by-side scenario's table.
	side []sideRow
	log  func(string, ...any)
}

func main() {
	out := flag.String("out", "bench.json", "Where the figures go as JSON.")
	listRuns := flag.String("list-runs", "10000,50000", "Team sizes of the list scenario, ascending.")
	dispatchSeconds := flag.Int("dispatch-seconds", 10, "How long triggers arrive at 50/s in the dispatch scenario.")
	flag.IntVar(&loadSeconds, "load-seconds", 60, "How long 200 clients send mixed REST traffic.")
	onlyList := flag.String("only", "", "Run only these scenarios, comma-separated, of "+strings.Join(scenarios, ", ")+" (dispatch includes end-to-end, list consistency and memory); empty: all.")
	rates := flag.String("sidebyside-rates", "20,50,100,200", "Creation rates (per second) of the side-by-side scenario.")
	flag.IntVar(&sideSeconds, "sidebyside-seconds", 5, "How long Jobs, then JobRuns, are created at each side-by-side rate.")
	flag.IntVar(&archiveRuns, "archive-runs", 1_000_000, "Archived runs the archive scenario bulk-loads (COPY) before timing lists; 10000000 is the issue's second size.")
	flag.IntVar(&archiveSeconds, "archive-seconds", 10, "How long triggers arrive at 50/s, run by the dev node, in the archive scenario's archiving figures.")
	flag.IntVar(&archiveLiveRuns, "archive-live-runs", 5000, "Runs the archive scenario makes (pods completed by the bench, no node) before reading the manager's heap and etcd's JobRun count; ~45 runs/s on 2 cores, so the issue's 100000 take ~40 min.")
	flag.DurationVar(&archiveLiveTTL, "archive-live-ttl", 20*time.Second, "The archive scenario manager's --archive-live-ttl.")
	flag.BoolVar(&keepDir, "keep", false, "Keep the cluster's directory (the logs of its processes and of Kueue) instead of removing it at the end.")
	flag.IntVar(&floodRuns, "flood-runs", 3000, "Runs team A triggers at once in the flood scenario (each phase, with and without Kueue).")
	flag.IntVar(&floodRunMS, "flood-run-ms", 1000, "How long each flood run's handler works (demo_sync, one item of this many ms).")
	flag.IntVar(&floodTeamRuns, "flood-team-runs", 198, "The teams' ClusterQueue's quota in the flood scenario (runs at once): the dev node's 200 pods less the system queue's 2.")
	flag.DurationVar(&floodWindow, "flood-window", 4*time.Minute, "How long each flood phase waits for its runs to end, from A's first trigger, before it cancels the rest; A's throughput is measured over it.")
	flag.BoolVar(&floodKueueOnly, "flood-kueue-only", false, "Run the flood scenario's phases with Kueue only (to compare changes on that side quickly; the figures against without Kueue are then empty).")
	flag.IntVar(&floodOverheadSeconds, "flood-overhead-seconds", 5, "How long triggers arrive at 50/s for the Kueue admission-overhead figures (with and without Kueue).")
	flag.Parse()
	if *onlyList != "" {
		only = map[string]bool{}
		for _, name := range strings.Split(*onlyList, ",") {
			name = strings.TrimSpace(name)
			if !slices.Contains(scenarios, name) {
				fmt.Fprintf(os.Stderr, "bench: -only: no scenario %q (there are %s)\n", name, strings.Join(scenarios, ", "))
				os.Exit(2)
			}
			only[name] = true
		}
	}
	for _, s := range strings.Split(*rates, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "bench: -sidebyside-rates: %q is not a rate\n", s)
			os.Exit(2)
		}
		sideRates = append(sideRates, n)
	}
	if sideSeconds < 1 {
		fmt.Fprintln(os.Stderr, "bench: -sidebyside-seconds must be at least 1")
		os.Exit(2)
	}
	if err := run(*out, *listRuns, *dispatchSeconds); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func run(out, listRuns string, dispatchSeconds int) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "jobrun-bench-")
	if err != nil {
		return err
	}
	if keepDir {
		fmt.Fprintf(os.Stderr, "[bench] the cluster's logs stay in %s (-keep)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "[bench] "+format+"\n", args...) }
	quiet := func(string, ...any) {}
	api, metricsAddr := freeAddr(), freeAddr()
	ctrl.SetLogger(logr.Discard())
	ctx := context.Background()
	cl, err := localcluster.Start(ctx, localcluster.Options{
		Root: root, Dir: dir, Namespace: ns, Binary: filepath.Join(root, "bin", "jobrun"),
		ProbeAddr: freeAddr(), MetricsAddr: metricsAddr, APIAddr: api, Log: quiet,
	})
	if err != nil {
		return err
	}
	defer cl.Stop()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { // Ctrl-C: stop the cluster, not only this process
		<-sig
		cl.Stop()
		os.Exit(130)
	}()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "bench", "teams": []string{"bench", "bench-list"}, "role": "admin", "exp": time.Now().Add(24 * time.Hour).Unix(),
	}).SignedString([]byte(cl.JWTSecret))
	if err != nil {
		return err
	}
	cfg := rest.CopyConfig(cl.Config)
	cfg.QPS, cfg.Burst = -1, 1000
	c, err := client.New(cfg, client.Options{Scheme: cl.Scheme})
	if err != nil {
		return err
	}
	b := &bench{cl: cl, c: c, cfg: cfg, api: "http://" + api, metrics: "http://" + metricsAddr + "/metrics", token: tok, log: logf,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128, MaxConnsPerHost: 128}}}
	nProjects := 0
	if want("dispatch") || want("load") || want("controller") || want("trigger") {
		nProjects = projectCount
	} else {
		if want("archive") {
			nProjects += 50 * archiveSeconds
		}
		if want("flood") {
			nProjects += 2 * 50 * floodOverheadSeconds
		}
	}
	if err := b.setup(ctx, nProjects); err != nil {
		return err
	}

	// First, on a cluster nothing else has used yet: jobrun's controller
	// beside Kubernetes' Job controller, which runs for this scenario only.
	if want("sidebyside") {
		if err := b.sideBySide(ctx, sideRates, sideSeconds); err != nil {
			return err
		}
	}
	// With the controllers: dispatch and end-to-end throughput, then 200
	// clients of mixed traffic for a minute.
	if want("dispatch") {
		if err := b.dispatch(ctx, dispatchSeconds, "dispatch"); err != nil {
			return err
		}
	}
	if want("load") {
		if err := b.load(ctx, loadSeconds); err != nil {
			return err
		}
	}
	// Fair dispatch through Kueue: a team's flood without Kueue, then with
	// it, on the dev node (before the archive scenario kills it). It stops
	// Kueue again and leaves the manager without it.
	if want("flood") {
		if err := b.floodScenario(ctx); err != nil {
			return err
		}
	}
	// The run archive in PostgreSQL: lists over a million archived runs,
	// archiving at the end-to-end rate (the dev node), then, without the
	// node, many runs through a short live window. It leaves the node
	// killed and the manager as it found it.
	if want("archive") {
		if err := b.archiveScenario(ctx); err != nil {
			return err
		}
	}
	// The controller alone: with no node, pods are created but never run,
	// so trigger -> pod created is the controller's own latency.
	cl.KillNode()
	if want("controller") {
		if err := b.dispatch(ctx, dispatchSeconds, "controller"); err != nil {
			return err
		}
	}
	if !want("progress") && !want("stream") && !want("trigger") && !want("list") {
		return b.finish(out)
	}

	// An API-only manager (no controllers, so runs stay pending): the REST
	// path alone, the list cache, the runner's progress writes.
	cl.KillManager()
	pprofAddr, err := localcluster.FreeAddrs(1)
	if err != nil {
		return err
	}
	b.pprof = "http://" + pprofAddr[0] + "/debug/pprof"
	if err := cl.StartManager("--run-controllers=false", "--leader-elect=false", "--pprof-bind-address="+pprofAddr[0]); err != nil {
		return err
	}
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	if want("progress") {
		if err := b.progress(ctx); err != nil {
			return err
		}
	}
	if want("stream") {
		if err := b.streams(ctx); err != nil {
			return err
		}
	}
	if want("trigger") {
		if err := b.triggers(ctx); err != nil {
			return err
		}
	}
	if !want("list") {
		return b.finish(out)
	}
	var sizes []int
	for _, s := range strings.Split(listRuns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("-list-runs: %w", err)
		}
		sizes = append(sizes, n)
	}
	if err := b.lists(ctx, sizes); err != nil {
		return err
	}
	return b.finish(out)
}

// finish prints the figures and writes them to out as JSON.
func (b *bench) finish(out string) error {
	b.print()
	b.printSideBySide()
	data, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "figures": b.figures}, "", "  ")
	return os.WriteFile(out, data, 0o644)
}
