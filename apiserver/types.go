package apiserver

import (
	"time"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/apiserver/view"
)

// jobRun is a run as the Jobs API shows it (package view).
type jobRun = view.JobRun

// formatTime formats t as the API does (view.TimestampFormat).
func formatTime(t time.Time) string { return view.FormatTime(t) }

// toJobRun maps a JobRun to the API's representation.
func toJobRun(run *jobsv1alpha1.JobRun) jobRun { return view.Of(run) }
