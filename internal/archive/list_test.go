package archive

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// reference is the list the live index gives: the matching runs sorted in
// Go, newest first by created_at to the millisecond, ties by the greater id
// in byte order (apiserver/runindex.go's newerFirst and Cursor.precedes).
func reference(all []*jobsv1alpha1.JobRun, q Query) []*jobsv1alpha1.JobRun {
	var out []*jobsv1alpha1.JobRun
	for _, r := range all {
		at := r.CreatedAt().UTC().Truncate(time.Millisecond)
		switch {
		case r.Namespace != q.Namespace, r.Spec.TeamID != q.TeamID,
			q.ProjectID != "" && r.Spec.ProjectID != q.ProjectID,
			q.JobType != "" && r.Spec.JobType != q.JobType,
			q.Status != "" && string(r.CurrentPhase()) != q.Status,
			!q.Since.IsZero() && at.Before(q.Since),
			!q.Until.IsZero() && !at.Before(q.Until),
			!q.AfterCreatedAt.IsZero() && !(at.Before(q.AfterCreatedAt) || at.Equal(q.AfterCreatedAt) && r.Name < q.AfterID):
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *jobsv1alpha1.JobRun) int {
		ta, tb := a.CreatedAt().Truncate(time.Millisecond), b.CreatedAt().Truncate(time.Millisecond)
		if c := tb.Compare(ta); c != 0 {
			return c
		}
		return strings.Compare(b.Name, a.Name)
	})
	return out
}

func names(runs []*jobsv1alpha1.JobRun) []string {
	out := make([]string, len(runs))
	for i, r := range runs {
		out[i] = r.Name
	}
	return out
}

// randomRuns are runs made to catch ordering mistakes: few distinct
// milliseconds (many ties), sub-millisecond created times, and ids whose
// byte order differs from a linguistic collation's (case, '-', '_', digits).
func randomRuns(rng *rand.Rand, n int) []*jobsv1alpha1.JobRun {
	const alphabet = "aAbBzZ09-_."
	base := t0.Truncate(time.Millisecond)
	seen := map[string]bool{}
	var runs []*jobsv1alpha1.JobRun
	for len(runs) < n {
		var id strings.Builder
		for range 1 + rng.IntN(4) {
			id.WriteByte(alphabet[rng.IntN(len(alphabet))])
		}
		ns := []string{"ns", "ns-2"}[rng.IntN(2)]
		if seen[ns+"/"+id.String()] {
			continue
		}
		seen[ns+"/"+id.String()] = true
		team := fmt.Sprintf("team-%d", rng.IntN(3))
		created := base.Add(time.Duration(rng.IntN(40))*time.Millisecond + time.Duration(rng.IntN(1000))*time.Microsecond)
		run := finished(id.String(), created)
		run.Namespace = ns
		run.Spec.TeamID = team
		run.Spec.ProjectID = fmt.Sprintf("%s-p%d", team, rng.IntN(3))
		run.Spec.JobType = fmt.Sprintf("job_%d", rng.IntN(3))
		run.Spec.CreatedAt = micro(created) // not truncated: the store does it
		run.Status.Phase = []jobsv1alpha1.JobRunPhase{jobsv1alpha1.JobRunCompleted, jobsv1alpha1.JobRunFailed, jobsv1alpha1.JobRunCancelled}[rng.IntN(3)]
		runs = append(runs, run)
	}
	return runs
}

