// Package scheme is the one runtime.Scheme of jobrun's clients: the core
// Kubernetes kinds and jobrun's. It imports no test machinery, so the
// production binary can use it (internal/controlplane, which starts envtest,
// cannot be linked into it).
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// New returns a scheme with the core Kubernetes kinds and jobrun's.
func New() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := jobsv1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}
