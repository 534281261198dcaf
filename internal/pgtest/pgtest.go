// Package pgtest starts a throwaway real PostgreSQL for tests, the way
// test/testenv starts a real kube-apiserver: the distribution's server
// binaries (make tools-pg), a fresh data directory in a temporary directory,
// listening on 127.0.0.1 only (and a unix socket in that directory), fsync
// off. Stop (or the test's cleanup) stops it and removes the directory.
//
// One server per test:
//
//	dsn := pgtest.Start(t)
//
// One per package, a database per test:
//
//	var pg *pgtest.Server
//
//	func TestMain(m *testing.M) {
//		var err error
//		if pg, err = pgtest.New(pgtest.Options{}); err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		code := m.Run()
//		if err := pg.Stop(); err != nil {
//			fmt.Fprintln(os.Stderr, err)
//		}
//		os.Exit(code)
//	}
//
//	func TestX(t *testing.T) { dsn := pg.Database(t); ... }
//
// Starting and stopping is internal/pgserver's, which `make dev` uses too; as
// root the server runs as the `postgres` user, else `nobody`.
package pgtest

import (
	"context"
	"errors"
	"maps"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"k8s.io/apimachinery/pkg/util/rand"

	"jobrun.dev/jobrun/internal/cutproxy"
	"jobrun.dev/jobrun/internal/pgserver"
)

// Superuser is the server's one role, which trusts every local connection.
const Superuser = pgserver.Superuser

// BinDirEnv names the environment variable that, when set, is the only place
// FindBinaries looks (a PostgreSQL built or installed elsewhere).
// hack/build-tools.sh (make tools-pg) honours it too.
const BinDirEnv = pgserver.BinDirEnv

// Binaries are the PostgreSQL server programs a Server runs.
type Binaries = pgserver.Binaries

// FindBinaries finds initdb, pg_ctl and postgres (pgserver.FindBinaries).
func FindBinaries() (Binaries, error) { return pgserver.FindBinaries() }

// Options change how New starts a server. The zero value is the default.
type Options struct {
	// BinDir, when set, is where the server binaries are (instead of
	// FindBinaries).
	BinDir string
	// Settings are more server settings (postgres -c NAME=VALUE), e.g.
	// shared_buffers for a benchmark; they win over pgtest's own.
	Settings map[string]string
	// StartTimeout bounds initdb plus the wait for the first answered query;
	// 0 means 60 s (generous: a loaded 2-core machine starts in ~1-2 s).
	StartTimeout time.Duration
	// StopTimeout bounds pg_ctl stop's wait, after which Stop kills the
	// server; 0 means 15 s. Whole seconds.
	StopTimeout time.Duration
}

// Server is a running PostgreSQL.
type Server struct {
	// DSN connects to the database "postgres" as the superuser over TCP.
	DSN string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Dir is the temporary directory: the data directory is Dir/data, the
	// unix socket and the server's log (postgres.log) are in Dir.
	Dir string

	srv *pgserver.Server
}

// settings are pgtest's server settings beyond pgserver's (loopback only;
// Ephemeral: fsync off, fast rather than durable, as a crash loses a
// throwaway database anyway).
var settings = map[string]string{
	"log_min_messages": "warning",
}

// Start starts a server for t, stopped when t ends, and returns its DSN. It
// fails t when the server cannot start (binaries missing: it says how to get
// them).
func Start(t testing.TB) string {
	t.Helper()
	s, err := New(Options{})
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return s.DSN
}

// New starts a server: initdb into a new temporary directory, postgres on a
// free port of 127.0.0.1, and waits until it answers SELECT 1. On an error
// nothing is left running or on disk.
func New(opts Options) (_ *Server, err error) {
	// Look for the binaries first: without them there is nothing to clean.
	if opts.BinDir == "" {
		if _, err := pgserver.FindBinaries(); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "jobrun-pgtest-")
	if err != nil {
		return nil, err
	}
	all := maps.Clone(settings)
	maps.Copy(all, opts.Settings)
	srv, err := pgserver.Start(pgserver.Options{
		Dir:          dir,
		Ephemeral:    true,
		Settings:     all,
		BinDir:       opts.BinDir,
		StartTimeout: opts.StartTimeout,
		StopTimeout:  opts.StopTimeout,
	})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &Server{DSN: srv.DSN, Port: srv.Port, Dir: dir, srv: srv}, nil
}

// Pid is the postmaster's process id; 0 when it is not running.
func (s *Server) Pid() int { return s.srv.Pid() }

// Database creates a database of its own for t, dropped when t ends, and
// returns its DSN: tests sharing one Server do not see each other's tables.
func (s *Server) Database(t testing.TB) string {
	t.Helper()
	name := "t_" + rand.String(10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.DSN)
		if err != nil {
			t.Errorf("pgtest: dropping database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: dropping database %s: %v", name, err)
		}
	})
	return s.srv.DatabaseDSN(name)
}

// Stop stops the server (pg_ctl stop -m fast, which cuts connections; if
// the postmaster still runs after that, SIGKILL to it and its children) and
// removes Dir. It returns once no process of the server is left. Stopping
// twice is harmless.
func (s *Server) Stop() error {
	err := s.srv.Stop()
	if s.Dir != "" {
		if rmErr := os.RemoveAll(s.Dir); rmErr != nil {
			err = errors.Join(err, rmErr)
		} else {
			s.Dir = ""
		}
	}
	return err
}

// Cuttable puts a cut proxy (internal/cutproxy) in front of the server of
// dsn, for fault tests: it returns the proxy and a DSN through it, with a
// connect timeout of 2 s so that a client of a cut server fails fast. The
// proxy is cut when the test ends.
func Cuttable(t testing.TB, dsn string) (*cutproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := cutproxy.New(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Cut)
	u.Host = proxy.Addr()
	q := u.Query()
	q.Set("connect_timeout", "2")
	u.RawQuery = q.Encode()
	return proxy, u.String()
}
