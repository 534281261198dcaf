package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestFloodWaits(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ph := &floodPhase{
		start: at(0), waitEnd: at(100),
		triggered: map[string]time.Time{"b1": at(10), "b2": at(10), "b3": at(12)},
		b:         []string{"b1", "b2", "b3"},
		seen: map[string]runSeen{
			"b1": {running: at(11)},
			"b2": {running: at(14)},
			"b3": {}, // never ran: counted up to the wait's end
		},
	}
	tests := []struct {
		name         string
		runs         []string
		want         []time.Duration
		wantCensored int
		wantFloor    time.Duration
	}{
		{"all ran", []string{"b1", "b2"}, []time.Duration{time.Second, 4 * time.Second}, 0, 0},
		{"one never ran", []string{"b1", "b3"}, []time.Duration{time.Second, 88 * time.Second}, 1, 88 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, censored, floor := ph.waits(tt.runs, func(id string) time.Time { return ph.triggered[id] }, func(r runSeen) time.Time { return r.running })
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
			if censored != tt.wantCensored || floor != tt.wantFloor {
				t.Errorf("censored, floor = %d, %s; want %d, %s", censored, floor, tt.wantCensored, tt.wantFloor)
			}
		})
	}
}

func TestFloodThroughput(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	tests := []struct {
		name         string
		seen         map[string]runSeen
		want         float64
		wantNotEnded int
	}{
		{"all ended: up to the last end", map[string]runSeen{"a1": {end: at(5)}, "a2": {end: at(10)}}, 0.2, 0},
		{"some not ended: up to the wait's end", map[string]runSeen{"a1": {end: at(5)}, "a2": {}}, 1.0 / 40, 1},
		{"none ended", map[string]runSeen{"a1": {}, "a2": {}}, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ph := &floodPhase{start: at(0), waitEnd: at(40), a: []string{"a1", "a2"}, seen: tt.seen}
			got, notEnded := ph.throughput()
			if got != tt.want || notEnded != tt.wantNotEnded {
				t.Errorf("throughput() = %v, %d; want %v, %d", got, notEnded, tt.want, tt.wantNotEnded)
			}
		})
	}
}

func TestFloodGoal(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	phase := func(bRunning time.Time) *floodPhase {
		return &floodPhase{kueue: true, start: at(0), bDone: at(1), waitEnd: at(60),
			triggered: map[string]time.Time{"b1": at(1)}, b: []string{"b1"},
			seen: map[string]runSeen{"b1": {pod: at(1.1), admitted: at(2), running: bRunning}}}
	}
	for _, tt := range []struct {
		name    string
		running time.Time
		want    bool
	}{
		{"within 5 s", at(3), true},
		{"later", at(7), false},
		{"never: at least 59 s", time.Time{}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got *bool
			for _, f := range phase(tt.running).waitFigures() {
				if f.Met != nil {
					got = f.Met
				}
			}
			if got == nil || *got != tt.want {
				t.Errorf("B's running p99 met = %v, want %v", got, tt.want)
			}
		})
	}
}
