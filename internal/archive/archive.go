// Package archive is the run archive: finished JobRuns as rows of a
// PostgreSQL table, so that history outlives the API server's short live
// window (issue 17). The manager writes a run's row when it finishes
// (Upsert) and deletes old rows (DeleteFinishedBefore); the REST API reads
// them (Get, List) under the same filters, order and keyset cursor as its
// live index.
//
// Open applies the schema (embedded goose migrations, under a PostgreSQL
// advisory lock so that replicas starting together do not race); queries go
// through a pgx pool. Lists are keyset walks of an index per list shape: no
// OFFSET and no count anywhere.
package archive

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrations embed.FS

const (
	// migrationsTable is goose's version table: a name of ours, beside
	// whatever else shares the database.
	migrationsTable = "jobrun_archive_migrations"
	// migrationLockID is the advisory lock held while migrating ("jobrun"
	// in ASCII, then 1): not goose's default, which every goose user in
	// the database would share.
	migrationLockID int64 = 0x6a6f6272756e01
)

// defaultConnectTimeout bounds each connection attempt when the DSN sets no
// connect_timeout: an unreachable server is an error, never a hang. A
// variable for the tests.
var defaultConnectTimeout = 10 * time.Second

// Store is the run archive in one PostgreSQL database.
type Store struct {
	pool *pgxpool.Pool
	// deleteStatements counts the DELETE statements retention ran (for the
	// tests of its batching).
	deleteStatements int64
}

// Open connects to the database dsn (a PostgreSQL URL or key=value
// string), applies the embedded migrations not yet applied and returns the
// store. Several processes may Open the same database at once: one applies
// the migrations while the others wait for it.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("archive: parsing the DSN: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("archive: connecting: %w", err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return &Store{pool: pool}, nil
}

// migrate applies the migrations through database/sql on the store's own
// pool (goose needs database/sql; closing that handle leaves the pool open).
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID),
		lock.WithLockTimeout(1, 300), lock.WithUnlockTimeout(1, 30))
	if err != nil {
		return fmt.Errorf("archive: migration lock: %w", err)
	}
	dir, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, dir,
		goose.WithTableName(migrationsTable), goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("archive: migrations: %w", err)
	}
	if _, err := provider.Up(ctx); err != nil {
		return fmt.Errorf("archive: applying migrations: %w", err)
	}
	return nil
}

// Close closes the store's connections.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}
