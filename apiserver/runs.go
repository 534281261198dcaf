package apiserver

import (
	"context"
	"net/http"

	"github.com/go-chi/chi/v5"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// runsResource serves /v1/jobs/{runId}: one run, and its cancellation.
type runsResource struct {
	s *Server
}

func (rr runsResource) routes(r chi.Router) {
	r.With(rr.s.timeout, rr.s.auth, rr.runCtx(PermJobsRead, false)).Get("/{runId}", rr.get)
	r.With(rr.s.timeout, rr.s.auth, rr.runCtx(PermJobsWrite, true)).Post("/{runId}/cancel", rr.cancel)
	// A stream outlives any request timeout; it loads its run itself,
	// after subscribing (streams.go).
	r.With(rr.s.streamAuth).Get("/{runId}/events", rr.events)
}

// runKey is the context key of the run a /v1/jobs/{runId} route acts on.
type runKey struct{}

// runCtx is the middleware that loads the path's run with visibleRun (perm,
// live) and answers its error; the handler finds the run with runFrom.
func (rr runsResource) runCtx(perm string, live bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			run, err := rr.visibleRun(r, perm, live)
			if err != nil {
				writeError(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), runKey{}, run)))
		})
	}
}

// runFrom is the run runCtx loaded; a shared one for a read route, so the
// handler must not change it, and the API server's for a write route.
func runFrom(ctx context.Context) *jobsv1alpha1.JobRun {
	run, _ := ctx.Value(runKey{}).(*jobsv1alpha1.JobRun)
	return run
}

// visibleRun reads the run and returns it only if the caller may see it;
// otherwise 404, never 403, so run ids of other teams cannot be probed. A
// JWT user sees the runs of their teams; an API key needs perm. A read
// (live false) comes from the run index, consistently (a run is visible the
// moment its trigger returned, on every replica) and is shared; a cancel
// (live true) reads the API server, since it writes what it read.
func (rr runsResource) visibleRun(r *http.Request, perm string, live bool) (*jobsv1alpha1.JobRun, error) {
	p := principalFrom(r.Context())
	notFound := errorf(http.StatusNotFound, codeNotFound, "job run not found")
	id := chi.URLParam(r, "runId")
	if !validObjectName(id) {
		return nil, notFound // no run can have that name (e.g. "../x")
	}
	var run *jobsv1alpha1.JobRun
	if live {
		run = &jobsv1alpha1.JobRun{}
		err := rr.s.reader.Get(r.Context(), client.ObjectKey{Namespace: rr.s.namespace, Name: id}, run)
		if apierrors.IsNotFound(err) && rr.s.archive != nil {
			// Gone from the API server: archived (finished), or none.
			if run, err = getArchived(r.Context(), rr.s.archive, rr.s.namespace, id); err != nil {
				return nil, err
			}
			if run == nil {
				return nil, notFound
			}
		} else if apierrors.IsNotFound(err) {
			return nil, notFound
		}
		if err != nil {
			return nil, err
		}
	} else {
		var err error
		if run, err = rr.s.lister.GetRun(r.Context(), rr.s.namespace, id); err != nil {
			return nil, err
		}
		if run == nil {
			return nil, notFound
		}
	}
	if err := runAccess(p, run, perm); err != nil {
		return nil, err
	}
	return run, nil
}

// runAccess is nil if p may act on run with perm; else a 404 (not its
// team's: the run is not shown to exist) or a 403.
func runAccess(p *Principal, run *jobsv1alpha1.JobRun, perm string) error {
	if !p.InTeam(run.Spec.TeamID) {
		return errorf(http.StatusNotFound, codeNotFound, "job run not found")
	}
	if p.Kind != "user" && !p.Can(run.Spec.TeamID, perm) {
		return errorf(http.StatusForbidden, codeForbidden, "this credential lacks "+perm)
	}
	return nil
}

// get serves GET /v1/jobs/{runId}.
func (rr runsResource) get(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"job_run": toJobRun(runFrom(r.Context()))})
}

// The cancel route patches the run's annotations.
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobruns,verbs=patch,namespace=system

// cancel serves POST /v1/jobs/{runId}/cancel: it asks a running run to stop
// by annotating it; the runner and the controller do the rest.
func (rr runsResource) cancel(w http.ResponseWriter, r *http.Request) {
	if err := rr.s.cancelRun(r.Context(), runFrom(r.Context())); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"cancelled": true})
}

// cancelRun asks run, read from the API server, to stop: a 400 unless it
// is running.
func (s *Server) cancelRun(ctx context.Context, run *jobsv1alpha1.JobRun) error {
	if run.CurrentPhase() != jobsv1alpha1.JobRunRunning {
		return errorf(http.StatusBadRequest, codeInvalidRequest, "job is not in running status (it is "+string(run.CurrentPhase())+")")
	}
	patch := client.MergeFrom(run.DeepCopy())
	if run.RequestCancel(s.now()) {
		return s.writer.Patch(ctx, run, patch)
	}
	return nil
}
