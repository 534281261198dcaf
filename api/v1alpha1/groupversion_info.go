// Package v1alpha1 holds the jobrun API: JobType, JobRun, JobSchedule and
// Project in the group jobs.jobrun.dev. It imports only apimachinery and the
// core API types, so handler authors and other programs can use it cheaply.
//
// +kubebuilder:object:generate=true
// +groupName=jobs.jobrun.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every jobrun kind.
	GroupVersion = schema.GroupVersion{Group: "jobs.jobrun.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the jobrun kinds with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the jobrun kinds to a runtime.Scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&JobType{}, &JobTypeList{},
		&JobRun{}, &JobRunList{},
		&JobSchedule{}, &JobScheduleList{},
		&Project{}, &ProjectList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
