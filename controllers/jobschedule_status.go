package controllers

import (
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
)

// scheduleParser reads the schedules a Kubernetes CronJob accepts: five
// fields or a macro such as @hourly.
var scheduleParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// parseSchedule reads a schedule in a time zone (UTC when empty).
func parseSchedule(spec, timeZone string) (cron.Schedule, *time.Location, error) {
	loc := time.UTC
	if timeZone != "" {
		var err error
		if loc, err = time.LoadLocation(timeZone); err != nil {
			return nil, nil, fmt.Errorf("unknown time zone %q: %w", timeZone, err)
		}
	}
	s, err := scheduleParser.Parse(spec)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid schedule %q: %w", spec, err)
	}
	return s, loc, nil
}

// maxScheduleSteps bounds the walk over missed times (a minutely schedule
// missed for a week is 10,080 steps).
const maxScheduleSteps = 100_000

// schedulePlan is what a schedule's clock says at now.
type schedulePlan struct {
	// due is the most recent scheduled time in (since, now]; zero if none.
	due time.Time
	// skipped counts the scheduled times before due in (since, now]: they
	// are never started late, in a burst.
	skipped int64
	// next is the first scheduled time after now.
	next time.Time
}

// planSchedule walks the schedule from since (exclusive) to now, in loc, as
// a Kubernetes CronJob does; daylight-saving gaps and repeats are the cron
// library's (a 02:30 that does not exist that day is skipped).
func planSchedule(s cron.Schedule, loc *time.Location, since, now time.Time) schedulePlan {
	var p schedulePlan
	t := s.Next(since.In(loc))
	for i := 0; !t.IsZero() && !t.After(now) && i < maxScheduleSteps; i++ {
		if !p.due.IsZero() {
			p.skipped++
		}
		p.due = t
		t = s.Next(t)
	}
	p.next = t
	return p
}
