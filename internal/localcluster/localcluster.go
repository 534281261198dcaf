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
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"jobrun.dev/jobrun/internal/controlplane"
	"jobrun.dev/jobrun/internal/cutproxy"
	"jobrun.dev/jobrun/internal/kueue"
	"jobrun.dev/jobrun/internal/pgserver"
	"jobrun.dev/jobrun/internal/supervise"
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
	// ManagerArgs are extra flags of every manager the cluster starts
	// (before those given to StartManager, which win).
	ManagerArgs []string
	// Samples applies config/samples.
	Samples bool
	// CuttableAPI puts a proxy between the API server and the manager and
	// dev node agent (and so the runners, whose kubeconfig the agent writes):
	// fault tests cut it with CutAPI to take the API server away from them.
	CuttableAPI bool
	// AttachControlPlaneOutput prints etcd's and kube-apiserver's logs.
	AttachControlPlaneOutput bool
	// Archive, when set, starts a PostgreSQL for the run archive before
	// everything else and gives every manager --archive-dsn pointing at it;
	// Stop stops it last. nil: no PostgreSQL, no archive.
	Archive *ArchiveOptions
	// Kueue, when set, starts a real Kueue (internal/kueue) with jobrun's
	// queues (its ResourceFlavor, the ClusterQueues jobrun-teams and
	// jobrun-system, its WorkloadPriorityClasses) and gives every manager
	// --kueue (StartKueue). nil: runs get their pods
	// first come, first served, unless StartKueue starts it later.
	Kueue *KueueOptions
	// Log receives progress lines.
	Log func(format string, args ...any)
}

// ArchiveOptions configure the cluster's PostgreSQL (Options.Archive).
type ArchiveOptions struct {
	// Dir holds its data, kept: a later Start on the same Dir finds the
	// archive's history there.
	Dir string
	// Port is its port on 127.0.0.1; 0: a free one.
	Port int
}

// KueueOptions size the cluster's Kueue queues (Options.Kueue).
type KueueOptions struct {
	// TeamRuns and SystemRuns are the pods quotas of the ClusterQueues
	// jobrun-teams and jobrun-system: runs at once. (They cover cpu and
	// memory too, as Kueue admits no pod asking for a resource its
	// ClusterQueue does not cover, with quotas no dev run reaches.)
	TeamRuns, SystemRuns int
}

