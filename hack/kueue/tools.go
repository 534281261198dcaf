//go:build tools

// Package tools records the Kueue command built from this module
// (hack/build-tools.sh kueue), so that go mod tidy keeps its dependencies.
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
