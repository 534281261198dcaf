// Package realnode starts a real Kubernetes node on this machine, for tests
// that need what the dev node agent fakes: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler, containerd (with runc and the
// CNI bridge and host-local plugins), the kubelet and kube-proxy, all inside a
// network namespace of its own, so that nothing listens on or changes the
// host's network. Stop undoes everything Start did to the host: processes,
// mounts, cgroups, the sysctls the kubelet sets, the namespace and the work
// dir.
//
// It needs root, `ip netns`, nsenter, Debian's containerd, runc,
// containernetworking-plugins and iptables, and kubelet and kube-proxy in
// bin/k8s beside the control plane: `make tools-node` provides them.
// Usable reports what is missing.
package realnode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"jobrun.dev/jobrun/internal/controlplane"
)

// NodeName is the name of the cluster's one node.
const NodeName = "jobrun-node"

// Options configure a real-node cluster.
type Options struct {
	// Root is the repository root: binaries come from Root/bin/k8s (or
	// KUBEBUILDER_ASSETS), the pause image from Root/internal/realnode/pause.
	Root string
	// Dir is the work dir; empty: a new temporary one. Stop removes it.
	Dir string
	// Log receives progress lines.
	Log func(format string, args ...any)
}

// Cluster is a running real-node cluster.
type Cluster struct {
	// Netns is the network namespace's name, NetnsPath its handle.
	Netns, NetnsPath string
	// Dir is the work dir: certificates, kubeconfigs, every daemon's state
	// and log (Dir/logs/NAME.log).
	Dir string
	// Kubeconfig is an admin (system:masters) kubeconfig; its server,
	// https://10.99.0.1:6443, is reachable only inside the namespace: run
	// commands with Command.
	Kubeconfig string
	// Config is an admin client config whose connections are made inside
	// the namespace, usable from this process.
	Config *rest.Config
	// Client is a clientset for Config.
	Client kubernetes.Interface
	// Kubectl is kubectl's path.
	Kubectl string
	// CgroupRoot is the kubelet's cgroup root, in every hierarchy.
	CgroupRoot string
	// Sysctls are the values of Sysctls before the kubelet started.
	Sysctls map[string]string

	opts   Options
	assets string
	procs  []*process
	// created are the HostPaths that did not exist before Start.
	created []string
}

