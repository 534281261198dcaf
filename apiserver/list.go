package apiserver

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// RunQuery selects a page of a team's runs, newest first.
type RunQuery struct {
	Namespace string
	TeamID    string
	// Optional filters; empty matches all.
	JobType, Status, ProjectID string
	// Since (inclusive) and Until (exclusive) bound created_at; zero: open.
	Since, Until time.Time
	// After is the cursor: only runs older than it (by created_at, then id).
	After *Cursor
	// Limit is the page size.
	Limit int
}

// RunLister lists and reads runs for the API, consistently: a run whose
// create (or change) completed before the call is in the answer as it is
// now. The cache-backed lister (RunIndex) serves live runs; an archive of
// old runs can join behind the same interface without touching the
// handlers. The runs returned are shared: callers must not change them.
type RunLister interface {
	ListRuns(ctx context.Context, q RunQuery) (runs []*jobsv1alpha1.JobRun, hasMore bool, err error)
	// GetRun returns the team run namespace/name, or nil if there is none.
	GetRun(ctx context.Context, namespace, name string) (*jobsv1alpha1.JobRun, error)
}

// Cursor is a position in a newest-first list: <created_at>|<id>.
type Cursor struct {
	CreatedAt time.Time
	ID        string
}

func (c Cursor) String() string { return formatTime(c.CreatedAt) + "|" + c.ID }

func cursorOf(run *jobsv1alpha1.JobRun) Cursor {
	return Cursor{CreatedAt: sortTime(run), ID: run.Name}
}

// sortTime is created_at at the millisecond precision the API shows, so
// that a cursor made from a response names exactly the position it came
// from.
func sortTime(run *jobsv1alpha1.JobRun) time.Time {
	return run.CreatedAt().UTC().Truncate(time.Millisecond)
}

// precedes reports whether c comes before a run created at at with id name,
// in newest-first order: the run belongs to a later page.
func (c Cursor) precedes(at time.Time, name string) bool {
	return at.Before(c.CreatedAt) || (at.Equal(c.CreatedAt) && name < c.ID)
}

var relativeTime = regexp.MustCompile(`^([0-9]{1,6})([smhdw])$`)

// parseTimeParam reads since/until: relative (30m, 1h, 7d, 2w: that long
// before now) or ISO 8601 / RFC 3339.
func parseTimeParam(name, v string, now time.Time) (time.Time, error) {
	if m := relativeTime.FindStringSubmatch(v); m != nil {
		n, _ := strconv.Atoi(m[1])
		unit := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour, "w": 7 * 24 * time.Hour}[m[2]]
		if time.Duration(n) > math.MaxInt64/unit {
			// n*unit would overflow time.Duration (~292 years) and wrap
			// round to a time in the future or far past.
			return time.Time{}, badRequest("invalid %s %q: at most %d%s", name, v, int64(math.MaxInt64/unit), m[2])
		}
		return now.Add(-time.Duration(n) * unit), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, badRequest("invalid %s %q: use a relative time such as 30m, 1h or 7d, or an ISO 8601 time such as 2024-01-15T10:30:00Z", name, v)
}

func parseCursor(v string) (*Cursor, error) {
	ts, id, ok := strings.Cut(v, "|")
	t, err := time.Parse(time.RFC3339Nano, ts)
	if !ok || err != nil || id == "" {
		return nil, badRequest("invalid cursor %q: pass the cursor of a previous response unchanged", v)
	}
	return &Cursor{CreatedAt: t.UTC(), ID: id}, nil
}

var statuses = []string{"pending", "running", "completed", "failed", "cancelled"}

// parseListQuery reads and checks the query parameters; each error names
// the parameter.
func parseListQuery(r *http.Request, now time.Time) (RunQuery, error) {
	return parseListValues(r.URL.Query(), now)
}

// parseListValues is parseListQuery of the parameters v.
func parseListValues(v url.Values, now time.Time) (RunQuery, error) {
	q := RunQuery{Limit: 50}
	for name := range v {
		if !slices.Contains([]string{"job_type", "status", "project_id", "since", "until", "cursor", "limit"}, name) {
			return q, badRequest("unknown query parameter %q", name)
		}
	}
	q.JobType, q.Status, q.ProjectID = v.Get("job_type"), v.Get("status"), v.Get("project_id")
	if q.JobType != "" && !jobsv1alpha1.MatchesJobTypePattern(q.JobType) {
		return q, badRequest("invalid job_type %q", q.JobType)
	}
	if q.Status != "" && !slices.Contains(statuses, q.Status) {
		return q, badRequest("invalid status %q: one of %s", q.Status, strings.Join(statuses, ", "))
	}
	var err error
	if s := v.Get("since"); s != "" {
		if q.Since, err = parseTimeParam("since", s, now); err != nil {
			return q, err
		}
	}
	if s := v.Get("until"); s != "" {
		if q.Until, err = parseTimeParam("until", s, now); err != nil {
			return q, err
		}
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return q, badRequest("since must be before until")
	}
	if s := v.Get("cursor"); s != "" {
		if q.After, err = parseCursor(s); err != nil {
			return q, err
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 200 {
			return q, badRequest("invalid limit %q: a whole number from 1 to 200", s)
		}
		q.Limit = n
	}
	return q, nil
}

// list serves GET /v1/teams/{teamId}/jobs.
func (tr teamsResource) list(w http.ResponseWriter, r *http.Request) {
	out, cursor, hasMore, err := tr.s.listPage(r.Context(), teamFrom(r.Context()), r.URL.Query())
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"job_runs": out, "cursor": cursor, "has_more": hasMore})
}

// listPage is the page of team's runs that the list parameters v select,
// newest first, with the cursor of its last run (nil for an empty page):
// the list endpoint's and the console's.
func (s *Server) listPage(ctx context.Context, team string, v url.Values) ([]jobRun, *string, bool, error) {
	q, err := parseListValues(v, s.now())
	if err != nil {
		return nil, nil, false, err
	}
	q.Namespace, q.TeamID = s.namespace, team
	runs, hasMore, err := s.lister.ListRuns(ctx, q)
	if err != nil {
		return nil, nil, false, fmt.Errorf("listing runs: %w", err)
	}
	out := make([]jobRun, 0, len(runs))
	for _, run := range runs {
		out = append(out, toJobRun(run))
	}
	var cursor *string
	if len(runs) > 0 {
		c := cursorOf(runs[len(runs)-1]).String()
		cursor = &c
	}
	return out, cursor, hasMore, nil
}
