package realnode_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/image"
	"jobrun.dev/jobrun/internal/realnode"
	"jobrun.dev/jobrun/internal/scheme"
)

// The tags the test builds its images as and imports into the node; pods
// use them with imagePullPolicy Never.
const (
	jobrunImage = "jobrun:e2e"
	rcfakeImage = "rcfake:e2e"
)

// jobrunE2E is TestJobrunOnRealNode's state: the node, the release, the
// REST API's address and the JWT secret that signs the test's tokens.
type jobrunE2E struct {
	t                   *testing.T
	ctx                 context.Context
	c                   *realnode.Cluster
	kube                client.Client
	root, helmBin, work string
	ns, release, secret string
	apiBase             string
	installed           bool
	began               time.Time
}

func (e *jobrunE2E) step(what string) {
	e.t.Logf("%s after %s", what, time.Since(e.began).Round(100*time.Millisecond))
}

func e2eScheme(t *testing.T) *runtime.Scheme {
	s, err := scheme.New()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// buildImages builds jobrun's image as `make image` does and the fake
// RevenueCat's, while nothing runs yet, and returns their archives.
func (e *jobrunE2E) buildImages() []string {
	t := e.t
	var archives []string
	for _, b := range []struct{ pkg, ref string }{{"./cmd/jobrun", jobrunImage}, {"./handlers/revenuecat/rcfake/rcfakeserver", rcfakeImage}} {
		binary := filepath.Join(e.work, filepath.Base(b.pkg))
		if err := image.GoBuild(e.ctx, e.root, b.pkg, binary, ""); err != nil {
			t.Fatal(err)
		}
		spec := image.Jobrun(binary, image.CACertificatesPath)
		if b.ref == rcfakeImage {
			spec = image.Spec{Files: []image.File{{Path: "/rcfakeserver", Source: binary, Mode: 0o755}},
				Entrypoint: []string{"/rcfakeserver"}, User: image.JobrunUser, WorkingDir: "/"}
		}
		img, err := image.Build(spec)
		if err != nil {
			t.Fatal(err)
		}
		archive := binary + ".tar"
		if err := image.WriteArchive(archive, b.ref, img); err != nil {
			t.Fatal(err)
		}
		archives = append(archives, archive)
	}
	e.step("images built")
	return archives
}

// createNamespace makes the release namespace as the README's install
// does: restricted Pod Security enforced, the JWT Secret.
func (e *jobrunE2E) createNamespace() {
	t := e.t
	if _, err := e.c.Client.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: e.ns, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Client.CoreV1().Secrets(e.ns).Create(e.ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "jobrun-jwt"},
		StringData: map[string]string{"jwt-secret": e.secret},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runnerTemplate is the pod template of the test's JobTypes: jobrun's
// runner under a read-only root filesystem and no /tmp.
const runnerTemplate = `
    template:
      spec:
        restartPolicy: Never
        containers:
          - name: handler
            image: ` + jobrunImage + `
            imagePullPolicy: Never
            args: [runner]
            securityContext: {readOnlyRootFilesystem: true}
            resources:
              requests: {cpu: 10m, memory: 32Mi}
              limits: {memory: 128Mi}`

// valuesFile writes the release's values: the image, the JWT Secret, the
// job types, projects and schedule the test uses.
func (e *jobrunE2E) valuesFile() string {
	path := filepath.Join(e.work, "values.yaml")
	values := `image:
  repository: jobrun
  tag: e2e
  pullPolicy: Never
auth:
  jwt:
    existingSecret: jobrun-jwt
jobTypes:
  demo_sync:
    scope: Project
    activeDeadlineSeconds: 600
    cancelGracePeriodSeconds: 3
    paramsSchema:
      type: object
      properties:
        items: {type: integer}
        item_ms: {type: integer}
        fail_at: {type: integer}
        ignore_cancel: {type: boolean}
      additionalProperties: false` + runnerTemplate + `
  demo_maintenance:
    scope: System
    activeDeadlineSeconds: 60` + runnerTemplate + `
  revenuecat_sync:
    scope: Project
    activeDeadlineSeconds: 600
    paramsSchema:
      type: object
      required: [integration_id]
      properties:
        integration_id: {type: string}
      additionalProperties: false` + runnerTemplate + `
            env:
              - {name: JOBRUN_INTEGRATIONS_NAMESPACE, value: ` + e.ns + `-integrations}
projects:
`
	for _, p := range []string{"e2e-project", "e2e-fail", "e2e-cancel", "e2e-ignore", "e2e-term", "e2e-rc", "e2e-failover"} {
		values += "  " + p + ": {teamID: e2e-team}\n"
	}
	values += `jobSchedules:
  e2e-every-minute:
    schedule: "* * * * *"
    jobType: demo_maintenance
    params: {duration_ms: 200}
`
	if err := os.WriteFile(path, []byte(values), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

func (e *jobrunE2E) helm(args ...string) (string, error) {
	cmd := e.c.Command(e.ctx, e.helmBin, append(args, "--kubeconfig", e.c.Kubeconfig)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(e.work, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(e.work, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(e.work, "helm", "data"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// install runs helm install --wait and checks that both manager replicas
// are Ready.
func (e *jobrunE2E) install() {
	t := e.t
	out, err := e.helm("install", e.release, filepath.Join(e.root, "charts", "jobrun"), "-n", e.ns, "-f", e.valuesFile(), "--wait", "--timeout", "5m")
	if err != nil {
		e.diagnose()
		t.Fatal(err)
	}
	e.installed = true
	t.Logf("helm install: %s", firstLine(out))
	e.step("helm install --wait done")
	e.waitDeploymentReady("jobrun-manager")
}

// waitDeploymentReady waits until every replica of the Deployment is
// updated and Ready.
func (e *jobrunE2E) waitDeploymentReady(name string) {
	e.eventually(5*time.Minute, "Deployment "+name+" Ready", func() error {
		dep, err := e.c.Client.AppsV1().Deployments(e.ns).Get(e.ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := ptr.Deref(dep.Spec.Replicas, 1)
		if dep.Status.ObservedGeneration < dep.Generation || dep.Status.UpdatedReplicas != want || dep.Status.ReadyReplicas != want || dep.Status.Replicas != want {
			return fmt.Errorf("%s: %d replicas, %d updated, %d ready of %d", name, dep.Status.Replicas, dep.Status.UpdatedReplicas, dep.Status.ReadyReplicas, want)
		}
		return nil
	})
}

// waitLeader waits for a manager pod other than not to hold the leader
// Lease and returns its name.
func (e *jobrunE2E) waitLeader(not string) string {
	var leader string
	e.eventually(3*time.Minute, "a leader other than "+not, func() error {
		lease, err := e.c.Client.CoordinationV1().Leases(e.ns).Get(e.ctx, "jobrun-manager.jobs.jobrun.dev", metav1.GetOptions{})
		if err != nil {
			return err
		}
		// controller-runtime's identity is <hostname>_<uuid>; the
		// hostname is the pod's name.
		holder := ptr.Deref(lease.Spec.HolderIdentity, "")
		leader, _, _ = strings.Cut(holder, "_")
		if leader == "" || leader == not {
			return fmt.Errorf("lease %s held by %q", lease.Name, holder)
		}
		return nil
	})
	return leader
}

// serviceURL is the http:// address of a Service's first port, reachable
// inside the node's network namespace (there is no cluster DNS).
func (e *jobrunE2E) serviceURL(name string) string {
	svc, err := e.c.Client.CoreV1().Services(e.ns).Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return fmt.Sprintf("http://%s:%d", svc.Spec.ClusterIP, svc.Spec.Ports[0].Port)
}

// api calls the REST API with an HS256 token of an admin of e2e-team.
func (e *jobrunE2E) api(method, path string, body any) (int, map[string]any, error) {
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "e2e-user", "email": "e2e@example.com", "teams": []string{"e2e-team"}, "role": "admin",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(e.secret))
	if err != nil {
		return 0, nil, err
	}
	var data []byte
	if body != nil {
		data, _ = json.Marshal(body)
	}
	req, err := http.NewRequestWithContext(e.ctx, method, e.apiBase+path, bytes.NewReader(data))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.c.HTTPClient().Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out := map[string]any{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("%s %s: %d, decoding: %w", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, out, nil
}

// mustAPI is api retried while the API cannot be reached or answers 5xx
// (a replica going away, a cache catching up), for up to two minutes.
func (e *jobrunE2E) mustAPI(method, path string, body any) (status int, out map[string]any) {
	e.eventually(2*time.Minute, method+" "+path, func() error {
		var err error
		status, out, err = e.api(method, path, body)
		if err == nil && status >= 500 {
			err = fmt.Errorf("%d %v", status, out)
		}
		return err
	})
	return status, out
}

// trigger triggers a run and returns its id.
func (e *jobrunE2E) trigger(jobType, project string, params map[string]any) string {
	status, body := e.mustAPI(http.MethodPost, "/v1/teams/e2e-team/jobs/trigger", map[string]any{
		"job_type": jobType, "project_id": project, "params": params,
	})
	run, _ := body["job_run"].(map[string]any)
	id, _ := run["id"].(string)
	if status != http.StatusCreated || id == "" {
		e.t.Fatalf("trigger %s for %s: %d %v", jobType, project, status, body)
	}
	return id
}

// getRun is GET /v1/jobs/:id's job_run.
func (e *jobrunE2E) getRun(id string) map[string]any {
	status, body := e.mustAPI(http.MethodGet, "/v1/jobs/"+id, nil)
	run, _ := body["job_run"].(map[string]any)
	if status != http.StatusOK || run == nil {
		e.t.Fatalf("GET /v1/jobs/%s: %d %v", id, status, body)
	}
	return run
}

var terminal = []string{"completed", "failed", "cancelled"}

// waitStatus polls the run through the API until it has status, and fails
// the test if it ends otherwise.
func (e *jobrunE2E) waitStatus(id, status string, bound time.Duration) map[string]any {
	var run map[string]any
	e.eventually(bound, "run "+id+" "+status, func() error {
		run = e.getRun(id)
		got, _ := run["status"].(string)
		if got == status {
			return nil
		}
		for _, s := range terminal {
			if got == s {
				e.diagnose()
				e.t.Fatalf("run %s ended %s, want %s: %v", id, got, status, run)
			}
		}
		return fmt.Errorf("run %s: %v", id, run)
	})
	return run
}

// waitProgress polls the run through the API until it is running with at
// least processed items done, and returns how many it saw.
func (e *jobrunE2E) waitProgress(id string, processed float64) float64 {
	var seen float64
	e.eventually(3*time.Minute, fmt.Sprintf("run %s running with %v items done", id, processed), func() error {
		run := e.getRun(id)
		p, _ := run["progress"].(map[string]any)
		seen, _ = p["processed"].(float64)
		if run["status"] == "running" && seen >= processed {
			return nil
		}
		return fmt.Errorf("run %s: %v", id, run)
	})
	return seen
}

// jobRun reads the run's JobRun from the API server.
func (e *jobrunE2E) jobRun(id string) *jobsv1alpha1.JobRun {
	jr := &jobsv1alpha1.JobRun{}
	if err := e.kube.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: id}, jr); err != nil {
		e.t.Fatal(err)
	}
	return jr
}

func findCondition(jr *jobsv1alpha1.JobRun, typ string) *metav1.Condition {
	return meta.FindStatusCondition(jr.Status.Conditions, typ)
}

// exitCode is the exit code of the pod's first terminated container, or -1.
func exitCode(pod *corev1.Pod) int32 {
	for _, s := range pod.Status.ContainerStatuses {
		if s.State.Terminated != nil {
			return s.State.Terminated.ExitCode
		}
	}
	return -1
}

// watchPodUntilGone watches the pod, calls do, and returns the pod's last
// state once it is deleted: the kubelet writes its containers' terminated
// state before the pod goes, so the deletion event carries the exit codes.
func (e *jobrunE2E) watchPodUntilGone(name string, do func()) *corev1.Pod {
	t := e.t
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Minute)
	defer cancel()
	w, err := e.c.Client.CoreV1().Pods(e.ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	do()
	var last *corev1.Pod
	for ev := range w.ResultChan() {
		if pod, ok := ev.Object.(*corev1.Pod); ok {
			last = pod
		}
		if ev.Type == watch.Deleted {
			return last
		}
	}
	t.Fatalf("pod %s not deleted within 3 minutes (last seen %+v)", name, last)
	return nil
}

func (e *jobrunE2E) kubectl(args ...string) string {
	out, err := e.c.KubectlCommand(e.ctx, args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// revenueCatFake is the fake RevenueCat and ingest endpoint: a pod behind
// a Service in the release namespace.
type revenueCatFake struct {
	pod, service, url              string
	apiKey, project, signingSecret string
	customers                      int
}

// startRevenueCatFake creates the fake's pod, under the namespace's
// restricted Pod Security, and its Service; checkRevenueCat waits for it.
func (e *jobrunE2E) startRevenueCatFake() revenueCatFake {
	t := e.t
	rc := revenueCatFake{pod: "rcfake", service: "rcfake", apiKey: "sk_" + randomSecret(t)[:24], project: "proje2e",
		signingSecret: randomSecret(t), customers: 25}
	labels := map[string]string{"app": "rcfake"}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: rc.pod, Namespace: e.ns, Labels: labels},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{
				Name: "rcfake", Image: rcfakeImage, ImagePullPolicy: corev1.PullNever,
				Args: []string{"-listen=:8080", "-api-key=" + rc.apiKey, "-project=" + rc.project,
					"-signing-secret=" + rc.signingSecret, fmt.Sprintf("-customers=%d", rc.customers)},
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
					PeriodSeconds: 1},
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			}},
		},
	}
	if err := e.kube.Create(e.ctx, pod); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: rc.service, Namespace: e.ns},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if err := e.kube.Create(e.ctx, svc); err != nil {
		t.Fatal(err)
	}
	rc.url = e.serviceURL(rc.service)
	return rc
}

func (e *jobrunE2E) waitPodReady(name string) {
	e.eventually(3*time.Minute, "pod "+name+" Ready", func() error {
		pod := &corev1.Pod{}
		if err := e.kube.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, pod); err != nil {
			return err
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("pod %s: %s %+v", name, pod.Status.Phase, pod.Status.ContainerStatuses)
	})
}

// getJSON decodes a GET's JSON answer, made inside the node's network.
func (e *jobrunE2E) getJSON(url string, v any) {
	e.eventually(time.Minute, "GET "+url, func() error {
		resp, err := e.c.HTTPClient().Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		return json.Unmarshal(body, v)
	})
}

func mapsEqual(a, b map[string]any) bool { return reflect.DeepEqual(a, b) }

func randomSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// eventually calls check every second until it returns nil; it fails the
// test with check's last error after bound.
func (e *jobrunE2E) eventually(bound time.Duration, what string, check func() error) {
	e.t.Helper()
	eventually(e.ctx, e.t, bound, what, check)
}

func eventually(ctx context.Context, t *testing.T, bound time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waiting %s for %s: %v", bound, what, err)
		}
		time.Sleep(time.Second)
	}
}

// diagnose logs the namespace's pods, runs and events and the managers'
// last log lines.
func (e *jobrunE2E) diagnose() {
	for _, args := range [][]string{{"get", "pods,deploy,jobruns", "-n", e.ns, "-o", "wide"}, {"get", "events", "-n", e.ns}, {"logs", "-n", e.ns, "-l", "app.kubernetes.io/component=manager", "--tail=50", "--all-containers"}} {
		out, _ := e.c.KubectlCommand(e.ctx, args...).CombinedOutput()
		e.t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
