// Package controlplane starts a real Kubernetes control plane (etcd and
// kube-apiserver, built from Go modules by hack/build-tools.sh) with jobrun's
// CRDs installed. The test suites and the local dev command both stand on it.
package controlplane

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
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
}

// NewScheme returns a scheme with the core Kubernetes kinds and jobrun's.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := jobsv1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
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
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{filepath.Join(opts.Root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		Scheme:                   scheme,
		AttachControlPlaneOutput: opts.AttachOutput,
	}
	for name, value := range opts.APIServerArgs {
		env.ControlPlane.GetAPIServer().Configure().Set(name, value)
	}
	cfg, err := env.Start()
	cp := &ControlPlane{Config: cfg, Scheme: scheme, AssetsDir: assets, env: env}
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
	return cp.env.Stop()
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
