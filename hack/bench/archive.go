package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/archive"
	"jobrun.dev/jobrun/internal/benchstat"
	"jobrun.dev/jobrun/internal/localcluster"
	"jobrun.dev/jobrun/internal/pgserver"
)

var (
	// archiveRuns is how many archived runs the archive scenario loads.
	archiveRuns int
	// archiveSeconds is how long its end-to-end triggers last (at 50/s).
	archiveSeconds int
	// archiveLiveRuns is how many runs it makes through the live window.
	archiveLiveRuns int
	// archiveLiveTTL is its manager's --archive-live-ttl.
	archiveLiveTTL time.Duration
)

// The synthetic archive's spread (archive.SyntheticSeq): 10 teams of 20
// projects, 8 job types, 90 days; at 1M runs 100,000 per team, 5,000 per
// project.
const (
	archTeams    = 10
	archProjects = 20
	archJobTypes = 8
	archSpan     = 90 * 24 * time.Hour
	// archSamples is how many times each list is timed, after
	// archWarmup untimed ones.
	archSamples = 200
	archWarmup  = 20
)

// archColumns are the archive's columns as internal/archive selects them.
const archColumns = "namespace, id, team_id, project_id, job_type, status, created_at, started_at, completed_at, triggered_by, notify, params, progress, result, error, attempts, reason"

// archPostgresSettings tune the bench's PostgreSQL for a table of millions
// of rows on this machine; durability stays on (fsync, synchronous commit),
// as in production, so archive writes pay their commit.
var archPostgresSettings = map[string]string{
	"shared_buffers":       "512MB",
	"effective_cache_size": "4GB",
	"maintenance_work_mem": "256MB",
	"max_wal_size":         "4GB",
	"checkpoint_timeout":   "15min",
	"random_page_cost":     "1.1",
}

// archiveDB is the archive scenario's PostgreSQL: the store (for the bulk
// load) and a plain pool (the ceiling's SQL and the scenario's checks).
type archiveDB struct {
	server *pgserver.Server
	store  *archive.Store
	pool   *pgxpool.Pool
}

