package archive

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestListPlans: on 200,000 rows, every list shape walks the index made
// for it, in its order: no sequential scan, no sort, no bitmap of two
// indexes — both with the plan PostgreSQL makes for given values and with
// the generic plan a prepared statement switches to after five runs.
func TestListPlans(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 200,000 rows")
	}
	s, _ := open(t)
	ctx := context.Background()
	end := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	n, err := s.CopyFromSeq(ctx, SyntheticSeq(200_000, 1, "ns", 10, 20, 8, 90*24*time.Hour, end))
	if err != nil || n != 200_000 {
		t.Fatalf("CopyFromSeq: %d, %v", n, err)
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE archived_runs"); err != nil {
		t.Fatal(err)
	}
	team := Query{Namespace: "ns", TeamID: "team-3", Limit: 50}
	cursorAt, cursorID := end.Add(-45*24*time.Hour), "7f000000-0000-4000-8000-000000000000"
	with := func(change func(*Query)) Query {
		q := team
		change(&q)
		return q
	}
	for _, tc := range []struct {
		name  string
		q     Query
		index string
	}{
		{"team", team, "archived_runs_team"},
		{"project", with(func(q *Query) { q.ProjectID = "team-3-p7" }), "archived_runs_team_project"},
		{"job type", with(func(q *Query) { q.JobType = "job_type_2" }), "archived_runs_team_job_type"},
		{"status", with(func(q *Query) { q.Status = "cancelled" }), "archived_runs_team_status"},
		{"since 7d", with(func(q *Query) { q.Since = end.Add(-7 * 24 * time.Hour) }), "archived_runs_team"},
		{"since and until", with(func(q *Query) { q.Since, q.Until = end.Add(-30*24*time.Hour), end.Add(-7*24*time.Hour) }), "archived_runs_team"},
		{"cursor", with(func(q *Query) { q.AfterCreatedAt, q.AfterID = cursorAt, cursorID }), "archived_runs_team"},
		{"project, cursor", with(func(q *Query) { q.ProjectID, q.AfterCreatedAt, q.AfterID = "team-3-p7", cursorAt, cursorID }), "archived_runs_team_project"},
		{"status, since", with(func(q *Query) { q.Status, q.Since = "failed", end.Add(-7*24*time.Hour) }), "archived_runs_team_status"},
		{"project and job type and status", with(func(q *Query) { q.ProjectID, q.JobType, q.Status = "team-3-p7", "job_type_2", "failed" }), "archived_runs_team_project"},
		{"job type and status, cursor", with(func(q *Query) {
			q.JobType, q.Status, q.AfterCreatedAt, q.AfterID = "job_type_2", "cancelled", cursorAt, cursorID
		}), "archived_runs_team_job_type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			query, args := listSQL(tc.q)
			for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
				plan := explain(t, s, mode, query, args)
				t.Logf("%s:\n%s", mode, plan)
				want := "Index Scan using " + tc.index + " on archived_runs"
				if !strings.Contains(plan, want) {
					t.Errorf("%s: the plan has no %q:\n%s", mode, want, plan)
				}
				for _, bad := range []string{"Seq Scan", "Sort", "Bitmap"} {
					if strings.Contains(plan, bad) {
						t.Errorf("%s: the plan has a %s:\n%s", mode, bad, plan)
					}
				}
			}
		})
	}
}

// explain is the plan of query in plan_cache_mode mode, as PREPARE and
// EXPLAIN EXECUTE make it.
func explain(t *testing.T, s *Store, mode, query string, args []any) string {
	t.Helper()
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "PREPARE list_plan AS "+query); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, "DEALLOCATE list_plan; RESET plan_cache_mode") //nolint:errcheck // the connection goes back to the pool either way
	values := make([]string, len(args))
	for i, a := range args {
		switch a := a.(type) {
		case string:
			values[i] = "'" + strings.ReplaceAll(a, "'", "''") + "'"
		case time.Time:
			values[i] = "'" + a.UTC().Format(time.RFC3339Nano) + "'"
		case int:
			values[i] = strconv.Itoa(a)
		default:
			t.Fatalf("argument %d: %T", i, a)
		}
	}
	rows, err := conn.Query(ctx, "EXPLAIN EXECUTE list_plan("+strings.Join(values, ", ")+")", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}
