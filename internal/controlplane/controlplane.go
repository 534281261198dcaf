// Package controlplane starts a real Kubernetes control plane (etcd and
// kube-apiserver, built from Go modules by hack/build-tools.sh) with jobrun's
// CRDs installed. The test suites and the local dev command both stand on it.
package controlplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	jobscheme "jobrun.dev/jobrun/internal/scheme"
)

// Options say where the project lives and how to start.
type Options struct {
	// Root is the repository root: CRDs come from Root/config/crd/bases and,
	// unless KUBEBUILDER_ASSETS is set, binaries from Root/bin/k8s.
	Root string
	// AttachOutput sends etcd's and kube-apiserver's logs to this process's
	// stdout and stderr.
	AttachOutput bool
	// APIServerArgs are extra kube-apiserver flags, name to value.
	APIServerArgs map[string]string
}

// ControlPlane is a running etcd and kube-apiserver with jobrun's CRDs.
type ControlPlane struct {
	// Config is an admin (system:masters) client config.
	Config *rest.Config
	// Scheme knows the core kinds and jobrun's.
	Scheme *runtime.Scheme
	// AssetsDir holds kube-apiserver, etcd and kubectl.
	AssetsDir string

	env *envtest.Environment
	// dir holds etcd's data and kube-apiserver's certificates and
	// service-account keys, kept across StopAPIServer/StartAPIServer.
	dir string
}

// AssetsDir is where the control-plane binaries are: KUBEBUILDER_ASSETS when
// set, else root/bin/k8s. It fails with the command to run when they are
// missing, rather than letting envtest try to download them.
func AssetsDir(root string) (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join(root, "bin", "k8s")
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return "", fmt.Errorf("control-plane binary %s missing in %s: run `make tools` first: %w", name, dir, err)
		}
	}
	return dir, nil
}

// Start starts etcd and kube-apiserver and installs the CRDs. The caller must
// call Stop, also when a later step fails.
func Start(opts Options) (*ControlPlane, error) {
	assets, err := AssetsDir(opts.Root)
	if err != nil {
		return nil, err
	}
	scheme, err := jobscheme.New()
	if err != nil {
		return nil, err
	}
	// etcd's data and the API server's certificates and service-account
	// keys live in a folder of ours, not envtest's temporary ones, so that
	// a restart (StopAPIServer, StartAPIServer) keeps them: every client
	// certificate and service-account token stays valid.
	dir, err := os.MkdirTemp("", "jobrun-controlplane-")
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"etcd", "apiserver"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, errors.Join(err, os.RemoveAll(dir))
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{filepath.Join(opts.Root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		Scheme:                   scheme,
		AttachControlPlaneOutput: opts.AttachOutput,
		// kube-apiserver drains open watches on SIGTERM, which can take
		// minutes; after this it is SIGKILLed, as a crashed one would be.
		ControlPlaneStopTimeout: stopTimeout,
	}
	env.ControlPlane.Etcd = &envtest.Etcd{DataDir: filepath.Join(dir, "etcd")}
	env.ControlPlane.GetAPIServer().CertDir = filepath.Join(dir, "apiserver")
	for name, value := range opts.APIServerArgs {
		env.ControlPlane.GetAPIServer().Configure().Set(name, value)
	}
	cfg, err := env.Start()
	cp := &ControlPlane{Config: cfg, Scheme: scheme, AssetsDir: assets, env: env, dir: dir}
	if err != nil {
		return cp, fmt.Errorf("starting etcd and kube-apiserver from %s: %w", assets, err)
	}
	return cp, nil
}

// Stop stops kube-apiserver and etcd and removes their data.
func (cp *ControlPlane) Stop() error {
	if cp == nil || cp.env == nil {
		return nil
	}
	return errors.Join(cp.StopAPIServer(), os.RemoveAll(cp.dir))
}

// stopTimeout is how long kube-apiserver and etcd get to stop after
// SIGTERM before they are SIGKILLed.
const stopTimeout = 5 * time.Second

// StopAPIServer stops kube-apiserver and etcd, as a control-plane restart
// does (SIGTERM; SIGKILL after 5 s, which kube-apiserver often needs while
// clients hold watches open); StartAPIServer starts them again.
func (cp *ControlPlane) StopAPIServer() error {
	api := cp.env.ControlPlane.GetAPIServer()
	err := api.Stop()
	if err != nil && strings.Contains(err.Error(), "timeout waiting for process") {
		// SIGKILLed: wait until its port is free for the restart.
		addr := api.SecureServing.ListenAddr.HostPort()
		deadline := time.Now().Add(30 * time.Second)
		for err != nil && time.Now().Before(deadline) {
			conn, derr := net.DialTimeout("tcp", addr, time.Second)
			if derr != nil {
				err = nil
				break
			}
			conn.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}
	return errors.Join(err, cp.env.ControlPlane.Etcd.Stop())
}

// StartAPIServer starts etcd and kube-apiserver again after StopAPIServer,
// on the same addresses with the same data, certificates and
// service-account keys, and returns once the API server is healthy.
func (cp *ControlPlane) StartAPIServer() error {
	if err := cp.env.ControlPlane.Etcd.Start(); err != nil {
		return fmt.Errorf("restarting etcd: %w", err)
	}
	if err := cp.env.ControlPlane.GetAPIServer().Start(); err != nil {
		return fmt.Errorf("restarting kube-apiserver: %w", err)
	}
	return nil
}

// WriteAdminKubeconfig writes a kubeconfig for a system:masters user to path,
// for kubectl and for processes such as kube-controller-manager.
func (cp *ControlPlane) WriteAdminKubeconfig(path string) error {
	user, err := cp.env.AddUser(envtest.User{Name: "jobrun-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding admin user: %w", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("rendering admin kubeconfig: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}
