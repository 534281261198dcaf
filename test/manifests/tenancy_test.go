package manifests_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"

	"jobrun.dev/jobrun/test/testenv"
	"jobrun.dev/jobrun/test/testrun"
)

// applyDefault installs config/default as a user would (server-side apply,
// so other tests of the package may have installed it already; forced, as a
// test may have changed the pod policy's ConfigMap since).
func applyDefault(t *testing.T) {
	t.Helper()
	manifests := filepath.Join(t.TempDir(), "jobrun.yaml")
	if err := os.WriteFile(manifests, []byte(env.Kubectl(t, "kustomize", filepath.Join(env.Root, "config", "default"))), 0o644); err != nil {
		t.Fatal(err)
	}
	env.Kubectl(t, "apply", "--server-side", "--force-conflicts", "-f", manifests)
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
		{"root pod", func(s *corev1.PodSpec) {
			s.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](0)}
		}, "spec.template.spec.securityContext.runAsNonRoot, runAsUser: running as root is not allowed"},
		{"root container", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{RunAsNonRoot: ptr.To(false)}
		}, "running as root is not allowed (handler)"},
		{"unconfined seccomp", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}}
		}, "seccompProfile.type: Unconfined is not allowed"},
		{"host process", func(s *corev1.PodSpec) {
			s.SecurityContext = &corev1.PodSecurityContext{WindowsOptions: &corev1.WindowsSecurityContextOptions{HostProcess: ptr.To(true)}}
			s.HostNetwork = false
		}, "windowsOptions.hostProcess: host processes are not allowed"},
		{"capabilities kept", func(s *corev1.PodSpec) {
			s.Containers[0].SecurityContext = &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW"}}}
		}, "capabilities.drop: must include ALL (or be left unset: jobrun then drops ALL) (handler)"},
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
		{"a non-root user", func(s *corev1.PodSpec) {
			s.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
		}},
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

// runnerClient is a client with a token of the runner's service account in
// ns, bound to pod as the kubelet's projected token is (TokenRequest): the
// API server puts the pod's name in the request's user info, which the
// runner policy relies on.
func runnerClient(t *testing.T, pod *corev1.Pod) client.Client {
	t.Helper()
	ctx := testenv.Context(t)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr.To[int64](3600),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Spec.ServiceAccountName}}
	if err := env.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatalf("requesting a token for %s/%s: %v", sa.Namespace, sa.Name, err)
	}
	cfg := &rest.Config{
		Host:            env.Config.Host,
		TLSClientConfig: rest.TLSClientConfig{CAData: env.Config.CAData, Insecure: env.Config.Insecure},
		BearerToken:     tr.Status.Token,
	}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// restrictedRunnerPod is the pod of attempt 1 of run, as the controller
// would make it (restricted, the runner's service account).
func restrictedRunnerPod(run *jobsv1alpha1.JobRun, sa string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: run.Namespace, Name: run.Name + "-1", Labels: map[string]string{jobsv1alpha1.LabelRun: run.Name}},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			RestartPolicy:      corev1.RestartPolicyNever,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "handler", Image: "jobrun:dev", Args: []string{"runner"},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
}

// TestRunnerWritesOnlyItsFields installs config/default and acts as the
// runner of a running run, with a pod-bound token of jobrun-runner: it may
// write its run's progress, result and error, and nothing else of its
// status (phase, attempts, times, pod name, conditions, notification), nor
// another run's status.
func TestRunnerWritesOnlyItsFields(t *testing.T) {
	applyDefault(t)
	checkRunnerWrites(t, "jobrun-system", "jobrun-runner")
}

