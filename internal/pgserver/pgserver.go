// Package pgserver runs a local PostgreSQL from the distribution's server
// binaries (make tools-pg): initdb into a directory the first time, postgres
// on 127.0.0.1 only (and a unix socket in that directory), ready once it
// answers SELECT 1, stopped with pg_ctl stop and nothing left running. It is
// the one way jobrun starts PostgreSQL: internal/pgtest's throwaway test
// databases and `make dev`'s archive (internal/localcluster), whose data
// directory is kept between runs.
//
// PostgreSQL refuses to run as root: as root, initdb, postgres and pg_ctl run
// as the `postgres` user (which Debian's package creates), else `nobody`,
// and the directory is theirs.
package pgserver

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
	"time"

	"github.com/jackc/pgx/v5"

	"jobrun.dev/jobrun/internal/supervise"
)

// Superuser is the server's one role, which trusts every local connection.
const Superuser = "postgres"

// Options say how Start starts a server.
type Options struct {
	// Dir is the server's directory, created if missing: the data directory
	// is Dir/data (initdb'd on the first Start, reused by later ones), the
	// unix socket is in Dir. Required.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0: a free one. A fixed port that is
	// taken is an error that says so.
	Port int
	// Database is created if missing, and DSN connects to it; empty:
	// "postgres".
	Database string
	// Ephemeral trades durability for speed, for data nobody keeps (tests):
	// initdb --no-sync, and fsync, synchronous_commit and full_page_writes
	// off. Otherwise PostgreSQL's durable defaults stay.
	Ephemeral bool
	// Settings are more server settings (postgres -c NAME=VALUE), e.g.
	// shared_buffers for a benchmark; they win over pgserver's own, except
	// listen_addresses (loopback only, always).
	Settings map[string]string
	// LogFile is where the server's output is appended; empty: Dir/postgres.log.
	LogFile string
	// BinDir, when set, is where the server binaries are (instead of
	// FindBinaries).
	BinDir string
	// StartTimeout bounds initdb plus the wait for the first answered query;
	// 0 means 60 s (generous: a loaded 2-core machine starts in ~1-2 s).
	StartTimeout time.Duration
	// StopTimeout bounds pg_ctl stop's wait, after which Stop kills the
	// server; 0 means 15 s. Whole seconds.
	StopTimeout time.Duration
}

// Server is a running PostgreSQL.
type Server struct {
	// DSN connects to Options.Database as the superuser over TCP.
	DSN string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Dir is Options.Dir.
	Dir string

	bins        Binaries
	cred        *syscall.Credential
	proc        *supervise.Process
	logFile     string
	stopTimeout time.Duration
}

// ErrPortTaken is what Start returns (wrapped) when Options.Port is in use.
var ErrPortTaken = errors.New("port taken")

func portTaken(port int, err error) error {
	return fmt.Errorf("%w: 127.0.0.1:%d is in use (%v): another PostgreSQL, or one left by an earlier run? Stop it, or choose another port", ErrPortTaken, port, err)
}

// errOldProcesses: processes of an earlier server on the data directory
// still hold its shared memory.
var errOldProcesses = errors.New("an earlier server's processes still run")

