package controllers

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

func TestRestrictedPodSpec(t *testing.T) {
	runtimeDefault := &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	restrictedPod := &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: runtimeDefault}
	restricted := func() *corev1.SecurityContext {
		return &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		}
	}
	handler := func(sc *corev1.SecurityContext) corev1.Container {
		return corev1.Container{Name: "handler", Image: "jobrun:dev", SecurityContext: sc}
	}
	tests := []struct {
		name string
		in   corev1.PodSpec
		want corev1.PodSpec
	}{{
		name: "a template without security settings gets all of restricted",
		in:   corev1.PodSpec{Containers: []corev1.Container{handler(nil)}},
		want: corev1.PodSpec{SecurityContext: restrictedPod, Containers: []corev1.Container{handler(restricted())}},
	}, {
		name: "init and ephemeral containers too",
		in: corev1.PodSpec{
			InitContainers:      []corev1.Container{{Name: "init"}},
			Containers:          []corev1.Container{handler(nil), {Name: "sidecar"}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug"}}},
		},
		want: corev1.PodSpec{
			SecurityContext:     restrictedPod,
			InitContainers:      []corev1.Container{{Name: "init", SecurityContext: restricted()}},
			Containers:          []corev1.Container{handler(restricted()), {Name: "sidecar", SecurityContext: restricted()}},
			EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", SecurityContext: restricted()}}},
		},
	}, {
		name: "settings the template makes are kept beside the filled-in ones",
		in: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), FSGroup: ptr.To[int64](2000)},
			Containers: []corev1.Container{handler(&corev1.SecurityContext{
				ReadOnlyRootFilesystem: ptr.To(true),
				Capabilities:           &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}},
			})},
		},
		want: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr.To[int64](1000), FSGroup: ptr.To[int64](2000),
				RunAsNonRoot: ptr.To(true), SeccompProfile: runtimeDefault,
			},
			Containers: []corev1.Container{handler(&corev1.SecurityContext{
				ReadOnlyRootFilesystem:   ptr.To(true),
				AllowPrivilegeEscalation: ptr.To(false),
				Capabilities: &corev1.Capabilities{
					Add:  []corev1.Capability{"NET_BIND_SERVICE"},
					Drop: []corev1.Capability{"ALL"},
				},
			})},
		},
	}, {
		name: "explicit values are never overridden, even where they break restricted",
		in: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(false),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
			},
			Containers: []corev1.Container{handler(&corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr.To(true),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW"}},
			})},
		},
		want: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(false),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
			},
			Containers: []corev1.Container{handler(&corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr.To(true),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW"}},
			})},
		},
	}, {
		name: "a localhost seccomp profile is kept",
		in: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{
				Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr.To("jobrun.json"),
			}},
			Containers: []corev1.Container{handler(nil)},
		},
		want: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{
				Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr.To("jobrun.json"),
			}},
			Containers: []corev1.Container{handler(restricted())},
		},
	}, {
		// allowPrivilegeEscalation=false beside either would make the pod
		// invalid; left unset, Pod Security admission refuses it and says why.
		name: "privileged or CAP_SYS_ADMIN containers get no allowPrivilegeEscalation",
		in: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "privileged", SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}},
			{Name: "admin", SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"CAP_SYS_ADMIN"}}}},
		}},
		want: corev1.PodSpec{SecurityContext: restrictedPod, Containers: []corev1.Container{
			{Name: "privileged", SecurityContext: &corev1.SecurityContext{
				Privileged:   ptr.To(true),
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			}},
			{Name: "admin", SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
				Add: []corev1.Capability{"CAP_SYS_ADMIN"}, Drop: []corev1.Capability{"ALL"},
			}}},
		}},
	}, {
		// The API server rejects seccomp, privilege escalation and
		// capabilities on Windows pods; restricted does not ask for them.
		name: "a Windows pod gets only runAsNonRoot",
		in: corev1.PodSpec{
			OS:         &corev1.PodOS{Name: corev1.Windows},
			Containers: []corev1.Container{handler(nil)},
		},
		want: corev1.PodSpec{
			OS:              &corev1.PodOS{Name: corev1.Windows},
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)},
			Containers:      []corev1.Container{handler(nil)},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.in.DeepCopy()
			got := restrictedPodSpec(tt.in)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("restrictedPodSpec (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, &tt.in); diff != "" {
				t.Errorf("restrictedPodSpec changed its input (-before +after):\n%s", diff)
			}
		})
	}
}
