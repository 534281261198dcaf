package realnode_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/realnode"
)

// TestJobrunOnRealNode installs jobrun as a user would, on a real node, and
// uses it through its REST API, kubectl and Helm:
//
//   - jobrun's image built by internal/image and imported into containerd;
//     the namespace enforcing restricted Pod Security; the JWT Secret;
//     `helm install --wait` (two manager replicas, leader election);
//   - demo_sync runs as runner pods: one completes (its pod's log read with
//     kubectl logs), one fails, one is cancelled through the API while
//     its progress is watched, one ignores the cancel until the grace
//     period ends, and one's pod is deleted (the kubelet's SIGTERM reaches
//     the handler, which stops: exit code 3, not a SIGKILL's 137);
//   - revenuecat_sync against a fake RevenueCat and ingest endpoint served
//     by a pod behind a Service in the namespace;
//   - a JobSchedule's run;
//   - the leader's pod deleted mid-run: the other replica takes over and
//     the run completes with its one pod;
//   - `helm upgrade` to a standalone REST API: runs from before are still
//     served, new ones run;
//   - `helm uninstall`: nothing of jobrun is left but its CRDs.
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
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	e := &jobrunE2E{t: t, ctx: ctx, root: root, helmBin: helmBin, work: t.TempDir(), began: time.Now(),
		ns: "jobrun-system", release: "jobrun", secret: randomSecret(t)}

	archives := e.buildImages()
	c, err := realnode.Start(ctx, realnode.Options{Root: root, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	stopped := false
	defer func() {
		if !stopped {
			if err := c.Stop(); err != nil {
				t.Errorf("stopping: %v", err)
			}
		}
	}()
	e.step("node started")
	for _, archive := range archives {
		if err := c.ImportImage(ctx, archive); err != nil {
			t.Fatal(err)
		}
	}
	e.step("images imported")
	if e.kube, err = client.New(c.Config, client.Options{Scheme: e2eScheme(t)}); err != nil {
		t.Fatal(err)
	}
	e.createNamespace()
	rc := e.startRevenueCatFake()
	e.install()
	defer func() {
		if e.installed {
			_, _ = e.helm("uninstall", e.release, "-n", e.ns, "--wait", "--timeout", "3m")
		}
	}()
	e.waitLeader("")
	e.step("leader elected")
	e.apiBase = e.serviceURL("jobrun-api")

	// Runs that go on at once (one per project: a (job type, project) runs
	// once at a time).
	completes := e.trigger("demo_sync", "e2e-project", map[string]any{"items": 5, "item_ms": 200})
	fails := e.trigger("demo_sync", "e2e-fail", map[string]any{"items": 10, "item_ms": 50, "fail_at": 3})
	cancelled := e.trigger("demo_sync", "e2e-cancel", map[string]any{"items": 600, "item_ms": 100})
	ignores := e.trigger("demo_sync", "e2e-ignore", map[string]any{"items": 600, "item_ms": 100, "ignore_cancel": true})
	terminated := e.trigger("demo_sync", "e2e-term", map[string]any{"items": 600, "item_ms": 100})
	e.step("five demo_sync runs triggered")

	e.checkCompleted(completes, 5)
	e.checkFailed(fails)
	e.checkCancelled(cancelled)
	ignoredPod := e.checkGraceExceeded(ignores)
	e.checkTerminated(terminated)
	e.checkRevenueCat(rc)
	e.checkSchedule("e2e-every-minute")
	// The kubelet kills the ignoring handler when the pod's own grace
	// period (30 s) ends.
	e.waitPodGone(ignoredPod)
	e.checkFailover()
	e.checkUpgrade([]string{completes, fails, cancelled, ignores, terminated})
	// Warnings are not failures (a probe may fail while a pod starts), but
	// each is worth a look; the node has no cluster DNS and runs cgroup v1,
	// which the kubelet warns about for every pod.
	t.Logf("warning events:\n%s", e.kubectl("get", "events", "-A", "--field-selector", "type=Warning,reason!=MissingClusterDNS,reason!=CgroupV1"))
	e.checkUninstall(rc)

	dir, netns, cgroupRoot := c.Dir, c.NetnsPath, c.CgroupRoot
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	e.step("node stopped")
	assertRestored(t, dir, netns, cgroupRoot, before)
}

// checkCompleted waits for a demo_sync run of items items to complete and
// reads its pod's log with kubectl logs, through the kubelet.
func (e *jobrunE2E) checkCompleted(id string, items int) {
	t := e.t
	run := e.waitStatus(id, "completed", 5*time.Minute)
	if p, _ := run["progress"].(map[string]any); p == nil || p["processed"] != float64(items) || p["total"] != float64(items) {
		t.Errorf("completed run's progress: got %v, want %d of %d", run["progress"], items, items)
	}
	if r, _ := run["result"].(map[string]any); r == nil || r["processed"] != float64(items) {
		t.Errorf("completed run's result: got %v, want processed %d", run["result"], items)
	}
	jr := e.jobRun(id)
	pod := &corev1.Pod{}
	if err := e.kube.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: jr.Status.PodName}, pod); err != nil {
		t.Fatal(err)
	}
	if pod.Labels["app.kubernetes.io/component"] != "runner" || pod.Labels[jobsv1alpha1.LabelRun] != id {
		t.Errorf("run %s's pod %s labels: %v", id, pod.Name, pod.Labels)
	}
	logs := e.kubectl("logs", "-n", e.ns, jr.Status.PodName)
	if !strings.Contains(logs, "handler returned") {
		t.Errorf("kubectl logs %s: no \"handler returned\" line in:\n%s", jr.Status.PodName, logs)
	}
	e.step("run " + id + " completed; kubectl logs read its pod")
}

