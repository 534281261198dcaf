package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// podUIDs records, from a watch started before any run, every pod ever
// created for each run: a pod deleted and made again shows as two.
type podUIDs struct {
	mu   sync.Mutex
	runs map[string]map[types.UID]bool
}

func watchPods(t *testing.T, ns string) *podUIDs {
	t.Helper()
	wc, err := client.NewWithWatch(cluster.Config, client.Options{Scheme: cluster.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(testenv.Context(t), &corev1.PodList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	p := &podUIDs{runs: map[string]map[types.UID]bool{}}
	go func() {
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type != watch.Added {
				continue
			}
			run := pod.Labels[jobsv1alpha1.LabelRun]
			p.mu.Lock()
			if p.runs[run] == nil {
				p.runs[run] = map[types.UID]bool{}
			}
			p.runs[run][pod.UID] = true
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *podUIDs) count(run string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.runs[run])
}

// notifying makes a run send its completion email.
func notifying(jr *jobsv1alpha1.JobRun) {
	jr.Spec.Notify, jr.Spec.NotifyEmail = true, "owner@example.com"
}

var messageID = regexp.MustCompile(`(?mi)^Message-Id: <([^>]+)>`)

// TestManagerKilledTenTimesDuringFiftyRuns SIGKILLs the manager at random
// moments, ten times, while fifty runs that each send a completion email
// go through. Afterwards every run completed once, exactly one pod existed
// per run, no pod is orphaned and each run's email arrived exactly once.
func TestManagerKilledTenTimesDuringFiftyRuns(t *testing.T) {
	ns := namespace(t)
	pods := watchPods(t, ns)
	mail := testenv.StartMailServer(t, 0)
	smtp := []string{"--smtp-host=" + mail.Host, "--smtp-port=" + strconv.Itoa(mail.Port), "--smtp-tls=none", "--smtp-from=jobrun@example.com"}
	restart := func() {
		cluster.KillManager()
		if err := cluster.StartManager(smtp...); err != nil {
			t.Fatal(err)
		}
	}
	restart()
	t.Cleanup(func() { restartDefaultManager(t) })

	const n = 50
	var runs []*jobsv1alpha1.JobRun
	for range n {
		runs = append(runs, trigger(t, ns, `{"items": 20, "item_ms": 50}`, notifying))
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for i := range 10 {
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
		t.Logf("kill %d", i+1)
		restart()
	}

	for _, jr := range runs {
		done := waitFor(t, jr, 180*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
		if done.Status.Attempts != 1 || done.Status.Progress == nil || done.Status.Progress.Processed != 20 {
			t.Errorf("%s: attempts %d, progress %+v", jr.Name, done.Status.Attempts, done.Status.Progress)
		}
		if c := pods.count(jr.Name); c != 1 {
			t.Errorf("%s: %d pods were created, want exactly 1", jr.Name, c)
		}
	}
	// No orphans: every pod belongs to a run that exists.
	list := &corev1.PodList{}
	if err := cluster.Client.List(context.Background(), list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		owner := metav1.GetControllerOf(&p)
		if owner == nil || owner.Kind != "JobRun" {
			t.Errorf("pod %s has no run as its owner", p.Name)
			continue
		}
		if err := cluster.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: owner.Name}, &jobsv1alpha1.JobRun{}); err != nil {
			t.Errorf("pod %s: its run %s: %v", p.Name, owner.Name, err)
		}
	}

	// Each run's email, once.
	uids := map[string]string{}
	for _, jr := range runs {
		got, err := get(context.Background(), jr)
		if err != nil {
			t.Fatal(err)
		}
		uids[string(got.UID)] = got.Name
	}
	testenv.Eventually(t, 90*time.Second, func(context.Context) error {
		if got := len(mail.Received()); got < n {
			return fmt.Errorf("%d of %d emails", got, n)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // a duplicate would arrive now
	perRun := map[string]int{}
	for _, m := range mail.Received() {
		id := messageID.FindStringSubmatch(m)
		if id == nil {
			t.Errorf("an email without a Message-Id:\n%s", m)
			continue
		}
		perRun[strings.TrimSuffix(id[1], "@jobrun.dev")]++
	}
	for uid, name := range uids {
		if perRun[uid] != 1 {
			t.Errorf("run %s got %d emails, want 1", name, perRun[uid])
		}
	}
	if len(perRun) != n {
		t.Errorf("emails for %d runs, want %d", len(perRun), n)
	}
}

// TestLeaderFailover runs two managers; the leader is SIGKILLed while a run
// runs, and the standby takes over (once the Lease expires) and finishes it.
func TestLeaderFailover(t *testing.T) {
	ns := namespace(t)
	pods := watchPods(t, ns)
	standbyMetrics := testenv.FreeAddr(t)
	if err := cluster.StartStandbyManager("--health-probe-bind-address="+testenv.FreeAddr(t), "--metrics-bind-address="+standbyMetrics, "--api-bind-address="+testenv.FreeAddr(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cluster.KillStandbyManager()
		restartDefaultManager(t)
	})
	leads := func() bool {
		resp, err := http.Get("http://" + standbyMetrics + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(data), `leader_election_master_status{name="jobrun-manager.jobs.jobrun.dev"} 1`)
	}
	testenv.Eventually(t, 30*time.Second, func(context.Context) error {
		resp, err := http.Get("http://" + standbyMetrics + "/metrics")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	if leads() {
		t.Fatal("the standby leads while the first manager runs")
	}

	jr := trigger(t, ns, `{"items": 100, "item_ms": 100}`)
	waitFor(t, jr, 60*time.Second, "progress", progressed)
	cluster.KillManager()
	done := waitFor(t, jr, 90*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	if done.Status.Attempts != 1 || pods.count(jr.Name) != 1 || done.Status.Progress.Processed != 100 {
		t.Errorf("after failover: attempts %d, %d pods, progress %+v", done.Status.Attempts, pods.count(jr.Name), done.Status.Progress)
	}
	if !leads() {
		t.Error("the standby does not report itself the leader")
	}
	// The new leader also starts new runs.
	next := trigger(t, ns, `{"items": 2, "item_ms": 10}`)
	waitFor(t, next, 60*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
}

// TestCancelRacesCompletion sends the REST cancel around the moment the
// runner writes its final status, many times: every run ends in exactly one
// consistent state (completed with its result, or cancelled without one).
func TestCancelRacesCompletion(t *testing.T) {
	const ns = "jobrun-system"
	demoProject(t, ns)
	if err := cluster.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "demo-sync"}, &jobsv1alpha1.JobType{}); apierrors.IsNotFound(err) {
		createJobType(t, ns)
	}
	outcomes := map[string]int{}
	for i := range 8 {
		status, body := apiCall(t, http.MethodPost, "/v1/teams/demo-team/jobs/trigger", map[string]any{"job_type": "demo_sync", "project_id": "demo-project", "params": map[string]any{"items": 4, "item_ms": 50}})
		if status != http.StatusCreated {
			t.Fatalf("trigger %d: %d %v", i, status, body)
		}
		id := body["job_run"].(map[string]any)["id"].(string)
		pollRun(t, id, "running", func(jr map[string]any) bool { return jr["status"] != "pending" })
		time.Sleep(time.Duration(i*40) * time.Millisecond) // from well before the end to after it
		cstatus, cbody := apiCall(t, http.MethodPost, "/v1/jobs/"+id+"/cancel", nil)
		if cstatus != http.StatusOK && cstatus != http.StatusBadRequest {
			t.Errorf("cancel: %d %v", cstatus, cbody)
		}
		end := pollRun(t, id, "ended", func(jr map[string]any) bool {
			return jr["status"] == "completed" || jr["status"] == "cancelled" || jr["status"] == "failed"
		})
		switch end["status"] {
		case "completed":
			if r, _ := end["result"].(map[string]any); r == nil || r["processed"] != float64(4) || end["error"] != nil {
				t.Errorf("completed run %s: result %v error %v", id, end["result"], end["error"])
			}
		case "cancelled":
			if end["result"] != nil || end["error"] != nil || cstatus != http.StatusOK {
				t.Errorf("cancelled run %s: result %v error %v (cancel answered %d)", id, end["result"], end["error"], cstatus)
			}
		default:
			t.Errorf("run %s ended %v: %v", id, end["status"], end["error"])
		}
		outcomes[fmt.Sprintf("%v/cancel %d", end["status"], cstatus)]++
	}
	t.Logf("outcomes: %v", outcomes)
}

// TestUserEditsRunningRun: kubectl edits of a running run — its spec is
// refused with a clear message, labels and annotations are fine — and the
// run still completes.
func TestUserEditsRunningRun(t *testing.T) {
	ns := namespace(t)
	jr := trigger(t, ns, `{"items": 30, "item_ms": 50}`)
	waitFor(t, jr, 60*time.Second, "progress", progressed)
	kubectl := func(args ...string) (string, error) {
		return runKubectl(append([]string{"-n", ns}, args...)...)
	}
	out, err := kubectl("patch", "jobrun", jr.Name, "--type=merge", "-p", `{"spec":{"params":{"items":1}}}`)
	if err == nil || !strings.Contains(err.Error(), "spec is immutable") {
		t.Errorf("editing the spec: %v %s, want refused as immutable", err, out)
	}
	if out, err := kubectl("label", "jobrun", jr.Name, "owner=alice"); err != nil {
		t.Errorf("labelling: %v %s", err, out)
	}
	if out, err := kubectl("annotate", "jobrun", jr.Name, "note=checked"); err != nil {
		t.Errorf("annotating: %v %s", err, out)
	}
	done := waitFor(t, jr, 60*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	if done.Labels["owner"] != "alice" || done.Status.Progress.Processed != 30 {
		t.Errorf("after the edits: labels %v, progress %+v", done.Labels, done.Status.Progress)
	}
}

func init() { logf.SetLogger(logr.Discard()) } // controller-runtime clients of the tests log nothing

// restartDefaultManager puts back the manager the suite started with (no
// extra flags) and waits until its REST API is ready, for the next test.
func restartDefaultManager(t *testing.T) {
	cluster.KillManager()
	if err := cluster.StartManager(); err != nil {
		t.Error(err)
		return
	}
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		resp, err := http.Get("http://" + apiAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("REST API /readyz: %d", resp.StatusCode)
		}
		return nil
	})
}

// runKubectl runs the control plane's kubectl as the admin user.
func runKubectl(args ...string) (string, error) {
	cmd := exec.Command(cluster.Kubectl, append([]string{"--kubeconfig=" + cluster.Kubeconfig}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), nil
}

// TestPodDeletedMidRun: a user (or a node drain) deletes a running run's
// pod; the run's attempt fails as PodLost and, with a retry left, a second
// pod runs it to completion.
func TestPodDeletedMidRun(t *testing.T) {
	ns := namespace(t, func(jt *jobsv1alpha1.JobType) { jt.Spec.RetryLimit = ptr.To[int32](1) })
	pods := watchPods(t, ns)
	jr := trigger(t, ns, `{"items": 30, "item_ms": 100}`)
	waitFor(t, jr, 60*time.Second, "progress", progressed)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jr.Name + "-1"}}
	if err := cluster.Client.Delete(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	done := waitFor(t, jr, 90*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	if done.Status.Attempts != 2 || pods.count(jr.Name) != 2 || done.Status.Progress.Processed != 30 {
		t.Errorf("after the pod was deleted: attempts %d, %d pods, progress %+v", done.Status.Attempts, pods.count(jr.Name), done.Status.Progress)
	}
}
