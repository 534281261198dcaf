// Package sdk is what a jobrun handler author imports: a Handler is a
// function of a context and a Run; Serve is the runner that executes one run
// inside its pod, reports progress, watches for cancellation and records the
// outcome in the run's status.
//
//	func sync(ctx context.Context, run *sdk.Run) (any, error) {
//		var p struct{ Items int `json:"items"` }
//		if err := run.Params(&p); err != nil {
//			return nil, err
//		}
//		for i := range p.Items {
//			if err := ctx.Err(); err != nil {
//				return nil, err // cancelled: return early
//			}
//			run.Progress(int64(i+1), int64(p.Items), "working")
//		}
//		return map[string]int{"synced": p.Items}, nil
//	}
package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Handler executes one run. It returns a JSON-encodable result, or an error.
// It must return soon after ctx is cancelled (a cancel request or the pod
// being stopped); returning ctx.Err() then marks the run cancelled.
type Handler func(ctx context.Context, run *Run) (result any, err error)

// Run is the run a handler executes.
type Run struct {
	// ID is the run id (the JobRun's name).
	ID string
	// Namespace is the JobRun's namespace.
	Namespace string
	// JobType is the job type string, such as demo_sync.
	JobType string
	// TeamID and ProjectID say whose run it is; empty for system runs.
	TeamID, ProjectID string
	// Attempt counts from 1.
	Attempt int
	// Client reads from the API server as the pod's service account (the
	// runner's RBAC: runs in Namespace, and whatever else it was granted,
	// such as integration Secrets).
	Client client.Reader

	params   []byte
	progress *progressReporter
}

// Params decodes the run's params (a JSON object) into v. Unknown fields are
// an error, so a typo in a trigger fails the run instead of being ignored.
func (r *Run) Params(v any) error {
	if len(r.params) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(r.params))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid params: %w", err)
	}
	return nil
}

// Progress reports how far the handler is. It is cheap: call it as often as
// you like; at most one status write per interval reaches the API server, and
// the last value is always written before the run ends.
func (r *Run) Progress(processed, total int64, message string) {
	if r.progress != nil {
		r.progress.set(processed, total, message)
	}
}