// ArchiveDatabase is the database the archive's PostgreSQL holds it in.
const ArchiveDatabase = "jobrun"

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
	// ArchiveDSN connects to the archive's database (Options.Archive); empty
	// without one.
	ArchiveDSN string

	opts  Options
	procs processes
	// componentKubeconfig is what the manager and the agent use: Kubeconfig,
	// or a copy through proxy.
	componentKubeconfig string
	proxy               *cutproxy.Proxy
	postgres            *pgserver.Server
	kueue               *kueue.Kueue

	mu       sync.Mutex
	managers map[string]*Manager // by process name
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

	// PostgreSQL first: a missing binary or a taken port fails at once, and
	// it stops last.
	var pg *pgserver.Server
	if o.Archive != nil {
		if pg, err = startArchive(*o.Archive, filepath.Join(o.Dir, "logs", "postgres.log"), o.Log); err != nil {
			return nil, err
		}
	}
	o.Log("starting etcd and kube-apiserver")
	cp, err := controlplane.Start(controlplane.Options{Root: o.Root, AttachOutput: o.AttachControlPlaneOutput})
	c = &Cluster{ControlPlane: cp, Kubeconfig: kubeconfig, opts: o, postgres: pg}
	if pg != nil {
		c.ArchiveDSN = pg.DSN
	}
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
	c.componentKubeconfig = kubeconfig
	if o.CuttableAPI {
		if err := c.startProxy(); err != nil {
			return c, err
		}
	}

	if _, err := c.procs.start("kube-controller-manager", c.logFile("kube-controller-manager"), nil,
		filepath.Join(cp.AssetsDir, "kube-controller-manager"),
		append(c.kubeFlags(), "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,node-lifecycle-controller")...); err != nil {
		return c, err
	}
	if _, err := c.procs.start("kube-scheduler", c.logFile("kube-scheduler"), nil, filepath.Join(cp.AssetsDir, "kube-scheduler"), c.kubeFlags()...); err != nil {
		return c, err
	}

	if err := c.InstallRunner(ctx, o.Namespace); err != nil {
		return c, err
	}
	if err := c.InstallIntegrations(ctx, o.Namespace, DefaultIntegrationsNamespace); err != nil {
		return c, err
	}
	if o.Kueue != nil {
		if err := c.StartKueue(ctx, *o.Kueue); err != nil {
			return c, err
		}
	}
	if o.Samples {
		o.Log("applying config/samples to namespace %s", o.Namespace)
		if err := c.apply(ctx, "-n", o.Namespace, "-k", filepath.Join(o.Root, "config", "samples")); err != nil {
			return c, err
		}
	}

	node, err := c.procs.start("jobrun devnode", c.logFile("devnode"), nil, o.Binary, "devnode",
		"--kubeconfig="+c.componentKubeconfig,
		"--node-name="+NodeName,
		"--work-dir="+filepath.Join(o.Dir, "pods"),
		"--image=jobrun:dev="+o.Binary,
	)
	if err != nil {
		return c, err
	}
	if err := c.waitNodeReady(ctx, node); err != nil {
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

// StartKueue starts Kueue (its files in Dir/kueue) and creates jobrun's
// queues sized by o: Start does it
// for Options.Kueue, a caller such as the bench on a running cluster. Every
// manager started after it gets --kueue and the queues' flags (the running
// one keeps its flags until StartManager starts it again). Stop, or
// StopKueue, stops it.
func (c *Cluster) StartKueue(ctx context.Context, o KueueOptions) error {
	c.mu.Lock()
	running := c.kueue != nil
	c.mu.Unlock()
	if running {
		return errors.New("kueue: already running on this cluster")
	}
	c.opts.Log("starting Kueue (log %s)", filepath.Join(c.opts.Dir, "kueue", "kueue.log"))
	start := time.Now()
	k, err := kueue.Start(ctx, c.ControlPlane, kueue.Options{Root: c.opts.Root, Dir: filepath.Join(c.opts.Dir, "kueue")})
	if err != nil {
		return fmt.Errorf("kueue: %w", err)
	}
	c.mu.Lock()
	c.kueue = k
	c.mu.Unlock()
	go func() {
		// Kueue's exit is a child's exit (Exited, which make dev watches),
		// unless StopKueue or Stop stopped it.
		<-k.Exited()
		c.mu.Lock()
		stopped := c.kueue != k
		c.mu.Unlock()
		if !stopped {
			c.procs.exitedChan() <- fmt.Sprintf("kueue exited (log %s)", filepath.Join(k.Dir, "kueue.log"))
		}
	}()
	queues := "apiVersion: kueue.x-k8s.io/v1beta2\nkind: ResourceFlavor\nmetadata: {name: jobrun}\n" +
		clusterQueueYAML(KueueTeamsQueue, o.TeamRuns, true) + clusterQueueYAML(KueueSystemQueue, o.SystemRuns, false) +
		fmt.Sprintf(priorityClassYAML, KueuePriorityHigh, KueuePriorityLow)
	if err := c.applyYAML(ctx, "kueue-queues", queues); err != nil {
		return err
	}
	c.opts.Log("Kueue ready after %s: ClusterQueues %s (%d runs at once) and %s (%d)", time.Since(start).Round(time.Millisecond), KueueTeamsQueue, o.TeamRuns, KueueSystemQueue, o.SystemRuns)
	return nil
}

// StopKueue stops what StartKueue started: Kueue's webhooks and manager.
// Managers started after it run without --kueue; its kinds, queues and
// Workloads stay.
func (c *Cluster) StopKueue() error {
	c.mu.Lock()
	k := c.kueue
	c.kueue = nil
	c.mu.Unlock()
	if k == nil {
		return nil
	}
	c.opts.Log("stopping Kueue")
	return k.Stop()
}

// kueueArgs are the manager flags of a cluster running Kueue: --kueue and
// the ClusterQueues StartKueue created.
func (c *Cluster) kueueArgs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kueue == nil {
		return nil
	}
	// Queued runs' positions from Kueue's visibility server, directly: a
	// local control plane has no aggregation layer to reach it through.
	return []string{"--kueue", "--kueue-team-cluster-queue=" + KueueTeamsQueue, "--kueue-system-cluster-queue=" + KueueSystemQueue,
		"--kueue-visibility-url=" + c.kueue.VisibilityURL, "--kueue-visibility-ca-file=" + c.kueue.VisibilityCAFile()}
}

