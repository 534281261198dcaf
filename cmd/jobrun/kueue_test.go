package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"jobrun.dev/jobrun/test/testenv"
)

// TestManagerWithKueueNeedsKueue: --kueue on a cluster without Kueue stops
// the manager at start, saying what is missing, instead of running runs
// that no queue would ever admit.
func TestManagerWithKueueNeedsKueue(t *testing.T) {
	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "manager", "--kueue", "--kubeconfig", env.Kubeconfig,
		"--health-probe-bind-address", testenv.FreeAddr(t), "--metrics-bind-address", "0", "--leader-elect=false", "--namespace", env.Namespace(t))
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("manager --kueue without Kueue: %v (context %v), want it to exit with an error\n%s", err, ctx.Err(), out)
	}
	if !strings.Contains(string(out), "--kueue: Kueue's LocalQueue (kueue.x-k8s.io/v1beta2) is not served") {
		t.Errorf("manager --kueue without Kueue says:\n%s", out)
	}
}