// Start starts a server: initdb into Dir/data unless it holds a data
// directory already, postgres on 127.0.0.1, waits until it answers SELECT 1,
// and creates Options.Database if missing. A postmaster.pid left by a killed
// server whose process is gone is no obstacle (postgres replaces it). On an
// error nothing is left running; Dir stays.
func Start(opts Options) (_ *Server, err error) {
	if opts.Dir == "" {
		return nil, errors.New("pgserver: no directory")
	}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	deadline := time.Now().Add(timeout)
	s := &Server{stopTimeout: opts.StopTimeout, logFile: opts.LogFile}
	if s.stopTimeout < time.Second {
		s.stopTimeout = 15 * time.Second
	}
	if s.logFile == "" {
		s.logFile = filepath.Join(opts.Dir, "postgres.log")
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
	if s.Dir, err = filepath.Abs(opts.Dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	if s.cred != nil {
		if err := os.Chown(s.Dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, err
		}
		if err := s.reachable(); err != nil {
			return nil, err
		}
	}
	if opts.Port != 0 {
		// Before initdb, to fail fast; postgres's bind says so too (below).
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.Port)))
		if err != nil {
			return nil, portTaken(opts.Port, err)
		}
		l.Close()
	}
	if err := s.initdb(opts.Ephemeral); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop())
		}
	}()
	// A free port can be taken between our probe and postgres's bind: then
	// postgres exits saying so, and another port is tried. The processes of
	// a killed server end a moment after their postmaster: until then
	// postgres refuses their shared memory, and is tried again.
	for attempt := 1; ; attempt++ {
		err = s.start(opts, deadline)
		switch {
		case err == nil:
		case errors.Is(err, ErrPortTaken) && opts.Port == 0 && attempt < 3:
			continue
		case errors.Is(err, errOldProcesses) && time.Now().Add(200*time.Millisecond).Before(deadline):
			time.Sleep(200 * time.Millisecond)
			continue
		}
		break
	}
	if err != nil {
		return nil, err
	}
	database := opts.Database
	if database == "" {
		database = "postgres"
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := s.CreateDatabase(ctx, database); err != nil {
		return nil, err
	}
	s.DSN = s.DatabaseDSN(database)
	return s, nil
}

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

// reachable checks that the unprivileged user can enter Dir: a kept
// directory under a home that only root may enter (/root is 0700) cannot
// work, and initdb's "permission denied" would not say why.
func (s *Server) reachable() error {
	cmd := s.command("/bin/sh", "-c", `cd "$1"`, "sh", s.Dir)
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("PostgreSQL runs as uid %d (it refuses root), which cannot enter %s (%v: %s): a parent directory is closed to others; chmod o+x it, or keep the directory elsewhere",
			s.cred.Uid, s.Dir, err, strings.TrimSpace(string(out)))
	}
	return nil
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

// DataDir is the data directory, Dir/data.
func (s *Server) DataDir() string { return filepath.Join(s.Dir, "data") }

// initdb creates the data directory unless it exists. It initdb's into a
// sibling and renames it, so a half-made one (initdb killed) never passes
// for a data directory: the next Start starts over.
func (s *Server) initdb(ephemeral bool) error {
	if _, err := os.Stat(filepath.Join(s.DataDir(), "PG_VERSION")); err == nil {
		return nil
	}
	tmp := s.DataDir() + ".initdb"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.RemoveAll(s.DataDir()); err != nil {
		return err
	}
	args := []string{"-D", tmp, "-U", Superuser, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-instructions"}
	if ephemeral {
		args = append(args, "--no-sync")
	}
	out, err := s.command(s.bins.Initdb, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", s.bins.Initdb, err, out)
	}
	return os.Rename(tmp, s.DataDir())
}

// settings are the server settings of every server.
func settings(opts Options) map[string]string {
	all := map[string]string{}
	if opts.Ephemeral {
		all["fsync"] = "off"
		all["synchronous_commit"] = "off"
		all["full_page_writes"] = "off"
	}
	maps.Copy(all, opts.Settings)
	all["listen_addresses"] = "127.0.0.1"
	return all
}

// maxSocketPath is the longest unix socket path the kernel takes (sun_path
// less its terminating NUL).
const maxSocketPath = 107

// start runs postgres on opts.Port (or a free port) and waits until it
// answers.
func (s *Server) start(opts Options, deadline time.Time) error {
	port := opts.Port
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return err
		}
	}
	// The socket's path must fit the kernel's limit; a deep directory gets
	// TCP only.
	socketDir := s.Dir
	if len(filepath.Join(socketDir, ".s.PGSQL.65535")) > maxSocketPath {
		socketDir = ""
	}
	args := []string{"-D", s.DataDir(), "-p", strconv.Itoa(port), "-k", socketDir}
	all := settings(opts)
	for _, k := range slices.Sorted(maps.Keys(all)) {
		args = append(args, "-c", k+"="+all[k])
	}
	logFile, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// Where this start's lines begin, to quote only them in an error.
	logStart, _ := logFile.Seek(0, 2)
	proc, err := supervise.Start("postgres", s.command(s.bins.Postgres, args...), logFile)
	if err != nil {
		return fmt.Errorf("starting %s: %w", s.bins.Postgres, err)
	}
	s.proc, s.Port = proc, port
	adminDSN := s.DatabaseDSN("postgres")
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	var lastErr error
	for {
		if lastErr = ping(ctx, adminDSN); lastErr == nil {
			return nil
		}
		select {
		case <-proc.Done():
			log := s.logSince(logStart)
			s.proc = nil
			if strings.Contains(log, "could not bind") || strings.Contains(log, "already in use") {
				return portTaken(port, errors.New(strings.TrimSpace(log)))
			}
			if strings.Contains(log, "pre-existing shared memory block") {
				return fmt.Errorf("%w: %s", errOldProcesses, log)
			}
			return fmt.Errorf("postgres exited (%v) before answering; its log (%s):\n%s", proc.Err(), s.logFile, log)
		case <-ctx.Done():
			return fmt.Errorf("postgres did not answer SELECT 1 in time (last: %v); its log (%s):\n%s", lastErr, s.logFile, s.logSince(logStart))
		case <-poll.C:
		}
	}
}