// checkRunnerWrites acts as the runner (service account sa) of a running run
// in ns: see TestRunnerWritesOnlyItsFields.
func checkRunnerWrites(t *testing.T, ns, sa string) {
	t.Helper()
	ctx := testenv.Context(t)

	newRun := func(name string) *jobsv1alpha1.JobRun {
		run := testrun.Make(ns, name).JobType("demo_sync").Team("demo-team").Project("demo-project").TriggeredBy("manual:user:demo-user").Obj()
		if err := env.Client.Create(ctx, run); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(context.Background(), run) })
		// What the controller writes when the run's pod starts.
		orig := run.DeepCopy()
		now := metav1.NowMicro()
		run.Status = jobsv1alpha1.JobRunStatus{
			Phase: jobsv1alpha1.JobRunRunning, Attempts: 1, PodName: name + "-1", StartedAt: &now,
			Conditions: []metav1.Condition{{Type: jobsv1alpha1.JobRunConditionRunning, Status: metav1.ConditionTrue, Reason: jobsv1alpha1.ReasonHandlerRunning, Message: "running", LastTransitionTime: metav1.Now()}},
		}
		if err := env.Client.Status().Patch(ctx, run, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
		return run
	}
	suffix := strings.ToLower(rand.String(6))
	own, other := newRun("runner-own-"+suffix), newRun("runner-other-"+suffix)
	pod := restrictedRunnerPod(own, sa)
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), pod) })
	runner := runnerClient(t, pod)

	patch := func(run *jobsv1alpha1.JobRun, status string) error {
		return runner.Status().Patch(ctx, run.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(`{"status":`+status+`}`)))
	}
	// A policy takes effect a moment after it is created: wait until the
	// runner may not write another run's progress.
	testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
		err := patch(other, `{"progress":{"processed":1,"total":2,"summary":"1/2"}}`)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "a runner may only write the status of its own run") {
			return fmt.Errorf("runner writing another run's progress: err = %v, want Forbidden", err)
		}
		return nil
	})
	// The runner's own writes (sdk/serve.go), each admitted.
	for _, status := range []string{
		`{"progress":{"processed":1,"total":10,"summary":"1/10"}}`,
		`{"result":{"synced":10}}`,
		`{"error":"it broke"}`,
		`{"progress":{"processed":10,"total":10,"summary":"10/10"},"result":{"synced":10},"error":""}`,
	} {
		if err := patch(own, status); err != nil {
			t.Errorf("runner writing %s: %v", status, err)
		}
	}
	// Everything else of its run's status is the controller's.
	for field, status := range map[string]string{
		"phase":             `{"phase":"completed"}`,
		"attempts":          `{"attempts":5}`,
		"podName":           `{"podName":"x"}`,
		"completedAt":       `{"completedAt":"2030-01-01T00:00:00.000000Z"}`,
		"startedAt":         `{"startedAt":null}`,
		"cancelRequestedAt": `{"cancelRequestedAt":"2030-01-01T00:00:00.000000Z"}`,
		"notification":      `{"notification":{"state":"Sent"}}`,
		"conditions":        `{"conditions":[]}`,
	} {
		t.Run(field, func(t *testing.T) {
			err := patch(own, `{"progress":{"processed":2,"total":10,"summary":"2/10"},`+strings.TrimPrefix(status, "{"))
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "a runner may only write status.progress, status.result and status.error (and record its own attempt); this request changes status."+field) {
				t.Errorf("runner writing status.%s: err = %v, want Forbidden naming it", field, err)
			}
		})
	}
	got := &jobsv1alpha1.JobRun{}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(own), got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != jobsv1alpha1.JobRunRunning || got.Status.Attempts != 1 || got.Status.Progress == nil || got.Status.Progress.Processed != 10 {
		t.Errorf("run status after the runner's writes: %+v", got.Status)
	}

	// A run whose status does not record its first attempt yet (the
	// controller records it when it sees the pod run): its runner records
	// its own attempt, and nothing else of the kind.
	unrecorded := testrun.Make(ns, "runner-rec-"+suffix).JobType("demo_sync").Team("demo-team").Project("demo-project").TriggeredBy("manual:user:demo-user").Obj()
	if err := env.Client.Create(ctx, unrecorded); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), unrecorded) })
	recPod := restrictedRunnerPod(unrecorded, sa)
	if err := env.Client.Create(ctx, recPod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), recPod) })
	recRunner := runnerClient(t, recPod)
	recPatch := func(status string) error {
		return recRunner.Status().Patch(ctx, unrecorded.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(`{"status":`+status+`}`)))
	}
	for _, attack := range []struct{ status, field string }{
		{`{"attempts":2,"podName":"` + unrecorded.Name + `-2"}`, "podName, status.attempts"}, // another attempt than its pod's
		{`{"attempts":1,"podName":"x"}`, "podName"},                                          // another pod
		{`{"attempts":1}`, "attempts"},                                                       // without its pod
		{`{"attempts":1,"podName":"` + recPod.Name + `","phase":"running"}`, "phase"},        // and the phase
	} {
		err := recPatch(attack.status)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "this request changes status."+attack.field) {
			t.Errorf("runner writing %s: err = %v, want Forbidden naming status.%s", attack.status, err, attack.field)
		}
	}
	// The other run: not its own, whatever it writes.
	if err := recPatch(`{"attempts":1,"podName":"` + recPod.Name + `"}`); err != nil {
		t.Fatalf("runner recording its own attempt: %v", err)
	}
	if err := recRunner.Status().Patch(ctx, other.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(`{"status":{"attempts":1,"podName":"`+recPod.Name+`"}}`))); !apierrors.IsForbidden(err) {
		t.Errorf("runner recording its attempt in another run: err = %v, want Forbidden", err)
	}
	// A later attempt recorded (the controller retried): the runner of the
	// earlier pod may not take the run back to its attempt.
	if err := env.Client.Status().Patch(ctx, unrecorded.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(`{"status":{"attempts":2,"podName":"`+unrecorded.Name+`-2"}}`))); err != nil {
		t.Fatal(err)
	}
	if err := recPatch(`{"attempts":1,"podName":"` + recPod.Name + `"}`); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "this request changes status.podName, status.attempts") {
		t.Errorf("runner of attempt 1 recording it over attempt 2: err = %v, want Forbidden", err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(unrecorded), got); err != nil || got.Status.Attempts != 2 || got.Status.PodName != unrecorded.Name+"-2" {
		t.Errorf("run after the refused writes: %+v (%v), want attempt 2 recorded", got.Status, err)
	}
}
