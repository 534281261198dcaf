package pgtest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"jobrun.dev/jobrun/internal/pgserver"
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

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// newServer starts a server stopped when t ends (New, for tests that need
// the Server itself).
func newServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(Options{})
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

func TestStartServesQueries(t *testing.T) {
	conn := connect(t, Start(t))
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "CREATE TABLE runs (id text PRIMARY KEY, params jsonb)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO runs VALUES ($1, $2)", "r1", map[string]any{"items": 3}); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, conn, "SELECT params->>'items' FROM runs WHERE id = 'r1'"); got != "3" {
		t.Errorf("params->>'items' = %q, want 3", got)
	}
	for setting, want := range map[string]string{"fsync": "off", "listen_addresses": "127.0.0.1", "server_encoding": "UTF8"} {
		if got := queryString(t, conn, "SHOW "+setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
}

// TestRunsUnprivileged: as root, the server runs as another user (PostgreSQL
// would refuse root anyway; this checks it is not root in some other way).
func TestRunsUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: the server runs as this user")
	}
	s := newServer(t)
	status, err := os.ReadFile("/proc/" + strconv.Itoa(s.Pid()) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if fields := strings.Fields(line); len(fields) > 1 && fields[0] == "Uid:" && fields[1] == "0" {
			t.Errorf("the postmaster runs as root: %s", line)
		}
	}
}

// TestLoopbackOnly: the port answers on 127.0.0.1 and on no other address
// of this machine, and the unix socket is in the server's directory.
func TestLoopbackOnly(t *testing.T) {
	s := newServer(t)
	port := strconv.Itoa(s.Port)
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), 5*time.Second)
	if err != nil {
		t.Fatalf("127.0.0.1:%s: %v", port, err)
	}
	c.Close()
	sock := filepath.Join(s.Dir, ".s.PGSQL."+port)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("unix socket %s: %v, %v", sock, fi, err)
	}

	// A control listener on every address shows that each address below is
	// reachable from here at all, so a refused dial means "not listening".
	control, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	controlPort := strconv.Itoa(control.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := control.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, a := range addrs {
		ip, _, err := net.ParseCIDR(a.String())
		if err != nil || ip.Equal(net.IPv4(127, 0, 0, 1)) || ip.IsLinkLocalUnicast() {
			continue
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), controlPort), 2*time.Second); err != nil {
			t.Logf("%s: not reachable from here, skipped: %v", ip, err)
			continue
		} else {
			c.Close()
		}
		checked++
		t.Logf("checking %s", ip)
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), port), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("PostgreSQL answers on %s:%s, want 127.0.0.1 only", ip, port)
		}
	}
	if checked == 0 {
		t.Skipf("no address besides 127.0.0.1 to check (addresses: %v)", addrs)
	}

}

// TestTwoAtOnce: two servers start concurrently, each on its own port with
// its own data.
func TestTwoAtOnce(t *testing.T) {
	var servers [2]*Server
	var errs [2]error
	var wg sync.WaitGroup
	for i := range servers {
		wg.Go(func() { servers[i], errs[i] = New(Options{}) })
	}
	wg.Wait()
	for i, s := range servers {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() {
			if err := s.Stop(); err != nil {
				t.Error(err)
			}
		})
	}
	if servers[0].Port == servers[1].Port || servers[0].Dir == servers[1].Dir {
		t.Fatalf("both servers on port %d, dir %s / %s", servers[0].Port, servers[0].Dir, servers[1].Dir)
	}
	a, b := connect(t, servers[0].DSN), connect(t, servers[1].DSN)
	if _, err := a.Exec(context.Background(), "CREATE TABLE only_in_a (id int)"); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, b, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'only_in_a'"); got != "0" {
		t.Errorf("the second server sees the first one's table")
	}
}