// Usable says why this machine cannot run a real node, or nil when it can.
func Usable(root string) error {
	if os.Geteuid() != 0 {
		return errors.New("a real node needs root (containerd, the kubelet, network namespaces)")
	}
	var missing []string
	for _, cmd := range []string{"ip", "nsenter", "unshare", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "go"} {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, cmd)
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, plugin)); err != nil {
			missing = append(missing, filepath.Join(cniBinDir, plugin))
		}
	}
	assets, err := controlplane.AssetsDir(root)
	if err != nil {
		return err
	}
	for _, bin := range []string{"kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			missing = append(missing, filepath.Join(assets, bin))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("a real node needs %s: run `make tools-node` (as root it installs the Debian packages)", strings.Join(missing, ", "))
	}
	if _, err := os.Stat("/sys/fs/cgroup/cpu"); err != nil {
		return fmt.Errorf("a real node here expects cgroup v1 hierarchies under /sys/fs/cgroup: %w", err)
	}
	// Network namespaces: try an anonymous one (`ip netns add` would
	// mount /run/netns).
	if out, err := exec.Command("unshare", "--net", "--", "true").CombinedOutput(); err != nil {
		return fmt.Errorf("network namespaces unavailable: unshare --net: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// cniBinDir is where Debian's containernetworking-plugins puts the plugins.
const cniBinDir = "/usr/lib/cni"

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start starts the cluster and returns once the node is Ready and the
// default service account exists. If it fails, it has already undone
// everything (the returned error says what failed and names the logs).
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
	if err := Usable(o.Root); err != nil {
		return nil, err
	}
	if err := sweepStale(o.Log); err != nil {
		return nil, err
	}
	assets, err := controlplane.AssetsDir(o.Root)
	if err != nil {
		return nil, err
	}
	id := randomHex(4)
	c = &Cluster{
		Netns:      "jobrun-" + id,
		CgroupRoot: "jobrun-" + id,
		Dir:        o.Dir,
		Kubectl:    filepath.Join(assets, "kubectl"),
		opts:       o,
		assets:     assets,
	}
	c.NetnsPath = netnsPath(c.Netns)
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "jobrun-realnode-"); err != nil {
			return nil, err
		}
	}
	if c.Sysctls, err = ReadSysctls(); err != nil {
		return nil, err
	}
	for _, p := range HostPaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			c.created = append(c.created, p)
		}
	}
	defer func() {
		if err != nil {
			// The work dir goes with the rest: the error carries the
			// end of every daemon's log.
			var logs strings.Builder
			for _, p := range c.procs {
				fmt.Fprintf(&logs, "\n--- %s's log ends:\n%s", p.Name, tail(p.log, 8))
			}
			err = fmt.Errorf("%w%s", err, logs.String())
			o.Log("start failed, tearing down: %v", err)
			if serr := c.stop(false); serr != nil {
				err = errors.Join(err, fmt.Errorf("and tearing down: %w", serr))
			}
			c = nil
		}
	}()
	if err := c.writeRecord(); err != nil {
		return c, err
	}
	begin := time.Now()
	if err := createNetns(ctx, c.Netns); err != nil {
		return c, err
	}
	if err := createCgroupRoot(c.CgroupRoot); err != nil {
		return c, err
	}
	for _, sub := range []string{"pki", "logs", "etcd", "containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "volume-plugins"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, sub), 0o755); err != nil {
			return c, err
		}
	}
	if err := c.startControlPlane(ctx); err != nil {
		return c, err
	}
	o.Log("control plane ready after %s", time.Since(begin).Round(100*time.Millisecond))
	if err := c.startNode(ctx); err != nil {
		return c, err
	}
	o.Log("node %s Ready after %s", NodeName, time.Since(begin).Round(100*time.Millisecond))
	return c, nil
}

const apiServer = "https://" + nodeIP + ":6443"

func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.Dir}, parts...)...)
}