// clusterQueueYAML is a ClusterQueue of the flavor jobrun for every
// namespace: pods runs at once, cpu and memory no dev run reaches, with
// Admission Fair Sharing between its LocalQueues if fair.
func clusterQueueYAML(name string, pods int, fair bool) string {
	scope := ""
	if fair {
		scope = "  admissionScope: {admissionMode: UsageBasedAdmissionFairSharing}\n"
	}
	return fmt.Sprintf(`---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {name: %s}
spec:
  namespaceSelector: {}
  queueingStrategy: BestEffortFIFO
%s  resourceGroups:
  - coveredResources: [cpu, memory, pods]
    flavors: [{name: jobrun, resources: [{name: cpu, nominalQuota: "100"}, {name: memory, nominalQuota: 100Gi}, {name: pods, nominalQuota: %d}]}]
`, name, scope, pods)
}

// priorityClassYAML are the WorkloadPriorityClasses a JobType's
// priorityClassName may name, as the chart's defaults: high, then low.
const priorityClassYAML = `---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata: {name: %s}
value: 1000
description: Runs admitted ahead of the default priority (0) in their queue.
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata: {name: %s}
value: -1000
description: Runs admitted after those of the default priority (0) in their queue.
`

// The ClusterQueues and WorkloadPriorityClasses of a cluster with Kueue
// (Options.Kueue).
const (
	KueueTeamsQueue   = "jobrun-teams"
	KueueSystemQueue  = "jobrun-system"
	KueuePriorityHigh = "jobrun-high"
	KueuePriorityLow  = "jobrun-low"
)

// startArchive starts the archive's PostgreSQL on its kept directory, with
// its log at logFile.
func startArchive(o ArchiveOptions, logFile string, log func(string, ...any)) (*pgserver.Server, error) {
	log("starting PostgreSQL for the run archive (data in %s, log %s)", o.Dir, logFile)
	start := time.Now()
	pg, err := pgserver.Start(pgserver.Options{Dir: o.Dir, Port: o.Port, Database: ArchiveDatabase, LogFile: logFile})
	if err != nil {
		return nil, fmt.Errorf("the run archive's PostgreSQL: %w", err)
	}
	log("PostgreSQL (pid %d) ready on 127.0.0.1:%d after %s", pg.Pid(), pg.Port, time.Since(start).Round(time.Millisecond))
	return pg, nil
}

// kubeFlags are the flags of every kube-controller-manager and
// kube-scheduler the cluster starts: the admin kubeconfig for everything, no
// leader election (so two of them never compete for a Lease), no serving
// port (so two of them never compete for one).
func (c *Cluster) kubeFlags() []string {
	return []string{"--kubeconfig=" + c.Kubeconfig, "--authentication-kubeconfig=" + c.Kubeconfig, "--authorization-kubeconfig=" + c.Kubeconfig, "--leader-elect=false", "--secure-port=0"}
}

