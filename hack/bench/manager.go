package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// rss is the manager's resident set size in MiB, from /proc.
func (b *bench) rss() (float64, error) {
	pid := b.cl.ManagerPID()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// metric reads one unlabelled value from the manager's /metrics.
func (b *bench) metric(name string) (float64, error) {
	v, found, err := b.scrape(name)
	if err == nil && !found {
		err = fmt.Errorf("no metric %s", name)
	}
	return v, err
}

// metricSum adds up every series of a metric on the manager's /metrics (0
// if it has none yet).
func (b *bench) metricSum(name string) (float64, error) {
	v, _, err := b.scrape(name)
	return v, err
}

// scrape reads the manager's /metrics and adds up the series of name.
func (b *bench) scrape(name string) (sum float64, found bool, err error) {
	resp, err := b.http.Get(b.metrics)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || (f[0] != name && !strings.HasPrefix(f[0], name+"{")) {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return 0, false, err
		}
		sum, found = sum+v, true
	}
	return sum, found, nil
}

// liveHeap is the manager's live Go heap: HeapAlloc right after a garbage
// collection, which /debug/pprof/heap?gc=1 runs first. Read at any other
// time, the heap holds garbage of an unknown age, more than the live data
// itself between two collections.
func (b *bench) liveHeap() (float64, error) {
	resp, err := b.http.Get(b.pprof + "/heap?gc=1&debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no HeapAlloc in %s/heap?debug=1 (status %s)", b.pprof, resp.Status)
}
