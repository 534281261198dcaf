// Package kueuetest runs a real Kueue (internal/kueue: sigs.k8s.io/kueue's
// manager, built by hack/build-tools.sh kueue into bin/kueue/) against a
// test's control plane, for tests of pods that go through Kueue's admission.
package kueuetest

import (
	"context"
	"testing"
	"time"

	"jobrun.dev/jobrun/internal/controlplane"
	"jobrun.dev/jobrun/internal/kueue"
)

// The names tests use, as internal/kueue has them.
const (
	NamespaceLabel = kueue.NamespaceLabel
	QueueLabel     = kueue.QueueLabel
	AdmissionGate  = kueue.AdmissionGate
	ManagedLabel   = kueue.ManagedLabel
	Namespace      = kueue.Namespace
)

// Options tune Start (Dir is the test's own).
type Options = kueue.Options

// Kueue is a running Kueue manager.
type Kueue = kueue.Kueue

// Start starts Kueue on cp for the test (kueue.Start, in a temporary
// directory); at the test's cleanup it is stopped (webhooks first), and its
// log's tail is logged if the test failed.
func Start(t testing.TB, cp *controlplane.ControlPlane, opts Options) *Kueue {
	t.Helper()
	began := time.Now()
	opts.Dir = t.TempDir()
	k, err := kueue.Start(context.Background(), cp, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Stop(); err != nil {
			t.Errorf("stopping kueue: %v", err)
		}
		if t.Failed() {
			t.Logf("kueue log (last lines of %s/kueue.log):\n%s", k.Dir, k.LogTail(200))
		}
	})
	t.Logf("kueue ready in %s (log: %s/kueue.log)", time.Since(began).Round(time.Millisecond), k.Dir)
	return k
}