// checkFailed waits for the fail_at run to fail with the handler's error.
func (e *jobrunE2E) checkFailed(id string) {
	run := e.waitStatus(id, "failed", 5*time.Minute)
	if msg, _ := run["error"].(string); !strings.Contains(msg, "item 3 failed (fail_at)") {
		e.t.Errorf("failed run's error: got %q, want the handler's \"item 3 failed (fail_at)\"", msg)
	}
	e.step("run " + id + " failed")
}

// checkCancelled watches the run's progress move, cancels it through the
// API and waits for it to end cancelled, its handler stopped early: the
// runner's log says the cancel reached it, its container exited with
// ExitCodeCancelled.
func (e *jobrunE2E) checkCancelled(id string) {
	t := e.t
	seen := e.waitProgress(id, 2)
	status, body := e.mustAPI(http.MethodPost, "/v1/jobs/"+id+"/cancel", nil)
	if status != http.StatusOK || body["cancelled"] != true {
		t.Fatalf("cancel %s: %d %v", id, status, body)
	}
	run := e.waitStatus(id, "cancelled", 3*time.Minute)
	p, _ := run["progress"].(map[string]any)
	if processed, _ := p["processed"].(float64); processed < seen || processed >= 600 {
		t.Errorf("cancelled run's progress: %v; want at least the %v seen before the cancel and less than 600", p, seen)
	}
	jr := e.jobRun(id)
	if logs := e.kubectl("logs", "-n", e.ns, jr.Status.PodName); !strings.Contains(logs, "cancel requested; cancelling the handler") {
		t.Errorf("kubectl logs %s: the runner never saw the cancel:\n%s", jr.Status.PodName, logs)
	}
	pod := &corev1.Pod{}
	if err := e.kube.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: jr.Status.PodName}, pod); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(pod); code != jobsv1alpha1.ExitCodeCancelled {
		t.Errorf("cancelled run's pod exited %d, want %d (the handler returned early)", code, jobsv1alpha1.ExitCodeCancelled)
	}
	e.step(fmt.Sprintf("run %s cancelled after %v items", id, p["processed"]))
}

