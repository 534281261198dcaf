// Package localcluster runs jobrun's local default: a real control plane on
// loopback (etcd, kube-apiserver, kube-controller-manager, kube-scheduler),
// the dev node agent that runs job pods as local processes, and the jobrun
// manager. `make dev` and the end-to-end tests both use it.
package localcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"jobrun.dev/jobrun/internal/controlplane"
)

// Options configure a local cluster.
type Options struct {
	// Root is the repository root (CRDs, config/, bin/k8s).
	Root string
	// Dir holds the kubeconfig, logs and pods' work folders.
	Dir string
	// Namespace is where jobrun's objects, the runner's service account and
	// the manager's lease live.
	Namespace string
	// Binary is the jobrun binary: it runs the manager and the dev node
	// agent, and stands for the image jobrun:dev in job pods.
	Binary string
	// ProbeAddr and MetricsAddr are the manager's addresses.
	ProbeAddr, MetricsAddr string
	// APIAddr is where the manager serves the REST API; empty: not served.
	APIAddr string
	// Samples applies config/samples.
	Samples bool
	// AttachControlPlaneOutput prints etcd's and kube-apiserver's logs.
	AttachControlPlaneOutput bool
	// Log receives progress lines.
	Log func(format string, args ...any)
}

// Cluster is a running local cluster.
type Cluster struct {
	*controlplane.ControlPlane
	// Kubeconfig is the path of an admin kubeconfig.
	Kubeconfig string
	// Kubectl is the path of the kubectl built with the control plane.
	Kubectl string
	// Client is an admin client, not cached.
	Client client.Client
	// JWTSecret is the REST API's HS256 secret, made up for this cluster;
	// it is also in Dir/jwt-secret.
	JWTSecret string

	opts  Options
	procs processes
}

// Start starts everything, in dependency order. On error, what was started
// is stopped again.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(o.Dir, "kubeconfig")
	// A kubeconfig left by an earlier run points at a dead server.
	_ = os.Remove(kubeconfig)

	o.Log("starting etcd and kube-apiserver")
	cp, err := controlplane.Start(controlplane.Options{Root: o.Root, AttachOutput: o.AttachControlPlaneOutput})
	c = &Cluster{ControlPlane: cp, Kubeconfig: kubeconfig, opts: o}
	c.procs.log = o.Log
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
			c = nil
		}
	}()
	if err != nil {
		return c, err
	}
	c.Kubectl = filepath.Join(cp.AssetsDir, "kubectl")
	if err := cp.WriteAdminKubeconfig(kubeconfig); err != nil {
		return c, err
	}
	if c.Client, err = client.New(cp.Config, client.Options{Scheme: cp.Scheme}); err != nil {
		return c, err
	}

	kubeFlags := []string{"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig, "--leader-elect=false", "--secure-port=0"}
	if err := c.procs.start("kube-controller-manager", c.logFile("kube-controller-manager"), nil,
		filepath.Join(cp.AssetsDir, "kube-controller-manager"),
		append(kubeFlags, "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,node-lifecycle-controller")...); err != nil {
		return c, err
	}
	if err := c.procs.start("kube-scheduler", c.logFile("kube-scheduler"), nil, filepath.Join(cp.AssetsDir, "kube-scheduler"), kubeFlags...); err != nil {
		return c, err
	}

	if err := c.InstallRunner(ctx, o.Namespace); err != nil {
		return c, err
	}
	if err := c.InstallIntegrations(ctx, o.Namespace, DefaultIntegrationsNamespace); err != nil {
		return c, err
	}
	if o.Samples {
		o.Log("applying config/samples to namespace %s", o.Namespace)
		if err := c.apply(ctx, "-n", o.Namespace, "-k", filepath.Join(o.Root, "config", "samples")); err != nil {
			return c, err
		}
	}

	if err := c.procs.start("jobrun devnode", c.logFile("devnode"), nil, o.Binary, "devnode",
		"--kubeconfig="+kubeconfig,
		"--work-dir="+filepath.Join(o.Dir, "pods"),
		"--image=jobrun:dev="+o.Binary,
	); err != nil {
		return c, err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return c, err
	}
	c.JWTSecret = hex.EncodeToString(secret)
	if err := os.WriteFile(filepath.Join(o.Dir, "jwt-secret"), []byte(c.JWTSecret), 0o600); err != nil {
		return c, err
	}
	if err := c.StartManager(); err != nil {
		return c, err
	}
	return c, nil
}