// TestStopLeavesNothing: after Stop no process of the server is left (the
// postmaster, its background workers, a connection's backend), the port is
// closed and the directory is gone, even with a client still connected.
func TestStopLeavesNothing(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	conn := connect(t, s.DSN) // a backend, left open on purpose
	_ = conn
	pid, dir, port := s.Pid(), s.Dir, s.Port
	pids := append(pgserver.ChildPids(pid), pid)
	if len(pids) < 3 {
		t.Fatalf("postmaster %d has children %v; want its workers and a backend", pid, pids[:len(pids)-1])
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, pids, dir, port)
	if err := s.Stop(); err != nil {
		t.Errorf("a second Stop: %v", err)
	}
}

// TestStopHungServer: a server that does not shut down (the postmaster and
// its workers stopped with SIGSTOP, so pg_ctl's SIGINT waits, and a worker
// would not notice the postmaster's death) is killed, workers too, the
// directory removed, and Stop says pg_ctl failed.
func TestStopHungServer(t *testing.T) {
	s, err := New(Options{StopTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pid, dir, port := s.Pid(), s.Dir, s.Port
	pids := append(pgserver.ChildPids(pid), pid)
	t.Cleanup(func() { _ = s.Stop() })
	for _, p := range pids {
		// A child may be gone already (the backend of New's readiness query).
		if err := syscall.Kill(p, syscall.SIGSTOP); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Fatal(err)
		}
	}
	// A stopped postmaster ignores pg_ctl's SIGINT: Stop must kill it.
	start := time.Now()
	err = s.Stop()
	t.Logf("Stop took %v: %v", time.Since(start).Round(time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "pg_ctl stop") {
		t.Errorf("Stop of a hung server: %v, want pg_ctl's failure reported", err)
	}
	assertGone(t, pids, dir, port)
}

func assertGone(t *testing.T, pids []int, dir string, port int) {
	t.Helper()
	for _, p := range pids {
		if pgserver.Alive(p) {
			t.Errorf("process %d still running after Stop", p)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Stop: %v", dir, err)
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
		c.Close()
		t.Errorf("port %d still answers after Stop", port)
	}
}

// TestDatabasePerTest: each Database is separate and dropped when its test
// ends.
func TestDatabasePerTest(t *testing.T) {
	s := newServer(t)
	var names []string
	for i := range 2 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			conn := connect(t, s.Database(t))
			names = append(names, queryString(t, conn, "SELECT current_database()"))
			if got := queryString(t, conn, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'mine'"); got != "0" {
				t.Errorf("a new database already has the table of another test")
			}
			if _, err := conn.Exec(context.Background(), "CREATE TABLE mine (id int)"); err != nil {
				t.Fatal(err)
			}
		})
	}
	if len(names) != 2 || names[0] == names[1] {
		t.Fatalf("databases %v, want two different ones", names)
	}
	admin := connect(t, s.DSN)
	rows, err := admin.Query(context.Background(), "SELECT datname FROM pg_database")
	if err != nil {
		t.Fatal(err)
	}
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if slices.Contains(left, n) {
			t.Errorf("database %s not dropped after its test (databases: %v)", n, left)
		}
	}
}

func TestMissingBinaries(t *testing.T) {
	empty := t.TempDir()
	_, err := New(Options{BinDir: empty})
	if err == nil {
		t.Fatal("New with no binaries succeeded")
	}
	for _, want := range []string{"initdb, pg_ctl, postgres", empty, "make tools-pg", "apt-get install -y postgresql"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	// Through the environment variable, and a directory with some of them.
	partial := t.TempDir()
	for _, name := range []string{"initdb", "pg_ctl"} {
		if err := os.WriteFile(filepath.Join(partial, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(BinDirEnv, partial)
	_, err = FindBinaries()
	if err == nil || !strings.Contains(err.Error(), BinDirEnv) || !strings.Contains(err.Error(), partial+" lacks postgres") {
		t.Errorf("FindBinaries with %s=%s (no postgres): %v", BinDirEnv, partial, err)
	}
}
