package archive

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"k8s.io/apimachinery/pkg/util/rand"

	"jobrun.dev/jobrun/internal/pgtest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) {
	var err error
	if pg, err = pgtest.New(pgtest.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := pg.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// database creates a database of its own for t and returns its DSN. Its
// collation is ICU's en-US, not pgtest's C: there 'a' sorts before 'B' and
// '-' is ignored at first, so a list that sorted ids by the database's
// collation instead of byte order would come out in another order than the
// live index's.
func database(t testing.TB) string {
	t.Helper()
	name := "a_" + rand.String(10)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+
		" TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"); err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, pg.DSN)
		if err != nil {
			t.Errorf("dropping database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	u, err := url.Parse(pg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// open opens a store on a new database, closed when t ends.
func open(t testing.TB) (*Store, string) {
	t.Helper()
	dsn := database(t)
	s, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

func TestCollationDiffersFromGo(t *testing.T) {
	// The premise of the other tests' databases: their default collation
	// does not order as Go does.
	dsn := database(t)
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var less bool
	if err := conn.QueryRow(context.Background(), "SELECT 'a'::text < 'B'::text").Scan(&less); err != nil {
		t.Fatal(err)
	}
	if !less {
		t.Fatal("the test database orders 'a' after 'B', as Go does: the collation tests prove nothing")
	}
}

func TestOpenMigratesOnceConcurrently(t *testing.T) {
	// Without the migration lock, concurrent Opens fail (a table created
	// twice) in some rounds, not all: several rounds of several.
	ctx := context.Background()
	var dsn string
	for round := range 3 {
		dsn = database(t)
		var wg sync.WaitGroup
		errs := make([]error, 6)
		for i := range errs {
			wg.Go(func() {
				s, err := Open(ctx, dsn)
				if err == nil {
					s.Close()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d, Open %d: %v", round, i, err)
			}
		}
	}
	s, err := Open(ctx, dsn) // again: nothing to do
	if err != nil {
		t.Fatalf("Open again: %v", err)
	}
	defer s.Close()
	var applied, goose int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+migrationsTable+" WHERE version_id > 0").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != 1 {
		t.Errorf("%s holds %d applied migrations, want 1", migrationsTable, applied)
	}
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'goose_db_version'").Scan(&goose); err != nil {
		t.Fatal(err)
	}
	if goose != 0 {
		t.Error("goose's default version table exists")
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func TestOpenUnreachable(t *testing.T) {
	// A port nothing listens on: refused at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	// A server that accepts and never answers: only a timeout ends the
	// wait.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()

	old := defaultConnectTimeout
	defaultConnectTimeout = 500 * time.Millisecond
	defer func() { defaultConnectTimeout = old }()

	dsn := func(addr string) string { return "postgres://postgres@" + addr + "/postgres?sslmode=disable" }
	for _, tc := range []struct {
		name string
		dsn  string
		ctx  time.Duration // 0: no deadline
	}{
		{"refused", dsn(closed), 0},
		{"silent, default connect timeout", dsn(silent.Addr().String()), 0},
		{"silent, context deadline", dsn(silent.Addr().String()) + "&connect_timeout=60", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctx)
				defer cancel()
			}
			start := time.Now()
			done := make(chan error, 1)
			go func() {
				s, err := Open(ctx, tc.dsn)
				if err == nil {
					s.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("Open succeeded")
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("Open took %v to fail: %v", d, err)
				}
				t.Logf("%v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("Open still waits after 10 s")
			}
		})
	}
}
