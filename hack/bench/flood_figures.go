package main

import (
	"fmt"
	"time"

	"jobrun.dev/jobrun/internal/benchstat"
)

// floodFigures are the flood's figures: B's and the system run's waits in
// each phase (with Kueue, the p99 of running against the goal),
// A's throughput with Kueue against A's without (the ceiling), and where A's
// backlog stood when the system schedule fired.
func floodFigures(off, on *floodPhase) []Figure {
	var figs []Figure
	for _, ph := range []*floodPhase{off, on} {
		figs = append(figs, ph.waitFigures()...)
	}
	tOff, nOff := off.throughput()
	tOn, nOn := on.throughput()
	name := fmt.Sprintf("A's runs ended per second, %d runs, Kueue (ceiling: without)", floodRuns)
	if nOff+nOn > 0 {
		name += fmt.Sprintf(" (not ended in the wait: %d without, %d with)", nOff, nOn)
	}
	f := Figure{Scenario: "flood", Name: name, Value: tOn, Unit: "runs/s", Ceiling: tOff,
		Target: fmt.Sprintf(">= %.1f of without", floodThroughputGoal)}
	if tOff > 0 {
		f.Met = met(tOn >= floodThroughputGoal*tOff)
	}
	figs = append(figs, f)
	for _, ph := range []*floodPhase{off, on} {
		figs = append(figs, ph.perRunEnded("CPU per run ended (A's and B's), all processes", "ms", 1000, ph.cpu, 10),
			ph.perRunEnded("API-server writes per run ended (A's and B's)", "writes", 1, ph.writes, 16))
	}
	for _, ph := range []*floodPhase{off, on} {
		if ph.system == "" {
			continue
		}
		created := ph.seen[ph.system].created
		figs = append(figs,
			Figure{Scenario: "flood", Name: "system schedule fired after B's triggers, " + ph.label(), Value: created.Sub(ph.bDone).Seconds(), Unit: "s"},
			Figure{Scenario: "flood", Name: "A's runs not ended when it fired, " + ph.label(), Value: float64(ph.aLeftAtFire), Unit: "runs"})
	}
	return figs
}

// perRunEnded is a figure of ph: the sum of by (the machine's CPU seconds
// by process, the API server's writes by verb and resource, from A's first
// trigger to the end of the phase's wait) times scale per run of A's and
// B's that ended in it, with the parts largest parts of by as its
// breakdown: where the work goes with Kueue and without.
func (ph *floodPhase) perRunEnded(name, unit string, scale float64, by map[string]float64, parts int) Figure {
	ended := 0
	for _, id := range append(append([]string(nil), ph.a...), ph.b...) {
		if !ph.seen[id].end.IsZero() {
			ended++
		}
	}
	f := Figure{Scenario: "flood", Name: name + ", " + ph.label(), Unit: unit, Breakdown: map[string]float64{}}
	if ended == 0 {
		return f
	}
	for part, v := range top(by, parts) {
		f.Value += v * scale / float64(ended)
		f.Breakdown[part] = v * scale / float64(ended)
	}
	return f
}

// label names the phase in a figure.
func (ph *floodPhase) label() string {
	if ph.kueue {
		return "Kueue"
	}
	return "no Kueue"
}

// waitFigures are B's and the system run's waits in ph: from trigger (B) or
// creation (the system run) to its pod created (jobrun's part), admitted
// (with Kueue only: without, nothing admits) and running, p50 and p99.
// With Kueue the p99 of running has the goal.
func (ph *floodPhase) waitFigures() []Figure {
	triggered := func(id string) time.Time { return ph.triggered[id] }
	created := func(id string) time.Time { return ph.seen[id].created }
	pod := func(r runSeen) time.Time { return r.pod }
	admitted := func(r runSeen) time.Time { return r.admitted }
	running := func(r runSeen) time.Time { return r.running }
	type step struct {
		name string
		at   func(runSeen) time.Time
		goal bool
	}
	steps := []step{{"pod created", pod, false}, {"running", running, false}}
	if ph.kueue {
		steps = []step{{"pod created", pod, false}, {"admitted", admitted, false}, {"running", running, true}}
	}
	var figs []Figure
	for _, who := range []struct {
		name string
		runs []string
		from func(string) time.Time
	}{
		{fmt.Sprintf("B's %d runs: trigger", floodBRuns), ph.b, triggered},
		{"system run: created", ph.systemRuns(), created},
	} {
		if len(who.runs) == 0 {
			figs = append(figs, Figure{Scenario: "flood", Name: fmt.Sprintf("%s: the schedule did not fire within %s, %s", who.name, floodWindow, ph.label()), Unit: "s"})
			continue
		}
		for _, s := range steps {
			d, censored, floor := ph.waits(who.runs, who.from, s.at)
			for _, p := range []float64{0.5, 0.99} {
				if len(who.runs) == 1 && p == 0.5 {
					continue // one run: its wait is its p99
				}
				v := benchstat.Percentile(d, p)
				name := fmt.Sprintf("%s -> %s p%.0f, %s", who.name, s.name, p*100, ph.label())
				if len(who.runs) == 1 {
					name = fmt.Sprintf("%s -> %s, %s", who.name, s.name, ph.label())
				}
				if censored > 0 && v >= floor {
					name += fmt.Sprintf(" (%d of %d not %s in the wait: at least)", censored, len(who.runs), s.name)
				}
				f := Figure{Scenario: "flood", Name: name, Value: v.Seconds(), Unit: "s"}
				if s.goal && p == 0.99 {
					f.Target = fmt.Sprintf("<= %s", floodGoal)
					f.Met = met(censored == 0 && v <= floodGoal)
				}
				figs = append(figs, f)
			}
		}
	}
	return figs
}

// systemRuns is the system run, if the schedule fired.
func (ph *floodPhase) systemRuns() []string {
	if ph.system == "" {
		return nil
	}
	return []string{ph.system}
}

// waits is each of runs' time from from(run) to the step at picks, and how
// many had not reached that step when the phase stopped waiting: those
// count as waitEnd - from, a lower bound; floor is the least of those, so
// a percentile below it is exact.
func (ph *floodPhase) waits(runs []string, from func(string) time.Time, at func(runSeen) time.Time) (d []time.Duration, censored int, floor time.Duration) {
	for _, id := range runs {
		t := at(ph.seen[id])
		w := t.Sub(from(id))
		if t.IsZero() {
			w = ph.waitEnd.Sub(from(id))
			if censored == 0 || w < floor {
				floor = w
			}
			censored++
		}
		d = append(d, w)
	}
	return d, censored, floor
}

// throughput is A's runs ended per second from A's first trigger to the
// last end, or to the wait's end when some had not ended (notEnded).
func (ph *floodPhase) throughput() (perSecond float64, notEnded int) {
	var last time.Time
	ended := 0
	for _, id := range ph.a {
		end := ph.seen[id].end
		if end.IsZero() {
			notEnded++
			continue
		}
		ended++
		if end.After(last) {
			last = end
		}
	}
	if notEnded > 0 {
		last = ph.waitEnd
	}
	if ended == 0 || !last.After(ph.start) {
		return 0, notEnded
	}
	return float64(ended) / last.Sub(ph.start).Seconds(), notEnded
}
