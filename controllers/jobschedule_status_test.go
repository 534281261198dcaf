package controllers

import (
	"testing"
	"time"
)

func TestPlanSchedule(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	utc := func(s string) time.Time {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	tests := []struct {
		name, schedule, zone string
		since, now           time.Time
		due, next            time.Time
		skipped              int64
	}{
		{name: "nothing due yet", schedule: "0 3 * * *", since: utc("2026-01-10T03:00:00Z"), now: utc("2026-01-10T12:00:00Z"),
			next: utc("2026-01-11T03:00:00Z")},
		{name: "one due", schedule: "0 3 * * *", since: utc("2026-01-10T03:00:00Z"), now: utc("2026-01-11T03:00:30Z"),
			due: utc("2026-01-11T03:00:00Z"), next: utc("2026-01-12T03:00:00Z")},
		{name: "three days missed: only the last is due", schedule: "0 3 * * *", since: utc("2026-01-10T03:00:00Z"), now: utc("2026-01-13T04:00:00Z"),
			due: utc("2026-01-13T03:00:00Z"), skipped: 2, next: utc("2026-01-14T03:00:00Z")},
		{name: "@hourly", schedule: "@hourly", since: utc("2026-01-10T10:00:00Z"), now: utc("2026-01-10T11:59:00Z"),
			due: utc("2026-01-10T11:00:00Z"), next: utc("2026-01-10T12:00:00Z")},
		{name: "time zone: 03:00 Berlin is 02:00 UTC in winter", schedule: "0 3 * * *", zone: "Europe/Berlin", since: utc("2026-01-10T02:00:00Z"), now: utc("2026-01-11T02:00:00Z"),
			due: utc("2026-01-11T02:00:00Z"), next: utc("2026-01-12T02:00:00Z")},
		{name: "time zone: and 01:00 UTC in summer", schedule: "0 3 * * *", zone: "Europe/Berlin", since: utc("2026-07-10T01:00:00Z"), now: utc("2026-07-11T01:00:00Z"),
			due: utc("2026-07-11T01:00:00Z"), next: utc("2026-07-12T01:00:00Z")},
		{name: "DST spring forward: 02:30 does not exist on 29 March, so that day has no run", schedule: "30 2 * * *", zone: "Europe/Berlin",
			since: utc("2026-03-28T01:30:00Z"), now: utc("2026-03-29T12:00:00Z"),
			next: utc("2026-03-30T00:30:00Z")},
		{name: "DST fall back: 02:30 happens twice on 25 October and, as in a CronJob, both are schedule times", schedule: "30 2 * * *", zone: "Europe/Berlin",
			since: utc("2026-10-24T00:30:00Z"), now: utc("2026-10-25T00:45:00Z"),
			due: utc("2026-10-25T00:30:00Z"), next: utc("2026-10-25T01:30:00Z")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, loc, err := parseSchedule(tt.schedule, tt.zone)
			if err != nil {
				t.Fatal(err)
			}
			if tt.zone != "" && loc.String() != berlin.String() {
				t.Fatalf("location %v", loc)
			}
			p := planSchedule(s, loc, tt.since, tt.now)
			if !p.due.Equal(tt.due) || p.skipped != tt.skipped || !p.next.Equal(tt.next) {
				t.Errorf("plan = due %v skipped %d next %v; want due %v skipped %d next %v",
					p.due.UTC(), p.skipped, p.next.UTC(), tt.due, tt.skipped, tt.next)
			}
		})
	}
}

func TestParseScheduleErrors(t *testing.T) {
	for _, tt := range []struct{ schedule, zone string }{
		{"61 * * * *", ""},
		{"* * * *", ""},
		{"0 3 * * *", "Mars/Olympus"},
	} {
		if _, _, err := parseSchedule(tt.schedule, tt.zone); err == nil {
			t.Errorf("parseSchedule(%q, %q) accepted", tt.schedule, tt.zone)
		}
	}
}