// logSince is the server's log from offset on.
func (s *Server) logSince(offset int64) string {
	b, _ := os.ReadFile(s.logFile)
	if offset > int64(len(b)) {
		offset = 0
	}
	return string(b[offset:])
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

// CreateDatabase creates database name unless it exists.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.DatabaseDSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	return nil
}

// DatabaseDSN connects to database as the superuser over TCP.
func (s *Server) DatabaseDSN(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(Superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)),
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

// Processes are the server's processes: the postmaster and its children
// (background workers, backends); none when it is not running.
func (s *Server) Processes() []int {
	pid := s.Pid()
	if pid == 0 {
		return nil
	}
	return append([]int{pid}, ChildPids(pid)...)
}

// Stop stops the server (pg_ctl stop -m fast, which cuts connections; if
// the postmaster still runs after that, SIGKILL to it and its children). It
// returns once no process of the server is left, and keeps Dir. Stopping
// twice is harmless.
func (s *Server) Stop() error {
	if s.proc == nil || s.proc.Exited() {
		return nil
	}
	var errs []error
	pid := s.proc.Pid()
	children := ChildPids(pid)
	out, err := s.command(s.bins.PgCtl, "stop", "-D", s.DataDir(), "-m", "fast", "-w",
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
		// the postmaster gone, but a caller wants them gone now. Listed
		// right before the kill, while they are still its children.
		stuck := ChildPids(pid)
		s.proc.Kill()
		for _, child := range stuck {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
		children = append(children, stuck...)
	}
	if left := WaitGone(children, 10*time.Second); len(left) > 0 {
		errs = append(errs, fmt.Errorf("postgres processes %v still running", left))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping PostgreSQL: %w", err)
	}
	return nil
}

// ChildPids lists the processes whose parent is pid, from /proc.
func ChildPids(pid int) []int {
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

// WaitGone waits until none of pids is alive, or until timeout; it returns
// those still alive. An exited child of another parent is reaped by it (a
// zombie until then), so a zombie counts as gone.
func WaitGone(pids []int, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		var left []int
		for _, pid := range pids {
			if Alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		<-poll.C
	}
}

// Alive reports whether process pid runs (a zombie does not).
func Alive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
	fields := strings.Fields(rest)
	return len(fields) > 0 && fields[0] != "Z"
}
