// Package probes holds the readiness checks of jobrun's processes.
package probes

import (
	"fmt"
	"net/http"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// KindsServed is ready while the API server serves every kind named, in gv.
// It asks through mapper, which caches discovery and refreshes it when a
// kind is missing, so a CRD installed after start makes the process ready.
func KindsServed(mapper meta.RESTMapper, gv schema.GroupVersion, kinds ...string) healthz.Checker {
	return func(_ *http.Request) error {
		for _, kind := range kinds {
			if _, err := mapper.RESTMapping(gv.WithKind(kind).GroupKind(), gv.Version); err != nil {
				return fmt.Errorf("kind %s of %s is not served (are the CRDs installed?): %w", kind, gv, err)
			}
		}
		return nil
	}
}
