// Package e2e runs jobrun's whole production path for real: the JobRun
// controller (in the jobrun manager process) → pod → scheduler → dev node
// agent → `jobrun runner` process under the runner's service-account token →
// run status, on a real kube-apiserver. Nothing is faked.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"jobrun.dev/jobrun/internal/localcluster"
	"jobrun.dev/jobrun/test/testenv"
)

var (
	cluster *localcluster.Cluster
	// metricsAddr is the manager's /metrics address.
	metricsAddr string
	// apiAddr is the Jobs REST API's address.
	apiAddr string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	root := testenv.Root()
	dir, err := os.MkdirTemp("", "jobrun-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "jobrun")
	build := exec.Command("go", "build", "-o", bin, "./cmd/jobrun")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building jobrun: %v\n%s", err, out)
		return 1
	}
	addrs, err := localcluster.FreeAddrs(3)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	probe := addrs[0]
	metricsAddr, apiAddr = addrs[1], addrs[2]
	cluster, err = localcluster.Start(context.Background(), localcluster.Options{
		Root: root, Dir: filepath.Join(dir, "cluster"), Namespace: "jobrun-system", Binary: bin,
		ProbeAddr: probe, MetricsAddr: metricsAddr, APIAddr: apiAddr, CuttableAPI: true,
		// The manager lives through the API-server outage and restart tests
		// (a shorter renew deadline makes it stop leading and exit, for its
		// Deployment to restart it); tests that kill it stop it gracefully
		// first and use short leases of their own.
		ManagerArgs: []string{"--leader-elect-lease-duration=60s", "--leader-elect-renew-deadline=45s"},
		Log:         func(format string, args ...any) { fmt.Fprintf(os.Stderr, "[e2e] "+format+"\n", args...) },
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting the local cluster: %v\n", err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		// The components' logs say why; print their tails.
		for _, name := range []string{"manager", "devnode"} {
			if data, err := os.ReadFile(filepath.Join(dir, "cluster", "logs", name+".log")); err == nil {
				if len(data) > 8000 {
					data = data[len(data)-8000:]
				}
				fmt.Fprintf(os.Stderr, "--- %s.log (tail) ---\n%s\n", name, data)
			}
		}
	}
	if err := cluster.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the local cluster: %v\n", err)
	}
	return code
}
