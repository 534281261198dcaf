package archive

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// columns are the row's columns in the order of row's fields, for every
// statement that writes or reads whole rows.
const columns = "namespace, id, team_id, project_id, job_type, status, created_at, started_at, " +
	"completed_at, triggered_by, notify, params, progress, result, error, attempts, reason"

// row is a run as the table holds it. JSON columns are JSON text (nil:
// NULL).
type row struct {
	namespace, id, teamID, projectID, jobType, status string
	createdAt                                         time.Time
	startedAt, completedAt                            *time.Time
	triggeredBy                                       string
	notify                                            bool
	params, progress, result                          []byte
	errText                                           string
	attempts                                          int32
	reason                                            string
}

// progressJSON is the progress column: the API's fields (the summary
// follows from them).
type progressJSON struct {
	Processed int64  `json:"processed"`
	Total     int64  `json:"total"`
	Message   string `json:"message"`
}

// toRow is run's row. Text PostgreSQL cannot hold (NUL, invalid UTF-8) is
// replaced by U+FFFD rather than failing the run's archiving for good; run
// ids, teams, projects and job types are validated names and never change.
func toRow(run *jobsv1alpha1.JobRun) (row, error) {
	r := row{
		namespace:   run.Namespace,
		id:          run.Name,
		teamID:      run.Spec.TeamID,
		projectID:   run.Spec.ProjectID,
		jobType:     run.Spec.JobType,
		status:      string(run.CurrentPhase()),
		createdAt:   run.CreatedAt().UTC().Truncate(time.Millisecond),
		startedAt:   microTime(run.Status.StartedAt),
		completedAt: microTime(run.Status.CompletedAt),
		triggeredBy: cleanText(run.Spec.TriggeredBy),
		notify:      run.Spec.Notify,
		errText:     cleanText(run.Status.Error),
		attempts:    run.Status.Attempts,
	}
	if c := meta(run.Status.Conditions, jobsv1alpha1.JobRunConditionFinished); c != nil {
		r.reason = cleanText(c.Reason)
	}
	var err error
	if r.params, err = rawJSON(run.Spec.Params); err != nil {
		return row{}, fmt.Errorf("archive: run %s/%s: params: %w", run.Namespace, run.Name, err)
	}
	if r.result, err = rawJSON(run.Status.Result); err != nil {
		return row{}, fmt.Errorf("archive: run %s/%s: result: %w", run.Namespace, run.Name, err)
	}
	if p := run.Status.Progress; p != nil {
		r.progress, err = json.Marshal(progressJSON{Processed: p.Processed, Total: p.Total, Message: cleanText(p.Message)})
		if err != nil {
			return row{}, err
		}
	}
	return r, nil
}

func meta(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

func microTime(t *metav1.MicroTime) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC().Truncate(time.Microsecond)
	return &u
}