func (c *Cluster) startControlPlane(ctx context.Context) error {
	ca, err := newAuthority()
	if err != nil {
		return err
	}
	pki := c.path("pki")
	if err := os.WriteFile(filepath.Join(pki, "ca.crt"), ca.certPEM, 0o644); err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.issue("kube-apiserver", nil,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP(nodeIP), net.ParseIP("127.0.0.1"), net.ParseIP(apiServiceIP)})
	if err != nil {
		return err
	}
	servingCert, servingKey, err := writePair(pki, "apiserver", certPEM, keyPEM)
	if err != nil {
		return err
	}
	// The API server's identity towards the kubelet (logs, exec): the
	// kubelet authorizes it with a SubjectAccessReview.
	certPEM, keyPEM, err = ca.issue("kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	kubeletClientCert, kubeletClientKey, err := writePair(pki, "apiserver-kubelet-client", certPEM, keyPEM)
	if err != nil {
		return err
	}
	saPub, saKey, err := writeServiceAccountKey(pki)
	if err != nil {
		return err
	}
	c.Kubeconfig = c.path("admin.kubeconfig")
	kubeconfigs := map[string][]string{
		c.Kubeconfig:                    {"jobrun-admin", "system:masters"},
		c.path("kubelet.kubeconfig"):    {"system:node:" + NodeName, "system:nodes"},
		c.path("kube-proxy.kubeconfig"): {"system:kube-proxy"},
	}
	for path, user := range kubeconfigs {
		if err := ca.writeKubeconfig(path, apiServer, user[0], user[1:]...); err != nil {
			return err
		}
	}
	if err := c.loadConfig(); err != nil {
		return err
	}

	if _, err := c.start(ctx, "etcd", filepath.Join(c.assets, "etcd"),
		"--data-dir="+c.path("etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=default=http://127.0.0.1:2380", "--name=default",
		"--listen-metrics-urls=", "--unsafe-no-fsync=true"); err != nil {
		return err
	}
	api, err := c.start(ctx, "kube-apiserver", filepath.Join(c.assets, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--secure-port=6443", "--advertise-address="+nodeIP,
		"--tls-cert-file="+servingCert, "--tls-private-key-file="+servingKey,
		"--client-ca-file="+filepath.Join(pki, "ca.crt"),
		"--authorization-mode=Node,RBAC",
		"--kubelet-client-certificate="+kubeletClientCert, "--kubelet-client-key="+kubeletClientKey,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+serviceCIDR,
		"--allow-privileged=true",
		"--cert-dir="+pki)
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver /readyz", 2*time.Minute, api, func(ctx context.Context) error {
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		return nil
	}); err != nil {
		return err
	}
	admin := "--kubeconfig=" + c.Kubeconfig
	if _, err := c.start(ctx, "kube-controller-manager", filepath.Join(c.assets, "kube-controller-manager"),
		admin, "--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1",
		"--service-account-private-key-file="+saKey, "--root-ca-file="+filepath.Join(pki, "ca.crt"),
		"--use-service-account-credentials=true", "--service-cluster-ip-range="+serviceCIDR,
		"--flex-volume-plugin-dir="+c.path("volume-plugins"),
		"--controllers=*"); err != nil {
		return err
	}
	_, err = c.start(ctx, "kube-scheduler", filepath.Join(c.assets, "kube-scheduler"),
		admin, "--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		"--leader-elect=false", "--bind-address=127.0.0.1")
	return err
}

// loadConfig makes Config and Client from the admin kubeconfig, dialling
// inside the namespace.
func (c *Cluster) loadConfig() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.Dial = netnsDialer(c.NetnsPath)
	cfg.QPS, cfg.Burst = 50, 100
	c.Config = cfg
	c.Client, err = kubernetes.NewForConfig(cfg)
	return err
}

