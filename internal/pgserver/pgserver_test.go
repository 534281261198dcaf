package pgserver

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connecting to %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// tempDir is a temporary directory the server's user can enter (as root
// the server runs as another user; t.TempDir is closed to others).
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "jobrun-pgserver-")
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// start starts a server on opts, stopped when t ends.
func start(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// TestKeptDataDir: a second Start on the same directory reuses the data
// (durably: fsync stays on), the database is created once, Stop leaves the
// directory and no process.
func TestKeptDataDir(t *testing.T) {
	dir := filepath.Join(tempDir(t), "pg")
	logFile := filepath.Join(t.TempDir(), "postgres.log")
	opts := Options{Dir: dir, Database: "jobrun", LogFile: logFile, Settings: map[string]string{"listen_addresses": "*"}}
	s := start(t, opts)
	if !strings.HasSuffix(strings.SplitN(s.DSN, "?", 2)[0], "/jobrun") {
		t.Errorf("DSN %s does not name database jobrun", s.DSN)
	}
	conn := connect(t, s.DSN)
	for setting, want := range map[string]string{"fsync": "on", "synchronous_commit": "on", "listen_addresses": "127.0.0.1"} {
		if got := queryString(t, conn, "SHOW "+setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	mustExec(t, conn, "CREATE TABLE kept (id text PRIMARY KEY)")
	mustExec(t, conn, "INSERT INTO kept VALUES ('r1')")
	pids := s.Processes()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pids, s.Port)
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("the data directory is gone after Stop: %v", err)
	}

	s = start(t, opts)
	if got := queryString(t, connect(t, s.DSN), "SELECT id FROM kept"); got != "r1" {
		t.Errorf("after a restart: %q, want the row r1", got)
	}
	if log, _ := os.ReadFile(logFile); !strings.Contains(string(log), "database system is ready") {
		t.Errorf("log %s lacks the server's output:\n%s", logFile, log)
	}
}

// TestStalePostmasterPid: a server killed with SIGKILL (as a killed make dev
// leaves it: postmaster.pid stays, its workers end a moment later) does not
// keep the next Start from reusing the directory, and nothing of either is
// left after Stop.
func TestStalePostmasterPid(t *testing.T) {
	dir := tempDir(t)
	s := start(t, Options{Dir: dir, Database: "jobrun"})
	mustExec(t, connect(t, s.DSN), "CREATE TABLE kept (id text PRIMARY KEY)")
	mustExec(t, connect(t, s.DSN), "INSERT INTO kept VALUES ('r1')")
	old := s.Processes()
	s.proc.Kill() // the postmaster's process group: the postmaster only
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); err != nil {
		t.Fatalf("no stale postmaster.pid after SIGKILL: %v", err)
	}

	s2 := start(t, Options{Dir: dir, Database: "jobrun"})
	if got := queryString(t, connect(t, s2.DSN), "SELECT id FROM kept"); got != "r1" {
		t.Errorf("after a kill and a restart: %q, want the row r1", got)
	}
	pids := append(old, s2.Processes()...)
	if err := s2.Stop(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pids, s2.Port)
}

// TestPortTaken: a fixed port in use is an error that says so, and nothing
// is left running.
func TestPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	s, err := Start(Options{Dir: tempDir(t), Port: port})
	if err == nil {
		s.Stop()
		t.Fatalf("Start on taken port %d succeeded", port)
	}
	if !errors.Is(err, ErrPortTaken) || !strings.Contains(err.Error(), "127.0.0.1:"+strconv.Itoa(port)+" is in use") {
		t.Errorf("Start on a taken port: %v, want ErrPortTaken naming 127.0.0.1:%d", err, port)
	}
}

func assertGone(t *testing.T, pids []int, port int) {
	t.Helper()
	if len(pids) < 2 {
		t.Fatalf("processes %v: want the postmaster and its workers", pids)
	}
	if left := WaitGone(pids, 10*time.Second); len(left) > 0 {
		t.Errorf("processes %v still running after Stop", left)
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
		c.Close()
		t.Errorf("port %d still answers after Stop", port)
	}
}

// TestVersionDirs: the newest major version first, numerically.
func TestVersionDirs(t *testing.T) {
	lib := t.TempDir()
	for _, v := range []string{"9.6", "15", "16", "common"} {
		if err := os.MkdirAll(filepath.Join(lib, v, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := versionDirs(lib)
	want := []string{filepath.Join(lib, "16", "bin"), filepath.Join(lib, "15", "bin"), filepath.Join(lib, "9.6", "bin")}
	if !slices.Equal(got, want) {
		t.Errorf("versionDirs = %v, want %v", got, want)
	}
}