const jobControllerName = "kube-controller-manager (job-controller)"

// StartJobController starts a second kube-controller-manager that runs only
// Kubernetes' Job controller (the first one does not run it), with extra
// flags such as its client limits: the peer the bench measures jobrun
// against. It does not wait for the controller's caches: a caller that
// needs it working waits for a Job's pod.
func (c *Cluster) StartJobController(extra ...string) error {
	args := append(append(c.kubeFlags(), "--controllers=job-controller"), extra...)
	_, err := c.procs.start(jobControllerName, c.logFile("kube-controller-manager-job"), nil, filepath.Join(c.AssetsDir, "kube-controller-manager"), args...)
	return err
}

// StopJobController stops what StartJobController started (SIGTERM).
func (c *Cluster) StopJobController() { c.procs.stop(jobControllerName) }

// startProxy starts the cuttable proxy and writes the components'
// kubeconfig that goes through it.
func (c *Cluster) startProxy() error {
	u, err := url.Parse(c.Config.Host)
	if err != nil {
		return err
	}
	if c.proxy, err = cutproxy.New(u.Host); err != nil {
		return err
	}
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		return err
	}
	for _, cluster := range cfg.Clusters {
		cluster.Server = "https://" + c.proxy.Addr()
	}
	c.componentKubeconfig = filepath.Join(c.opts.Dir, "kubeconfig-components")
	return clientcmd.WriteToFile(*cfg, c.componentKubeconfig)
}

// CutAPI takes the API server away from the manager, the dev node agent and
// the runners (Options.CuttableAPI): their connections drop and new ones
// are refused, while the API server itself and the admin Client work on.
func (c *Cluster) CutAPI() {
	if c.proxy != nil {
		c.proxy.Cut()
	}
}

// RestoreAPI ends a CutAPI.
func (c *Cluster) RestoreAPI() error {
	if c.proxy == nil {
		return nil
	}
	return c.proxy.Restore()
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
	c.opts.Log("installing the integrations namespace %s for the runner of %s", integrationsNS, runsNS)
	return c.applyYAML(ctx, "integrations", y)
}

