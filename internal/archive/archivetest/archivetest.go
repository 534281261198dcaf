// Package archivetest opens the run archive (internal/archive) in a real,
// throwaway PostgreSQL (internal/pgtest) for tests.
package archivetest

import (
	"testing"

	"jobrun.dev/jobrun/internal/archive"
	"jobrun.dev/jobrun/internal/cutproxy"
	"jobrun.dev/jobrun/internal/pgtest"
	"jobrun.dev/jobrun/test/testenv"
)

// Start starts a PostgreSQL for t and opens the archive in it, through a cut
// proxy (pgtest.Cuttable) when proxied. It returns the store (closed when t
// ends), the proxy (nil unless proxied) and the server's own DSN.
func Start(t testing.TB, proxied bool) (*archive.Store, *cutproxy.Proxy, string) {
	t.Helper()
	dsn := pgtest.Start(t)
	open := dsn
	var proxy *cutproxy.Proxy
	if proxied {
		proxy, open = pgtest.Cuttable(t, dsn)
	}
	return Open(t, open), proxy, dsn
}

// Open opens the archive at dsn for t; it is closed when t ends.
func Open(t testing.TB, dsn string) *archive.Store {
	t.Helper()
	store, err := archive.Open(testenv.Context(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return store
}
