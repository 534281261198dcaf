// Command bench measures jobrun on this machine: it starts its own local
// cluster (etcd, kube-apiserver, controller-manager, scheduler, the dev node
// agent and the jobrun manager, all on loopback), runs each scenario and
// prints a table of figures, each beside its natural ceiling measured in the
// same run, and writes them as JSON.
//
//	go run ./hack/bench [-out bench.json] [-list-runs 10000,50000]
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
	loadSeconds  int
	dispatchOnly bool
)

type bench struct {
	cl      *localcluster.Cluster
	c       client.Client
	cfg     *rest.Config
	api     string
	metrics string
	http    *http.Client
	token   string
	figures []Figure
	// projects gives each scenario that triggers runs projects of its own.
	projects projects
	log      func(string, ...any)
}

func main() {
	out := flag.String("out", "bench.json", "Where the figures go as JSON.")
	listRuns := flag.String("list-runs", "10000,50000", "Team sizes of the list scenario, ascending.")
	dispatchSeconds := flag.Int("dispatch-seconds", 10, "How long triggers arrive at 50/s in the dispatch scenario.")
	flag.IntVar(&loadSeconds, "load-seconds", 60, "How long 200 clients send mixed REST traffic.")
	flag.BoolVar(&dispatchOnly, "dispatch-only", false, "Run only the dispatch scenarios: with the node, then the controller alone (trigger -> pod created, no node).")
	flag.Parse()
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
	defer os.RemoveAll(dir)
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
	if err := b.setup(ctx); err != nil {
		return err
	}

	// With the controllers: dispatch and end-to-end throughput, then 200
	// clients of mixed traffic for a minute.
	if err := b.dispatch(ctx, dispatchSeconds, "dispatch"); err != nil {
		return err
	}
	if !dispatchOnly {
		if err := b.load(ctx, loadSeconds); err != nil {
			return err
		}
	}
	// The controller alone: with no node, pods are created but never run,
	// so trigger -> pod created is the controller's own latency.
	cl.KillNode()
	if err := b.dispatch(ctx, dispatchSeconds, "controller"); err != nil {
		return err
	}
	if dispatchOnly {
		return b.finish(out)
	}

	// An API-only manager (no controllers, so runs stay pending): the REST
	// path alone, the list cache, the runner's progress writes.
	cl.KillManager()
	if err := cl.StartManager("--run-controllers=false", "--leader-elect=false"); err != nil {
		return err
	}
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	if err := b.progress(ctx); err != nil {
		return err
	}
	if err := b.triggers(ctx); err != nil {
		return err
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

// finish prints the figures and writes them as JSON to out.
func (b *bench) finish(out string) error {
	b.print()
	data, _ := json.MarshalIndent(map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "figures": b.figures}, "", "  ")
	return os.WriteFile(out, data, 0o644)
}