// applyYAML applies the manifests y (through a temporary file named for
// what).
func (c *Cluster) applyYAML(ctx context.Context, what, y string) error {
	f, err := os.CreateTemp("", "jobrun-"+what+"-*.yaml")
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
// --run-controllers=false --leader-elect=false for an API-only replica), and
// waits until it is ready: /readyz answers 200, its REST API's /readyz too
// when it serves one, and — with leader election — it holds the leader
// Lease. A manager started right after one was SIGKILLed waits out that
// one's Lease first (its lease duration).
func (c *Cluster) StartManager(extra ...string) error {
	m, err := c.startManager(managerName, c.opts.ProbeAddr, c.opts.MetricsAddr, c.opts.APIAddr, extra)
	if err != nil {
		return err
	}
	return c.waitManager(m, m.LeaderElection)
}

// StartStandbyManager starts a second manager replica on addresses of its
// own and waits until it is ready (not leading: with leader election it
// stands by until the first is gone).
func (c *Cluster) StartStandbyManager(extra ...string) (*Manager, error) {
	addrs, err := FreeAddrs(3)
	if err != nil {
		return nil, err
	}
	apiAddr := ""
	if c.opts.APIAddr != "" {
		apiAddr = addrs[2]
	}
	m, err := c.startManager(standbyName, addrs[0], addrs[1], apiAddr, extra)
	if err != nil {
		return nil, err
	}
	return m, c.waitManager(m, false)
}

// FreeAddrs returns n loopback addresses whose ports were free a moment
// ago (all held at once, so they differ), for the cluster's servers.
func FreeAddrs(n int) ([]string, error) {
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

const (
	managerName = "jobrun manager"
	standbyName = "jobrun manager (standby)"
)

// Manager is the running main manager, nil when none runs.
func (c *Cluster) Manager() *Manager { return c.manager(managerName) }

// Standby is the running standby manager, nil when none runs.
func (c *Cluster) Standby() *Manager { return c.manager(standbyName) }

func (c *Cluster) manager(name string) *Manager {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.managers[name]
	if m == nil || !c.procs.alive(m.proc) {
		return nil
	}
	return m
}

// KillStandbyManager kills the second replica with SIGKILL.
func (c *Cluster) KillStandbyManager() { c.procs.kill(standbyName) }

// StopStandbyManager stops the second replica gracefully (SIGTERM): it
// releases the leader Lease if it holds it.
func (c *Cluster) StopStandbyManager() { c.procs.stop(standbyName) }

func (c *Cluster) startManager(name, probeAddr, metricsAddr, apiAddr string, extra []string) (*Manager, error) {
	args := []string{"manager",
		"--kubeconfig=" + c.componentKubeconfig,
		"--leader-election-namespace=" + c.opts.Namespace,
		"--namespace=" + c.opts.Namespace,
		// The local default reconciles every namespace (the e2e suite puts
		// each test in one of its own); its component credentials allow it.
		"--all-namespaces",
		"--health-probe-bind-address=" + probeAddr,
		"--metrics-bind-address=" + metricsAddr,
		"--metrics-secure=false",
	}
	if apiAddr != "" {
		args = append(args, "--api-bind-address="+apiAddr)
	}
	if c.ArchiveDSN != "" {
		args = append(args, "--archive-dsn="+c.ArchiveDSN)
	}
	args = append(args, c.kueueArgs()...)
	args = append(append(args, c.opts.ManagerArgs...), extra...)
	log := "manager"
	if name != managerName {
		log = "manager-standby"
	}
	p, err := c.procs.start(name, c.logFile(log), []string{"JOBRUN_JWT_SECRET=" + c.JWTSecret}, c.opts.Binary, args...)
	if err != nil {
		return nil, err
	}
	m := &Manager{ProbeAddr: probeAddr, MetricsAddr: metricsAddr, APIAddr: apiAddr, LeaderElection: leaderElection(args), proc: p}
	c.mu.Lock()
	if c.managers == nil {
		c.managers = map[string]*Manager{}
	}
	c.managers[name] = m
	c.mu.Unlock()
	return m, nil
}

// leaderElection reports whether a manager started with args elects a
// leader (the flag's default is true; an API-only replica turns it off).
func leaderElection(args []string) bool {
	on := true
	for _, a := range args {
		switch a {
		case "--leader-elect=false", "-leader-elect=false":
			on = false
		case "--leader-elect", "--leader-elect=true", "-leader-elect", "-leader-elect=true":
			on = true
		}
	}
	return on
}

// managerStartTimeout bounds how long a manager may take to become ready
// and lead: generous, for a busy shared machine and a predecessor's Lease
// that must expire first.
const managerStartTimeout = 2 * time.Minute

// waitManager waits until m is ready and, if leading is set, holds the
// leader Lease; it fails early when the process exits.
func (c *Cluster) waitManager(m *Manager, leading bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), managerStartTimeout)
	defer cancel()
	start := time.Now()
	err := pollUntil(ctx, m.proc.Done(), func(ctx context.Context) error {
		if err := m.Ready(ctx); err != nil {
			return err
		}
		if !leading {
			return nil
		}
		ok, err := m.Leading(ctx)
		if err == nil && !ok {
			err = errors.New("not (yet) holding the leader Lease")
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s (pid %d) not ready: %w (log: %s)", m.proc.Name, m.PID(), err, c.logFile("manager"))
	}
	c.opts.Log("%s (pid %d) ready after %s (leading: %v)", m.proc.Name, m.PID(), time.Since(start).Round(time.Millisecond), leading)
	return nil
}

// KillManager kills the manager with SIGKILL, as a crash or a lost node
// would, and waits until it is gone. It does not release its Lease: a
// successor leads once the Lease expires.
func (c *Cluster) KillManager() { c.procs.kill(managerName) }

// StopManager stops the manager gracefully (SIGTERM), as a rolling update
// would: it releases the leader Lease, so a successor leads at once.
func (c *Cluster) StopManager() { c.procs.stop(managerName) }

// KillNode kills the dev node agent: pods are still created and scheduled,
// but none runs.
func (c *Cluster) KillNode() { c.procs.kill("jobrun devnode") }

// ManagerPID is the running manager's process id, 0 if none runs.
func (c *Cluster) ManagerPID() int {
	if m := c.Manager(); m != nil {
		return m.PID()
	}
	return 0
}

// Exited reports a child process that ended while the cluster ran.
func (c *Cluster) Exited() <-chan string { return c.procs.exitedChan() }

// Stop stops the manager, the agent, the scheduler, the controller-manager,
// Kueue, kube-apiserver, etcd and the archive's PostgreSQL, in that order,
// and removes the kubeconfig. The archive's data stays.
func (c *Cluster) Stop() error {
	c.procs.stopAll()
	errs := []error{c.StopKueue()}
	if c.proxy != nil {
		c.proxy.Cut()
	}
	c.opts.Log("stopping kube-apiserver and etcd")
	errs = append(errs, c.ControlPlane.Stop())
	_ = os.Remove(c.Kubeconfig)
	if c.postgres != nil {
		c.opts.Log("stopping PostgreSQL (pid %d)", c.postgres.Pid())
		errs = append(errs, c.postgres.Stop())
	}
	return errors.Join(errs...)
}

// process is one child.
type process struct {
	*supervise.Process
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
func (ps *processes) start(name, logFile string, env []string, path string, args ...string) (*process, error) {
	exited := ps.exitedChan()
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	sp, err := supervise.Start(name, cmd, f)
	if err != nil {
		return nil, fmt.Errorf("starting %s (make tools-dev builds the control plane, make build the jobrun binary): %w", name, err)
	}
	p := &process{Process: sp}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	ps.log("started %s (pid %d, log %s)", name, p.Pid(), logFile)
	go func() {
		<-p.Done()
		ps.mu.Lock()
		stopped := p.stopped
		ps.mu.Unlock()
		if !stopped {
			exited <- fmt.Sprintf("%s (pid %d) exited: %v", name, p.Pid(), p.Err())
		}
	}()
	return p, nil
}

// alive reports whether p runs and was not stopped on purpose.
func (ps *processes) alive(p *process) bool {
	if p.Exited() {
		return false
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return !p.stopped
}

// stopping marks the live processes called name as stopped on purpose and
// returns them.
func (ps *processes) stopping(name string) []*process {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var out []*process
	for _, p := range ps.list {
		if p.Name == name && !p.stopped {
			p.stopped = true
			out = append(out, p)
		}
	}
	return out
}

func (ps *processes) kill(name string) {
	for _, p := range ps.stopping(name) {
		p.Kill()
		ps.log("killed %s (pid %d)", p.Name, p.Pid())
	}
}

// stop stops the live processes called name gracefully (see process.stop).
func (ps *processes) stop(name string) {
	for _, p := range ps.stopping(name) {
		p.stop(ps.log)
	}
}

// stopAll stops the children newest first.
func (ps *processes) stopAll() {
	ps.mu.Lock()
	list := append([]*process(nil), ps.list...)
	for _, p := range list {
		p.stopped = true
	}
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop(ps.log)
	}
}

// stop sends SIGTERM and SIGKILLs the process group after 15s.
func (p *process) stop(log func(string, ...any)) {
	if p.Exited() {
		return
	}
	log("stopping %s (pid %d)", p.Name, p.Pid())
	p.Stop(15*time.Second, func() { log("%s did not stop within 15s; killing it", p.Name) })
}