// checkGraceExceeded cancels a run whose handler ignores cancels: once the
// JobType's grace period is over the controller deletes its pod and the
// run is cancelled all the same. It returns the pod's name.
func (e *jobrunE2E) checkGraceExceeded(id string) string {
	t := e.t
	e.waitProgress(id, 1)
	if status, body := e.mustAPI(http.MethodPost, "/v1/jobs/"+id+"/cancel", nil); status != http.StatusOK {
		t.Fatalf("cancel %s: %d %v", id, status, body)
	}
	e.waitStatus(id, "cancelled", 3*time.Minute)
	jr := e.jobRun(id)
	if c := findCondition(jr, jobsv1alpha1.JobRunConditionFinished); c == nil || c.Reason != jobsv1alpha1.ReasonCancelGracePeriodExceeded {
		t.Errorf("run %s ignoring its cancel: conditions %+v, want reason %s", id, jr.Status.Conditions, jobsv1alpha1.ReasonCancelGracePeriodExceeded)
	}
	pod := &corev1.Pod{}
	if err := e.kube.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: jr.Status.PodName}, pod); client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	} else if err == nil && pod.DeletionTimestamp == nil {
		t.Errorf("run %s cancelled after its grace period, but its pod %s is not being deleted", id, pod.Name)
	}
	e.step("run " + id + " cancelled when its grace period ended")
	return jr.Status.PodName
}

// waitPodGone waits until the pod no longer exists.
func (e *jobrunE2E) waitPodGone(name string) {
	e.eventually(3*time.Minute, "pod "+name+" gone", func() error {
		pod := &corev1.Pod{}
		err := e.kube.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, pod)
		if err == nil {
			return fmt.Errorf("pod %s still there (deletion %v)", pod.Name, pod.DeletionTimestamp)
		}
		return client.IgnoreNotFound(err)
	})
}

