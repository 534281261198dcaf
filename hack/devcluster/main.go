// Command devcluster is jobrun's local default (`make dev`): a real control
// plane on loopback with jobrun installed and running.
//
// It starts etcd and kube-apiserver (built by hack/build-tools.sh), installs
// the CRDs, starts kube-controller-manager (garbage collection, namespaces,
// service accounts) and kube-scheduler, writes an admin kubeconfig to
// .dev/kubeconfig, applies config/samples and runs the jobrun manager against
// it. Ctrl-C (or SIGTERM) stops everything, in reverse order.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"jobrun.dev/jobrun/internal/controlplane"
)

type options struct {
	root          string
	dir           string
	namespace     string
	manager       string
	probeAddr     string
	metricsAddr   string
	attachControl bool
}

func main() {
	var o options
	flag.StringVar(&o.root, "root", ".", "Repository root (CRDs, samples, bin/).")
	flag.StringVar(&o.dir, "dir", ".dev", "Folder for the kubeconfig and logs (git-ignored).")
	flag.StringVar(&o.namespace, "namespace", "jobrun-system", "Namespace of jobrun's objects and the manager's lease.")
	flag.StringVar(&o.manager, "manager", "bin/jobrun", "The jobrun binary to run as the manager.")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", "127.0.0.1:8081", "Manager's /healthz and /readyz.")
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", "127.0.0.1:8082", "Manager's /metrics (plain HTTP on loopback).")
	flag.BoolVar(&o.attachControl, "attach-control-plane-output", false, "Print etcd's and kube-apiserver's logs.")
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

func run(ctx context.Context, o options) (err error) {
	root, err := filepath.Abs(o.root)
	if err != nil {
		return err
	}
	dir := filepath.Join(root, o.dir)
	logsDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logsDir, 0o755); err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	// A kubeconfig left by an earlier run points at a dead server: remove it
	// so nobody uses it by mistake while this one starts.
	_ = os.Remove(kubeconfig)

	logf("starting etcd and kube-apiserver")
	cp, err := controlplane.Start(controlplane.Options{Root: root, AttachOutput: o.attachControl})
	defer func() {
		logf("stopping kube-apiserver and etcd")
		if stopErr := cp.Stop(); stopErr != nil {
			err = errors.Join(err, fmt.Errorf("stopping the control plane: %w", stopErr))
		}
		_ = os.Remove(kubeconfig)
	}()
	if err != nil {
		return err
	}
	if err := cp.WriteAdminKubeconfig(kubeconfig); err != nil {
		return err
	}
	kubectl := filepath.Join(cp.AssetsDir, "kubectl")
	kubeFlags := []string{"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig, "--leader-elect=false", "--secure-port=0"}

	procs := &processes{}
	defer procs.stopAll()

	if err := procs.start("kube-controller-manager", filepath.Join(logsDir, "kube-controller-manager.log"),
		filepath.Join(cp.AssetsDir, "kube-controller-manager"),
		append(kubeFlags, "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller")...); err != nil {
		return err
	}
	if err := procs.start("kube-scheduler", filepath.Join(logsDir, "kube-scheduler.log"),
		filepath.Join(cp.AssetsDir, "kube-scheduler"), kubeFlags...); err != nil {
		return err
	}

	c, err := client.New(cp.Config, client.Options{Scheme: cp.Scheme})
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.namespace}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", o.namespace, err)
	}
	logf("applying config/samples to namespace %s", o.namespace)
	apply := exec.CommandContext(ctx, kubectl, "--kubeconfig="+kubeconfig, "apply", "--server-side", "-n", o.namespace, "-k", filepath.Join(root, "config", "samples"))
	apply.Stdout, apply.Stderr = os.Stderr, os.Stderr
	if err := apply.Run(); err != nil {
		return fmt.Errorf("applying samples: %w", err)
	}

	manager := o.manager
	if !filepath.IsAbs(manager) {
		manager = filepath.Join(root, manager)
	}
	if err := procs.start("jobrun manager", "", manager, "manager",
		"--kubeconfig="+kubeconfig,
		"--leader-election-namespace="+o.namespace,
		"--health-probe-bind-address="+o.probeAddr,
		"--metrics-bind-address="+o.metricsAddr,
		"--metrics-secure=false",
	); err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, `
jobrun is running on a local control plane (%s).

  export KUBECONFIG=%s
  %s get jobruns,jobtypes,jobschedules,projects -n %s
  curl http://%s/readyz      # manager readiness
  curl http://%s/metrics     # manager metrics

Logs of kube-controller-manager and kube-scheduler: %s
Press Ctrl-C to stop everything.
`, cp.Config.Host, kubeconfig, kubectl, o.namespace, o.probeAddr, o.metricsAddr, logsDir)
	// The marker tells scripts and tests that everything is up.
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(cp.Config.Host+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(dir, "ready"))

	select {
	case <-ctx.Done():
		logf("stopping")
		return nil
	case p := <-procs.exited:
		return fmt.Errorf("%s exited unexpectedly: %v", p.name, p.err)
	}
}

// process is one child of devcluster.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// processes are devcluster's children; stopAll stops them newest first.
type processes struct {
	list   []*process
	exited chan *process
}

// start runs path with args, its output into logFile (or this process's
// stderr when empty). The child gets its own process group, so a Ctrl-C in
// the terminal reaches devcluster only and children stop in order, and dies
// with devcluster if devcluster is killed.
func (ps *processes) start(name, logFile, path string, args ...string) error {
	if ps.exited == nil {
		ps.exited = make(chan *process, 8)
	}
	cmd := exec.Command(path, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out io.Writer = os.Stderr
	if logFile != "" {
		f, err := os.Create(logFile)
		if err != nil {
			return err
		}
		out = f
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s (make tools-dev builds the control plane, make build the manager): %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	ps.list = append(ps.list, p)
	logf("started %s (pid %d)", name, cmd.Process.Pid)
	go func() {
		p.err = cmd.Wait()
		if f, ok := out.(*os.File); ok && f != os.Stderr {
			f.Close()
		}
		close(p.done)
		ps.exited <- p
	}()
	return nil
}

func (ps *processes) stopAll() {
	for i := len(ps.list) - 1; i >= 0; i-- {
		p := ps.list[i]
		select {
		case <-p.done:
			continue
		default:
		}
		logf("stopping %s (pid %d)", p.name, p.cmd.Process.Pid)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			logf("%s did not stop within 15s; killing it", p.name)
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
}
