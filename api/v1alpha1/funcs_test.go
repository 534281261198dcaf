package v1alpha1_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

func TestNewProgress(t *testing.T) {
	tests := []struct {
		processed, total int64
		want             string
	}{
		{0, 0, "0/0"},
		{45, 200, "45/200"},
		{1_000_000_000_000_000, 1_000_000_000_000_000, "1000000000000000/1000000000000000"},
	}
	for _, tt := range tests {
		got := jobsv1alpha1.NewProgress(tt.processed, tt.total, "m")
		want := &jobsv1alpha1.JobRunProgress{Processed: tt.processed, Total: tt.total, Message: "m", Summary: tt.want}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("NewProgress(%d, %d) (-want +got):\n%s", tt.processed, tt.total, diff)
		}
	}
}

func TestPhases(t *testing.T) {
	tests := []struct {
		stored   jobsv1alpha1.JobRunPhase
		current  jobsv1alpha1.JobRunPhase
		terminal bool
	}{
		{"", jobsv1alpha1.JobRunPending, false},
		{jobsv1alpha1.JobRunPending, jobsv1alpha1.JobRunPending, false},
		{jobsv1alpha1.JobRunRunning, jobsv1alpha1.JobRunRunning, false},
		{jobsv1alpha1.JobRunCompleted, jobsv1alpha1.JobRunCompleted, true},
		{jobsv1alpha1.JobRunFailed, jobsv1alpha1.JobRunFailed, true},
		{jobsv1alpha1.JobRunCancelled, jobsv1alpha1.JobRunCancelled, true},
	}
	for _, tt := range tests {
		t.Run(string(tt.stored), func(t *testing.T) {
			run := &jobsv1alpha1.JobRun{Status: jobsv1alpha1.JobRunStatus{Phase: tt.stored}}
			if got := run.CurrentPhase(); got != tt.current {
				t.Errorf("CurrentPhase = %q, want %q", got, tt.current)
			}
			if got := run.CurrentPhase().IsTerminal(); got != tt.terminal {
				t.Errorf("IsTerminal = %v, want %v", got, tt.terminal)
			}
		})
	}
}

func TestCreatedAt(t *testing.T) {
	created := time.Date(2026, 1, 15, 10, 30, 0, 0, time.UTC)
	triggered := time.Date(2026, 1, 15, 10, 29, 59, 987_000_000, time.UTC)

	run := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(created)}}
	if got := run.CreatedAt(); !got.Equal(created) {
		t.Errorf("without spec.createdAt: %v, want creationTimestamp %v", got, created)
	}
	run.Spec.CreatedAt = &metav1.MicroTime{Time: triggered}
	if got := run.CreatedAt(); !got.Equal(triggered) {
		t.Errorf("with spec.createdAt: %v, want %v", got, triggered)
	}
}

