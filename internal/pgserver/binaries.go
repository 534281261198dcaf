package pgserver

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// BinDirEnv names the environment variable that, when set, is the only place
// FindBinaries looks (a PostgreSQL built or installed elsewhere).
// hack/build-tools.sh (make tools-pg) honours it too.
const BinDirEnv = "JOBRUN_PG_BINDIR"

// debianLib is where Debian and Ubuntu install each major version's server
// programs, as <version>/bin.
const debianLib = "/usr/lib/postgresql"

// installHint says how to get the binaries; every "not found" error ends
// with it.
const installHint = "run make tools-pg (as root it installs them: apt-get install -y postgresql), " +
	"install the distribution's PostgreSQL server package yourself, or set " + BinDirEnv +
	" to the bin directory of a PostgreSQL server"

// Binaries are the PostgreSQL server programs a Server runs.
type Binaries struct {
	// Dir is the directory that holds them.
	Dir      string
	Initdb   string
	PgCtl    string
	Postgres string
}

// FindBinaries finds initdb, pg_ctl and postgres together in one directory:
// $JOBRUN_PG_BINDIR when set (and nowhere else), else the newest
// /usr/lib/postgresql/<version>/bin, /usr/local/bin, then each directory of
// PATH. make tools-pg searches the same places, in the same order.
func FindBinaries() (Binaries, error) {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		b, err := findIn([]string{dir})
		if err != nil {
			return Binaries{}, fmt.Errorf("%s=%s: %w", BinDirEnv, dir, err)
		}
		return b, nil
	}
	dirs := versionDirs(debianLib)
	dirs = append(dirs, "/usr/local/bin")
	dirs = append(dirs, filepath.SplitList(os.Getenv("PATH"))...)
	return findIn(dirs)
}

// versionDirs lists lib/<version>/bin, newest major version first.
func versionDirs(lib string) []string {
	entries, _ := os.ReadDir(lib)
	type versioned struct {
		major int
		dir   string
	}
	var found []versioned
	for _, e := range entries {
		major, err := strconv.Atoi(strings.SplitN(e.Name(), ".", 2)[0])
		if err != nil {
			continue
		}
		found = append(found, versioned{major, filepath.Join(lib, e.Name(), "bin")})
	}
	slices.SortStableFunc(found, func(a, b versioned) int { return b.major - a.major })
	dirs := make([]string, len(found))
	for i, v := range found {
		dirs[i] = v.dir
	}
	return dirs
}

// findIn returns the first of dirs that holds all three programs. A
// directory with only some of them (a client-only install puts pg_ctl's
// siblings elsewhere) is passed over, and the error names what it lacked.
func findIn(dirs []string) (Binaries, error) {
	var partial []string
	for _, dir := range dirs {
		if dir == "" {
			continue
		}
		b := Binaries{
			Dir:      dir,
			Initdb:   filepath.Join(dir, "initdb"),
			PgCtl:    filepath.Join(dir, "pg_ctl"),
			Postgres: filepath.Join(dir, "postgres"),
		}
		var missing []string
		for _, p := range []string{b.Initdb, b.PgCtl, b.Postgres} {
			if !executable(p) {
				missing = append(missing, filepath.Base(p))
			}
		}
		switch len(missing) {
		case 0:
			return b, nil
		case 1, 2:
			partial = append(partial, fmt.Sprintf("%s lacks %s", dir, strings.Join(missing, ", ")))
		}
	}
	msg := "PostgreSQL's server binaries (initdb, pg_ctl, postgres) not found in " + strings.Join(dirs, ", ")
	if len(dirs) == 0 {
		msg = "PostgreSQL's server binaries (initdb, pg_ctl, postgres) not found: no directory to search"
	}
	if len(partial) > 0 {
		msg += " (" + strings.Join(partial, "; ") + ")"
	}
	return Binaries{}, fmt.Errorf("%s: %s", msg, installHint)
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
