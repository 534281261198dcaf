package v1alpha1

import "time"

// NewRun is the run named name that s starts for its scheduled time due, at
// now: s's job type, team, project and params, triggered by schedule:<name>,
// with the schedule's label and the scheduled time's annotation. The caller
// names it (deterministically, so that no time starts twice) and makes s its
// controller.
func (s *JobSchedule) NewRun(name string, due, now time.Time) *JobRun {
	run := NewJobRun(s.Namespace, name, JobRunSpec{
		JobType: s.Spec.JobType, TeamID: s.Spec.TeamID, ProjectID: s.Spec.ProjectID, Params: s.Spec.Params.DeepCopy(),
		TriggeredBy: "schedule:" + s.Name,
	}, now)
	run.Labels[LabelSchedule] = s.Name
	run.Annotations = map[string]string{AnnotationScheduledTime: due.UTC().Format(time.RFC3339)}
	return run
}