func TestJobTypeObjectName(t *testing.T) {
	for in, want := range map[string]string{
		"revenuecat_sync":  "revenuecat-sync",
		"demo_maintenance": "demo-maintenance",
		"cleanup":          "cleanup",
		"a_b_c":            "a-b-c",
	} {
		if got := jobsv1alpha1.JobTypeObjectName(in); got != want {
			t.Errorf("JobTypeObjectName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMatchesJobTypePattern(t *testing.T) {
	for in, want := range map[string]bool{
		"revenuecat_sync": true, "cleanup": true, "a": true, "a1_b2": true,
		"": false, "_a": false, "a_": false, "1a": false, "Revenuecat": false, "a-b": false, "a b": false, "a\x00": false,
	} {
		if got := jobsv1alpha1.MatchesJobTypePattern(in); got != want {
			t.Errorf("MatchesJobTypePattern(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestJobTypePatternIsTheCRDs: every jobType field of the generated CRDs
// has JobTypePattern, the pattern the REST API checks with.
func TestJobTypePatternIsTheCRDs(t *testing.T) {
	for _, kind := range []string{"jobruns", "jobschedules", "jobtypes"} {
		data, err := os.ReadFile(filepath.Join(env.Root, "config", "crd", "bases", "jobs.jobrun.dev_"+kind+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(data, crd); err != nil {
			t.Fatal(err)
		}
		for _, v := range crd.Spec.Versions {
			if got := v.Schema.OpenAPIV3Schema.Properties["spec"].Properties["jobType"].Pattern; got != jobsv1alpha1.JobTypePattern {
				t.Errorf("%s %s: spec.jobType has pattern %q, want JobTypePattern %q", kind, v.Name, got, jobsv1alpha1.JobTypePattern)
			}
		}
	}
}

func TestNewJobRun(t *testing.T) {
	now := time.Date(2026, 1, 15, 10, 30, 0, 123_456_789, time.FixedZone("CET", 3600))
	createdAt := metav1.NewMicroTime(time.Date(2026, 1, 15, 9, 30, 0, 123_000_000, time.UTC))
	params := &runtime.RawExtension{Raw: []byte(`{"integration_id":"int-1"}`)}
	tests := []struct {
		name string
		spec jobsv1alpha1.JobRunSpec
		want map[string]string
	}{
		{"team run", jobsv1alpha1.JobRunSpec{JobType: "revenuecat_sync", TeamID: "team-1", ProjectID: "project-1", Params: params, Notify: true, NotifyEmail: "a@b.c", TriggeredBy: "manual:user:u1"},
			map[string]string{jobsv1alpha1.LabelTeam: "team-1", jobsv1alpha1.LabelProject: "project-1", jobsv1alpha1.LabelJobType: "revenuecat_sync", jobsv1alpha1.LabelStatus: "pending"}},
		{"system run", jobsv1alpha1.JobRunSpec{JobType: "cleanup", TriggeredBy: "schedule:nightly"},
			map[string]string{jobsv1alpha1.LabelJobType: "cleanup", jobsv1alpha1.LabelStatus: "pending"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := tt.spec
			spec.CreatedAt = &createdAt
			want := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run-1", Labels: tt.want}, Spec: spec}
			if diff := cmp.Diff(want, jobsv1alpha1.NewJobRun("ns", "run-1", tt.spec, now)); diff != "" {
				t.Errorf("NewJobRun (-want +got):\n%s", diff)
			}
		})
	}
}

func TestJobScheduleNewRun(t *testing.T) {
	due := time.Date(2026, 1, 15, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	now := due.Add(1500 * time.Microsecond)
	createdAt := metav1.NewMicroTime(time.Date(2026, 1, 15, 9, 0, 0, 1_000_000, time.UTC))
	s := &jobsv1alpha1.JobSchedule{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "nightly"},
		Spec: jobsv1alpha1.JobScheduleSpec{JobType: "revenuecat_sync", TeamID: "team-1", ProjectID: "project-1",
			Params: &runtime.RawExtension{Raw: []byte(`{"integration_id":"int-1"}`)}},
	}
	want := &jobsv1alpha1.JobRun{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "run-1",
			Annotations: map[string]string{jobsv1alpha1.AnnotationScheduledTime: "2026-01-15T09:00:00Z"},
			Labels: map[string]string{jobsv1alpha1.LabelSchedule: "nightly", jobsv1alpha1.LabelTeam: "team-1", jobsv1alpha1.LabelProject: "project-1",
				jobsv1alpha1.LabelJobType: "revenuecat_sync", jobsv1alpha1.LabelStatus: "pending"}},
		Spec: jobsv1alpha1.JobRunSpec{JobType: "revenuecat_sync", TeamID: "team-1", ProjectID: "project-1",
			Params: &runtime.RawExtension{Raw: []byte(`{"integration_id":"int-1"}`)}, TriggeredBy: "schedule:nightly", CreatedAt: &createdAt},
	}
	run := s.NewRun("run-1", due, now)
	if diff := cmp.Diff(want, run); diff != "" {
		t.Errorf("NewRun (-want +got):\n%s", diff)
	}
	if run.Spec.Params == s.Spec.Params {
		t.Error("the run shares the schedule's params")
	}
}

func TestIsCancelRequested(t *testing.T) {
	run := &jobsv1alpha1.JobRun{}
	if run.IsCancelRequested() {
		t.Error("a run without annotations reports a cancel request")
	}
	at := time.Date(2026, 1, 15, 10, 31, 0, 0, time.UTC)
	if !run.RequestCancel(at) || !run.IsCancelRequested() || run.Annotations[jobsv1alpha1.AnnotationCancelRequested] != "2026-01-15T10:31:00Z" {
		t.Errorf("after RequestCancel: %v", run.Annotations)
	}
	if run.RequestCancel(at.Add(time.Hour)) || run.Annotations[jobsv1alpha1.AnnotationCancelRequested] != "2026-01-15T10:31:00Z" {
		t.Error("a second request replaced the first")
	}
}
