package realnode

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// StateDir holds a record of each running cluster (what Stop needs to undo
// it, and the process that owns it), so that Start can tear down the
// cluster of a test process that died without calling Stop (killed, or
// ended by go test's -timeout), and refuse to start beside a live one.
// /run is a tmpfs: after a reboot nothing is left to undo.
const StateDir = "/run/jobrun-realnode"

// record is a running cluster's entry in StateDir.
type record struct {
	// PID and StartTime (in clock ticks since boot, /proc/PID/stat's
	// field 22) identify the owning process, even if its PID is reused.
	PID        int               `json:"pid"`
	StartTime  uint64            `json:"startTime"`
	Dir        string            `json:"dir"`
	Netns      string            `json:"netns"`
	CgroupRoot string            `json:"cgroupRoot"`
	Sysctls    map[string]string `json:"sysctls"`
	Created    []string          `json:"created"`
	// At is when the cluster started.
	At time.Time `json:"at"`
}

func (c *Cluster) recordPath() string { return filepath.Join(StateDir, c.Netns+".json") }

// writeRecord records the cluster as this process's.
func (c *Cluster) writeRecord() error {
	started, err := processStartTime(os.Getpid())
	if err != nil {
		return err
	}
	data, err := json.Marshal(record{PID: os.Getpid(), StartTime: started, Dir: c.Dir, Netns: c.Netns,
		CgroupRoot: c.CgroupRoot, Sysctls: c.Sysctls, Created: c.created, At: time.Now()})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(StateDir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(c.recordPath(), data, 0o600)
}

// removeRecord removes the cluster's record, and StateDir once empty.
func (c *Cluster) removeRecord() error {
	if err := os.Remove(c.recordPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Remove(StateDir); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return err
	}
	return nil
}

// sweepStale tears down every recorded cluster whose process is gone, the
// latest first (each restores the sysctls it found, so the first one's
// restores the host's own), and fails if one's process still runs: two real
// nodes at once on one machine would share the host paths and sysctls.
func sweepStale(log func(string, ...any)) error {
	entries, err := os.ReadDir(StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var records []record
	for _, e := range entries {
		path := filepath.Join(StateDir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var r record
		if err := json.Unmarshal(data, &r); err != nil || r.Dir == "" || r.Netns == "" {
			return fmt.Errorf("real-node record %s unreadable (remove it once its cluster is gone): %v", path, err)
		}
		if started, err := processStartTime(r.PID); err == nil && started == r.StartTime {
			return fmt.Errorf("another real node is running (process %d, work dir %s): two at once on one machine are not supported", r.PID, r.Dir)
		}
		records = append(records, r)
	}
	slices.SortFunc(records, func(a, b record) int { return b.At.Compare(a.At) })
	for _, r := range records {
		stale := &Cluster{Dir: r.Dir, Netns: r.Netns, NetnsPath: netnsPath(r.Netns), CgroupRoot: r.CgroupRoot, Sysctls: r.Sysctls, created: r.Created}
		log("tearing down the real node of process %d, which ended without stopping it (work dir %s)", r.PID, r.Dir)
		if err := stale.stop(false); err != nil {
			return fmt.Errorf("tearing down the stale real node in %s: %w", r.Dir, err)
		}
	}
	return nil
}

// processStartTime is when the process started, in clock ticks since boot.
func processStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start after the last ')'.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}