func TestListMatchesReference(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	all := randomRuns(rng, 700)
	if err := s.Upsert(ctx, all...); err != nil {
		t.Fatal(err)
	}
	base := t0.Truncate(time.Millisecond)
	instant := func() time.Time {
		at := base.Add(time.Duration(rng.IntN(42)-1) * time.Millisecond)
		if rng.IntN(3) == 0 {
			at = at.Add(time.Duration(rng.IntN(1000)) * time.Microsecond)
		}
		if rng.IntN(4) == 0 {
			at = at.Add(time.Duration(1 + rng.IntN(999))) // nanoseconds: PostgreSQL keeps microseconds
		}
		return at
	}
	pick := func(values ...string) string { return values[rng.IntN(len(values))] }

	var queries []Query
	for _, team := range []string{"team-0", "team-1", "team-2", "team-none"} {
		for _, project := range []string{"", "%s-p0", "%s-p2"} {
			for _, jobType := range []string{"", "job_1"} {
				for _, status := range []string{"", "failed", "pending"} {
					q := Query{Namespace: "ns", TeamID: team, JobType: jobType, Status: status}
					if project != "" {
						q.ProjectID = fmt.Sprintf(project, team)
					}
					queries = append(queries, q)
				}
			}
		}
	}
	for range 150 { // and at random, with time bounds and outside cursors
		team := pick("team-0", "team-1", "team-2")
		q := Query{Namespace: pick("ns", "ns-2"), TeamID: team,
			ProjectID: pick("", "", team+"-p1"), JobType: pick("", "", "job_0", "job_2"), Status: pick("", "", "completed", "cancelled")}
		if rng.IntN(2) == 0 {
			q.Since = instant()
		}
		if rng.IntN(2) == 0 {
			q.Until = instant()
		}
		if rng.IntN(3) == 0 {
			q.AfterCreatedAt, q.AfterID = instant(), pick("", "a", "B", "Z-", "z_0", "zzzzz")
		}
		queries = append(queries, q)
	}

	pages := 0
	for _, q := range queries {
		want := names(reference(all, q))
		limits := []int{1 + rng.IntN(9), 50}
		if len(want) > 0 {
			limits = append(limits, len(want)) // exactly Limit remain: one page, no more
		}
		if len(want) > 1 {
			limits = append(limits, len(want)-1, (len(want)+1)/2)
		}
		for _, limit := range limits {
			q := q
			q.Limit = limit
			var got []string
			for page := 0; ; page++ {
				runs, hasMore, err := s.List(ctx, q)
				if err != nil {
					t.Fatalf("%+v: %v", q, err)
				}
				pages++
				if len(runs) > limit {
					t.Fatalf("%+v: %d runs, more than the limit", q, len(runs))
				}
				got = append(got, names(runs)...)
				if wantMore := len(got) < len(want); hasMore != wantMore {
					t.Fatalf("%+v, page %d: has_more %v with %d of %d runs listed", q, page, hasMore, len(got), len(want))
				}
				if !hasMore {
					break
				}
				if len(runs) != limit {
					t.Fatalf("%+v, page %d: %d runs and more to come", q, page, len(runs))
				}
				last := runs[len(runs)-1]
				q.AfterCreatedAt, q.AfterID = last.CreatedAt(), last.Name
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%+v: listed\n%q\nwant\n%q", q, got, want)
			}
		}
	}
	t.Logf("%d queries, %d pages", len(queries), pages)
}

func TestListLimitZeroAndErrors(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.Upsert(ctx, finished("r1", t0)); err != nil {
		t.Fatal(err)
	}
	runs, hasMore, err := s.List(ctx, Query{Namespace: "ns", TeamID: "team-a", Limit: 0})
	if err != nil || len(runs) != 0 || !hasMore {
		t.Errorf("limit 0: %d runs, has_more %v, %v; want none, true", len(runs), hasMore, err)
	}
	if _, _, err := s.List(ctx, Query{Namespace: "ns", Limit: 10}); err == nil {
		t.Error("a list without a team was accepted")
	}
	// Text PostgreSQL cannot hold matches nothing, and is no error.
	for _, q := range []Query{
		{Namespace: "ns", TeamID: "team-a\x00", Limit: 10},
		{Namespace: "ns", TeamID: "team-a", ProjectID: "\xff", Limit: 10},
	} {
		if runs, hasMore, err := s.List(ctx, q); err != nil || len(runs) != 0 || hasMore {
			t.Errorf("%+v: %d runs, has_more %v, %v", q, len(runs), hasMore, err)
		}
	}
	if run, err := s.Get(ctx, "ns", "r1\x00"); run != nil || err != nil {
		t.Errorf("Get of an id with NUL: %v, %v", run, err)
	}
}
