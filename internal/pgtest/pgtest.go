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
// PostgreSQL refuses to run as root: as root, initdb, postgres and pg_ctl run
// as the `postgres` user (which Debian's package creates), else `nobody`,
// and the directory is theirs.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"k8s.io/apimachinery/pkg/util/rand"

	"jobrun.dev/jobrun/internal/supervise"
)

// Superuser is the server's one role, which trusts every local connection.
const Superuser = "postgres"

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

	bins        Binaries
	cred        *syscall.Credential
	proc        *supervise.Process
	stopTimeout time.Duration
}

// settings are pgtest's server settings: reachable on loopback only, and
// fast rather than durable (a crash loses a throwaway database).
var settings = map[string]string{
	"listen_addresses":   "127.0.0.1",
	"fsync":              "off",
	"synchronous_commit": "off",
	"full_page_writes":   "off",
	"log_min_messages":   "warning",
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
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	deadline := time.Now().Add(timeout)
	s := &Server{stopTimeout: opts.StopTimeout}
	if s.stopTimeout < time.Second {
		s.stopTimeout = 15 * time.Second
	}
	if opts.BinDir != "" {
		s.bins, err = findIn([]string{opts.BinDir})
	} else {
		s.bins, err = FindBinaries()
	}
	if err != nil {
		return nil, err
	}
	if s.cred, err = unprivileged(); err != nil {
		return nil, err
	}
	if s.Dir, err = os.MkdirTemp("", "jobrun-pgtest-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if s.cred != nil {
		if err := os.Chown(s.Dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, err
		}
	}
	if err := s.initdb(); err != nil {
		return nil, err
	}
	// The free port can be taken between our probe and postgres's bind:
	// then postgres exits saying so, and another port is tried.
	for attempt := 1; ; attempt++ {
		err := s.start(opts.Settings, deadline)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			return nil, err
		}
	}
}

var errPortTaken = errors.New("port taken")

// unprivileged is the user to run PostgreSQL as: nil unless we are root.
func unprivileged() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var errs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			errs = append(errs, fmt.Errorf("user %s: uid %s gid %s unusable", name, u.Uid, u.Gid))
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	return nil, fmt.Errorf("PostgreSQL refuses to run as root, and neither user postgres nor nobody is usable: %w", errors.Join(errs...))
}

// command runs a server program as the unprivileged user, in Dir, with an
// environment of its own (no PG* variable of ours leaks in).
func (s *Server) command(path string, args ...string) *exec.Cmd {
	cmd := exec.Command(path, args...)
	cmd.Dir = s.Dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "TZ=UTC"}
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

func (s *Server) dataDir() string { return filepath.Join(s.Dir, "data") }

func (s *Server) initdb() error {
	out, err := s.command(s.bins.Initdb, "-D", s.dataDir(), "-U", Superuser, "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", s.bins.Initdb, err, out)
	}
	return nil
}

// start runs postgres on a free port and waits until it answers.
func (s *Server) start(extra map[string]string, deadline time.Time) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	all := maps.Clone(settings)
	maps.Copy(all, extra)
	args := []string{"-D", s.dataDir(), "-p", strconv.Itoa(port), "-k", s.Dir}
	for _, k := range slices.Sorted(maps.Keys(all)) {
		args = append(args, "-c", k+"="+all[k])
	}
	logPath := filepath.Join(s.Dir, "postgres.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	proc, err := supervise.Start("postgres", s.command(s.bins.Postgres, args...), logFile)
	if err != nil {
		return fmt.Errorf("starting %s: %w", s.bins.Postgres, err)
	}
	s.proc, s.Port = proc, port
	s.DSN = dsn(port, "postgres")
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	var lastErr error
	for {
		if lastErr = ping(ctx, s.DSN); lastErr == nil {
			return nil
		}
		select {
		case <-proc.Done():
			log, _ := os.ReadFile(logPath)
			s.proc = nil
			if strings.Contains(string(log), "could not bind") || strings.Contains(string(log), "already in use") {
				return fmt.Errorf("%w: %d: %s", errPortTaken, port, log)
			}
			return fmt.Errorf("postgres exited (%v) before answering; its log:\n%s", proc.Err(), log)
		case <-ctx.Done():
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("postgres did not answer SELECT 1 in time (last: %v); its log:\n%s", lastErr, log)
		case <-poll.C:
		}
	}
}

// ping connects and runs SELECT 1, bounded by one second per try.
func ping(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var one int
	return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

func dsn(port int, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// freePort is a TCP port of 127.0.0.1 that nothing listens on just now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Pid is the postmaster's process id; 0 when it is not running.
func (s *Server) Pid() int {
	if s.proc == nil || s.proc.Exited() {
		return 0
	}
	return s.proc.Pid()
}

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
	return dsn(s.Port, name)
}

// Stop stops the server (pg_ctl stop -m fast, which cuts connections; if
// the postmaster still runs after that, SIGKILL to it and its children) and
// removes Dir. It returns
// once no process of the server is left. Stopping twice is harmless.
func (s *Server) Stop() error {
	var errs []error
	if s.proc != nil && !s.proc.Exited() {
		pid := s.proc.Pid()
		children := childPids(pid)
		out, err := s.command(s.bins.PgCtl, "stop", "-D", s.dataDir(), "-m", "fast", "-w",
			"-t", strconv.Itoa(int(s.stopTimeout.Seconds()))).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("pg_ctl stop: %w: %s", err, strings.TrimSpace(string(out))))
		}
		// pg_ctl returns once postmaster.pid is gone, which the postmaster
		// removes as it exits.
		select {
		case <-s.proc.Done():
		case <-time.After(time.Second):
		}
		if !s.proc.Exited() {
			// The postmaster's children are sessions of their own, so the
			// process group's SIGKILL misses them; they would end on seeing
			// the postmaster gone, but a test wants them gone now. Listed
			// right before the kill, while they are still its children.
			stuck := childPids(pid)
			s.proc.Kill()
			for _, child := range stuck {
				_ = syscall.Kill(child, syscall.SIGKILL)
			}
			children = append(children, stuck...)
		}
		if left := waitGone(children, 10*time.Second); len(left) > 0 {
			errs = append(errs, fmt.Errorf("postgres processes %v still running", left))
		}
	}
	if s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		} else {
			s.Dir = ""
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping PostgreSQL: %w", err)
	}
	return nil
}

// childPids lists the processes whose parent is pid, from /proc.
func childPids(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
		fields := strings.Fields(rest)
		if len(fields) >= 2 && fields[1] == strconv.Itoa(pid) {
			pids = append(pids, child)
		}
	}
	return pids
}

// waitGone waits until none of pids is alive, or until timeout; it returns
// those still alive. An exited child of another parent is reaped by it (a
// zombie until then), so a zombie counts as gone.
func waitGone(pids []int, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		var left []int
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		<-poll.C
	}
}

func alive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
	fields := strings.Fields(rest)
	return len(fields) > 0 && fields[0] != "Z"
}
