package archive

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// upsertSQL writes many rows in one statement: one array per column,
// unnested into rows. A run already archived (a restart, a second replica)
// is overwritten with the values given.
const upsertSQL = `INSERT INTO archived_runs (` + columns + `)
SELECT namespace, id, team_id, project_id, job_type, status, created_at, started_at,
       completed_at, triggered_by, notify, params::jsonb, progress::jsonb, result::jsonb, error, attempts, reason
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
            $8::timestamptz[], $9::timestamptz[], $10::text[], $11::boolean[], $12::text[], $13::text[],
            $14::text[], $15::text[], $16::integer[], $17::text[])
  AS u(namespace, id, team_id, project_id, job_type, status, created_at, started_at,
       completed_at, triggered_by, notify, params, progress, result, error, attempts, reason)
ON CONFLICT (namespace, id) DO UPDATE SET
  team_id = EXCLUDED.team_id, project_id = EXCLUDED.project_id, job_type = EXCLUDED.job_type,
  status = EXCLUDED.status, created_at = EXCLUDED.created_at, started_at = EXCLUDED.started_at,
  completed_at = EXCLUDED.completed_at, triggered_by = EXCLUDED.triggered_by, notify = EXCLUDED.notify,
  params = EXCLUDED.params, progress = EXCLUDED.progress, result = EXCLUDED.result,
  error = EXCLUDED.error, attempts = EXCLUDED.attempts, reason = EXCLUDED.reason, archived_at = now()`

// Upsert writes runs' rows in one statement, idempotently by (namespace,
// id): a run written again overwrites its row. Of runs given twice in one
// call, the later wins.
func (s *Store) Upsert(ctx context.Context, runs ...*jobsv1alpha1.JobRun) error {
	if len(runs) == 0 {
		return nil
	}
	// A statement may not update a row twice: keep each run's last copy.
	last := make(map[[2]string]int, len(runs))
	for i, run := range runs {
		last[[2]string{run.Namespace, run.Name}] = i
	}
	// Rows in key order: two replicas writing overlapping runs lock them
	// in the same order, so they wait for each other instead of
	// deadlocking.
	order := slices.Collect(maps.Values(last))
	slices.SortFunc(order, func(a, b int) int {
		if c := strings.Compare(runs[a].Namespace, runs[b].Namespace); c != 0 {
			return c
		}
		return strings.Compare(runs[a].Name, runs[b].Name)
	})
	var cols upsertColumns
	for _, i := range order {
		r, err := toRow(runs[i])
		if err != nil {
			return err
		}
		cols.add(r)
	}
	if _, err := s.pool.Exec(ctx, upsertSQL, cols.args()...); err != nil {
		return fmt.Errorf("archive: writing %d runs: %w", len(order), err)
	}
	return nil
}

// upsertColumns are upsertSQL's arrays, one per column.
type upsertColumns struct {
	namespace, id, teamID, projectID, jobType, status []string
	createdAt                                         []time.Time
	startedAt, completedAt                            []*time.Time
	triggeredBy                                       []string
	notify                                            []bool
	params, progress, result                          []*string
	errText                                           []string
	attempts                                          []int32
	reason                                            []string
}

func (c *upsertColumns) add(r row) {
	c.namespace = append(c.namespace, r.namespace)
	c.id = append(c.id, r.id)
	c.teamID = append(c.teamID, r.teamID)
	c.projectID = append(c.projectID, r.projectID)
	c.jobType = append(c.jobType, r.jobType)
	c.status = append(c.status, r.status)
	c.createdAt = append(c.createdAt, r.createdAt)
	c.startedAt = append(c.startedAt, r.startedAt)
	c.completedAt = append(c.completedAt, r.completedAt)
	c.triggeredBy = append(c.triggeredBy, r.triggeredBy)
	c.notify = append(c.notify, r.notify)
	c.params = append(c.params, text(r.params))
	c.progress = append(c.progress, text(r.progress))
	c.result = append(c.result, text(r.result))
	c.errText = append(c.errText, r.errText)
	c.attempts = append(c.attempts, r.attempts)
	c.reason = append(c.reason, r.reason)
}

// args are the arrays in the order of columns ($1 to $17).
func (c *upsertColumns) args() []any {
	return []any{c.namespace, c.id, c.teamID, c.projectID, c.jobType, c.status, c.createdAt,
		c.startedAt, c.completedAt, c.triggeredBy, c.notify, c.params, c.progress, c.result,
		c.errText, c.attempts, c.reason}
}

func text(b []byte) *string {
	if b == nil {
		return nil
	}
	s := string(b)
	return &s
}

