package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// JobRunPhase is where a run is in its life. The REST API calls it status.
// +kubebuilder:validation:Enum=pending;running;completed;failed;cancelled
type JobRunPhase string

const (
	// JobRunPending runs wait for their pod to start.
	JobRunPending JobRunPhase = "pending"
	// JobRunRunning runs have a handler executing.
	JobRunRunning JobRunPhase = "running"
	// JobRunCompleted runs ended with the handler returning a result.
	JobRunCompleted JobRunPhase = "completed"
	// JobRunFailed runs ended with an error, a lost pod or a deadline.
	JobRunFailed JobRunPhase = "failed"
	// JobRunCancelled runs ended because someone asked them to stop.
	JobRunCancelled JobRunPhase = "cancelled"
)

// Labels and annotations jobrun puts on JobRuns, so that
// `kubectl get jobruns -l ...` and server-side selectors work.
const (
	// LabelTeam holds the run's team id.
	LabelTeam = "jobs.jobrun.dev/team"
	// LabelProject holds the run's project id.
	LabelProject = "jobs.jobrun.dev/project"
	// LabelJobType holds the run's job type string.
	LabelJobType = "jobs.jobrun.dev/job-type"
	// LabelStatus holds the run's phase; the controller keeps it current.
	LabelStatus = "jobs.jobrun.dev/status"
	// LabelSchedule holds the name of the JobSchedule that created the run.
	LabelSchedule = "jobs.jobrun.dev/schedule"

	// AnnotationCancelRequested asks a running run to stop. Its value is the
	// time of the request (RFC 3339); its presence is what counts.
	AnnotationCancelRequested = "jobs.jobrun.dev/cancel-requested"
	// AnnotationScheduledTime is the schedule time (RFC 3339) a JobSchedule
	// started the run for; spec.createdAt minus it is how late it started.
	AnnotationScheduledTime = "jobs.jobrun.dev/scheduled-time"

	// FinalizerArchive keeps a run in the API server until it is archived.
	// With an archive configured, the REST API and the JobSchedule
	// controller create runs with it (the JobRun controller adds it to runs
	// created without, such as by kubectl) and the JobRun controller
	// removes it once the run's row is written (or, without an archive, at
	// once).
	FinalizerArchive = "jobs.jobrun.dev/archive"
)

// The consistency marker: one JobRun per namespace, named
// ConsistencyMarkerName, that the REST API writes to learn that its run
// cache has caught up with the API server (apiserver/consistency.go). It is
// not a run: the controllers leave it alone and the API never shows it.
const (
	// ConsistencyMarkerName is the marker's name.
	ConsistencyMarkerName = "jobrun-consistency-marker"
	// ConsistencyMarkerJobType is the marker's spec.jobType (no JobType
	// has it).
	ConsistencyMarkerJobType = "jobrun_consistency_marker"
	// AnnotationMarkerNonce is what each write of the marker changes.
	AnnotationMarkerNonce = "jobs.jobrun.dev/marker-nonce"
)

// The contract between the controller, which starts a run's pod, and the
// runner inside it.
const (
	// EnvRunName holds the run's name (its id) in the handler container.
	EnvRunName = "JOBRUN_RUN_NAME"
	// EnvRunNamespace holds the run's namespace in the handler container.
	EnvRunNamespace = "JOBRUN_RUN_NAMESPACE"
	// EnvJobType holds the run's job type string in the handler container.
	EnvJobType = "JOBRUN_JOB_TYPE"
	// EnvAttempt holds the attempt number (1, 2, ...) in the handler container.
	EnvAttempt = "JOBRUN_ATTEMPT"

	// ExitCodeFailed is the runner's exit code when the handler returned an
	// error (recorded in status.error first).
	ExitCodeFailed = 1
	// ExitCodeRunnerError is the runner's exit code when it could not run the
	// handler at all (no API server, no such run, no handler for the type).
	ExitCodeRunnerError = 2
	// ExitCodeCancelled is the runner's exit code when the handler stopped
	// because its context ended: the run was cancelled, or the pod was
	// terminated (SIGTERM). The controller tells them apart by the cancel
	// annotation: without it the attempt was interrupted (PodLost, retried).
	ExitCodeCancelled = 3
)

