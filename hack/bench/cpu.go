package main

import (
	"bytes"
	"cmp"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's
// times; 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
const clockTicks = 100

// cpuSnapshot is each process's CPU seconds so far by pid, with its name:
// its own user and system time plus that of the children it has waited
// for (the dev node's runner processes land in the dev node's).
type cpuSnapshot map[int]procCPU

type procCPU struct {
	name    string
	seconds float64
}

// takeCPU reads /proc/<pid>/stat of every process of this machine.
// Processes that vanish while it reads are left out.
func takeCPU() cpuSnapshot {
	s := cpuSnapshot{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses,
		// so split at its last ')'. utime, stime, cutime and cstime are
		// fields 14-17, the 12th-15th after the state.
		open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
		if open < 0 || end < open {
			continue
		}
		f := strings.Fields(string(data[end+1:]))
		if len(f) < 15 {
			continue
		}
		var ticks float64
		for _, v := range f[11:15] {
			n, _ := strconv.ParseFloat(v, 64)
			ticks += n
		}
		s[pid] = procCPU{name: procName(dir, string(data[open+1:end])), seconds: ticks / clockTicks}
	}
	return s
}

// procName is comm, and for jobrun's binary its subcommand too: the
// manager ("jobrun", flags only), the dev node ("jobrun devnode", with the
// runner processes it waited for) and runners have the same comm.
func procName(dir, comm string) string {
	if comm != "jobrun" {
		return comm
	}
	args, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
	if f := strings.Split(string(args), "\x00"); len(f) > 1 && f[1] != "" && !strings.HasPrefix(f[1], "-") {
		return comm + " " + f[1]
	}
	return comm
}

// cpuSince is the CPU seconds each process name used between before and
// now: a process in both counts its difference, one started since counts
// all of its time (one that exited since is lost, unless its parent waited
// for it, as the dev node does for its runners).
func cpuSince(before, now cpuSnapshot) map[string]float64 {
	by := map[string]float64{}
	for pid, p := range now {
		used := p.seconds
		if b, ok := before[pid]; ok && b.name == p.name {
			used -= b.seconds
		}
		if used > 0 {
			by[p.name] += used
		}
	}
	return by
}

// top keeps the n largest parts of by and adds the rest up as "other".
func top(by map[string]float64, n int) map[string]float64 {
	names := slices.Collect(maps.Keys(by))
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(by[b], by[a]) })
	out := map[string]float64{}
	for i, name := range names {
		if i < n {
			out[name] = by[name]
		} else {
			out["other"] += by[name]
		}
	}
	return out
}
