package manifests_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// applyDefault installs config/default as a user would (server-side apply,
// so other tests of the package may have installed it already).
func applyDefault(t *testing.T) {
	t.Helper()
	manifests := filepath.Join(t.TempDir(), "jobrun.yaml")
	if err := os.WriteFile(manifests, []byte(env.Kubectl(t, "kustomize", filepath.Join(env.Root, "config", "default"))), 0o644); err != nil {
		t.Fatal(err)
	}
	env.Kubectl(t, "apply", "--server-side", "-f", manifests)
}

// jobTypeWith is a JobType in ns whose template is a plain handler changed
// by mutate.
func jobTypeWith(ns string, mutate func(*corev1.PodSpec)) *jobsv1alpha1.JobType {
	jt := &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tenant-job"},
		Spec: jobsv1alpha1.JobTypeSpec{
			JobType: "tenant_job",
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "handler", Image: "jobrun:dev", Args: []string{"runner"}}},
			}},
		},
	}
	if mutate != nil {
		mutate(&jt.Spec.Template.Spec)
	}
	return jt
}

// TestJobTypePodPolicyAdmission installs config/default and writes JobTypes
// into jobrun-system whose templates ask for the host, privileges, Secrets
// or another identity: the admission policy jobrun-jobtype-pod-policy refuses
// each, naming the field. Plain templates, the runner named explicitly and
// NET_BIND_SERVICE are admitted, and so is a bad template in a namespace
// jobrun does not serve.
func TestJobTypePodPolicyAdmission(t *testing.T) {
	applyDefault(t)
	const ns = "jobrun-system"
	ctx := testenv.Context(t)

	// A policy takes effect a moment after it is created.
	testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
		err := env.Client.Create(ctx, jobTypeWith(ns, func(s *corev1.PodSpec) { s.HostNetwork = true }), client.DryRunAll)
		if !apierrors.IsForbidden(err) {
			return fmt.Errorf("a hostNetwork JobType: err = %v, want Forbidden by the policy", err)
		}
		return nil
	})

	refused := []struct {
		name   string
		mutate func(*corev1.PodSpec)
		want   string
	}{
		{"hostNetwork", func(s *corev1.PodSpec) { s.HostNetwork = true }, "spec.template.spec.hostNetwork: host namespaces are not allowed"},
		{"hostPID", func(s *corev1.PodSpec) { s.HostPID = true }, "spec.template.spec.hostPID"},
		{"hostIPC", func(s *corev1.PodSpec) { s.HostIPC = true }, "spec.template.spec.hostIPC"},
		{"manager's service account", func(s *corev1.PodSpec) { s.ServiceAccountName = "jobrun-manager" },
			`spec.template.spec.serviceAccountName: service account "jobrun-manager" is not allowed (allowed: jobrun-runner)`},
		{"deprecated serviceAccount", func(s *corev1.PodSpec) { s.DeprecatedServiceAccount = "default" }, "spec.template.spec.serviceAccount:"},
		{"hostPath", func(s *corev1.PodSpec) {
			s.Volumes = []corev1.Volume{{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
		}, "spec.template.spec.volumes[].hostPath: hostPath volumes are not allowed (root)"},
		{"JWT secret volume", func(s *corev1.PodSpec) {
			s.Volumes = []corev1.Volume{{Name: "jwt", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "jobrun-jwt"}}}}
		}, "spec.template.spec.volumes[].secret: Secret volumes are not allowed (jwt)"},
		{"projected secret", func(s *corev1.PodSpec) {
			s.Volumes = []corev1.Volume{{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "jobrun-jwt"}}},
			}}}}}
		}, "Secret volumes are not allowed (p)"},
		{"secret env", func(s *corev1.PodSpec) {
			s.Containers[0].Env = []corev1.EnvVar{{Name: "JWT", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "jobrun-jwt"}, Key: "jwt-secret"}}}}
		}, "Secrets are not allowed (handler)"},
		{"secret envFrom", func(s *corev1.PodSpec) {
			s.Containers[0].EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "jobrun-jwt"}}}}
		}, "Secrets are not allowed (handler)"},
		{"hostPort", func(s *corev1.PodSpec) {
			s.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 80, HostPort: 80}}
		}, "spec.template.spec.containers[].ports[].hostPort: host ports are not allowed (handler)"},
		{"privileged", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		}, "spec.template.spec.containers[].securityContext.privileged: privileged containers are not allowed (handler)"},
		{"privileged init container", func(s *corev1.PodSpec) {
			s.InitContainers = []corev1.Container{{Name: "setup", Image: "jobrun:dev", SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}}
		}, "privileged containers are not allowed (setup)"},
		{"allowPrivilegeEscalation", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(true)}
		}, "spec.template.spec.containers[].securityContext.allowPrivilegeEscalation: privilege escalation is not allowed (handler)"},
		{"SYS_ADMIN", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE", "SYS_ADMIN"}}}
		}, "spec.template.spec.containers[].securityContext.capabilities.add: only NET_BIND_SERVICE may be added (handler)"},
	}
	for _, tt := range refused {
		t.Run("refused "+tt.name, func(t *testing.T) {
			err := env.Client.Create(ctx, jobTypeWith(ns, tt.mutate), client.DryRunAll)
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "jobrun-jobtype-pod-policy") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want Forbidden by jobrun-jobtype-pod-policy naming %q", err, tt.want)
			}
		})
	}

	admitted := []struct {
		name   string
		mutate func(*corev1.PodSpec)
	}{
		{"plain", nil},
		{"runner named", func(s *corev1.PodSpec) { s.ServiceAccountName = "jobrun-runner" }},
		{"NET_BIND_SERVICE and no escalation", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr.To(false), Privileged: ptr.To(false),
				Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}, Drop: []corev1.Capability{"ALL"}},
			}
		}},
		{"ConfigMap env and emptyDir", func(s *corev1.PodSpec) {
			s.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			s.Containers[0].Env = []corev1.EnvVar{{Name: "A", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{Key: "a"}}}}
		}},
	}
	for _, tt := range admitted {
		t.Run("admitted "+tt.name, func(t *testing.T) {
			if err := env.Client.Create(ctx, jobTypeWith(ns, tt.mutate), client.DryRunAll); err != nil {
				t.Errorf("refused: %v", err)
			}
		})
	}

	t.Run("a service account the operator allows", func(t *testing.T) {
		cm := &corev1.ConfigMap{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "jobrun-pod-policy"}, cm); err != nil {
			t.Fatal(err)
		}
		orig := cm.DeepCopy()
		cm.Data["allowedServiceAccounts"] = "reporting, billing"
		if err := env.Client.Patch(ctx, cm, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Patch(context.Background(), orig.DeepCopy(), client.MergeFrom(cm)) })
		testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
			return env.Client.Create(ctx, jobTypeWith(ns, func(s *corev1.PodSpec) { s.ServiceAccountName = "billing" }), client.DryRunAll)
		})
		err := env.Client.Create(ctx, jobTypeWith(ns, func(s *corev1.PodSpec) { s.ServiceAccountName = "jobrun-manager" }), client.DryRunAll)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "(allowed: jobrun-runner, reporting, billing)") {
			t.Errorf("the manager's service account: err = %v, want Forbidden listing the allowed ones", err)
		}
	})

	t.Run("another namespace", func(t *testing.T) {
		other := env.Namespace(t)
		if err := env.Client.Create(ctx, jobTypeWith(other, func(s *corev1.PodSpec) { s.HostNetwork = true }), client.DryRunAll); err != nil {
			t.Errorf("a namespace jobrun does not serve: %v", err)
		}
	})
}