// checkTerminated deletes a running run's pod as a drain would: the
// kubelet sends SIGTERM, the runner cancels the handler, which returns, and
// the container exits with ExitCodeCancelled (a SIGKILL would give 137).
// Nobody asked for a cancel, so the run fails (retryLimit 0).
func (e *jobrunE2E) checkTerminated(id string) {
	t := e.t
	e.waitProgress(id, 1)
	jr := e.jobRun(id)
	last := e.watchPodUntilGone(jr.Status.PodName, func() {
		if err := e.c.Client.CoreV1().Pods(e.ns).Delete(e.ctx, jr.Status.PodName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	if code := exitCode(last); code != jobsv1alpha1.ExitCodeCancelled {
		t.Errorf("deleted pod %s exited %d, want %d: SIGTERM did not stop the handler (last status %+v)", last.Name, code, jobsv1alpha1.ExitCodeCancelled, last.Status.ContainerStatuses)
	}
	run := e.waitStatus(id, "failed", 3*time.Minute)
	if msg, _ := run["error"].(string); !strings.Contains(msg, jr.Status.PodName) {
		t.Errorf("terminated run's error %q does not name its pod %s", msg, jr.Status.PodName)
	}
	e.step("run " + id + "'s pod deleted: SIGTERM stopped the handler; the run failed")
}

// checkRevenueCat runs revenuecat_sync against the fake: its integration
// Secret in the chart's integrations namespace, RevenueCat and the ingest
// endpoint at the fake's Service.
func (e *jobrunE2E) checkRevenueCat(rc revenueCatFake) {
	t := e.t
	e.waitPodReady(rc.pod)
	if _, err := e.c.Client.CoreV1().Secrets(e.ns+"-integrations").Create(e.ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "revenuecat-e2e", Labels: map[string]string{
			"jobs.jobrun.dev/project": "e2e-rc", "jobs.jobrun.dev/integration": "revenuecat"}},
		StringData: map[string]string{
			"api_key": rc.apiKey, "revenuecat_project": rc.project, "signing_secret": rc.signingSecret,
			"base_url": rc.url + "/v2", "destination_url": rc.url + "/ingest/revenuecat",
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	id := e.trigger("revenuecat_sync", "e2e-rc", map[string]any{"integration_id": "e2e"})
	run := e.waitStatus(id, "completed", 5*time.Minute)
	want := map[string]any{"synced": float64(rc.customers), "skipped": float64(1), "total": float64(rc.customers + 1)}
	if r, _ := run["result"].(map[string]any); !mapsEqual(r, want) {
		t.Errorf("revenuecat_sync result: got %v, want %v", run["result"], want)
	}
	var stats struct {
		Customers, Deliveries, BadSignatures, Unauthorized int
	}
	e.getJSON(rc.url+"/stats", &stats)
	if stats.Customers != rc.customers || stats.Deliveries < 1 || stats.BadSignatures != 0 || stats.Unauthorized != 0 {
		t.Errorf("the ingest endpoint saw %+v, want %d customers delivered, no bad signature, no unauthorized call", stats, rc.customers)
	}
	e.step(fmt.Sprintf("revenuecat_sync %s synced %d customers in %d deliveries", id, stats.Customers, stats.Deliveries))
}

// checkSchedule waits for a run of the every-minute JobSchedule to complete
// and the schedule's status to say so.
func (e *jobrunE2E) checkSchedule(name string) {
	t := e.t
	var id string
	e.eventually(3*time.Minute, "a completed run of JobSchedule "+name, func() error {
		runs := &jobsv1alpha1.JobRunList{}
		if err := e.kube.List(e.ctx, runs, client.InNamespace(e.ns), client.MatchingLabels{jobsv1alpha1.LabelSchedule: name}); err != nil {
			return err
		}
		for _, r := range runs.Items {
			if r.Status.Phase == jobsv1alpha1.JobRunCompleted {
				id = r.Name
				return nil
			}
		}
		return fmt.Errorf("%d runs of %s, none completed", len(runs.Items), name)
	})
	js := &jobsv1alpha1.JobSchedule{}
	e.eventually(time.Minute, "the schedule's lastSuccessfulTime", func() error {
		if err := e.kube.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, js); err != nil {
			return err
		}
		if js.Status.LastScheduleTime == nil || js.Status.LastSuccessfulTime == nil {
			return fmt.Errorf("status %+v", js.Status)
		}
		return nil
	})
	if jr := e.jobRun(id); jr.Spec.TriggeredBy != "schedule:"+name || metav1.GetControllerOf(jr) == nil || metav1.GetControllerOf(jr).Name != name {
		t.Errorf("scheduled run %s: triggeredBy %q, controller %v", id, jr.Spec.TriggeredBy, metav1.GetControllerOf(jr))
	}
	e.step("JobSchedule " + name + " ran " + id)
}

// checkFailover deletes the leading manager's pod while a run is going: the
// other replica takes the Lease, and the run completes with the one pod the
// first leader made (no second attempt, no second pod).
func (e *jobrunE2E) checkFailover() {
	t := e.t
	id := e.trigger("demo_sync", "e2e-failover", map[string]any{"items": 40, "item_ms": 250})
	e.waitProgress(id, 1)
	leader := e.waitLeader("")
	if err := e.c.Client.CoreV1().Pods(e.ns).Delete(e.ctx, leader, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.step("deleted the leader " + leader + " while run " + id + " runs")
	next := e.waitLeader(leader)
	e.step("new leader " + next)
	e.waitStatus(id, "completed", 5*time.Minute)
	pods, err := e.c.Client.CoreV1().Pods(e.ns).List(e.ctx, metav1.ListOptions{LabelSelector: jobsv1alpha1.LabelRun + "=" + id})
	if err != nil {
		t.Fatal(err)
	}
	if jr := e.jobRun(id); len(pods.Items) != 1 || jr.Status.Attempts != 1 {
		t.Errorf("run %s across the failover: %d pods, %d attempts; want one of each", id, len(pods.Items), jr.Status.Attempts)
	}
	e.waitDeploymentReady("jobrun-manager")
	e.step("run " + id + " completed across the failover")
}

// checkUpgrade moves the release to a standalone REST API with helm
// upgrade: the Service now reaches the API's own Deployment, the runs from
// before are served as they were, and a new one runs.
func (e *jobrunE2E) checkUpgrade(earlier []string) {
	t := e.t
	before := map[string]any{}
	for _, id := range earlier {
		before[id] = e.getRun(id)["status"]
	}
	if out, err := e.helm("upgrade", e.release, filepath.Join(e.root, "charts", "jobrun"), "-n", e.ns, "-f", e.valuesFile(),
		"--set", "api.mode=standalone", "--wait", "--timeout", "5m"); err != nil {
		e.diagnose()
		t.Fatal(err)
	} else {
		t.Logf("helm upgrade: %s", firstLine(out))
	}
	e.waitDeploymentReady("jobrun-api")
	e.eventually(3*time.Minute, "the API Service backed by the standalone API only", func() error {
		pods, err := e.c.Client.CoreV1().Pods(e.ns).List(e.ctx, metav1.ListOptions{LabelSelector: "jobs.jobrun.dev/serves-api=true"})
		if err != nil {
			return err
		}
		for _, p := range pods.Items {
			if p.Labels["app.kubernetes.io/component"] != "api" {
				return fmt.Errorf("pod %s (%s) still serves the API", p.Name, p.Labels["app.kubernetes.io/component"])
			}
		}
		return nil
	})
	for id, status := range before {
		if got := e.getRun(id)["status"]; got != status {
			t.Errorf("run %s after helm upgrade: %v, was %v", id, got, status)
		}
	}
	e.checkCompleted(e.trigger("demo_sync", "e2e-project", map[string]any{"items": 3, "item_ms": 100}), 3)
	e.step("helm upgrade to a standalone API done")
}

// checkUninstall deletes the test's fake, then uninstalls the release:
// nothing that jobrun or its chart made may be left (its CRDs stay, as
// Helm keeps crds/), only the Secret the user made.
func (e *jobrunE2E) checkUninstall(rc revenueCatFake) {
	t := e.t
	if out, err := e.c.KubectlCommand(e.ctx, "delete", "-n", e.ns, "pod/"+rc.pod, "service/"+rc.service, "--wait").CombinedOutput(); err != nil {
		t.Fatalf("deleting the fake: %v: %s", err, out)
	}
	if out, err := e.helm("uninstall", e.release, "-n", e.ns, "--wait", "--timeout", "5m"); err != nil {
		e.diagnose()
		t.Fatal(err)
	} else {
		t.Logf("helm uninstall: %s", firstLine(out))
	}
	e.installed = false
	e.eventually(3*time.Minute, "nothing of jobrun left", e.leftovers)
	e.step("uninstalled: nothing left")
}

// leftovers lists what is left in the namespace and the cluster after
// helm uninstall, but what the test made itself and Kubernetes' own.
func (e *jobrunE2E) leftovers() error {
	var left []string
	kinds := "pods,jobs,deployments,replicasets,services,serviceaccounts,roles,rolebindings,configmaps,secrets,leases,poddisruptionbudgets,jobruns,jobtypes,jobschedules,projects"
	out, err := e.c.KubectlCommand(e.ctx, "get", kinds, "-n", e.ns, "-o", "name").Output()
	if err != nil {
		return fmt.Errorf("kubectl get %s: %w", kinds, err)
	}
	expected := []string{"serviceaccount/default", "configmap/kube-root-ca.crt", "secret/jobrun-jwt"}
	for _, name := range strings.Fields(string(out)) {
		if !slices.Contains(expected, name) {
			left = append(left, name)
		}
	}
	out, err = e.c.KubectlCommand(e.ctx, "get", "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings,namespaces",
		"-l", "app.kubernetes.io/instance="+e.release, "-o", "name").Output()
	if err != nil {
		return fmt.Errorf("kubectl get cluster-scoped objects: %w", err)
	}
	left = append(left, strings.Fields(string(out))...)
	if err := e.kube.Get(e.ctx, client.ObjectKey{Name: e.ns + "-integrations"}, &corev1.Namespace{}); err == nil {
		left = append(left, "namespace/"+e.ns+"-integrations")
	}
	if len(left) > 0 {
		return fmt.Errorf("left after helm uninstall: %v", left)
	}
	return nil
}
