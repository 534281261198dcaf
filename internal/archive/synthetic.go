package archive

import (
	"encoding/json"
	"fmt"
	"iter"
	"math/rand/v2"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// SyntheticRuns returns n finished runs in namespace for benchmarks and
// tests (SyntheticSeq's, collected).
func SyntheticRuns(n int, seed int64, namespace string, teams, projectsPerTeam, jobTypes int, span time.Duration, end time.Time) []*jobsv1alpha1.JobRun {
	runs := make([]*jobsv1alpha1.JobRun, 0, n)
	for run := range SyntheticSeq(n, seed, namespace, teams, projectsPerTeam, jobTypes, span, end) {
		runs = append(runs, run)
	}
	return runs
}

// SyntheticSeq yields n finished runs in namespace, the same for the same
// arguments: spread evenly over teams (team-0, team-1, ...), each team's
// projectsPerTeam projects (team-0-p0, ...), jobTypes job types
// (job_type_0, ...) and the span before end; 80% completed, 15% failed, 5%
// cancelled; ids random UUIDs, params, progress and result small objects
// like a sync's. One run at a time, so that millions can be loaded
// (CopyFromSeq) without holding them.
func SyntheticSeq(n int, seed int64, namespace string, teams, projectsPerTeam, jobTypes int, span time.Duration, end time.Time) iter.Seq[*jobsv1alpha1.JobRun] {
	return func(yield func(*jobsv1alpha1.JobRun) bool) {
		rng := rand.New(rand.NewPCG(uint64(seed), 0x6a6f6272756e))
		for range n {
			team := fmt.Sprintf("team-%d", rng.IntN(max(teams, 1)))
			project := fmt.Sprintf("%s-p%d", team, rng.IntN(max(projectsPerTeam, 1)))
			jobType := fmt.Sprintf("job_type_%d", rng.IntN(max(jobTypes, 1)))
			created := end.Add(-time.Duration(rng.Int64N(max(int64(span), 1)))).UTC().Truncate(time.Millisecond)
			started := metav1.NewMicroTime(created.Add(time.Duration(rng.Int64N(int64(5 * time.Second)))).Truncate(time.Microsecond))
			completed := metav1.NewMicroTime(started.Add(time.Duration(rng.Int64N(int64(10 * time.Minute)))).Truncate(time.Microsecond))
			total := rng.Int64N(10000)
			params, _ := json.Marshal(map[string]any{"full": rng.IntN(2) == 0, "project_id": project})
			run := jobsv1alpha1.NewJobRun(namespace, uuid(rng), jobsv1alpha1.JobRunSpec{
				JobType:     jobType,
				TeamID:      team,
				ProjectID:   project,
				Params:      &runtime.RawExtension{Raw: params},
				Notify:      rng.IntN(10) == 0,
				TriggeredBy: "manual:user:" + fmt.Sprintf("user-%d", rng.IntN(100)),
			}, created)
			run.Status = jobsv1alpha1.JobRunStatus{StartedAt: &started, CompletedAt: &completed, Attempts: 1}
			reason := jobsv1alpha1.ReasonCompleted
			switch p := rng.IntN(100); {
			case p < 80:
				run.Status.Phase = jobsv1alpha1.JobRunCompleted
				run.Status.Progress = jobsv1alpha1.NewProgress(total, total, fmt.Sprintf("Synced %d users", total))
				result, _ := json.Marshal(map[string]any{"synced": total, "skipped": rng.IntN(10)})
				run.Status.Result = &runtime.RawExtension{Raw: result}
			case p < 95:
				run.Status.Phase = jobsv1alpha1.JobRunFailed
				done := rng.Int64N(total + 1)
				run.Status.Progress = jobsv1alpha1.NewProgress(done, total, fmt.Sprintf("Synced %d users", done))
				run.Status.Error = "upstream returned 503 Service Unavailable"
				reason = jobsv1alpha1.ReasonHandlerFailed
			default:
				run.Status.Phase = jobsv1alpha1.JobRunCancelled
				reason = jobsv1alpha1.ReasonCancelled
			}
			run.Labels[jobsv1alpha1.LabelStatus] = string(run.Status.Phase)
			run.Status.Conditions = []metav1.Condition{{Type: jobsv1alpha1.JobRunConditionFinished,
				Status: metav1.ConditionTrue, Reason: reason, LastTransitionTime: metav1.NewTime(completed.Truncate(time.Second))}}
			if !yield(run) {
				return
			}
		}
	}
}

// uuid is a random (version 4) UUID drawn from rng.
func uuid(rng *rand.Rand) string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
