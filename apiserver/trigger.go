package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/google/uuid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/guard"
	"jobrun.dev/jobrun/internal/paramschema"
)

// The REST API creates runs and their guards and reads job types and projects.
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobruns,verbs=create,namespace=system
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=projects,verbs=get;list;watch,namespace=system
// +kubebuilder:rbac:groups=jobs.jobrun.dev,resources=jobtypes,verbs=get;list;watch,namespace=system
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;create;delete,namespace=system

const (
	// maxTriggerBody bounds a trigger request, params included.
	maxTriggerBody = 64 << 10
)

// triggerRequest is the body of POST /v1/teams/{teamId}/jobs/trigger.
type triggerRequest struct {
	JobType   string          `json:"job_type"`
	ProjectID string          `json:"project_id"`
	Params    json.RawMessage `json:"params"`
	Notify    bool            `json:"notify"`
}

// decodeTrigger reads the body of a trigger: one JSON object of known
// fields, at most maxTriggerBody bytes, with a job_type and params that are
// an object ({} when absent or null).
func decodeTrigger(w http.ResponseWriter, r *http.Request) (*triggerRequest, error) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxTriggerBody))
	dec.DisallowUnknownFields()
	req := &triggerRequest{}
	if err := dec.Decode(req); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request_too_large", fmt.Sprintf("request body exceeds %d bytes", maxTriggerBody))
		}
		return nil, badRequest("malformed request body: %v", err)
	}
	if dec.More() {
		return nil, badRequest("request body must hold one JSON object")
	}
	if req.JobType == "" {
		return nil, badRequest("job_type is required")
	}
	if len(req.Params) > 0 && string(req.Params) != "null" {
		var obj map[string]any
		if err := json.Unmarshal(req.Params, &obj); err != nil {
			return nil, badRequest("params must be a JSON object")
		}
	} else {
		req.Params = json.RawMessage("{}")
	}
	return req, nil
}

// trigger serves POST /v1/teams/{teamId}/jobs/trigger.
func (tr teamsResource) trigger(w http.ResponseWriter, r *http.Request) {
	req, err := decodeTrigger(w, r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	run, err := tr.s.triggerRun(r.Context(), principalFrom(r.Context()), teamFrom(r.Context()), req)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"job_run": toJobRun(run)})
}

// triggerRun checks the request against the JobType and Project, takes the
// (job type, project) guard and creates the run.
func (s *Server) triggerRun(ctx context.Context, p *Principal, team string, req *triggerRequest) (*jobsv1alpha1.JobRun, error) {
	params, err := s.checkTrigger(ctx, team, req)
	if err != nil {
		return nil, err
	}
	run := jobsv1alpha1.NewJobRun(s.namespace, uuid.NewString(), jobsv1alpha1.JobRunSpec{
		JobType: req.JobType, TeamID: team, ProjectID: req.ProjectID, Params: params,
		Notify: req.Notify, NotifyEmail: p.Email, TriggeredBy: p.TriggeredBy(),
	}, s.now())
	if s.archive != nil {
		// Created with the archive's finalizer: no write to add it later.
		controllerutil.AddFinalizer(run, jobsv1alpha1.FinalizerArchive)
	}
	return s.createGuarded(ctx, run)
}