// storable reports whether PostgreSQL's text can hold s.
func storable(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// cleanText is s as PostgreSQL's text can hold it: valid UTF-8 without NUL.
func cleanText(s string) string {
	if storable(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// rawJSON is the text of a JSON column: nil (NULL) for no value. jsonb
// refuses the escape \u0000: such a value is rewritten with U+FFFD.
func rawJSON(ext *runtime.RawExtension) ([]byte, error) {
	if ext == nil || len(ext.Raw) == 0 {
		return nil, nil
	}
	if !json.Valid(ext.Raw) {
		return nil, fmt.Errorf("not JSON: %.64q", ext.Raw)
	}
	if !bytes.Contains(ext.Raw, []byte(`\u0000`)) {
		return ext.Raw, nil
	}
	var v any
	if err := json.Unmarshal(ext.Raw, &v); err != nil {
		return nil, err
	}
	return json.Marshal(replaceNUL(v))
}

func replaceNUL(v any) any {
	switch v := v.(type) {
	case string:
		return cleanText(v)
	case []any:
		for i := range v {
			v[i] = replaceNUL(v[i])
		}
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[cleanText(k)] = replaceNUL(e)
		}
		return out
	}
	return v
}

// toRun is the run a row holds, as the API server would show it: labels
// as NewJobRun sets them, spec.createdAt at the millisecond, params and
// result as the API server writes JSON (canonicalJSON), the progress's
// summary filled in, and the Finished condition's reason.
func (r *row) toRun() (*jobsv1alpha1.JobRun, error) {
	createdAt := metav1.NewMicroTime(r.createdAt.UTC())
	run := &jobsv1alpha1.JobRun{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: r.namespace,
			Name:      r.id,
			Labels:    map[string]string{jobsv1alpha1.LabelJobType: r.jobType, jobsv1alpha1.LabelStatus: r.status},
		},
		Spec: jobsv1alpha1.JobRunSpec{
			JobType:     r.jobType,
			TeamID:      r.teamID,
			ProjectID:   r.projectID,
			Notify:      r.notify,
			TriggeredBy: r.triggeredBy,
			CreatedAt:   &createdAt,
		},
		Status: jobsv1alpha1.JobRunStatus{
			Phase:       jobsv1alpha1.JobRunPhase(r.status),
			Error:       r.errText,
			StartedAt:   fromTime(r.startedAt),
			CompletedAt: fromTime(r.completedAt),
			Attempts:    r.attempts,
		},
	}
	if r.teamID != "" {
		run.Labels[jobsv1alpha1.LabelTeam], run.Labels[jobsv1alpha1.LabelProject] = r.teamID, r.projectID
	}
	var err error
	if run.Spec.Params, err = fromJSON(r.params); err != nil {
		return nil, fmt.Errorf("archive: run %s/%s: params: %w", r.namespace, r.id, err)
	}
	if run.Status.Result, err = fromJSON(r.result); err != nil {
		return nil, fmt.Errorf("archive: run %s/%s: result: %w", r.namespace, r.id, err)
	}
	if r.progress != nil {
		var p progressJSON
		if err := json.Unmarshal(r.progress, &p); err != nil {
			return nil, fmt.Errorf("archive: run %s/%s: progress: %w", r.namespace, r.id, err)
		}
		run.Status.Progress = jobsv1alpha1.NewProgress(p.Processed, p.Total, p.Message)
	}
	if r.reason != "" {
		c := metav1.Condition{Type: jobsv1alpha1.JobRunConditionFinished, Status: metav1.ConditionTrue, Reason: r.reason}
		if r.completedAt != nil {
			c.LastTransitionTime = metav1.NewTime(r.completedAt.UTC().Truncate(time.Second))
		}
		run.Status.Conditions = []metav1.Condition{c}
	}
	return run, nil
}

func fromTime(t *time.Time) *metav1.MicroTime {
	if t == nil {
		return nil
	}
	m := metav1.NewMicroTime(t.UTC())
	return &m
}

func fromJSON(b []byte) (*runtime.RawExtension, error) {
	if b == nil {
		return nil, nil
	}
	c, err := canonicalJSON(b)
	if err != nil {
		return nil, err
	}
	return &runtime.RawExtension{Raw: c}, nil
}

// canonicalJSON is b as the API server writes a custom resource's
// schemaless field, and so as a live run shows it: compact, object keys
// sorted, integers that fit int64 as such and other numbers as float64.
// jsonb keeps neither the text nor the key order it was given (it sorts keys
// by length first), so without this a run's params would read differently
// once archived.
func canonicalJSON(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	v, err := apiNumbers(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// apiNumbers converts json.Numbers as the API server's decoder does:
// int64 when the number is one, else float64.
func apiNumbers(v any) (any, error) {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, nil
		}
		return v.Float64()
	case []any:
		for i := range v {
			e, err := apiNumbers(v[i])
			if err != nil {
				return nil, err
			}
			v[i] = e
		}
	case map[string]any:
		for k, e := range v {
			e, err := apiNumbers(e)
			if err != nil {
				return nil, err
			}
			v[k] = e
		}
	}
	return v, nil
}