// scanRow reads a row selected as columns.
func scanRow(rows pgx.Row) (*jobsv1alpha1.JobRun, error) {
	var r row
	err := rows.Scan(&r.namespace, &r.id, &r.teamID, &r.projectID, &r.jobType, &r.status, &r.createdAt,
		&r.startedAt, &r.completedAt, &r.triggeredBy, &r.notify, &r.params, &r.progress, &r.result,
		&r.errText, &r.attempts, &r.reason)
	if err != nil {
		return nil, err
	}
	return r.toRun()
}

// getSQL reads one run by its key.
const getSQL = `SELECT ` + columns + ` FROM archived_runs WHERE namespace = $1 AND id = $2`

// Get returns the archived run namespace/id, or nil, nil when there is
// none.
func (s *Store) Get(ctx context.Context, namespace, id string) (*jobsv1alpha1.JobRun, error) {
	if !storable(namespace) || !storable(id) {
		return nil, nil
	}
	run, err := scanRow(s.pool.QueryRow(ctx, getSQL, namespace, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("archive: reading run %s/%s: %w", namespace, id, err)
	}
	return run, nil
}

// Query selects a page of a team's archived runs, newest first (created_at
// to the millisecond, then id in byte order, greater first): the live
// index's RunQuery.
type Query struct {
	// Namespace and TeamID are the team's; both are required.
	Namespace, TeamID string
	// JobType, Status and ProjectID are optional filters; empty matches
	// all.
	JobType, Status, ProjectID string
	// Since (inclusive) and Until (exclusive) bound created_at; zero: open.
	Since, Until time.Time
	// AfterCreatedAt and AfterID are the keyset cursor: only runs strictly
	// after (AfterCreatedAt, AfterID) in newest-first order. A zero
	// AfterCreatedAt means no cursor.
	AfterCreatedAt time.Time
	AfterID        string
	// Limit is the page size.
	Limit int
}

// listSQL is q's statement and arguments: equality on the team and each
// filter, the time bounds and the cursor as ranges of the index, ordered
// as the index is, limit+1 rows (the last only says there are more).
//
// Each list shape has an index (namespace, team_id[, filter], created_at
// DESC, id DESC) that the walk follows without a sort. With more than one
// filter, the first of project, job type and status (the live index's
// order) picks the index; the others are written so that no index matches
// them (a COLLATE "POSIX" comparison: the same byte comparison, but not the
// index's collation), and are checked on the rows the walk visits: the
// planner could otherwise combine two indexes and sort.
func listSQL(q Query) (string, []any) {
	var b strings.Builder
	args := []any{q.Namespace, q.TeamID}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	b.WriteString(`SELECT ` + columns + ` FROM archived_runs WHERE namespace = $1 AND team_id = $2`)
	indexed := false
	filter := func(column, value string) {
		if value == "" {
			return
		}
		if !indexed {
			indexed = true
			b.WriteString(" AND " + column + " = " + arg(value))
			return
		}
		b.WriteString(" AND " + column + ` COLLATE "POSIX" = ` + arg(value))
	}
	filter("project_id", q.ProjectID)
	filter("job_type", q.JobType)
	filter("status", q.Status)
	if !q.Since.IsZero() {
		b.WriteString(" AND created_at >= " + arg(ceilMilli(q.Since)))
	}
	if !q.Until.IsZero() {
		b.WriteString(" AND created_at < " + arg(ceilMilli(q.Until)))
	}
	if !q.AfterCreatedAt.IsZero() {
		// Rows hold milliseconds: a cursor between two is the later one
		// with the least id, so that every run at that millisecond is past
		// it, as the live index's pivot does.
		at, id := q.AfterCreatedAt.UTC(), q.AfterID
		if c := ceilMilli(at); !c.Equal(at) {
			at, id = c, ""
		}
		b.WriteString(" AND (created_at, id) < (" + arg(at) + ", " + arg(id) + ")")
	}
	b.WriteString(" ORDER BY created_at DESC, id DESC LIMIT " + arg(max(q.Limit, 0)+1))
	return b.String(), args
}

// ceilMilli is t rounded up to the millisecond: created_at >= t exactly
// when created_at >= ceilMilli(t), as created_at holds whole milliseconds.
func ceilMilli(t time.Time) time.Time {
	t = t.UTC()
	c := t.Truncate(time.Millisecond)
	if c.Before(t) {
		c = c.Add(time.Millisecond)
	}
	return c
}

var errNoTeam = errors.New("archive: a list needs a namespace and a team")

// List returns a page of a team's archived runs, newest first, and
// whether more runs match after it.
func (s *Store) List(ctx context.Context, q Query) ([]*jobsv1alpha1.JobRun, bool, error) {
	if q.Namespace == "" || q.TeamID == "" {
		return nil, false, errNoTeam
	}
	for _, v := range []string{q.Namespace, q.TeamID, q.JobType, q.Status, q.ProjectID} {
		if !storable(v) {
			return nil, false, nil // PostgreSQL refuses the text; no row holds it
		}
	}
	if !storable(q.AfterID) {
		return nil, false, fmt.Errorf("archive: cursor id %q: not UTF-8 text", q.AfterID)
	}
	query, args := listSQL(q)
	rows, err := s.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, false, fmt.Errorf("archive: listing runs of team %s/%s: %w", q.Namespace, q.TeamID, err)
	}
	defer rows.Close()
	limit := max(q.Limit, 0)
	runs := make([]*jobsv1alpha1.JobRun, 0, min(limit+1, 1000))
	for rows.Next() {
		run, err := scanRow(rows)
		if err != nil {
			return nil, false, fmt.Errorf("archive: listing runs of team %s/%s: %w", q.Namespace, q.TeamID, err)
		}
		runs = append(runs, run)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("archive: listing runs of team %s/%s: %w", q.Namespace, q.TeamID, err)
	}
	if len(runs) > limit {
		return runs[:limit], true, nil
	}
	return runs, false, nil
}

