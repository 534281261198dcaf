package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

// restrictedPodSpec returns spec with the security settings that the
// `restricted` Pod Security Standard requires filled in wherever spec leaves
// them unset, so that a JobType's plain template runs in a namespace that
// enforces restricted (config/default installs jobrun into one):
//
//   - the pod runs as non-root, under the runtime's default seccomp profile;
//   - every container (init and ephemeral ones too) may not escalate
//     privileges and drops all capabilities.
//
// A value the template sets is kept as written, even one that breaks the
// standard: the namespace's Pod Security admission then refuses the pod, and
// the JobType's author sees why. Windows pods get only runAsNonRoot: the API
// server rejects the Linux-only fields for them, and the standard exempts
// them from those checks.
func restrictedPodSpec(spec corev1.PodSpec) corev1.PodSpec {
	out := *spec.DeepCopy()
	linux := out.OS == nil || out.OS.Name != corev1.Windows
	if out.SecurityContext == nil {
		out.SecurityContext = &corev1.PodSecurityContext{}
	}
	if out.SecurityContext.RunAsNonRoot == nil {
		out.SecurityContext.RunAsNonRoot = ptr.To(true)
	}
	if linux && out.SecurityContext.SeccompProfile == nil {
		out.SecurityContext.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	}
	if !linux {
		return out
	}
	for i := range out.InitContainers {
		out.InitContainers[i].SecurityContext = restrictedContainer(out.InitContainers[i].SecurityContext)
	}
	for i := range out.Containers {
		out.Containers[i].SecurityContext = restrictedContainer(out.Containers[i].SecurityContext)
	}
	for i := range out.EphemeralContainers {
		c := &out.EphemeralContainers[i].EphemeralContainerCommon
		c.SecurityContext = restrictedContainer(c.SecurityContext)
	}
	return out
}

// restrictedContainer fills in a container's unset privilege escalation and
// dropped capabilities. A drop list the template wrote stays as it is; added
// capabilities (restricted allows NET_BIND_SERVICE) stay beside the drop of
// ALL, which the runtime applies first.
func restrictedContainer(sc *corev1.SecurityContext) *corev1.SecurityContext {
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if sc.AllowPrivilegeEscalation == nil && !escalates(sc) {
		sc.AllowPrivilegeEscalation = ptr.To(false)
	}
	if sc.Capabilities == nil {
		sc.Capabilities = &corev1.Capabilities{}
	}
	if len(sc.Capabilities.Drop) == 0 {
		sc.Capabilities.Drop = []corev1.Capability{"ALL"}
	}
	return sc
}

// escalates reports whether the template already grants what implies
// privilege escalation: the API server rejects allowPrivilegeEscalation=false
// beside privileged or CAP_SYS_ADMIN as an invalid pod, and such a pod should
// be refused by Pod Security admission, which says why, instead.
func escalates(sc *corev1.SecurityContext) bool {
	if ptr.Deref(sc.Privileged, false) {
		return true
	}
	if sc.Capabilities != nil {
		for _, c := range sc.Capabilities.Add {
			if c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN" {
				return true
			}
		}
	}
	return false
}
