package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// ConcurrencyPolicy says what a JobSchedule does when a run is due while its
// previous run is still active.
// +kubebuilder:validation:Enum=Allow;Forbid;Replace
type ConcurrencyPolicy string

const (
	// ConcurrencyAllow starts the new run beside the active one.
	ConcurrencyAllow ConcurrencyPolicy = "Allow"
	// ConcurrencyForbid skips the new run while one is active.
	ConcurrencyForbid ConcurrencyPolicy = "Forbid"
	// ConcurrencyReplace cancels the active run and starts the new one.
	ConcurrencyReplace ConcurrencyPolicy = "Replace"
)

// JobScheduleSpec is a job on a cron schedule, kept in Git. The controller
// never writes it, so GitOps tools see no drift.
//
// +kubebuilder:validation:XValidation:rule="has(self.teamID) == has(self.projectID)",message="teamID and projectID are set together (a project schedule) or not at all (a system schedule)"
type JobScheduleSpec struct {
	// schedule is a cron expression with five fields (minute hour
	// day-of-month month day-of-week) or a macro such as @hourly, as in a
	// Kubernetes CronJob. Use timeZone, not a TZ= prefix.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule="self.matches('^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$') || self.matches('^[0-9A-Za-z*/,?-]+( +[0-9A-Za-z*/,?-]+){4}$')",message="schedule must be five cron fields (minute hour day-of-month month day-of-week) or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
	Schedule string `json:"schedule"`

	// timeZone is the IANA time zone the schedule is read in, such as
	// Europe/Berlin; UTC when empty. Daylight-saving changes are handled as a
	// Kubernetes CronJob handles them.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$`
	TimeZone string `json:"timeZone,omitempty"`

	// jobType is the job type string of the runs to start.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([a-z0-9_]*[a-z0-9])?$`
	JobType string `json:"jobType"`

	// teamID is the team of a project schedule; empty for a system schedule.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	TeamID string `json:"teamID,omitempty"`

	// projectID is the project of a project schedule; empty for a system
	// schedule.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	ProjectID string `json:"projectID,omitempty"`

	// params are passed to each run's handler: a JSON object.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	Params *runtime.RawExtension `json:"params,omitempty"`

	// concurrencyPolicy says what happens when a run is due while the last
	// one is still active: Forbid (skip it), Allow or Replace.
	// +optional
	// +kubebuilder:default=Forbid
	ConcurrencyPolicy ConcurrencyPolicy `json:"concurrencyPolicy,omitempty"`

	// startingDeadlineSeconds is how late a run may still start after its
	// scheduled time; runs missed by more are skipped and counted, never
	// started in a burst. No deadline when empty.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=86400
	StartingDeadlineSeconds *int64 `json:"startingDeadlineSeconds,omitempty"`

	// suspend stops new runs from starting; active runs go on.
	// +optional
	// +kubebuilder:default=false
	Suspend *bool `json:"suspend,omitempty"`

	// successfulRunsHistoryLimit is how many completed runs of the schedule
	// are kept.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	SuccessfulRunsHistoryLimit *int32 `json:"successfulRunsHistoryLimit,omitempty"`

	// failedRunsHistoryLimit is how many failed or cancelled runs of the
	// schedule are kept.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	FailedRunsHistoryLimit *int32 `json:"failedRunsHistoryLimit,omitempty"`
}

// JobSchedule condition types.
const (
	// JobScheduleConditionReady is True when the schedule, its time zone and
	// its job type are valid and runs will start on time.
	JobScheduleConditionReady = "Ready"
)

// JobScheduleStatus is what the schedule controller observed and did.
type JobScheduleStatus struct {
	// lastScheduleTime is the scheduled time of the last run started.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`

	// lastSuccessfulTime is when the last run of the schedule completed.
	// +optional
	LastSuccessfulTime *metav1.Time `json:"lastSuccessfulTime,omitempty"`

	// nextScheduleTime is when the next run is due.
	// +optional
	NextScheduleTime *metav1.Time `json:"nextScheduleTime,omitempty"`

	// activeRuns are the names of the schedule's runs that have not finished.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:MaxLength=253
	ActiveRuns []string `json:"activeRuns,omitempty"`

	// missedRuns counts runs skipped because they were due past
	// startingDeadlineSeconds.
	// +optional
	// +kubebuilder:validation:Minimum=0
	MissedRuns int64 `json:"missedRuns,omitempty"`

	// observedGeneration is the metadata.generation the status describes.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions describe the schedule's state.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// JobSchedule starts runs of a job type on a cron schedule: system jobs (and
// project jobs) kept in Git.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=js,categories={jobrun-all,all}
// +kubebuilder:printcolumn:name="Schedule",type=string,JSONPath=`.spec.schedule`
// +kubebuilder:printcolumn:name="Time Zone",type=string,JSONPath=`.spec.timeZone`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.jobType`
// +kubebuilder:printcolumn:name="Suspend",type=boolean,JSONPath=`.spec.suspend`
// +kubebuilder:printcolumn:name="Last Schedule",type=date,JSONPath=`.status.lastScheduleTime`
// +kubebuilder:printcolumn:name="Next Schedule",type=string,format=date-time,JSONPath=`.status.nextScheduleTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type JobSchedule struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the schedule, kept in Git.
	// +required
	Spec JobScheduleSpec `json:"spec"`

	// status is what the controller observed and did.
	// +optional
	Status JobScheduleStatus `json:"status,omitempty"`
}

// JobScheduleList is a list of JobSchedules.
//
// +kubebuilder:object:root=true
type JobScheduleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []JobSchedule `json:"items"`
}