// Retention's statements: one batch each, rows without completed_at by
// created_at. SKIP LOCKED: a row being rewritten is left for the next pass
// rather than waited for, and two replicas delete different rows.
const (
	deleteFinishedSQL = `DELETE FROM archived_runs WHERE (namespace, id) IN (
  SELECT namespace, id FROM archived_runs WHERE completed_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`
	deleteUnfinishedSQL = `DELETE FROM archived_runs WHERE (namespace, id) IN (
  SELECT namespace, id FROM archived_runs WHERE completed_at IS NULL AND created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`
)

// DeleteFinishedBefore deletes the rows of runs that completed before t
// (and of runs archived without a completion time, created before t), at
// most batch rows per statement, statement after statement until one
// deletes fewer than batch. It returns how many rows it deleted. Each
// statement is its own transaction: short locks, and a cancelled context
// keeps what was deleted.
func (s *Store) DeleteFinishedBefore(ctx context.Context, t time.Time, batch int) (int64, error) {
	if batch <= 0 {
		return 0, fmt.Errorf("archive: retention batch %d: must be positive", batch)
	}
	var total int64
	for _, query := range []string{deleteFinishedSQL, deleteUnfinishedSQL} {
		for {
			n, err := s.deleteBatch(ctx, query, t, batch)
			total += n
			if err != nil {
				return total, fmt.Errorf("archive: deleting runs finished before %s: %w", t.UTC().Format(time.RFC3339), err)
			}
			if n < int64(batch) {
				break
			}
		}
	}
	return total, nil
}

func (s *Store) deleteBatch(ctx context.Context, query string, t time.Time, batch int) (int64, error) {
	atomic.AddInt64(&s.deleteStatements, 1)
	tag, err := s.pool.Exec(ctx, query, t, batch)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// CopyFrom bulk-loads runs with COPY: for loading many rows at once (the
// benchmark's millions). Unlike Upsert it fails on a run already archived.
func (s *Store) CopyFrom(ctx context.Context, runs []*jobsv1alpha1.JobRun) (int64, error) {
	return s.CopyFromSeq(ctx, func(yield func(*jobsv1alpha1.JobRun) bool) {
		for _, run := range runs {
			if !yield(run) {
				return
			}
		}
	})
}

// CopyFromSeq is CopyFrom of the runs seq yields, each converted as COPY
// asks for it: millions of runs without holding them all.
func (s *Store) CopyFromSeq(ctx context.Context, seq iter.Seq[*jobsv1alpha1.JobRun]) (int64, error) {
	next, stop := iter.Pull(seq)
	defer stop()
	src := pgx.CopyFromFunc(func() ([]any, error) {
		run, ok := next()
		if !ok {
			return nil, nil
		}
		r, err := toRow(run)
		if err != nil {
			return nil, err
		}
		return []any{r.namespace, r.id, r.teamID, r.projectID, r.jobType, r.status, r.createdAt,
			r.startedAt, r.completedAt, r.triggeredBy, r.notify, jsonb(r.params), jsonb(r.progress),
			jsonb(r.result), r.errText, r.attempts, r.reason}, nil
	})
	cols := strings.Split(columns, ", ")
	n, err := s.pool.CopyFrom(ctx, pgx.Identifier{"archived_runs"}, cols, src)
	if err != nil {
		return n, fmt.Errorf("archive: copying runs: %w", err)
	}
	return n, nil
}

// jsonb is a JSON column's value for COPY: NULL for nil.
func jsonb(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}
