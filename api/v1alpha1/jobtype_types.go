package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// JobTypeScope says who may start runs of a JobType.
// +kubebuilder:validation:Enum=Project;System
type JobTypeScope string

const (
	// JobTypeScopeProject job types run for one project of a team and are
	// started through the REST API (or a project JobSchedule).
	JobTypeScopeProject JobTypeScope = "Project"
	// JobTypeScopeSystem job types run for the whole installation, only from a
	// JobSchedule; the REST API refuses to trigger them and never lists them.
	JobTypeScopeSystem JobTypeScope = "System"
)

// JobTypeSpec defines a kind of job that may run.
type JobTypeSpec struct {
	// jobType is the job type string of the REST API, such as revenuecat_sync:
	// lowercase letters, digits and underscores. The object's name must be the
	// same string with underscores replaced by hyphens (revenuecat-sync), so
	// that a job type is found by name. Immutable.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([a-z0-9_]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="jobType is immutable"
	JobType string `json:"jobType"`

	// scope says who may start runs: Project (through the REST API, for one
	// project of a team) or System (only from a JobSchedule). Immutable.
	// +optional
	// +kubebuilder:default=Project
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="scope is immutable"
	Scope JobTypeScope `json:"scope,omitempty"`

	// description tells people what the job does.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Description string `json:"description,omitempty"`

	// template is the pod template of the handler: the pod that executes one
	// attempt of a run. The controller adds the run's identity to it.
	// +required
	Template corev1.PodTemplateSpec `json:"template"`

	// activeDeadlineSeconds bounds how long one run may take from its start;
	// a run still going then ends failed with reason DeadlineExceeded.
	// +optional
	// +kubebuilder:default=3600
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=604800
	ActiveDeadlineSeconds *int64 `json:"activeDeadlineSeconds,omitempty"`

	// startTimeoutSeconds bounds how long a run may take from its creation
	// to running (its handler's pod running), whatever holds it: a pod the
	// API server refuses (Pod Security, a quota, an admission webhook; such
	// refusals are retried with backoff until then), no node for the pod, an
	// image that cannot be pulled. A run not running by then ends failed with
	// the reason (PodForbidden, Unschedulable, ImagePullBackOff, ...
	// StartTimeout when there is none), its pod deleted and its (job type,
	// project) free for the next trigger.
	// +optional
	// +kubebuilder:default=600
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=86400
	StartTimeoutSeconds *int64 `json:"startTimeoutSeconds,omitempty"`

	// cancelGracePeriodSeconds is how long a handler has to return after a
	// cancel request before its pod is deleted.
	// +optional
	// +kubebuilder:default=30
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3600
	CancelGracePeriodSeconds *int64 `json:"cancelGracePeriodSeconds,omitempty"`

	// retryLimit is how many more attempts a failed run gets. Attempts never
	// overlap.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	RetryLimit *int32 `json:"retryLimit,omitempty"`

	// ttlSecondsAfterFinished is how long a finished run is kept before it is
	// deleted.
	// +optional
	// +kubebuilder:default=604800
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=31536000
	TTLSecondsAfterFinished *int32 `json:"ttlSecondsAfterFinished,omitempty"`

	// historyLimit is how many finished runs are kept per project (or, for a
	// system job type, in all); older ones are deleted even before their TTL.
	// +optional
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000
	HistoryLimit *int32 `json:"historyLimit,omitempty"`

	// priorityClassName is the Kueue WorkloadPriorityClass of the JobType's
	// runs, when the manager sends runs through Kueue (--kueue): among the
	// runs waiting in one ClusterQueue, Kueue admits those of higher
	// priority first (after fair sharing between the teams, which comes
	// first); it never preempts a running handler. A run whose class does
	// not exist fails before any pod is created (reason
	// PriorityClassNotFound). Without Kueue it has no effect. Empty: Kueue's
	// default priority (0).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// paramsSchema is an optional OpenAPI v3 schema (the dialect of CRD
	// schemas) that a run's params must satisfy; a run whose params fail it
	// fails before any pod starts (reason InvalidParams).
	// +optional
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:validation:Type=object
	ParamsSchema *runtime.RawExtension `json:"paramsSchema,omitempty"`
}

// JobType condition types and reasons.
const (
	// JobTypeConditionReady is True when runs of the JobType can start.
	JobTypeConditionReady = "Ready"
	// ReasonTemplateAllowed: the JobType's pod template is within the
	// manager's pod policy; runs of it can start.
	ReasonTemplateAllowed = "TemplateAllowed"
	// ReasonTemplateNotAllowed: the JobType's pod template asks for more than
	// the manager's pod policy allows (host access, privileges, Secrets, a
	// service account not allowed); the message names each field. Runs of it
	// fail with this reason before any pod is created.
	ReasonTemplateNotAllowed = "TemplateNotAllowed"
)

// JobTypeStatus is what the controller observed of a JobType.
type JobTypeStatus struct {
	// observedGeneration is the metadata.generation the status describes.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions describe the JobType's state; Ready tells whether runs can
	// start.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// JobType is a kind of job that may run, such as revenuecat_sync: the handler
// pod to start, its limits and who may start it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=jt,categories={jobrun-all,all}
// +kubebuilder:printcolumn:name="Job Type",type=string,JSONPath=`.spec.jobType`
// +kubebuilder:printcolumn:name="Scope",type=string,JSONPath=`.spec.scope`
// +kubebuilder:printcolumn:name="Deadline",type=integer,JSONPath=`.spec.activeDeadlineSeconds`,priority=1
// +kubebuilder:printcolumn:name="Retries",type=integer,JSONPath=`.spec.retryLimit`,priority=1
// +kubebuilder:printcolumn:name="Priority",type=string,JSONPath=`.spec.priorityClassName`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == self.spec.jobType.replace('_', '-')",message="metadata.name must be spec.jobType with underscores replaced by hyphens",fieldPath=`.spec.jobType`
type JobType struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec defines the job type.
	// +required
	Spec JobTypeSpec `json:"spec"`

	// status is what the controller observed.
	// +optional
	Status JobTypeStatus `json:"status,omitempty"`
}

// JobTypeList is a list of JobTypes.
//
// +kubebuilder:object:root=true
type JobTypeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []JobType `json:"items"`
}
