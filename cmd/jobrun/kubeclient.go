package main

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobscheme "jobrun.dev/jobrun/internal/scheme"
)

// restConfig loads the client config of every role: from --kubeconfig, else
// $KUBECONFIG or in-cluster. Like controller-runtime's loader, it turns off
// client-go's client-side limit (5 requests/s), which made starting 20 runs
// at once take seconds: the API server's priority and fairness throttles.
func restConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = ctrl.GetConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("loading the Kubernetes client config: %w", err)
	}
	if cfg.QPS == 0 {
		cfg.QPS = -1
	}
	return cfg, nil
}

// newClient is a client of jobrun's scheme for the kubeconfig (as
// restConfig), for the roles that only read, watch and write objects.
func newClient(kubeconfig string) (client.WithWatch, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	scheme, err := jobscheme.New()
	if err != nil {
		return nil, err
	}
	return client.NewWithWatch(cfg, client.Options{Scheme: scheme})
}