func (c *Cluster) logFile(name string) string {
	return filepath.Join(c.opts.Dir, "logs", name+".log")
}

// InstallRunner creates namespace ns if needed and installs the runner's
// service account and least-privilege Role there (config/runner, as the
// install names them: jobrun-runner), so run pods in ns can report.
func (c *Cluster) InstallRunner(ctx context.Context, ns string) error {
	obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	if err := c.Client.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", ns, err)
	}
	dir, err := os.MkdirTemp("", "jobrun-runner-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// kustomize takes bases by relative path only.
	base, err := filepath.Rel(dir, filepath.Join(c.opts.Root, "config", "runner"))
	if err != nil {
		return err
	}
	k := fmt.Sprintf("namespace: %s\nnamePrefix: jobrun-\nresources:\n  - %s\n", ns, base)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return err
	}
	c.opts.Log("installing the runner's service account and Role in %s", ns)
	return c.apply(ctx, "-k", dir)
}

// DefaultIntegrationsNamespace is config/integrations' namespace, the one
// the samples' job types name.
const DefaultIntegrationsNamespace = "jobrun-integrations"

// InstallIntegrations applies config/integrations with its namespace set to
// integrationsNS and the runner of runsNS as the reader of its Secrets.
func (c *Cluster) InstallIntegrations(ctx context.Context, runsNS, integrationsNS string) error {
	data, err := os.ReadFile(filepath.Join(c.opts.Root, "config", "integrations", "integrations.yaml"))
	if err != nil {
		return err
	}
	y := strings.ReplaceAll(string(data), "namespace: jobrun-system", "namespace: "+runsNS)
	y = strings.ReplaceAll(y, DefaultIntegrationsNamespace, integrationsNS)
	f, err := os.CreateTemp("", "jobrun-integrations-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(y); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	c.opts.Log("installing the integrations namespace %s for the runner of %s", integrationsNS, runsNS)
	return c.apply(ctx, "-f", f.Name())
}

// apply runs kubectl apply --server-side with args.
func (c *Cluster) apply(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, c.Kubectl, append([]string{"--kubeconfig=" + c.Kubeconfig, "apply", "--server-side"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl apply %v: %w\n%s", args, err, out)
	}
	c.opts.Log("%s", out)
	return nil
}

// PodKubeconfig is the kubeconfig the dev node agent wrote for a pod: the
// pod's service-account token, bound to the pod.
func (c *Cluster) PodKubeconfig(ns, pod string) string {
	return filepath.Join(c.opts.Dir, "pods", ns, pod, "kubeconfig")
}

// StartManager starts the jobrun manager (again), with extra flags (such as
// --run-controllers=false --leader-elect=false for an API-only replica).
func (c *Cluster) StartManager(extra ...string) error { return c.startManager("jobrun manager", extra) }

// StartStandbyManager starts a second manager replica; extra must give it
// addresses of its own (--health-probe-bind-address, --metrics-bind-address,
// --api-bind-address override the first's). With leader election it stands
// by until the first is gone.
func (c *Cluster) StartStandbyManager(extra ...string) error {
	return c.startManager("jobrun manager (standby)", extra)
}

// KillStandbyManager kills the second replica with SIGKILL.
func (c *Cluster) KillStandbyManager() { c.procs.kill("jobrun manager (standby)") }

func (c *Cluster) startManager(name string, extra []string) error {
	args := []string{"manager",
		"--kubeconfig=" + c.Kubeconfig,
		"--leader-election-namespace=" + c.opts.Namespace,
		"--namespace=" + c.opts.Namespace,
		"--health-probe-bind-address=" + c.opts.ProbeAddr,
		"--metrics-bind-address=" + c.opts.MetricsAddr,
		"--metrics-secure=false",
	}
	if c.opts.APIAddr != "" {
		args = append(args, "--api-bind-address="+c.opts.APIAddr)
	}
	args = append(args, extra...)
	log := "manager"
	if name != "jobrun manager" {
		log = "manager-standby"
	}
	return c.procs.start(name, c.logFile(log), []string{"JOBRUN_JWT_SECRET=" + c.JWTSecret}, c.opts.Binary, args...)
}

// KillManager kills the manager with SIGKILL, as a crash or a lost node
// would, and waits until it is gone.
func (c *Cluster) KillManager() { c.procs.kill("jobrun manager") }

// KillNode kills the dev node agent: pods are still created and scheduled,
// but none runs.
func (c *Cluster) KillNode() { c.procs.kill("jobrun devnode") }

// ManagerPID is the running manager's process id, 0 if none runs.
func (c *Cluster) ManagerPID() int {
	for _, p := range c.procs.running("jobrun manager") {
		return p.cmd.Process.Pid
	}
	return 0
}

// Exited reports a child process that ended while the cluster ran.
func (c *Cluster) Exited() <-chan string { return c.procs.exitedChan() }

// Stop stops the manager, the agent, the scheduler, the controller-manager,
// kube-apiserver and etcd, in that order, and removes the kubeconfig.
func (c *Cluster) Stop() error {
	c.procs.stopAll()
	c.opts.Log("stopping kube-apiserver and etcd")
	err := c.ControlPlane.Stop()
	_ = os.Remove(c.Kubeconfig)
	return err
}

// process is one child.
type process struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	stopped bool // stopped on purpose: not reported as exited
}

// processes are the cluster's children.
type processes struct {
	log    func(string, ...any)
	mu     sync.Mutex
	list   []*process
	exited chan string
}

func (ps *processes) exitedChan() chan string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.exited == nil {
		ps.exited = make(chan string, 16)
	}
	return ps.exited
}