// archiveScenario measures the run archive (issue 17) through a jobrun
// manager started with --archive-dsn against a PostgreSQL of its own: lists
// and gets over archiveRuns archived runs beside the same SQL, archiving at
// the end-to-end rate, and the manager's heap and etcd's run count after
// archiveLiveRuns runs through a live window of archiveLiveTTL. It kills the
// dev node (the last part completes pods itself) and leaves a manager
// without the archive, as the scenarios after it expect.
func (b *bench) archiveScenario(ctx context.Context) (err error) {
	start := time.Now()
	dir, err := os.MkdirTemp("", "jobrun-bench-pg-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// PostgreSQL runs as an unprivileged user when we are root: it must
	// enter the directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	b.log("archive: starting PostgreSQL (log %s)", filepath.Join(dir, "postgres.log"))
	server, err := pgserver.Start(pgserver.Options{Dir: dir, Database: localcluster.ArchiveDatabase, Settings: archPostgresSettings})
	if err != nil {
		return err
	}
	defer func() {
		if stopErr := server.Stop(); err == nil {
			err = stopErr
		}
	}()
	store, err := archive.Open(ctx, server.DSN)
	if err != nil {
		return err
	}
	defer store.Close()
	pool, err := pgxpool.New(ctx, server.DSN)
	if err != nil {
		return err
	}
	defer pool.Close()
	db := &archiveDB{server: server, store: store, pool: pool}

	// The manager, with the archive: runs finished by earlier scenarios
	// are archived and leave the API server after the live TTL.
	pprofAddr, err := localcluster.FreeAddrs(1)
	if err != nil {
		return err
	}
	b.cl.StopManager()
	if err := b.cl.StartManager("--archive-dsn="+server.DSN, "--archive-live-ttl="+archiveLiveTTL.String(), "--pprof-bind-address="+pprofAddr[0]); err != nil {
		return err
	}
	b.pprof = "http://" + pprofAddr[0] + "/debug/pprof"
	if err := b.waitReady(ctx); err != nil {
		return err
	}

	if err := b.archiveLists(ctx, db); err != nil {
		return err
	}
	if err := b.archiveKeepsUp(ctx, db); err != nil {
		return err
	}
	b.cl.KillNode()
	if err := b.archiveLiveWindow(ctx, db); err != nil {
		return err
	}

	// Back to a manager without the archive. Its runs are archived and
	// would otherwise wait out demo_sync's TTL in the later scenarios'
	// caches; their pods would keep the garbage collector busy for
	// minutes (see archiveLiveWindow), so the bench deletes them itself.
	if err := b.c.DeleteAllOf(ctx, &jobsv1alpha1.JobRun{}, client.InNamespace(ns), client.MatchingLabels{jobsv1alpha1.LabelTeam: archiveTeam}); err != nil {
		return err
	}
	if err := b.deleteArchivePods(ctx); err != nil {
		return err
	}
	b.cl.StopManager()
	if err := b.cl.StartManager(); err != nil {
		return err
	}
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	b.log("archive: the scenario took %s", time.Since(start).Round(time.Second))
	return nil
}

// archiveLists loads archiveRuns synthetic runs with COPY, then times each
// list shape and a get through the REST API beside the same statement run
// directly (the ceiling).
func (b *bench) archiveLists(ctx context.Context, db *archiveDB) error {
	teams := make([]string, archTeams)
	for i := range teams {
		teams[i] = fmt.Sprintf("team-%d", i)
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "bench-archive", "teams": teams, "role": "admin", "exp": time.Now().Add(24 * time.Hour).Unix(),
	}).SignedString([]byte(b.cl.JWTSecret))
	if err != nil {
		return err
	}

	// Load in parallel streams (the conversion in Go, the inserts in
	// PostgreSQL), keeping every 1,000th run's id for the gets.
	end := time.Now().UTC().Truncate(time.Second)
	const streams = 2
	var mu sync.Mutex
	var ids []string
	b.log("archive: loading %d archived runs with COPY (%d streams)", archiveRuns, streams)
	loadStart := time.Now()
	if err := parallel(streams, streams, func(s int) error {
		n := archiveRuns / streams
		if s == 0 {
			n += archiveRuns % streams
		}
		k := 0
		_, err := db.store.CopyFromSeq(ctx, func(yield func(*jobsv1alpha1.JobRun) bool) {
			for run := range archive.SyntheticSeq(n, int64(42+s), ns, archTeams, archProjects, archJobTypes, archSpan, end) {
				if k%1000 == 0 {
					mu.Lock()
					ids = append(ids, run.Name)
					mu.Unlock()
				}
				k++
				if !yield(run) {
					return
				}
			}
		})
		return err
	}); err != nil {
		return err
	}
	load := time.Since(loadStart)
	analyzeStart := time.Now()
	if _, err := db.pool.Exec(ctx, "VACUUM ANALYZE archived_runs"); err != nil {
		return err
	}
	analyze := time.Since(analyzeStart)
	var size int64
	if err := db.pool.QueryRow(ctx, "SELECT pg_total_relation_size('archived_runs')").Scan(&size); err != nil {
		return err
	}
	label := fmt.Sprintf("%gM archived", float64(archiveRuns)/1e6)
	b.add(Figure{Scenario: "archive", Name: fmt.Sprintf("COPY of %d runs (%.0f s; VACUUM ANALYZE %.0f s; %.2f GiB with indexes)", archiveRuns, load.Seconds(), analyze.Seconds(), float64(size)/(1<<30)), Value: float64(archiveRuns) / load.Seconds(), Unit: "rows/s"})

	// Page 1,000 of three teams (limit 50), walked once with cursors.
	depth := min(1000, archiveRuns/archTeams/50*9/10)
	deep := make([]string, 3) // the cursor of each team's page depth-1
	for t := range deep {
		path := "/v1/teams/" + teams[t] + "/jobs"
		for range depth - 1 {
			status, body, err := b.doAs(token, http.MethodGet, path, nil)
			if err != nil || status != http.StatusOK {
				return fmt.Errorf("archive: paging %s: %d %v %s", path, status, err, body)
			}
			var page struct {
				Cursor  string `json:"cursor"`
				HasMore bool   `json:"has_more"`
			}
			if err := json.Unmarshal(body, &page); err != nil || page.Cursor == "" || !page.HasMore {
				return fmt.Errorf("archive: paging %s: no further page (%v)", path, err)
			}
			deep[t] = page.Cursor
			path = "/v1/teams/" + teams[t] + "/jobs?cursor=" + url.QueryEscape(page.Cursor)
		}
	}

	team := func(k int) string { return teams[k%archTeams] }
	project := func(k int) string { return fmt.Sprintf("%s-p%d", team(k), k%archProjects) }
	jobType := func(k int) string { return fmt.Sprintf("job_type_%d", k%archJobTypes) }
	cases := []struct {
		name string
		api  func(k int) string
		sql  func(k int) (string, []any)
	}{
		{"first page (limit 50)", func(k int) string { return "/v1/teams/" + team(k) + "/jobs?limit=50" },
			func(k int) (string, []any) { return archListSQL(team(k), "", "", time.Time{}, "") }},
		{"status=failed", func(k int) string { return "/v1/teams/" + team(k) + "/jobs?status=failed" },
			func(k int) (string, []any) { return archListSQL(team(k), "status", "failed", time.Time{}, "") }},
		{"job_type filter", func(k int) string { return "/v1/teams/" + team(k) + "/jobs?job_type=" + jobType(k) },
			func(k int) (string, []any) { return archListSQL(team(k), "job_type", jobType(k), time.Time{}, "") }},
		{"project_id filter", func(k int) string { return "/v1/teams/" + team(k) + "/jobs?project_id=" + project(k) },
			func(k int) (string, []any) { return archListSQL(team(k), "project_id", project(k), time.Time{}, "") }},
		{"since=7d", func(k int) string { return "/v1/teams/" + team(k) + "/jobs?since=7d" },
			func(k int) (string, []any) {
				return archListSQL(team(k), "", "", time.Now().Add(-7*24*time.Hour), "")
			}},
		{fmt.Sprintf("page %d via cursor", depth), func(k int) string {
			return "/v1/teams/" + team(k%3) + "/jobs?cursor=" + url.QueryEscape(deep[k%3])
		}, func(k int) (string, []any) { return archListSQL(team(k%3), "", "", time.Time{}, deep[k%3]) }},
		{"GET /v1/jobs/:id (archived run)", func(k int) string { return "/v1/jobs/" + ids[(k*7919)%len(ids)] },
			func(k int) (string, []any) {
				return "SELECT " + archColumns + " FROM archived_runs WHERE namespace = $1 AND id = $2", []any{ns, ids[(k*7919)%len(ids)]}
			}},
	}
	for _, c := range cases {
		api, bare := make([]time.Duration, 0, archSamples), make([]time.Duration, 0, archSamples)
		for k := range archWarmup + archSamples {
			path := c.api(k)
			start := time.Now()
			status, body, err := b.doAs(token, http.MethodGet, path, nil)
			d := time.Since(start)
			if err != nil || status != http.StatusOK || !strings.Contains(string(body), `"id"`) {
				return fmt.Errorf("archive: GET %s: %d %v %.200s", path, status, err, body)
			}
			query, args := c.sql(k)
			start = time.Now()
			n, err := scanAll(ctx, db.pool, query, args...)
			dBare := time.Since(start)
			if err != nil || n == 0 {
				return fmt.Errorf("archive: %s: %d rows, %v", query, n, err)
			}
			if k >= archWarmup {
				api, bare = append(api, d), append(bare, dBare)
			}
		}
		b.archiveLatency(c.name+", "+label, api, bare)
	}

	// The floor under every list: a list the archive cannot answer
	// (status=running) reads the live index alone, after its consistency
	// round (a marker write and its watch event).
	floor := make([]time.Duration, 0, archSamples)
	for k := range archWarmup + archSamples {
		start := time.Now()
		status, body, err := b.doAs(token, http.MethodGet, "/v1/teams/"+team(k)+"/jobs?status=running", nil)
		d := time.Since(start)
		if err != nil || status != http.StatusOK {
			return fmt.Errorf("archive: the live-only list: %d %v %s", status, err, body)
		}
		if k >= archWarmup {
			floor = append(floor, d)
		}
	}
	b.add(Figure{Scenario: "archive", Name: "REST list status=running (live index only, no archive read) p50", Value: benchstat.Millis(benchstat.Percentile(floor, 0.5)), Unit: "ms"})
	b.add(Figure{Scenario: "archive", Name: "REST list status=running (live index only) p99", Value: benchstat.Millis(benchstat.Percentile(floor, 0.99)), Unit: "ms"})
	return nil
}