func (c *Cluster) startNode(ctx context.Context) error {
	socket := c.path("containerd", "containerd.sock")
	if err := os.WriteFile(c.path("containerd", "config.toml"), []byte(c.containerdConfig(socket)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("cni", "net.d", "10-jobrun.conflist"), []byte(c.cniConfig()), 0o644); err != nil {
		return err
	}
	containerd, err := c.start(ctx, "containerd", "containerd", "--config="+c.path("containerd", "config.toml"))
	if err != nil {
		return err
	}
	if err := c.waitFor(ctx, "containerd's socket", time.Minute, containerd, func(ctx context.Context) error {
		out, err := exec.CommandContext(ctx, "ctr", "-a", socket, "version").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}); err != nil {
		return err
	}
	archive := c.path("pause.tar")
	if err := buildPauseImage(ctx, c.opts.Root, c.Dir, archive); err != nil {
		return err
	}
	if err := importImage(ctx, socket, archive); err != nil {
		return err
	}
	if err := os.WriteFile(c.path("kubelet.yaml"), []byte(c.kubeletConfig(socket)), 0o644); err != nil {
		return err
	}
	kubelet, err := c.start(ctx, "kubelet", filepath.Join(c.assets, "kubelet"),
		"--config="+c.path("kubelet.yaml"),
		"--kubeconfig="+c.path("kubelet.kubeconfig"),
		"--root-dir="+c.path("kubelet"),
		"--cert-dir="+c.path("kubelet", "pki"),
		"--node-ip="+nodeIP,
		"--hostname-override="+NodeName,
		"--v=2")
	if err != nil {
		return err
	}
	if _, err := c.start(ctx, "kube-proxy", filepath.Join(c.assets, "kube-proxy"),
		"--kubeconfig="+c.path("kube-proxy.kubeconfig"),
		"--proxy-mode=iptables",
		"--hostname-override="+NodeName,
		"--cluster-cidr="+podCIDR,
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0s", "--conntrack-tcp-timeout-close-wait=0s",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256"); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "node "+NodeName+" Ready", 3*time.Minute, kubelet, func(ctx context.Context) error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("Ready=%s: %s", cond.Status, cond.Message)
			}
		}
		return errors.New("no Ready condition yet")
	}); err != nil {
		return err
	}
	// Pods need their namespace's default service account, which
	// kube-controller-manager creates.
	return c.waitFor(ctx, "the default service account", 2*time.Minute, nil, func(ctx context.Context) error {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

func (c *Cluster) containerdConfig(socket string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[7]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[9]q
`, c.path("containerd", "root"), c.path("containerd", "state"), socket, socket+".ttrpc",
		c.path("containerd", "opt"), PauseImage, c.path("containerd", "runc"), cniBinDir, c.path("cni", "net.d"))
}

func (c *Cluster) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "jobrun",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    }
  ]
}
`, podCIDR, c.path("cni", "ipam"))
}

func (c *Cluster) kubeletConfig(socket string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[2]s
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: /%[3]s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%[4]s
podLogsDir: %[5]s
volumePluginDir: %[6]s
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
staticPodPath: ""
`, nodeIP, c.path("pki", "ca.crt"), c.CgroupRoot, socket, c.path("pod-logs"), c.path("volume-plugins"))
}

// waitFor polls check every 500 ms until it succeeds, proc (if any) exits,
// bound passes or ctx ends; the error names what it waited for and the last
// failure.
func (c *Cluster) waitFor(parent context.Context, what string, bound time.Duration, proc *process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(parent, bound)
	defer cancel()
	var exited <-chan struct{}
	if proc != nil {
		exited = proc.Done()
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("waiting for %s: %s exited: %v; its log ends:\n%s", what, proc.Name, proc.Err(), tail(proc.log, 20))
		case <-ctx.Done():
			if parent.Err() != nil {
				return fmt.Errorf("waiting for %s: %w; last: %w", what, parent.Err(), last)
			}
			return fmt.Errorf("waiting for %s: not within %s: %w", what, bound, last)
		case <-tick.C:
		}
	}
}

// Command returns a command that runs inside the namespace.
func (c *Cluster) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + c.NetnsPath, "--", name}, args...)...)
}

// KubectlCommand returns kubectl with the admin kubeconfig and args,
// inside the namespace.
func (c *Cluster) KubectlCommand(ctx context.Context, args ...string) *exec.Cmd {
	return c.Command(ctx, c.Kubectl, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
}

// HTTPClient returns a client whose connections are made inside the
// namespace, to reach pods and Services.
func (c *Cluster) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: netnsDialer(c.NetnsPath), DisableKeepAlives: true}, Timeout: 10 * time.Second}
}

// Stop stops everything and undoes what Start did to the host: every
// process it started (and containerd's shims and containers), the mounts
// under Dir, the cgroups under CgroupRoot, Sysctls, the namespace, Dir, its
// record in StateDir. (A cluster whose process died without Stop is undone
// by the next Start.)
func (c *Cluster) Stop() error {
	if c == nil {
		return nil
	}
	return c.stop(true)
}

func (c *Cluster) stop(graceful bool) error {
	var errs []error
	// Reverse order: the node first, then the control plane.
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(graceful)
	}
	// containerd's shims left its process group and outlive it; they
	// and the containers die here.
	if err := killProcessesUsing(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(c.CgroupRoot); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("unmounting under %s: %w", c.Dir, err))
	}
	if c.Sysctls != nil {
		if err := writeSysctls(c.Sysctls); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Netns != "" {
		if err := deleteNetns(c.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCreated(c.created); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		// Only with nothing mounted any more: RemoveAll must not reach
		// into a mount.
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		} else if err := c.removeRecord(); err != nil {
			errs = append(errs, err)
		}
	} else {
		errs = append(errs, fmt.Errorf("work dir %s kept", c.Dir))
	}
	return errors.Join(errs...)
}
