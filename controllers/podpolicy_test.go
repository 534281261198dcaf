package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

func TestPodPolicyViolations(t *testing.T) {
	policy := PodPolicy{RunnerServiceAccount: "jobrun-runner", AllowedServiceAccounts: []string{"reporting"}}
	handler := func(mutate func(*corev1.Container)) corev1.PodSpec {
		c := corev1.Container{Name: "handler", Image: "jobrun:dev"}
		if mutate != nil {
			mutate(&c)
		}
		return corev1.PodSpec{Containers: []corev1.Container{c}}
	}
	with := func(mutate func(*corev1.PodSpec)) corev1.PodSpec {
		s := handler(nil)
		mutate(&s)
		return s
	}
	tests := []struct {
		name string
		spec corev1.PodSpec
		want []string
	}{
		{"plain", handler(nil), nil},
		{"runner named", with(func(s *corev1.PodSpec) { s.ServiceAccountName = "jobrun-runner" }), nil},
		{"allowed service account", with(func(s *corev1.PodSpec) { s.ServiceAccountName = "reporting" }), nil},
		{"NET_BIND_SERVICE", handler(func(c *corev1.Container) {
			c.SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}}}
		}), nil},
		{"allowPrivilegeEscalation false", handler(func(c *corev1.Container) {
			c.SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), Privileged: ptr.To(false)}
		}), nil},
		{"manager's service account", with(func(s *corev1.PodSpec) { s.ServiceAccountName = "jobrun-manager" }),
			[]string{`spec.template.spec.serviceAccountName: service account "jobrun-manager" is not allowed (allowed: the runner's "jobrun-runner", reporting)`}},
		{"deprecated serviceAccount", with(func(s *corev1.PodSpec) { s.DeprecatedServiceAccount = "default" }),
			[]string{`spec.template.spec.serviceAccount: service account "default" is not allowed (allowed: the runner's "jobrun-runner", reporting)`}},
		{"host namespaces", with(func(s *corev1.PodSpec) { s.HostNetwork, s.HostPID, s.HostIPC = true, true, true }), []string{
			"spec.template.spec.hostNetwork: host namespaces are not allowed",
			"spec.template.spec.hostPID: host namespaces are not allowed",
			"spec.template.spec.hostIPC: host namespaces are not allowed",
		}},
		{"volumes", with(func(s *corev1.PodSpec) {
			s.Volumes = []corev1.Volume{
				{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}},
				{Name: "jwt", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "jobrun-jwt"}}},
				{Name: "mix", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
					{ConfigMap: &corev1.ConfigMapProjection{}},
					{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "jobrun-jwt"}}},
				}}}},
			}
		}), []string{
			"spec.template.spec.volumes[1].hostPath: hostPath volumes are not allowed",
			"spec.template.spec.volumes[2].secret: Secret volumes are not allowed",
			"spec.template.spec.volumes[3].projected.sources[1].secret: Secret volumes are not allowed",
		}},
		{"container", handler(func(c *corev1.Container) {
			c.Ports = []corev1.ContainerPort{{ContainerPort: 80}, {ContainerPort: 8080, HostPort: 8080}}
			c.Env = []corev1.EnvVar{{Name: "A", Value: "a"}, {Name: "JWT", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "jwt-secret"}}}}
			c.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{}}}
			c.SecurityContext = &corev1.SecurityContext{
				Privileged: ptr.To(true), AllowPrivilegeEscalation: ptr.To(true),
				Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE", "SYS_ADMIN"}},
			}
		}), []string{
			"spec.template.spec.containers[0].ports[1].hostPort: host ports are not allowed",
			"spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef: Secrets are not allowed",
			"spec.template.spec.containers[0].envFrom[0].secretRef: Secrets are not allowed",
			"spec.template.spec.containers[0].securityContext.privileged: privileged containers are not allowed",
			"spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation: privilege escalation is not allowed",
			"spec.template.spec.containers[0].securityContext.capabilities.add[1]: capability SYS_ADMIN is not allowed (only NET_BIND_SERVICE may be added)",
		}},
		{"root and confinement", with(func(s *corev1.PodSpec) {
			unmasked := corev1.UnmaskedProcMount
			s.SecurityContext = &corev1.PodSecurityContext{
				RunAsNonRoot: ptr.To(false), RunAsUser: ptr.To[int64](0),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
				WindowsOptions: &corev1.WindowsSecurityContextOptions{HostProcess: ptr.To(true)},
			}
			s.Containers[0].SecurityContext = &corev1.SecurityContext{
				RunAsUser: ptr.To[int64](0), ProcMount: &unmasked,
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW"}},
			}
		}), []string{
			"spec.template.spec.securityContext.runAsNonRoot: running as root is not allowed",
			"spec.template.spec.securityContext.runAsUser: UID 0 is not allowed",
			"spec.template.spec.securityContext.seccompProfile.type: Unconfined is not allowed",
			"spec.template.spec.securityContext.windowsOptions.hostProcess: host processes are not allowed",
			"spec.template.spec.containers[0].securityContext.runAsUser: UID 0 is not allowed",
			"spec.template.spec.containers[0].securityContext.procMount: an unmasked /proc is not allowed",
			"spec.template.spec.containers[0].securityContext.capabilities.drop: must include ALL (or be left unset: jobrun then drops ALL)",
		}},
		{"a non-root user and drop ALL", with(func(s *corev1.PodSpec) {
			s.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532)}
			s.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
		}), nil},
		{"init and ephemeral containers", with(func(s *corev1.PodSpec) {
			s.InitContainers = []corev1.Container{{Name: "init", SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}}
			s.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug", SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}}}
		}), []string{
			"spec.template.spec.initContainers[0].securityContext.privileged: privileged containers are not allowed",
			"spec.template.spec.ephemeralContainers[0].securityContext.privileged: privileged containers are not allowed",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, policy.Violations(&tt.spec)); diff != "" {
				t.Errorf("violations (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTemplateNotAllowedGetsNoPod: a JobType admitted with a template that
// asks for the host or another identity (here no admission policy stands in
// the way, as for a JobType written before the policy was installed) gets
// no pod: its run fails with TemplateNotAllowed naming the fields, and the
// JobType's Ready condition says the same. A service account the operator
// allowed gets its pod.
func TestTemplateNotAllowedGetsNoPod(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*corev1.PodSpec)
		fields []string
	}{
		{"manager's service account", func(s *corev1.PodSpec) { s.ServiceAccountName = "jobrun-manager" }, []string{"spec.template.spec.serviceAccountName"}},
		{"host", func(s *corev1.PodSpec) {
			s.HostNetwork = true
			s.Volumes = []corev1.Volume{{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
		}, []string{"spec.template.spec.hostNetwork", "spec.template.spec.volumes[0].hostPath"}},
		{"privileged", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		}, []string{"spec.template.spec.containers[0].securityContext.privileged"}},
		{"JWT secret", func(s *corev1.PodSpec) {
			s.Volumes = []corev1.Volume{{Name: "jwt", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "jobrun-jwt"}}}}
		}, []string{"spec.template.spec.volumes[0].secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := env.Namespace(t)
			startManager(t, ns, clocktesting.NewFakeClock(time.Now()), WithAllowedServiceAccounts("reporting"))
			jt := createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { tt.mutate(&jt.Spec.Template.Spec) })
			createRun(t, ns, "run-1")
			jr := waitPhase(t, ns, "run-1", jobsv1alpha1.JobRunFailed)
			if got := finishedReason(jr); got != jobsv1alpha1.ReasonTemplateNotAllowed {
				t.Errorf("run failed with reason %q, want %s (%s)", got, jobsv1alpha1.ReasonTemplateNotAllowed, jr.Status.Error)
			}
			for _, f := range tt.fields {
				if !strings.Contains(jr.Status.Error, f+":") {
					t.Errorf("run error does not name %s: %s", f, jr.Status.Error)
				}
			}
			if pods := podsOf(t, ns, "run-1"); len(pods) != 0 {
				t.Errorf("a pod was created for a template that is not allowed: %s", pods[0].Name)
			}
			testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
				got := &jobsv1alpha1.JobType{}
				if err := env.Client.Get(ctx, client.ObjectKeyFromObject(jt), got); err != nil {
					return err
				}
				c := meta.FindStatusCondition(got.Status.Conditions, jobsv1alpha1.JobTypeConditionReady)
				if c == nil || c.Status != metav1.ConditionFalse || c.Reason != jobsv1alpha1.ReasonTemplateNotAllowed {
					return fmt.Errorf("Ready condition = %+v", c)
				}
				for _, f := range tt.fields {
					if !strings.Contains(c.Message, f+":") {
						return fmt.Errorf("Ready message does not name %s: %s", f, c.Message)
					}
				}
				return nil
			})
		})
	}

	t.Run("allowed service account", func(t *testing.T) {
		ns := env.Namespace(t)
		startManager(t, ns, clocktesting.NewFakeClock(time.Now()), WithAllowedServiceAccounts("reporting"))
		jt := createJobType(t, ns, func(jt *jobsv1alpha1.JobType) { jt.Spec.Template.Spec.ServiceAccountName = "reporting" })
		createRun(t, ns, "run-1")
		if pod := waitPod(t, ns, jobsv1alpha1.PodName("run-1", 1)); pod.Spec.ServiceAccountName != "reporting" {
			t.Errorf("pod service account = %q, want reporting", pod.Spec.ServiceAccountName)
		}
		testenv.Eventually(t, 30*time.Second, func(ctx context.Context) error {
			got := &jobsv1alpha1.JobType{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(jt), got); err != nil {
				return err
			}
			if c := meta.FindStatusCondition(got.Status.Conditions, jobsv1alpha1.JobTypeConditionReady); c == nil || c.Status != metav1.ConditionTrue {
				return fmt.Errorf("Ready condition = %+v", c)
			}
			return nil
		})
	})
}
