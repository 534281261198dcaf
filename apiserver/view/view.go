// Package view is a run as the Jobs API shows it (spec/jobs-api.txt): its
// own type, separate from the CRD's, so that either can change without the
// other. The REST server (apiserver) answers with it, and the run archive's
// tests check that an archived run reads exactly as it did live.
package view

import (
	"encoding/json"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// JobRun is a run as the API shows it.
type JobRun struct {
	ID          string          `json:"id"`
	JobType     string          `json:"job_type"`
	Status      string          `json:"status"`
	TeamID      string          `json:"team_id"`
	ProjectID   string          `json:"project_id"`
	TriggeredBy string          `json:"triggered_by"`
	Params      json.RawMessage `json:"params"`
	Progress    *Progress       `json:"progress"`
	Result      json.RawMessage `json:"result"`
	Error       *string         `json:"error"`
	Notify      bool            `json:"notify"`
	StartedAt   *string         `json:"started_at"`
	CompletedAt *string         `json:"completed_at"`
	CreatedAt   string          `json:"created_at"`
}

// Progress is a run's last reported progress.
type Progress struct {
	Processed int64  `json:"processed"`
	Total     int64  `json:"total"`
	Message   string `json:"message"`
}

// TimestampFormat is RFC 3339 in UTC with milliseconds, as in the spec:
// 2024-01-15T10:30:01.000Z.
const TimestampFormat = "2006-01-02T15:04:05.000Z"

// FormatTime formats t as the API does.
func FormatTime(t time.Time) string { return t.UTC().Format(TimestampFormat) }

func formatMicroTime(t *metav1.MicroTime) *string {
	if t == nil {
		return nil
	}
	s := FormatTime(t.Time)
	return &s
}

// Of maps a JobRun to the API's representation.
func Of(run *jobsv1alpha1.JobRun) JobRun {
	out := JobRun{
		ID:          run.Name,
		JobType:     run.Spec.JobType,
		Status:      string(run.CurrentPhase()),
		TeamID:      run.Spec.TeamID,
		ProjectID:   run.Spec.ProjectID,
		TriggeredBy: run.Spec.TriggeredBy,
		Params:      json.RawMessage("{}"),
		Result:      json.RawMessage("null"),
		Notify:      run.Spec.Notify,
		StartedAt:   formatMicroTime(run.Status.StartedAt),
		CompletedAt: formatMicroTime(run.Status.CompletedAt),
		CreatedAt:   FormatTime(run.CreatedAt()),
	}
	if run.Spec.Params != nil && len(run.Spec.Params.Raw) > 0 {
		out.Params = run.Spec.Params.Raw
	}
	if p := run.Status.Progress; p != nil {
		out.Progress = &Progress{Processed: p.Processed, Total: p.Total, Message: p.Message}
	}
	if run.Status.Result != nil && len(run.Status.Result.Raw) > 0 {
		out.Result = run.Status.Result.Raw
	}
	if run.Status.Error != "" {
		out.Error = &run.Status.Error
	}
	return out
}