// JobRunSpec is what was asked for: one run of a job type. It is immutable; a
// run's record never changes after it is created.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.teamID) == has(self.projectID)",message="teamID and projectID are set together (project runs) or not at all (system runs)"
type JobRunSpec struct {
	// jobType is the job type string (spec.jobType of a JobType), such as
	// revenuecat_sync.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([a-z0-9_]*[a-z0-9])?$`
	JobType string `json:"jobType"`

	// teamID is the team the run belongs to; empty for system runs.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	TeamID string `json:"teamID,omitempty"`

	// projectID is the project the run works on; empty for system runs.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	ProjectID string `json:"projectID,omitempty"`

	// params are the job-specific parameters passed to the handler: a JSON
	// object.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	Params *runtime.RawExtension `json:"params,omitempty"`

	// notify sends one email to the trigger's address when the run completes
	// or fails.
	// +optional
	// +kubebuilder:default=false
	Notify bool `json:"notify,omitempty"`

	// notifyEmail is the address the notification goes to.
	// +optional
	// +kubebuilder:validation:MaxLength=254
	// +kubebuilder:validation:Pattern=`^[^@\s]+@[^@\s]+$`
	NotifyEmail string `json:"notifyEmail,omitempty"`

	// triggeredBy records who started the run: manual:user:<sub>,
	// manual:api_key:<id> or schedule:<name>.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	TriggeredBy string `json:"triggeredBy"`

	// createdAt is when the run was triggered, at millisecond precision; runs
	// are listed newest first by (createdAt, name). When empty,
	// metadata.creationTimestamp stands in.
	// +optional
	CreatedAt *metav1.MicroTime `json:"createdAt,omitempty"`
}

