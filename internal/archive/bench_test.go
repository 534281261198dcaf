package archive

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/benchstat"
	"jobrun.dev/jobrun/internal/pgtest"
)

// BenchRowsEnv, when set to a number of rows (1000000, 10000000),
// runs TestArchiveBench: it loads that many synthetic runs with COPY into
// a PostgreSQL of its own and prints p50/p99 of each list shape and of Get,
// through the Store and as the bare SQL (the ceiling).
const BenchRowsEnv = "JOBRUN_ARCHIVE_BENCH_ROWS"

// Spread of the benchmark's runs: 10 teams of 20 projects, 8 job types, 90
// days (at 1M rows: 100,000 runs per team, 500 per project).
const (
	benchTeams    = 10
	benchProjects = 20
	benchJobTypes = 8
	benchSpan     = 90 * 24 * time.Hour
)

func TestArchiveBench(t *testing.T) {
	rowsEnv := os.Getenv(BenchRowsEnv)
	if rowsEnv == "" {
		t.Skip("set " + BenchRowsEnv + " (e.g. 1000000) to run the archive benchmark")
	}
	rows, err := strconv.Atoi(rowsEnv)
	if err != nil || rows < 100_000 {
		t.Fatalf("%s=%q: want a number of rows, at least 100000", BenchRowsEnv, rowsEnv)
	}
	iterations := 2000
	if v := os.Getenv("JOBRUN_ARCHIVE_BENCH_ITERATIONS"); v != "" {
		if iterations, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	server, err := pgtest.New(pgtest.Options{Settings: map[string]string{
		"shared_buffers":                  "1GB",
		"max_wal_size":                    "8GB",
		"checkpoint_timeout":              "30min",
		"maintenance_work_mem":            "512MB",
		"effective_cache_size":            "4GB",
		"random_page_cost":                "1.1",
		"autovacuum":                      "off", // no vacuum racing the measurements; VACUUM ANALYZE below
		"max_parallel_workers_per_gather": "0",
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := server.Stop(); err != nil {
			t.Error(err)
		}
	}()
	ctx := context.Background()
	s, err := Open(ctx, server.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// Load, keeping every 1,000th run's key for Get.
	end := time.Now().UTC().Truncate(time.Second)
	var keys []string
	i := 0
	seq := func(yield func(*jobsv1alpha1.JobRun) bool) {
		for run := range SyntheticSeq(rows, 42, "ns", benchTeams, benchProjects, benchJobTypes, benchSpan, end) {
			if i%1000 == 0 {
				keys = append(keys, run.Name)
			}
			i++
			if !yield(run) {
				return
			}
		}
	}
	start := time.Now()
	n, err := s.CopyFromSeq(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	load := time.Since(start)
	start = time.Now()
	if _, err := s.pool.Exec(ctx, "VACUUM ANALYZE archived_runs"); err != nil {
		t.Fatal(err)
	}
	var size string
	if err := s.pool.QueryRow(ctx, "SELECT pg_size_pretty(pg_total_relation_size('archived_runs'))").Scan(&size); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("archive bench: %d rows loaded with COPY in %v (%.0f rows/s), VACUUM ANALYZE %v, table with indexes %s\n",
		n, load.Round(time.Millisecond), float64(n)/load.Seconds(), time.Since(start).Round(time.Millisecond), size)

	team := func(k int) string { return fmt.Sprintf("team-%d", k%benchTeams) }
	// The cursor of page 1,000 (limit 50) of three teams, walked once.
	type cursor struct {
		team string
		at   time.Time
		id   string
	}
	var deep []cursor
	depth := min(1000, rows/benchTeams/50*9/10) // page 1,000 from 1M rows on
	for k := range 3 {
		q := Query{Namespace: "ns", TeamID: team(k), Limit: 50}
		for range depth - 1 {
			runs, more, err := s.List(ctx, q)
			if err != nil || !more {
				t.Fatalf("walking to page %d of %s: more %v, %v", depth, q.TeamID, more, err)
			}
			last := runs[len(runs)-1]
			q.AfterCreatedAt, q.AfterID = last.CreatedAt(), last.Name
		}
		deep = append(deep, cursor{q.TeamID, q.AfterCreatedAt, q.AfterID})
	}

	cases := []struct {
		name  string
		query func(k int) Query
	}{
		{"first page", func(k int) Query { return Query{TeamID: team(k)} }},
		{"project", func(k int) Query {
			return Query{TeamID: team(k), ProjectID: fmt.Sprintf("%s-p%d", team(k), k%benchProjects)}
		}},
		{"job type", func(k int) Query { return Query{TeamID: team(k), JobType: fmt.Sprintf("job_type_%d", k%benchJobTypes)} }},
		{"status=failed", func(k int) Query { return Query{TeamID: team(k), Status: "failed"} }},
		{"status=cancelled", func(k int) Query { return Query{TeamID: team(k), Status: "cancelled"} }},
		{"since=7d", func(k int) Query { return Query{TeamID: team(k), Since: end.Add(-7 * 24 * time.Hour)} }},
		{fmt.Sprintf("page %d", depth), func(k int) Query {
			c := deep[k%len(deep)]
			return Query{TeamID: c.team, AfterCreatedAt: c.at, AfterID: c.id}
		}},
	}
	fmt.Printf("%-18s %12s %12s %12s %12s\n", "", "store p50", "store p99", "SQL p50", "SQL p99")
	for _, c := range cases {
		store, bare := make([]time.Duration, 0, iterations), make([]time.Duration, 0, iterations)
		for k := range iterations + 100 {
			q := c.query(k)
			q.Namespace, q.Limit = "ns", 50
			start := time.Now()
			runs, _, err := s.List(ctx, q)
			d := time.Since(start)
			if err != nil || len(runs) == 0 {
				t.Fatalf("%s: %d runs, %v", c.name, len(runs), err)
			}
			sqlText, args := listSQL(q)
			start = time.Now()
			r, err := s.pool.Query(ctx, sqlText, args...)
			if err != nil {
				t.Fatal(err)
			}
			for r.Next() {
			}
			r.Close()
			dBare := time.Since(start)
			if err := r.Err(); err != nil {
				t.Fatal(err)
			}
			if k >= 100 { // warm-up
				store, bare = append(store, d), append(bare, dBare)
			}
		}
		report(c.name, store, bare)
	}
	store, bare := make([]time.Duration, 0, iterations), make([]time.Duration, 0, iterations)
	for k := range iterations + 100 {
		id := keys[(k*7919)%len(keys)]
		start := time.Now()
		run, err := s.Get(ctx, "ns", id)
		d := time.Since(start)
		if err != nil || run == nil {
			t.Fatalf("Get %s: %v, %v", id, run, err)
		}
		start = time.Now()
		r, err := s.pool.Query(ctx, getSQL, "ns", id)
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
		}
		r.Close()
		dBare := time.Since(start)
		if k >= 100 {
			store, bare = append(store, d), append(bare, dBare)
		}
	}
	report("get", store, bare)
}

func report(name string, store, bare []time.Duration) {
	ms := func(d []time.Duration, p float64) string {
		return fmt.Sprintf("%.3f ms", benchstat.Millis(benchstat.Percentile(d, p)))
	}
	fmt.Printf("%-18s %12s %12s %12s %12s\n", name, ms(store, 0.5), ms(store, 0.99), ms(bare, 0.5), ms(bare, 0.99))
}