// archiveLatency adds the p50 and p99 of a REST call beside those of its
// SQL.
func (b *bench) archiveLatency(name string, api, bare []time.Duration) {
	p := func(d []time.Duration, q float64) float64 { return benchstat.Millis(benchstat.Percentile(d, q)) }
	b.add(Figure{Scenario: "archive", Name: "REST " + name + " p50 (ceiling: its SQL)", Value: p(api, 0.5), Unit: "ms", Ceiling: p(bare, 0.5)})
	p99 := p(api, 0.99)
	b.add(Figure{Scenario: "archive", Name: "REST " + name + " p99", Value: p99, Unit: "ms", Ceiling: p(bare, 0.99), Target: "p99 <= 10 ms", Met: met(p99 <= 10)})
}

// archListSQL is the archive's list statement for a first page (limit 50,
// plus the row that says there are more) of team, with one filter (column
// = value, none when column is empty), since (zero: none) and a REST
// cursor (empty: none), as internal/archive writes it.
func archListSQL(team, column, value string, since time.Time, cursor string) (string, []any) {
	args := []any{ns, team}
	q := "SELECT " + archColumns + " FROM archived_runs WHERE namespace = $1 AND team_id = $2"
	if column != "" {
		args = append(args, value)
		q += fmt.Sprintf(" AND %s = $%d", column, len(args))
	}
	if !since.IsZero() {
		args = append(args, since.UTC().Truncate(time.Millisecond).Add(time.Millisecond))
		q += fmt.Sprintf(" AND created_at >= $%d", len(args))
	}
	if cursor != "" {
		ts, id, _ := strings.Cut(cursor, "|")
		at, _ := time.Parse(time.RFC3339Nano, ts)
		args = append(args, at.UTC(), id)
		q += fmt.Sprintf(" AND (created_at, id) < ($%d, $%d)", len(args)-1, len(args))
	}
	return q + " ORDER BY created_at DESC, id DESC LIMIT 51", args
}

// scanAll runs query and decodes every column of every row, as a reader of
// the rows would, and returns how many rows there were.
func scanAll(ctx context.Context, pool *pgxpool.Pool, query string, args ...any) (int, error) {
	rows, err := pool.Query(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		if _, err := rows.Values(); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}

// deleteArchivePods deletes the pods archiveLiveWindow's runs left.
func (b *bench) deleteArchivePods(ctx context.Context) error {
	pods := &metav1.PartialObjectMetadataList{}
	pods.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	if err := b.c.List(ctx, pods, client.InNamespace(ns)); err != nil {
		return err
	}
	var names []string
	for _, p := range pods.Items {
		if strings.HasPrefix(p.Name, "arc-") {
			names = append(names, p.Name)
		}
	}
	b.log("archive: deleting the %d pods of its runs the garbage collector has not deleted yet", len(names))
	return parallel(32, len(names), func(i int) error {
		err := b.c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: names[i]}})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}