// JobRunProgress is what a handler last reported of its progress.
//
// +kubebuilder:validation:XValidation:rule="self.summary.matches('^[0-9]{1,16}/[0-9]{1,16}$') && int(self.summary.split('/')[0]) == self.processed && int(self.summary.split('/')[1]) == self.total",message="summary must be processed/total"
type JobRunProgress struct {
	// processed is how many items the handler has done.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000000000000
	Processed int64 `json:"processed"`

	// total is how many items there are, as far as the handler knows.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000000000000
	Total int64 `json:"total"`

	// message is a line for people, such as "Synced 38 users, 7 skipped".
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`

	// summary is "processed/total", for the PROGRESS column of
	// `kubectl get jobruns`. Set it with SetProgress.
	// +required
	// +kubebuilder:validation:MaxLength=33
	Summary string `json:"summary"`
}

// NotificationState is where a run's completion email is.
// +kubebuilder:validation:Enum=Sending;Sent;Retrying;Failed;Skipped
type NotificationState string

const (
	// NotificationSending: recorded before the mail server is contacted.
	// A controller that restarts here sends again with the same Message-ID.
	NotificationSending NotificationState = "Sending"
	// NotificationSent: the mail server accepted the message.
	NotificationSent NotificationState = "Sent"
	// NotificationRetrying: the last attempt failed; another follows.
	NotificationRetrying NotificationState = "Retrying"
	// NotificationFailed: every attempt failed; no more follow.
	NotificationFailed NotificationState = "Failed"
	// NotificationSkipped: nothing was sent, and message says why.
	NotificationSkipped NotificationState = "Skipped"
)

// JobRunNotification is the state of a run's completion email.
type JobRunNotification struct {
	// state is Sending, Sent, Retrying, Failed or Skipped.
	// +required
	State NotificationState `json:"state"`

	// attempts counts the sends tried.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Attempts int32 `json:"attempts,omitempty"`

	// lastAttemptTime is when the last send was tried.
	// +optional
	LastAttemptTime *metav1.Time `json:"lastAttemptTime,omitempty"`

	// message says why the last attempt failed or nothing was sent.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// JobRun condition types and reasons. Conditions record each transition of a
// run for people and tools; status.phase is the state the REST API shows.
const (
	// JobRunConditionAccepted is True once the run's JobType and params were
	// found valid, False (reason JobTypeNotFound or InvalidParams) otherwise.
	JobRunConditionAccepted = "Accepted"
	// JobRunConditionRunning is True while a handler executes.
	JobRunConditionRunning = "Running"
	// JobRunConditionFinished is True once the run reached a terminal phase;
	// its reason says how (Completed, Failed, Cancelled, DeadlineExceeded,
	// PodLost, ...).
	JobRunConditionFinished = "Finished"
	// JobRunConditionCancelRequested is True once a cancel request was seen;
	// status.cancelRequestedAt says when, to the microsecond.
	JobRunConditionCancelRequested = "CancelRequested"
	// JobRunConditionArchived is True once a finished run is in the run
	// archive (PostgreSQL; the manager's --archive-dsn), False (reason
	// ArchivePending) while archiving it failed and is retried. Only with an
	// archive configured.
	JobRunConditionArchived = "Archived"
	// JobRunConditionQueued is True while the run's Kueue Workload waits
	// for admission (the run is pending, has no pod yet, and its start
	// timeout does not run), with Kueue's reason and message from the
	// Workload (such as Pending: "... insufficient unused quota ...";
	// WaitingForAdmission before Kueue looked at it) after the run's
	// position, False (reason Admitted) once Kueue admitted it. Only with
	// the manager's --kueue.
	JobRunConditionQueued = "Queued"

	// ReasonAccepted: the JobType exists and the run may start.
	ReasonAccepted = "Accepted"
	// ReasonJobTypeNotFound: no JobType serves the run's job type.
	ReasonJobTypeNotFound = "JobTypeNotFound"
	// ReasonInvalidParams: the run's params fail its JobType's paramsSchema
	// (or that schema is itself invalid).
	ReasonInvalidParams = "InvalidParams"
	// ReasonPodPending: the run's pod waits to be scheduled or started.
	ReasonPodPending = "PodPending"
	// ReasonHandlerRunning: the handler executes.
	ReasonHandlerRunning = "HandlerRunning"
	// ReasonRetrying: an attempt failed and another one starts.
	ReasonRetrying = "Retrying"
	// ReasonCompleted: the handler returned a result.
	ReasonCompleted = "Completed"
	// ReasonHandlerFailed: the handler returned an error or its process
	// failed.
	ReasonHandlerFailed = "HandlerFailed"
	// ReasonPodLost: the pod disappeared or was evicted before the handler
	// finished.
	ReasonPodLost = "PodLost"
	// ReasonPodForbidden: the API server refused the run's pod (Pod
	// Security, a quota, an admission webhook's denial, or a webhook it
	// could not call); retried until the JobType's start timeout, then the
	// run fails with it.
	ReasonPodForbidden = "PodForbidden"
	// ReasonStartTimeout: the run was not running when the JobType's start
	// timeout ended, and its pod says no more specific reason.
	ReasonStartTimeout = "StartTimeout"
	// ReasonDeadlineExceeded: the run took longer than the JobType allows.
	ReasonDeadlineExceeded = "DeadlineExceeded"
	// ReasonCancelled: the handler stopped after a cancel request.
	ReasonCancelled = "Cancelled"
	// ReasonCancelGracePeriodExceeded: the handler ignored a cancel request
	// and its pod was deleted when the grace period ended.
	ReasonCancelGracePeriodExceeded = "CancelGracePeriodExceeded"
	// ReasonCancelRequested: someone asked the run to stop.
	ReasonCancelRequested = "CancelRequested"
	// ReasonArchived: the run's row is in the archive.
	ReasonArchived = "Archived"
	// ReasonArchivePending: writing the run's row failed (the archive is
	// down or slow); it is retried with a backoff, and the run is not
	// deleted until it is archived.
	ReasonArchivePending = "ArchivePending"
	// ReasonDeleted: the run was deleted before it finished (kubectl
	// delete); with an archive it is archived as cancelled first.
	ReasonDeleted = "Deleted"
	// ReasonWaitingForAdmission: the run's Workload is in its Kueue
	// LocalQueue, not admitted yet (the message says which queue).
	ReasonWaitingForAdmission = "WaitingForAdmission"
	// ReasonAdmitted: Kueue admitted the run's Workload: its pod is
	// created; the start timeout runs from here.
	ReasonAdmitted = "Admitted"
	// ReasonCancelledWhileQueued: the run was cancelled before Kueue
	// admitted it; its pod never ran.
	ReasonCancelledWhileQueued = "CancelledWhileQueued"
	// ReasonWorkloadRefused: the API server refused the run's Kueue
	// Workload (Kueue's webhook denied it or could not be called, as
	// while Kueue restarts); retried every few seconds, the message says
	// why.
	ReasonWorkloadRefused = "WorkloadRefused"
	// ReasonPriorityClassNotFound: the JobType's priorityClassName names no
	// Kueue WorkloadPriorityClass; the run failed before any pod was
	// created (Kueue would never admit it).
	ReasonPriorityClassNotFound = "PriorityClassNotFound"
)

// LabelRun is on the pods of a run: the run's name.
const LabelRun = "jobs.jobrun.dev/run"

// JobRunStatus is what happened to a run. Once phase is terminal (completed,
// failed, cancelled) it never changes again: the API server refuses it.
//
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.phase) || !(oldSelf.phase in ['completed', 'failed', 'cancelled']) || (has(self.phase) && self.phase == oldSelf.phase)",message="a finished run's phase cannot change"
type JobRunStatus struct {
	// phase is pending, running, completed, failed or cancelled. The API
	// server shows pending until the controller first writes the status
	// (which it does once the run's pod runs, or the run ends without one).
	// +optional
	// +kubebuilder:default=pending
	Phase JobRunPhase `json:"phase,omitempty"`

	// progress is what the handler last reported.
	// +optional
	Progress *JobRunProgress `json:"progress,omitempty"`

	// result is what the handler returned, a JSON value.
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	Result *runtime.RawExtension `json:"result,omitempty"`

	// error is why the run failed, for people.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Error string `json:"error,omitempty"`

	// startedAt is when the handler started, at millisecond precision.
	// +optional
	StartedAt *metav1.MicroTime `json:"startedAt,omitempty"`

	// completedAt is when the run reached a terminal phase.
	// +optional
	CompletedAt *metav1.MicroTime `json:"completedAt,omitempty"`

	// cancelRequestedAt is when the controller first saw the run's cancel
	// request, at microsecond precision. The JobType's cancel grace period is
	// measured from it: a condition's lastTransitionTime keeps only whole
	// seconds, which would end the grace period up to a second early.
	// +optional
	CancelRequestedAt *metav1.MicroTime `json:"cancelRequestedAt,omitempty"`

	// podName is the pod of the current (or last) attempt.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	PodName string `json:"podName,omitempty"`

	// attempts is how many pods were started for the run.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Attempts int32 `json:"attempts,omitempty"`

	// notification records the completion email asked for by spec.notify.
	// +optional
	Notification *JobRunNotification `json:"notification,omitempty"`

	// observedGeneration is the metadata.generation the status describes.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions record the run's transitions.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// JobRun is one run of a job: its name is the run id (a UUID), its spec what
// was asked, its status what happened.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=jr,categories={jobrun-all,all}
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.jobType`
// +kubebuilder:printcolumn:name="Project",type=string,JSONPath=`.spec.projectID`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Progress",type=string,JSONPath=`.status.progress.summary`
// +kubebuilder:printcolumn:name="Team",type=string,JSONPath=`.spec.teamID`,priority=1
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.progress.message`,priority=1
// +kubebuilder:printcolumn:name="Queue",type=string,JSONPath=`.status.conditions[?(@.type=="Queued")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type JobRun struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata; the name is the run id.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what was asked for.
	// +required
	Spec JobRunSpec `json:"spec"`

	// status is what happened.
	// +optional
	// +kubebuilder:default={}
	Status JobRunStatus `json:"status,omitempty"`
}

// JobRunList is a list of JobRuns.
//
// +kubebuilder:object:root=true
type JobRunList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []JobRun `json:"items"`
}
