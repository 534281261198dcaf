// Package handlers holds the job handlers built into the jobrun image.
package handlers

import (
	"context"
	"fmt"
	"os"
	"time"

	"jobrun.dev/jobrun/handlers/revenuecat"
	"jobrun.dev/jobrun/sdk"
)

// Builtin maps each built-in job type string to its handler.
func Builtin() map[string]sdk.Handler {
	return map[string]sdk.Handler{
		"demo_sync":        DemoSync,
		"demo_maintenance": DemoMaintenance,
		revenuecat.JobType: revenuecat.Handler(revenuecat.Options{
			IntegrationsNamespace: os.Getenv(revenuecat.EnvIntegrationsNamespace),
		}),
	}
}

// DemoSyncParams are demo_sync's params.
type DemoSyncParams struct {
	// Items is how many items to count through (default 100).
	Items *int64 `json:"items"`
	// ItemMS is how long each item takes, in milliseconds (default 100).
	ItemMS *int64 `json:"item_ms"`
	// FailAt makes the handler fail when it reaches that item (1-based), to
	// show a failed run.
	FailAt int64 `json:"fail_at,omitempty"`
	// IgnoreCancel makes the handler carry on after a cancel request, to
	// show the grace period ending it.
	IgnoreCancel bool `json:"ignore_cancel,omitempty"`
	// FinishAfterCancel makes the handler, once its last item is done, wait
	// for a cancel request and then return its result all the same: a
	// cancel that arrives after the work is done but before the runner has
	// recorded the result (the run completes; the cancel came too late).
	FinishAfterCancel bool `json:"finish_after_cancel,omitempty"`
}

// DemoSyncResult is demo_sync's result.
type DemoSyncResult struct {
	Processed int64 `json:"processed"`
	Total     int64 `json:"total"`
}

// DemoSync counts through params.items items, params.item_ms each, reporting
// progress after every item and returning early when cancelled.
func DemoSync(ctx context.Context, run *sdk.Run) (any, error) {
	p := DemoSyncParams{}
	if err := run.Params(&p); err != nil {
		return nil, err
	}
	items, itemMS := int64(100), int64(100)
	if p.Items != nil {
		items = *p.Items
	}
	if p.ItemMS != nil {
		itemMS = *p.ItemMS
	}
	if items < 0 || itemMS < 0 {
		return nil, fmt.Errorf("invalid params: items and item_ms must not be negative")
	}
	run.Progress(0, items, "starting")
	wait := ctx.Done()
	if p.IgnoreCancel {
		wait = nil // a badly behaved handler: only the grace period stops it
	}
	for i := int64(1); i <= items; i++ {
		select {
		case <-wait:
			return nil, ctx.Err()
		case <-time.After(time.Duration(itemMS) * time.Millisecond):
		}
		if i == p.FailAt {
			return nil, fmt.Errorf("item %d failed (fail_at)", i)
		}
		run.Progress(i, items, fmt.Sprintf("Processed %d of %d items", i, items))
	}
	if p.FinishAfterCancel {
		<-ctx.Done()
	}
	return DemoSyncResult{Processed: items, Total: items}, nil
}

// DemoMaintenance is the system job of the samples: it reports one step of
// progress and returns when done or cancelled.
func DemoMaintenance(ctx context.Context, run *sdk.Run) (any, error) {
	p := struct {
		DurationMS int64 `json:"duration_ms"`
	}{DurationMS: 1000}
	if err := run.Params(&p); err != nil {
		return nil, err
	}
	run.Progress(0, 1, "housekeeping")
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(time.Duration(p.DurationMS) * time.Millisecond):
	}
	run.Progress(1, 1, "done")
	return map[string]any{"ok": true}, nil
}
