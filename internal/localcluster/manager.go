package localcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// NodeName is the Node the dev node agent registers.
const NodeName = "jobrun-dev-node"

// Manager is one running jobrun manager process.
type Manager struct {
	// ProbeAddr, MetricsAddr and APIAddr are where it serves /healthz and
	// /readyz, plain-HTTP /metrics and the REST API (empty: none).
	ProbeAddr, MetricsAddr, APIAddr string
	// LeaderElection is whether it competes for the leader Lease.
	LeaderElection bool

	proc *process
}

// PID is the manager's process id.
func (m *Manager) PID() int { return m.proc.Pid() }

var probeClient = &http.Client{Timeout: 5 * time.Second}

// get GETs url and returns its body; a status other than 200 is an error.
func get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// Ready checks the manager's /readyz and, when it serves the REST API, the
// API's /readyz (its run cache synced).
func (m *Manager) Ready(ctx context.Context) error {
	if _, err := get(ctx, "http://"+m.ProbeAddr+"/readyz"); err != nil {
		return err
	}
	if m.APIAddr != "" {
		if _, err := get(ctx, "http://"+m.APIAddr+"/readyz"); err != nil {
			return err
		}
	}
	return nil
}

// Metrics returns the manager's /metrics in Prometheus text format.
func (m *Manager) Metrics(ctx context.Context) (string, error) {
	return get(ctx, "http://"+m.MetricsAddr+"/metrics")
}

// Leading reports whether the manager holds the leader Lease, as its own
// leader_election_master_status metric says.
func (m *Manager) Leading(ctx context.Context) (bool, error) {
	text, err := m.Metrics(ctx)
	if err != nil {
		return false, err
	}
	v, ok := MetricValue(text, "leader_election_master_status{")
	return ok && v == 1, nil
}

// MetricValue is the value of the first sample in Prometheus text whose
// line starts with series (a metric name, or a name with the start of its
// labels such as `controller_runtime_active_workers{controller="jobrun"`).
func MetricValue(text, series string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, series) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}

// waitNodeReady waits until the dev node agent's Node is Ready and the
// node-lifecycle controller has lifted its not-ready taint, so that pods
// are scheduled to it.
func (c *Cluster) waitNodeReady(ctx context.Context, agent *process) error {
	ctx, cancel := context.WithTimeout(ctx, managerStartTimeout)
	defer cancel()
	start := time.Now()
	err := pollUntil(ctx, agent.Done(), func(ctx context.Context) error {
		node := &corev1.Node{}
		if err := c.Client.Get(ctx, client.ObjectKey{Name: NodeName}, node); err != nil {
			return err
		}
		ready := false
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				ready = cond.Status == corev1.ConditionTrue
			}
		}
		if !ready {
			return fmt.Errorf("node %s is not Ready", NodeName)
		}
		for _, taint := range node.Spec.Taints {
			if taint.Key == corev1.TaintNodeNotReady || taint.Key == corev1.TaintNodeUnreachable {
				return fmt.Errorf("node %s still has the taint %s", NodeName, taint.Key)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("dev node agent not ready: %w (log: %s)", err, c.logFile("devnode"))
	}
	c.opts.Log("node %s ready after %s", NodeName, time.Since(start).Round(time.Millisecond))
	return nil
}

// pollUntil calls check every 100ms until it succeeds, ctx ends (the last
// error is returned) or exited is closed (the process it waits for died).
func pollUntil(ctx context.Context, exited <-chan struct{}, check func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := check(callCtx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-exited:
			return errors.Join(errors.New("the process exited"), last)
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
	}
}
