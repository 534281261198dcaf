package apiserver

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"time"

	"github.com/go-chi/chi/v5"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// The console's charts: per job type, the team's runs and failures per
// hour over the last day and the percentiles of their durations. They are
// counted from the runs the list endpoint would return for the same team
// and since (live and archived alike, through the same RunLister), so they
// never show more than the credential could list.

const (
	// statsHours is the charts' day: the current hour and the 23 before.
	statsHours = 24
	// maxStatsRuns bounds the runs one stats page reads (newest first);
	// statsPage is the page it reads them by.
	maxStatsRuns = 20000
	statsPage    = 1000
)

// statsPercentiles are the duration percentiles shown.
var statsPercentiles = []int{50, 90, 99}

// hourStats is one hour of a job type's chart.
type hourStats struct {
	// Start is the hour's start (UTC, RFC 3339); Label its "15:04".
	Start, Label string
	Runs, Failed int
	// The bar's geometry in the chart's SVG: x, the run bar's y and height,
	// the failed part's y and height.
	X, Y, H, FailedY, FailedH int
}

// durationStat is one percentile of a job type's durations.
type durationStat struct {
	P     int
	Value time.Duration
	// Text is Value for people; Y, Width and TextX place its bar and text
	// in the SVG.
	Text            string
	Y, Width, TextX int
}

// jobTypeStats is one job type's charts.
type jobTypeStats struct {
	JobType string
	// Busiest is the most runs of one hour (the chart's full height).
	Runs, Failed, Timed, Busiest int
	Hours                        []hourStats
	Durations                    []durationStat
}

// statsData is the stats page's.
type statsData struct {
	JobType string
	// Since is the first hour's start; Truncated: the team has more runs in
	// the day than a page reads (only the newest maxStatsRuns count).
	Since     string
	Truncated bool
	MaxRuns   int
	JobTypes  []jobTypeStats
}

// The SVG charts' sizes (CSS pixels, stats.html has the totals): 24 bars
// of barWidth, barHeight high; one duration bar per durationRow, at most
// durationWidth long, after a label durationLabel wide.
const (
	barWidth      = 10
	barHeight     = 60
	durationRow   = 20
	durationWidth = 160
	durationLabel = 32
)

// teamStats counts the runs of team (of jobType, if set) created since the
// start of the hour statsHours-1 hours before now, the newest maxRuns at
// most.
func (s *Server) teamStats(ctx context.Context, team, jobType string, now time.Time, maxRuns int) (statsData, error) {
	start := now.UTC().Truncate(time.Hour).Add(-(statsHours - 1) * time.Hour)
	d := statsData{JobType: jobType, Since: formatTime(start), MaxRuns: maxRuns}
	byType := map[string]*jobTypeStats{}
	durations := map[string][]time.Duration{}
	q := RunQuery{Namespace: s.namespace, TeamID: team, JobType: jobType, Since: start, Limit: min(statsPage, maxRuns)}
	for read := 0; ; {
		runs, more, err := s.lister.ListRuns(ctx, q)
		if err != nil {
			return d, fmt.Errorf("listing the runs of the last day: %w", err)
		}
		for _, run := range runs {
			hour := int(run.CreatedAt().Sub(start) / time.Hour)
			if hour < 0 || hour >= statsHours {
				continue // created in the future by a skewed clock
			}
			st := byType[run.Spec.JobType]
			if st == nil {
				st = &jobTypeStats{JobType: run.Spec.JobType, Hours: make([]hourStats, statsHours)}
				byType[run.Spec.JobType] = st
			}
			st.Runs++
			st.Hours[hour].Runs++
			if run.Status.Phase == jobsv1alpha1.JobRunFailed {
				st.Failed++
				st.Hours[hour].Failed++
			}
			if took, ok := duration(run); ok {
				durations[run.Spec.JobType] = append(durations[run.Spec.JobType], took)
			}
		}
		read += len(runs)
		if !more || len(runs) == 0 {
			break
		}
		if read >= maxRuns {
			d.Truncated = true
			break
		}
		c := cursorOf(runs[len(runs)-1])
		q.After = &c
	}
	for name, st := range byType {
		layoutHours(st, start)
		st.Timed = len(durations[name])
		st.Durations = percentiles(durations[name])
		d.JobTypes = append(d.JobTypes, *st)
	}
	sort.Slice(d.JobTypes, func(i, j int) bool { return d.JobTypes[i].JobType < d.JobTypes[j].JobType })
	return d, nil
}

// duration is how long a finished run ran (completed or failed; a
// cancelled run's time says when someone cancelled it, not what the job
// takes), if it started.
func duration(run *jobsv1alpha1.JobRun) (time.Duration, bool) {
	st := run.Status
	if (st.Phase != jobsv1alpha1.JobRunCompleted && st.Phase != jobsv1alpha1.JobRunFailed) || st.StartedAt == nil || st.CompletedAt == nil {
		return 0, false
	}
	took := st.CompletedAt.Sub(st.StartedAt.Time)
	return took, took >= 0
}

// layoutHours labels st's hours and sizes their bars against its busiest.
func layoutHours(st *jobTypeStats, start time.Time) {
	top := 0
	for _, h := range st.Hours {
		top = max(top, h.Runs)
	}
	st.Busiest = top
	scale := func(n int) int {
		if n == 0 {
			return 0
		}
		return max(1, int(math.Round(float64(n)*barHeight/float64(top))))
	}
	for i := range st.Hours {
		h := &st.Hours[i]
		at := start.Add(time.Duration(i) * time.Hour)
		h.Start, h.Label = formatTime(at), at.Format("15:04")
		h.X = i * barWidth
		h.H = scale(h.Runs)
		h.Y = barHeight - h.H
		h.FailedH = min(h.H, scale(h.Failed))
		h.FailedY = barHeight - h.FailedH
	}
}

// percentiles are statsPercentiles of ds (nearest rank), with their bars
// sized against the greatest; none without durations.
func percentiles(ds []time.Duration) []durationStat {
	if len(ds) == 0 {
		return nil
	}
	slices.Sort(ds)
	out := make([]durationStat, 0, len(statsPercentiles))
	for _, p := range statsPercentiles {
		rank := int(math.Ceil(float64(p) / 100 * float64(len(ds))))
		v := ds[max(rank, 1)-1]
		out = append(out, durationStat{P: p, Value: v, Text: humanDuration(v)})
	}
	top := out[len(out)-1].Value
	for i := range out {
		out[i].Y = i * durationRow
		out[i].Width = durationWidth
		if top > 0 {
			out[i].Width = max(1, int(math.Round(float64(out[i].Value)*durationWidth/float64(top))))
		}
		out[i].TextX = durationLabel + out[i].Width + 4
	}
	return out
}

// humanDuration is d rounded for reading: 850ms, 12.3s, 4m05s, 2h10m.
func humanDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// stats serves GET /ui/teams/{teamId}/stats[?job_type=]: the charts of
// the team's job types (or of one).
func (c consoleResource) stats(w http.ResponseWriter, r *http.Request) {
	team := chi.URLParam(r, "teamId")
	if err := teamAccess(principalFrom(r.Context()), team, PermJobsRead); err != nil {
		c.fail(w, r, err)
		return
	}
	jobType := r.URL.Query().Get("job_type")
	if jobType != "" && !jobsv1alpha1.MatchesJobTypePattern(jobType) {
		c.fail(w, r, badRequest("invalid job_type %q", jobType))
		return
	}
	d, err := c.s.teamStats(r.Context(), team, jobType, c.s.now(), maxStatsRuns)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "stats", page{Title: "Job types of " + team, Team: team, Data: d})
}