// start runs path with args and extra environment variables, its output
// appended to logFile. The child gets
// its own process group, so a Ctrl-C in the terminal reaches the parent only
// and children stop in order, and dies with the parent if that is killed.
func (ps *processes) start(name, logFile string, env []string, path string, args ...string) error {
	exited := ps.exitedChan()
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = io.Writer(f), io.Writer(f)
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s (make tools-dev builds the control plane, make build the jobrun binary): %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	ps.log("started %s (pid %d, log %s)", name, cmd.Process.Pid, logFile)
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
		ps.mu.Lock()
		stopped := p.stopped
		ps.mu.Unlock()
		if !stopped {
			exited <- fmt.Sprintf("%s (pid %d) exited: %v", name, cmd.Process.Pid, p.err)
		}
	}()
	return nil
}

// running returns the live processes called name.
func (ps *processes) running(name string) []*process {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var out []*process
	for _, p := range ps.list {
		if p.name == name && !p.stopped {
			out = append(out, p)
		}
	}
	return out
}

func (ps *processes) kill(name string) {
	for _, p := range ps.running(name) {
		ps.mu.Lock()
		p.stopped = true
		ps.mu.Unlock()
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		ps.log("killed %s (pid %d)", p.name, p.cmd.Process.Pid)
	}
}

// stopAll stops the children newest first: SIGTERM, SIGKILL after 15s.
func (ps *processes) stopAll() {
	ps.mu.Lock()
	list := append([]*process(nil), ps.list...)
	for _, p := range list {
		p.stopped = true
	}
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		p := list[i]
		select {
		case <-p.done:
			continue
		default:
		}
		ps.log("stopping %s (pid %d)", p.name, p.cmd.Process.Pid)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			ps.log("%s did not stop within 15s; killing it", p.name)
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
}
