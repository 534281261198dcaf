package realnode_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"jobrun.dev/jobrun/internal/image"
	"jobrun.dev/jobrun/internal/realnode"
)

// jobrunImage is the tag the test builds jobrun's image as and imports into
// the node; the chart's pods use it with imagePullPolicy Never.
const jobrunImage = "jobrun:e2e"

// TestJobrunOnRealNode installs jobrun as a user would, on a real node:
// jobrun's image built by internal/image and imported into containerd, the
// JWT Secret, `helm install --wait` of charts/jobrun (two manager replicas,
// leader election on). It waits for a leader, triggers a demo_sync run
// through the REST API's ClusterIP Service with an HS256 token, polls it to
// completion as a real runner pod, then uninstalls the release: only the
// finished runner pod of the run is left (runs are not the chart's), and it
// goes with the run.
func TestJobrunOnRealNode(t *testing.T) {
	root := usableRoot(t)
	helmBin := filepath.Join(root, "bin", "helm")
	if _, err := os.Stat(helmBin); err != nil {
		if os.Getenv("JOBRUN_REAL_NODE") == "require" {
			t.Fatalf("JOBRUN_REAL_NODE=require, but %s is missing (make tools-helm): %v", helmBin, err)
		}
		t.Skipf("%s missing (make tools-helm): %v", helmBin, err)
	}
	before := recordHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	began := time.Now()
	step := func(what string) {
		t.Logf("%s after %s", what, time.Since(began).Round(100*time.Millisecond))
	}

	// The image, built as `make image` builds it, while nothing runs yet.
	work := t.TempDir()
	binary := filepath.Join(work, "jobrun")
	if err := image.GoBuild(ctx, root, "./cmd/jobrun", binary, ""); err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(image.Jobrun(binary, "/etc/ssl/certs/ca-certificates.crt"))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(work, "jobrun.tar")
	if err := image.WriteArchive(archive, jobrunImage, img); err != nil {
		t.Fatal(err)
	}
	step("image built")

	c, err := realnode.Start(ctx, realnode.Options{Root: root, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			if err := c.Stop(); err != nil {
				t.Errorf("stopping: %v", err)
			}
		}
	}()
	step("node started")
	if err := c.ImportImage(ctx, archive); err != nil {
		t.Fatal(err)
	}
	step("image imported")

	const ns, release = "jobrun-system", "jobrun"
	// Restricted, as config/manager's namespace: the manager's and the
	// runner's pods must pass the kubelet and Pod Security admission.
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	secret := randomSecret(t)
	if _, err := c.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "jobrun-jwt"},
		StringData: map[string]string{"jwt-secret": secret},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	values := filepath.Join(work, "values.yaml")
	if err := os.WriteFile(values, []byte(`image:
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
    paramsSchema:
      type: object
      properties:
        items: {type: integer}
        item_ms: {type: integer}
      additionalProperties: false
    template:
      spec:
        restartPolicy: Never
        containers:
          - name: handler
            image: `+jobrunImage+`
            imagePullPolicy: Never
            args: [runner]
            # The runner needs neither a writable root nor /tmp.
            securityContext: {readOnlyRootFilesystem: true}
            resources:
              requests: {cpu: 10m, memory: 32Mi}
              limits: {memory: 128Mi}
projects:
  e2e-project:
    teamID: e2e-team
`), 0o644); err != nil {
		t.Fatal(err)
	}
	helmEnv := append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(work, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(work, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(work, "helm", "data"))
	helm := func(args ...string) (string, error) {
		cmd := c.Command(ctx, helmBin, append(args, "--kubeconfig", c.Kubeconfig)...)
		cmd.Env = helmEnv
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	installed := false
	defer func() {
		if installed {
			_, _ = helm("uninstall", release, "-n", ns, "--wait", "--timeout", "3m")
		}
	}()
	if out, err := helm("install", release, filepath.Join(root, "charts", "jobrun"), "-n", ns, "-f", values, "--wait", "--timeout", "5m"); err != nil {
		diagnose(ctx, t, c, ns)
		t.Fatal(err)
	} else {
		installed = true
		t.Logf("helm install: %s", firstLine(out))
	}
	step("helm install --wait done")

	// Both replicas Ready (helm --wait says so too) and one of them leads.
	dep, err := c.Client.AppsV1().Deployments(ns).Get(ctx, "jobrun-manager", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dep.Spec.Replicas == nil || dep.Status.ReadyReplicas != *dep.Spec.Replicas {
		t.Fatalf("manager Deployment: %d of %v replicas ready after helm install --wait", dep.Status.ReadyReplicas, dep.Spec.Replicas)
	}
	eventually(ctx, t, 3*time.Minute, "a leader", func() error {
		lease, err := c.Client.CoordinationV1().Leases(ns).Get(ctx, "jobrun-manager.jobs.jobrun.dev", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
			return fmt.Errorf("lease %s has no holder", lease.Name)
		}
		t.Logf("leader: %s", *lease.Spec.HolderIdentity)
		return nil
	})
	step("leader elected")

	// The REST API through its ClusterIP Service, from inside the namespace.
	svc, err := c.Client.CoreV1().Services(ns).Get(ctx, "jobrun-api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://%s:%d", svc.Spec.ClusterIP, svc.Spec.Ports[0].Port)
	api := func(method, path string, body any) (int, map[string]any, error) {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"sub": "e2e-user", "email": "e2e@example.com", "teams": []string{"e2e-team"}, "role": "admin",
			"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		}).SignedString([]byte(secret))
		if err != nil {
			return 0, nil, err
		}
		var data []byte
		if body != nil {
			data, _ = json.Marshal(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(data))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.HTTPClient().Do(req)
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
	const items = 5
	var id string
	eventually(ctx, t, 3*time.Minute, "a triggered run", func() error {
		status, body, err := api(http.MethodPost, "/v1/teams/e2e-team/jobs/trigger", map[string]any{
			"job_type": "demo_sync", "project_id": "e2e-project", "params": map[string]any{"items": items, "item_ms": 200},
		})
		if err != nil {
			return err
		}
		if status != http.StatusCreated {
			return fmt.Errorf("trigger: %d %v", status, body)
		}
		id, _ = body["job_run"].(map[string]any)["id"].(string)
		return nil
	})
	step("run " + id + " triggered")
	var last map[string]any
	eventually(ctx, t, 5*time.Minute, "the run's completion", func() error {
		status, body, err := api(http.MethodGet, "/v1/jobs/"+id, nil)
		if err != nil {
			return err
		}
		last, _ = body["job_run"].(map[string]any)
		if status != http.StatusOK || last == nil {
			return fmt.Errorf("GET /v1/jobs/%s: %d %v", id, status, body)
		}
		switch last["status"] {
		case "completed":
			return nil
		case "failed", "cancelled":
			diagnose(ctx, t, c, ns)
			t.Fatalf("run %s ended %v: %v", id, last["status"], last)
		}
		return fmt.Errorf("run %s: %v", id, last)
	})
	if p, _ := last["progress"].(map[string]any); p == nil || p["processed"] != float64(items) || p["total"] != float64(items) {
		t.Errorf("completed run's progress: got %v, want %d of %d", last["progress"], items, items)
	}
	step("run completed")

	if _, err := helm("uninstall", release, "-n", ns, "--wait", "--timeout", "3m"); err != nil {
		t.Fatal(err)
	}
	installed = false
	// helm uninstall removes the manager, the API and what the chart made
	// (JobTypes, Projects, the integrations namespace). Runs are not the
	// chart's: they and their finished runner pods (owned by the runs) stay
	// until deleted, as Helm leaves custom resources of its CRDs alone.
	eventually(ctx, t, 3*time.Minute, "no jobrun pods but finished runners", func() error {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var left []string
		for _, p := range pods.Items {
			finished := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
			if p.Labels["jobs.jobrun.dev/run"] == "" || !finished {
				left = append(left, p.Name+" ("+string(p.Status.Phase)+")")
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("pods left in %s after helm uninstall: %v", ns, left)
		}
		return nil
	})
	step("uninstalled")
	if out, err := c.KubectlCommand(ctx, "delete", "jobruns", "--all", "-n", ns, "--wait").CombinedOutput(); err != nil {
		t.Fatalf("kubectl delete jobruns: %v: %s", err, out)
	}
	eventually(ctx, t, 3*time.Minute, "no pods once the runs are deleted", func() error {
		pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d pods left in %s after deleting the runs, such as %s", len(pods.Items), ns, pods.Items[0].Name)
		}
		return nil
	})
	step("runs and their pods deleted")

	dir, netns, cgroupRoot := c.Dir, c.NetnsPath, c.CgroupRoot
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	step("node stopped")
	assertRestored(t, dir, netns, cgroupRoot, before)
}

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

// diagnose logs the namespace's pods and events.
func diagnose(ctx context.Context, t *testing.T, c *realnode.Cluster, ns string) {
	t.Helper()
	for _, args := range [][]string{{"get", "pods,deploy,jobruns", "-n", ns, "-o", "wide"}, {"get", "events", "-n", ns}, {"logs", "-n", ns, "-l", "app.kubernetes.io/component=manager", "--tail=50", "--all-containers"}} {
		out, _ := c.KubectlCommand(ctx, args...).CombinedOutput()
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
