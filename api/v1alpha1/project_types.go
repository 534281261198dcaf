package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ProjectSpec maps a project to the team that owns it.
type ProjectSpec struct {
	// teamID is the team that owns the project. Immutable: moving a project
	// to another team would hand its runs to that team.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="teamID is immutable"
	TeamID string `json:"teamID"`

	// displayName is the project's name for people.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	DisplayName string `json:"displayName,omitempty"`
}

// Project is one entry of the tenancy map: its name is the project id, its
// spec the team that owns it. The REST API checks a trigger's project_id
// against it. Nothing reconciles a Project, so it has no status.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=proj,categories={jobrun-all}
// +kubebuilder:printcolumn:name="Team",type=string,JSONPath=`.spec.teamID`
// +kubebuilder:printcolumn:name="Display Name",type=string,JSONPath=`.spec.displayName`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63",message="metadata.name (the project id) must be at most 63 characters: it is used as a label value"
type Project struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata; the name is the project id.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec maps the project to its team.
	// +required
	Spec ProjectSpec `json:"spec"`
}

// ProjectList is a list of Projects.
//
// +kubebuilder:object:root=true
type ProjectList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Project `json:"items"`
}
