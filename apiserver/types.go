package apiserver

import (
	"encoding/json"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// jobRun is a run as the Jobs API shows it (spec/jobs-api.txt): its own
// type, separate from the CRD's, so that either can change without the other.
type jobRun struct {
	ID          string          `json:"id"`
	JobType     string          `json:"job_type"`
	Status      string          `json:"status"`
	TeamID      string          `json:"team_id"`
	ProjectID   string          `json:"project_id"`
	TriggeredBy string          `json:"triggered_by"`
	Params      json.RawMessage `json:"params"`
	Progress    *progress       `json:"progress"`
	Result      json.RawMessage `json:"result"`
	Error       *string         `json:"error"`
	Notify      bool            `json:"notify"`
	StartedAt   *string         `json:"started_at"`
	CompletedAt *string         `json:"completed_at"`
	CreatedAt   string          `json:"created_at"`
}

type progress struct {
	Processed int64  `json:"processed"`
	Total     int64  `json:"total"`
	Message   string `json:"message"`
}

// timestampFormat is RFC 3339 in UTC with milliseconds, as in the spec:
// 2024-01-15T10:30:01.000Z.
const timestampFormat = "2006-01-02T15:04:05.000Z"

func formatTime(t time.Time) string { return t.UTC().Format(timestampFormat) }

func formatMicroTime(t *metav1.MicroTime) *string {
	if t == nil {
		return nil
	}
	s := formatTime(t.Time)
	return &s
}

var jsonNull = json.RawMessage("null")

// toJobRun maps a JobRun to the API's representation.
func toJobRun(run *jobsv1alpha1.JobRun) jobRun {
	out := jobRun{
		ID:          run.Name,
		JobType:     run.Spec.JobType,
		Status:      string(run.CurrentPhase()),
		TeamID:      run.Spec.TeamID,
		ProjectID:   run.Spec.ProjectID,
		TriggeredBy: run.Spec.TriggeredBy,
		Params:      json.RawMessage("{}"),
		Result:      jsonNull,
		Notify:      run.Spec.Notify,
		StartedAt:   formatMicroTime(run.Status.StartedAt),
		CompletedAt: formatMicroTime(run.Status.CompletedAt),
		CreatedAt:   formatTime(run.CreatedAt()),
	}
	if run.Spec.Params != nil && len(run.Spec.Params.Raw) > 0 {
		out.Params = run.Spec.Params.Raw
	}
	if p := run.Status.Progress; p != nil {
		out.Progress = &progress{Processed: p.Processed, Total: p.Total, Message: p.Message}
	}
	if run.Status.Result != nil && len(run.Status.Result.Raw) > 0 {
		out.Result = run.Status.Result.Raw
	}
	if run.Status.Error != "" {
		out.Error = &run.Status.Error
	}
	return out
}