// checkTrigger checks a trigger of team against its JobType (one that
// exists, not a system one) and Project (one of team's), and its params
// against the JobType's schema; it returns the params.
func (s *Server) checkTrigger(ctx context.Context, team string, req *triggerRequest) (*runtime.RawExtension, error) {
	if !jobsv1alpha1.MatchesJobTypePattern(req.JobType) || len(req.JobType) > 63 {
		return nil, badRequest("invalid job_type %q", req.JobType)
	}
	jt := &jobsv1alpha1.JobType{}
	err := s.getConfig(ctx, client.ObjectKey{Namespace: s.namespace, Name: jobsv1alpha1.JobTypeObjectName(req.JobType)}, jt)
	if apierrors.IsNotFound(err) || (err == nil && jt.Spec.JobType != req.JobType) {
		return nil, badRequest("invalid job_type %q: no such job type", req.JobType)
	}
	if err != nil {
		return nil, err
	}
	if jt.Spec.Scope == jobsv1alpha1.JobTypeScopeSystem {
		return nil, badRequest("job_type %q is a system job type: it runs on its schedule and cannot be triggered", req.JobType)
	}
	if req.ProjectID == "" {
		return nil, badRequest("project_id is required for job type %q", req.JobType)
	}
	if !validObjectName(req.ProjectID) {
		return nil, badRequest("project_id %q does not belong to team %s", req.ProjectID, team)
	}
	project := &jobsv1alpha1.Project{}
	err = s.getConfig(ctx, client.ObjectKey{Namespace: s.namespace, Name: req.ProjectID}, project)
	if client.IgnoreNotFound(err) != nil {
		return nil, err
	}
	if err != nil || project.Spec.TeamID != team {
		return nil, badRequest("project_id %q does not belong to team %s", req.ProjectID, team)
	}
	params := &runtime.RawExtension{Raw: req.Params}
	if err := paramschema.Validate(jt.Spec.ParamsSchema, params); err != nil {
		if errors.Is(err, paramschema.ErrInvalidSchema) {
			return nil, err // the JobType's fault: a 500 with a log line
		}
		return nil, badRequest("invalid params: %v", err)
	}
	return params, nil
}

// createGuarded creates run by the guard protocol (internal/guard): take the
// pair's guard for the run, then create the run; the JobRun controller
// releases it when the run ends. A busy pair is a 409 naming its run.
func (s *Server) createGuarded(ctx context.Context, run *jobsv1alpha1.JobRun) (*jobsv1alpha1.JobRun, error) {
	lease, err := s.guards.Take(ctx, run)
	var held *guard.HeldError
	if errors.As(err, &held) {
		return nil, conflict(held.Holder)
	}
	if err != nil {
		return nil, err
	}
	if err := s.writer.Create(ctx, run); err != nil {
		if ambiguous(err) {
			// The create may have reached the API server with only its
			// answer lost: releasing the guard now could let the client's
			// retry start a second run. Ask the API server first.
			created, exists, rerr := s.createdAnyway(ctx, run)
			switch {
			case exists:
				return created, nil
			case rerr != nil:
				// Cannot tell: keep the guard. If the run does not exist,
				// the guard goes stale (internal/guard) and the pair is free.
				logf.FromContext(ctx).Error(rerr, "cannot tell whether a run whose create failed exists; keeping its guard", "run", run.Name, "guard", lease.Name)
				return nil, err
			}
		}
		if derr := s.guards.Abandon(context.WithoutCancel(ctx), lease); derr != nil {
			logf.FromContext(ctx).Error(derr, "releasing the guard of a run that was not created", "guard", lease.Name)
		}
		return nil, err
	}
	return run, nil
}

// ambiguous says whether a failed create may have been carried out: the
// request was sent, but its answer was lost (a connection reset or closed
// after sending, a timeout). A connection that was never made is not.
func ambiguous(err error) bool {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return false
	}
	return unreachable(err) || apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err)
}

// createdAnyway looks for run, whose create failed ambiguously, on the API
// server for a short while (a create whose connection dropped may still be
// landing). It reports the run when it exists, and an error when the API
// server could not be asked.
func (s *Server) createdAnyway(ctx context.Context, run *jobsv1alpha1.JobRun) (*jobsv1alpha1.JobRun, bool, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var lastErr error
	for _, wait := range []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, time.Second} {
		select {
		case <-ctx.Done():
			return nil, false, errors.Join(ctx.Err(), lastErr)
		case <-time.After(wait):
		}
		got := &jobsv1alpha1.JobRun{}
		err := s.reader.Get(ctx, client.ObjectKeyFromObject(run), got)
		switch {
		case err == nil:
			return got, true, nil
		case apierrors.IsNotFound(err):
			lastErr = nil
		default:
			lastErr = err
		}
	}
	return nil, false, lastErr
}

func conflict(existingRunID string) *apiError {
	e := errorf(http.StatusConflict, codeConflict, "a job of this type is already pending or running for this project")
	e.extra = map[string]any{"existing_run_id": existingRunID}
	return e
}
