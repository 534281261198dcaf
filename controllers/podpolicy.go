package controllers

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

// PodPolicy is what a JobType's pod template may ask for. Whoever may write a
// JobType chooses the pods jobrun creates, so a template gets no more than a
// restricted pod running as the runner: no host namespaces, ports, paths or
// processes, no privileges, root, unconfined seccomp, unmasked /proc or
// capabilities kept, no Secrets of jobrun's namespace (the REST API's JWT secret and
// API keys live there; handlers read integration Secrets through the API), and
// no service account but the runner's or one the operator allowed.
//
// The admission policy jobrun-jobtype-pod-policy (config/tenancy) refuses such
// JobTypes when they are written; the controllers check again before they
// create a pod, for JobTypes admitted before that policy existed.
type PodPolicy struct {
	// RunnerServiceAccount runs pods whose template names none.
	RunnerServiceAccount string
	// AllowedServiceAccounts may be named by a template, beside the runner's.
	AllowedServiceAccounts []string
}

// netBindService is the one capability the restricted Pod Security Standard
// lets a container add.
const netBindService = "NET_BIND_SERVICE"

// Violations lists, by field path from the JobType (spec.template.spec...),
// what spec asks for beyond the policy; none means the template is allowed.
func (p PodPolicy) Violations(spec *corev1.PodSpec) []string {
	const root = "spec.template.spec"
	var v []string
	add := func(field, format string, args ...any) {
		v = append(v, root+"."+field+": "+fmt.Sprintf(format, args...))
	}
	if spec.HostNetwork {
		add("hostNetwork", "host namespaces are not allowed")
	}
	if spec.HostPID {
		add("hostPID", "host namespaces are not allowed")
	}
	if spec.HostIPC {
		add("hostIPC", "host namespaces are not allowed")
	}
	if psc := spec.SecurityContext; psc != nil {
		identity(add, "securityContext", psc.RunAsNonRoot, psc.RunAsUser, psc.SeccompProfile, psc.WindowsOptions)
	}
	for _, sa := range []struct{ field, name string }{{"serviceAccountName", spec.ServiceAccountName}, {"serviceAccount", spec.DeprecatedServiceAccount}} {
		if sa.name != "" && sa.name != p.RunnerServiceAccount && !slices.Contains(p.AllowedServiceAccounts, sa.name) {
			add(sa.field, "service account %q is not allowed (allowed: the runner's %q%s)", sa.name, p.RunnerServiceAccount, allowedList(p.AllowedServiceAccounts))
		}
	}
	for i, vol := range spec.Volumes {
		field := fmt.Sprintf("volumes[%d]", i)
		switch {
		case vol.HostPath != nil:
			add(field+".hostPath", "hostPath volumes are not allowed")
		case vol.Secret != nil:
			add(field+".secret", "Secret volumes are not allowed")
		case vol.Projected != nil:
			for j, src := range vol.Projected.Sources {
				if src.Secret != nil {
					add(fmt.Sprintf("%s.projected.sources[%d].secret", field, j), "Secret volumes are not allowed")
				}
			}
		}
	}
	check := func(field string, c *corev1.Container) {
		for i, port := range c.Ports {
			if port.HostPort != 0 {
				add(fmt.Sprintf("%s.ports[%d].hostPort", field, i), "host ports are not allowed")
			}
		}
		for i, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				add(fmt.Sprintf("%s.env[%d].valueFrom.secretKeyRef", field, i), "Secrets are not allowed")
			}
		}
		for i, e := range c.EnvFrom {
			if e.SecretRef != nil {
				add(fmt.Sprintf("%s.envFrom[%d].secretRef", field, i), "Secrets are not allowed")
			}
		}
		sc := c.SecurityContext
		if sc == nil {
			return
		}
		identity(add, field+".securityContext", sc.RunAsNonRoot, sc.RunAsUser, sc.SeccompProfile, sc.WindowsOptions)
		if sc.ProcMount != nil && *sc.ProcMount == corev1.UnmaskedProcMount {
			add(field+".securityContext.procMount", "an unmasked /proc is not allowed")
		}
		if ptr.Deref(sc.Privileged, false) {
			add(field+".securityContext.privileged", "privileged containers are not allowed")
		}
		if ptr.Deref(sc.AllowPrivilegeEscalation, false) {
			add(field+".securityContext.allowPrivilegeEscalation", "privilege escalation is not allowed")
		}
		if sc.Capabilities != nil {
			if len(sc.Capabilities.Drop) > 0 && !slices.Contains(sc.Capabilities.Drop, "ALL") {
				add(field+".securityContext.capabilities.drop", "must include ALL (or be left unset: jobrun then drops ALL)")
			}
			for i, c := range sc.Capabilities.Add {
				if c != netBindService {
					add(fmt.Sprintf("%s.securityContext.capabilities.add[%d]", field, i), "capability %s is not allowed (only %s may be added)", c, netBindService)
				}
			}
		}
	}
	for i := range spec.InitContainers {
		check(fmt.Sprintf("initContainers[%d]", i), &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		check(fmt.Sprintf("containers[%d]", i), &spec.Containers[i])
	}
	for i := range spec.EphemeralContainers {
		c := corev1.Container(spec.EphemeralContainers[i].EphemeralContainerCommon)
		check(fmt.Sprintf("ephemeralContainers[%d]", i), &c)
	}
	return v
}

// identity checks the settings a pod and a container share: no root, no
// unconfined seccomp, no Windows host process.
func identity(add func(field, format string, args ...any), field string, nonRoot *bool, uid *int64, seccomp *corev1.SeccompProfile, windows *corev1.WindowsSecurityContextOptions) {
	if nonRoot != nil && !*nonRoot {
		add(field+".runAsNonRoot", "running as root is not allowed")
	}
	if uid != nil && *uid == 0 {
		add(field+".runAsUser", "UID 0 is not allowed")
	}
	if seccomp != nil && seccomp.Type == corev1.SeccompProfileTypeUnconfined {
		add(field+".seccompProfile.type", "Unconfined is not allowed")
	}
	if windows != nil && ptr.Deref(windows.HostProcess, false) {
		add(field+".windowsOptions.hostProcess", "host processes are not allowed")
	}
}

func allowedList(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return ", " + strings.Join(names, ", ")
}

// templateRefusal is the message of a run or JobType whose template breaks
// the policy.
func templateRefusal(violations []string) string {
	msg := "the JobType's pod template is not allowed: " + strings.Join(violations, "; ")
	if len(msg) > 4096 {
		msg = msg[:4093] + "..."
	}
	return msg
}
