package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/localcluster"
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

// fastLease lets a SIGKILLed leader's successor lead within seconds instead
// of the default 15 s, so that every manager of a kill loop leads before it
// is killed.
var fastLease = []string{"--leader-elect-lease-duration=5s", "--leader-elect-renew-deadline=4s", "--leader-elect-retry-period=500ms"}

// TestManagerKilledTenTimesDuringFiftyRuns SIGKILLs the leading manager ten
// times while fifty runs that each send a completion email go through.
// Every kill lands on a manager that holds the leader Lease (asserted at the
// moment of the kill) while it works: creating the pods of a fresh batch of
// runs, or sending the emails of runs that finished while no manager led;
// the kills that interrupted a reconcile are counted from the manager's own
// active-workers metric. The next manager takes over once the Lease expires. Afterwards
// every run completed once, exactly one pod existed per run, no pod is
// orphaned and each run's email arrived (at least once, with one
// Message-ID per run: see notify's at-least-once design).
func TestManagerKilledTenTimesDuringFiftyRuns(t *testing.T) {
	ns := namespace(t)
	pods := watchPods(t, ns)
	mail := testenv.StartMailServer(t, 0)
	args := append([]string{"--smtp-host=" + mail.Host, "--smtp-port=" + strconv.Itoa(mail.Port), "--smtp-tls=none", "--smtp-from=jobrun@example.com"}, fastLease...)
	t.Cleanup(func() { restartDefaultManager(t) })
	cluster.StopManager()
	if err := cluster.StartManager(args...); err != nil {
		t.Fatal(err)
	}

	const kills, batch = 10, 5
	var runs []*jobsv1alpha1.JobRun
	interrupted, partial := 0, 0
	// unconfirmed counts, right after a kill, the emails that kill may have
	// made the next manager resend: accepted by the mail server, not yet
	// recorded Sent on their run. One kill can catch several (the manager
	// sends from up to --jobrun-workers passes at once).
	unconfirmed, counted := 0, map[string]int{}
	for i := range kills {
		leader := cluster.Manager()
		sentBefore := len(mail.Received())
		var fresh []*jobsv1alpha1.JobRun
		for range batch {
			fresh = append(fresh, trigger(t, ns, `{"items": 20, "item_ms": 50}`, notifying))
		}
		runs = append(runs, fresh...)
		// Work in flight. Even kills: this leader has begun creating the
		// new batch's pods. Odd kills: it has begun sending the emails of
		// runs that finished while no manager led.
		testenv.Eventually(t, 120*time.Second, func(context.Context) error {
			if i%2 == 0 && dispatched(pods, fresh) == 0 {
				return fmt.Errorf("kill %d: no pod of the new batch yet", i+1)
			}
			if i%2 == 1 && len(mail.Received()) == sentBefore {
				return fmt.Errorf("kill %d: the leader has sent no email yet", i+1)
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		metrics, err := leader.Metrics(ctx)
		cancel()
		if err != nil {
			t.Fatalf("kill %d: the leader's metrics: %v", i+1, err)
		}
		if v, _ := localcluster.MetricValue(metrics, "leader_election_master_status{"); v != 1 {
			t.Fatalf("kill %d: manager pid %d does not hold the leader Lease at the kill", i+1, leader.PID())
		}
		active, _ := localcluster.MetricValue(metrics, `controller_runtime_active_workers{controller="jobrun"}`)
		created, emails := dispatched(pods, fresh), len(mail.Received())
		cluster.KillManager()
		caught := unconfirmedEmails(t, runs, mail.Received(), counted)
		unconfirmed += caught
		if active > 0 {
			interrupted++
		}
		if created < batch {
			partial++
		}
		t.Logf("kill %d: leader pid %d, %d reconciles in progress, %d of %d new pods created, %d emails sent by it (%d in all), %d accepted but not recorded Sent", i+1, leader.PID(), int(active), created, batch, emails-sentBefore, emails, caught)
		if err := cluster.StartManager(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d of %d kills interrupted a reconcile; %d landed while a batch was partly dispatched", interrupted, kills, partial)
	if interrupted == 0 {
		t.Errorf("no kill interrupted a reconcile: the kills did not land on a working leader")
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

	// Each run's email. A kill between the mail server's acceptance and the
	// Sent write resends it with the same Message-ID (at-least-once, never
	// lost): a duplicate only for an email a kill caught so.
	uids := map[string]string{}
	for _, jr := range runs {
		got, err := get(context.Background(), jr)
		if err != nil {
			t.Fatal(err)
		}
		uids[string(got.UID)] = got.Name
	}
	var perRun map[string]int
	testenv.Eventually(t, 120*time.Second, func(context.Context) error {
		perRun = emailsPerRun(t, mail.Received())
		for uid, name := range uids {
			if perRun[uid] == 0 {
				return fmt.Errorf("no email yet for run %s (%d emails in all)", name, len(mail.Received()))
			}
		}
		return nil
	})
	duplicates := 0
	for uid, n := range perRun {
		if _, ok := uids[uid]; !ok {
			t.Errorf("%d emails with Message-ID %s@jobrun.dev, which is no run's", n, uid)
		}
		duplicates += n - 1
	}
	t.Logf("%d emails for %d runs (%d resent after a kill; the kills caught %d accepted but not recorded Sent)", len(mail.Received()), len(runs), duplicates, unconfirmed)
	if duplicates > unconfirmed {
		t.Errorf("%d duplicate emails after %d kills, want at most the %d the kills caught between the mail server's acceptance and the Sent record", duplicates, kills, unconfirmed)
	}
}

// podLog is the output of the run's current pod (the dev node agent keeps
// it beside the pod's kubeconfig).
func podLog(jr *jobsv1alpha1.JobRun) string {
	data, err := os.ReadFile(filepath.Join(filepath.Dir(cluster.PodKubeconfig(jr.Namespace, jr.Status.PodName)), "handler.log"))
	if err != nil {
		return err.Error()
	}
	return string(data)
}

// dispatched counts the runs of batch that have a pod.
func dispatched(pods *podUIDs, batch []*jobsv1alpha1.JobRun) int {
	n := 0
	for _, jr := range batch {
		if pods.count(jr.Name) > 0 {
			n++
		}
	}
	return n
}

// emailsPerRun counts emails by their Message-ID's run UID.
// unconfirmedEmails counts the runs among runs whose email the mail server
// accepted (emails) and whose status does not record it Sent, each accepted
// email once: counted holds, by run UID, the emails already counted.
func unconfirmedEmails(t *testing.T, runs []*jobsv1alpha1.JobRun, emails []string, counted map[string]int) int {
	t.Helper()
	perRun := emailsPerRun(t, emails)
	n := 0
	for _, jr := range runs {
		got, err := get(context.Background(), jr)
		if err != nil {
			t.Fatal(err)
		}
		uid := string(got.UID)
		if perRun[uid] > counted[uid] && (got.Status.Notification == nil || got.Status.Notification.State != jobsv1alpha1.NotificationSent) {
			n++
			counted[uid] = perRun[uid]
		}
	}
	return n
}

func emailsPerRun(t *testing.T, emails []string) map[string]int {
	t.Helper()
	perRun := map[string]int{}
	for _, m := range emails {
		id := messageID.FindStringSubmatch(m)
		if id == nil {
			t.Errorf("an email without a Message-Id:\n%s", m)
			continue
		}
		perRun[strings.TrimSuffix(id[1], "@jobrun.dev")]++
	}
	return perRun
}

// TestLeaderFailover runs two managers; the one that holds the leader Lease
// is SIGKILLed while a run runs, and the standby takes over (once the Lease
// expires), finishes the run and starts new ones.
func TestLeaderFailover(t *testing.T) {
	ns := namespace(t)
	pods := watchPods(t, ns)
	t.Cleanup(func() {
		cluster.StopStandbyManager()
		restartDefaultManager(t)
	})
	cluster.StopManager()
	if err := cluster.StartManager(fastLease...); err != nil {
		t.Fatal(err)
	}
	leader := cluster.Manager()
	standby, err := cluster.StartStandbyManager(fastLease...)
	if err != nil {
		t.Fatal(err)
	}
	leading := func(m *localcluster.Manager) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ok, err := m.Leading(ctx)
		if err != nil {
			t.Fatalf("manager pid %d: %v", m.PID(), err)
		}
		return ok
	}

	jr := trigger(t, ns, `{"items": 100, "item_ms": 100}`)
	waitFor(t, jr, 120*time.Second, "progress", progressed)
	if !leading(leader) || leading(standby) {
		t.Fatalf("before the kill: first manager leads %v, standby leads %v; want the first only", leading(leader), leading(standby))
	}
	cluster.KillManager()
	testenv.Eventually(t, 60*time.Second, func(context.Context) error {
		if !leading(standby) {
			return fmt.Errorf("the standby (pid %d) does not lead yet", standby.PID())
		}
		return nil
	})
	done := waitFor(t, jr, 120*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	if done.Status.Attempts != 1 || pods.count(jr.Name) != 1 || done.Status.Progress.Processed != 100 {
		t.Errorf("after failover: attempts %d, %d pods, progress %+v", done.Status.Attempts, pods.count(jr.Name), done.Status.Progress)
	}
	// The new leader also starts new runs.
	next := trigger(t, ns, `{"items": 2, "item_ms": 10}`)
	waitFor(t, next, 120*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
}

// TestCancelRacesCompletion sends the REST cancel at the three moments that
// decide a run's end: while the handler works (cancelled, without a
// result), after the handler's work is done but before the runner recorded
// its result (the cancel was accepted but came too late: completed, with
// the result), and after the run completed (400, still completed). The
// middle case is made deterministic by a handler that finishes only once
// the cancel has reached it.
func TestCancelRacesCompletion(t *testing.T) {
	tn := newTenant(t)
	cancel := func(id string) (int, map[string]any) {
		return tn.call(t, http.MethodPost, "/v1/jobs/"+id+"/cancel", nil)
	}
	ended := hasStatus("completed", "failed", "cancelled")

	working := tn.mustTrigger(t, map[string]any{"items": 2000, "item_ms": 50})
	tn.pollRun(t, working, "progress", hasProgressed)
	if status, body := cancel(working); status != http.StatusOK || body["cancelled"] != true {
		t.Fatalf("cancel while working: %d %v", status, body)
	}
	if end := tn.pollRun(t, working, "ended", ended); end["status"] != "cancelled" || end["result"] != nil || end["error"] != nil {
		t.Errorf("cancelled while working: status %v result %v error %v, want cancelled without result", end["status"], end["result"], end["error"])
	}

	late := tn.mustTrigger(t, map[string]any{"items": 3, "item_ms": 10, "finish_after_cancel": true})
	tn.pollRun(t, late, "all items done", func(jr map[string]any) bool {
		p, _ := jr["progress"].(map[string]any)
		return jr["status"] == "running" && p != nil && p["processed"] == float64(3)
	})
	if status, body := cancel(late); status != http.StatusOK || body["cancelled"] != true {
		t.Fatalf("cancel after the work was done: %d %v", status, body)
	}
	end := tn.pollRun(t, late, "ended", ended)
	if r, _ := end["result"].(map[string]any); end["status"] != "completed" || r["processed"] != float64(3) || end["error"] != nil {
		t.Errorf("cancel after the work was done: status %v result %v error %v, want completed with its result", end["status"], end["result"], end["error"])
	}

	if status, body := cancel(late); status != http.StatusBadRequest {
		t.Errorf("cancel of a completed run: %d %v, want 400", status, body)
	}
	if end := tn.pollRun(t, late, "ended", ended); end["status"] != "completed" {
		t.Errorf("after a refused cancel: %v", end["status"])
	}
}

// TestAPIServerOutage takes the API server away from the manager, the dev
// node agent and the runner for longer than the runner's handler needs to
// finish: progress and the result cannot be written, pod status cannot be
// reported, a run created meanwhile cannot be seen. Once the API server is
// back, nothing is lost: the run completes with its result after one
// attempt and one pod, the run created during the outage runs too, and the
// manager lived through it (its renew deadline is longer than the outage).
func TestAPIServerOutage(t *testing.T) {
	ns := namespace(t)
	pods := watchPods(t, ns)
	manager := cluster.Manager()
	jr := trigger(t, ns, `{"items": 30, "item_ms": 100}`)
	before := waitFor(t, jr, 120*time.Second, "progress", progressed)

	cluster.CutAPI()
	cut := time.Now()
	t.Cleanup(func() { _ = cluster.RestoreAPI() })
	during := trigger(t, ns, `{"items": 5, "item_ms": 10}`)
	// The handler needs 3 s in all: it finishes while the API server is
	// away, and nothing it writes gets through meanwhile.
	time.Sleep(6 * time.Second) // the outage itself: a duration, not an ordering
	frozen, err := get(context.Background(), jr)
	if err != nil {
		t.Fatal(err)
	}
	if frozen.Status.Progress.Processed != before.Status.Progress.Processed && frozen.Status.Progress.Processed < 30 {
		// A progress write got through: the runner is not cut off.
		t.Errorf("progress moved from %d to %d during the outage", before.Status.Progress.Processed, frozen.Status.Progress.Processed)
	}
	if frozen.Status.Result != nil || frozen.Status.Phase != jobsv1alpha1.JobRunRunning {
		t.Errorf("during the outage the run is %s with result %s: someone reached the API server", frozen.Status.Phase, frozen.Status.Result)
	}
	if got, err := get(context.Background(), during); err != nil || len(got.Status.Conditions) != 0 || got.Status.Phase != jobsv1alpha1.JobRunPending || pods.count(during.Name) != 0 {
		t.Errorf("a run created during the outage was acted on: status %+v, %d pods (%v)", got.Status, pods.count(during.Name), err)
	}
	if err := cluster.RestoreAPI(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server away for %s", time.Since(cut).Round(time.Millisecond))

	done := waitFor(t, jr, 120*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	var result map[string]int
	if err := json.Unmarshal(done.Status.Result.Raw, &result); err != nil || result["processed"] != 30 || done.Status.Progress.Processed != 30 {
		t.Errorf("after the outage: result %s (%v), progress %+v\nrunner log:\n%s", done.Status.Result.Raw, err, done.Status.Progress, podLog(done))
	}
	if done.Status.Attempts != 1 || pods.count(jr.Name) != 1 {
		t.Errorf("after the outage: %d attempts, %d pods, want 1 and 1", done.Status.Attempts, pods.count(jr.Name))
	}
	waitFor(t, during, 120*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	if m := cluster.Manager(); m == nil || m.PID() != manager.PID() {
		t.Errorf("the manager did not live through the outage")
	}
}

// TestUserEditsRunningRun: kubectl edits of a running run — its spec is
// refused with a clear message, labels and annotations are fine — and the
// run still completes.
func TestUserEditsRunningRun(t *testing.T) {
	ns := namespace(t)
	jr := trigger(t, ns, `{"items": 100, "item_ms": 50}`)
	waitFor(t, jr, 120*time.Second, "progress", progressed)
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
	done := waitFor(t, jr, 120*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	if done.Labels["owner"] != "alice" || done.Status.Progress.Processed != 100 {
		t.Errorf("after the edits: labels %v, progress %+v", done.Labels, done.Status.Progress)
	}
}

func init() { logf.SetLogger(logr.Discard()) } // controller-runtime clients of the tests log nothing

// restartDefaultManager puts back the manager the suite started with (no
// extra flags): it stops the test's manager gracefully (releasing the
// Lease) and waits until the new one leads and its REST API is ready.
func restartDefaultManager(t *testing.T) {
	cluster.StopManager()
	if err := cluster.StartManager(); err != nil {
		t.Error(err)
	}
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
	jr := trigger(t, ns, `{"items": 60, "item_ms": 100}`)
	waitFor(t, jr, 120*time.Second, "progress", progressed)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: jr.Name + "-1"}}
	if err := cluster.Client.Delete(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	done := waitFor(t, jr, 120*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
	if done.Status.Attempts != 2 || pods.count(jr.Name) != 2 || done.Status.Progress.Processed != 60 {
		t.Errorf("after the pod was deleted: attempts %d, %d pods, progress %+v", done.Status.Attempts, pods.count(jr.Name), done.Status.Progress)
	}
}

// TestAPIServerRestart stops the real kube-apiserver and etcd processes in
// the middle of runs and REST traffic, and starts them again with the same
// data, certificates and keys (as a control-plane restart keeps them).
// While they are down the REST API answers 503 JSON with Retry-After;
// afterwards the manager (which lived through it), the node agent and the
// runners carry on: every run completes with one attempt and one pod, and
// new triggers work.
func TestAPIServerRestart(t *testing.T) {
	tn := newTenant(t)
	ns := namespace(t)
	manager := cluster.Manager()
	var runs []*jobsv1alpha1.JobRun
	for range 4 {
		runs = append(runs, trigger(t, ns, `{"items": 40, "item_ms": 100}`))
	}
	viaREST := tn.mustTrigger(t, map[string]any{"items": 40, "item_ms": 100})
	for _, jr := range runs {
		waitFor(t, jr, 120*time.Second, "progress", progressed)
	}
	tn.pollRun(t, viaREST, "progress", hasProgressed)

	stopped := time.Now()
	if err := cluster.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = cluster.StartAPIServer()
		}
	})
	// The REST API says the Kubernetes API is unavailable, in its JSON error
	// shape, with Retry-After, for a read and for a trigger.
	for _, req := range []struct{ method, path string }{
		{http.MethodGet, "/v1/jobs/" + viaREST},
		{http.MethodPost, "/v1/teams/" + tn.team + "/jobs/trigger"},
	} {
		var body map[string]any
		code, retryAfter := 0, ""
		testenv.Eventually(t, 60*time.Second, func(context.Context) error {
			code, retryAfter, body = tn.rawCall(t, req.method, req.path, map[string]any{"job_type": "demo_sync", "project_id": tn.project, "params": map[string]any{}})
			if code != http.StatusServiceUnavailable {
				return fmt.Errorf("%s %s with the API server down: %d %v", req.method, req.path, code, body)
			}
			return nil
		})
		if e, _ := body["error"].(map[string]any); e["code"] != "unavailable" || retryAfter == "" {
			t.Errorf("%s %s with the API server down: %d Retry-After %q %v; want a JSON unavailable error with Retry-After", req.method, req.path, code, retryAfter, body)
		}
	}
	// Down long enough for every handler to finish meanwhile.
	time.Sleep(5 * time.Second) // the outage itself: a duration, not an ordering
	if err := cluster.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	t.Logf("kube-apiserver and etcd were down for %s", time.Since(stopped).Round(time.Millisecond))

	for _, jr := range runs {
		done := waitFor(t, jr, 180*time.Second, "completed", phase(jobsv1alpha1.JobRunCompleted))
		if done.Status.Attempts != 1 || done.Status.Progress == nil || done.Status.Progress.Processed != 40 || done.Status.Result == nil {
			t.Errorf("%s after the restart: attempts %d, progress %+v, result %v", jr.Name, done.Status.Attempts, done.Status.Progress, done.Status.Result)
		}
	}
	pods := &corev1.PodList{}
	if err := cluster.Client.List(context.Background(), pods, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != len(runs) {
		t.Errorf("%d pods for %d runs, want one each", len(pods.Items), len(runs))
	}
	if end := tn.pollRun(t, viaREST, "completed", hasStatus("completed", "failed", "cancelled")); end["status"] != "completed" {
		t.Errorf("the REST-triggered run after the restart: %v", end)
	}
	next := tn.mustTrigger(t, map[string]any{"items": 2, "item_ms": 10})
	if end := tn.pollRun(t, next, "completed", hasStatus("completed", "failed", "cancelled")); end["status"] != "completed" {
		t.Errorf("a run triggered after the restart: %v", end)
	}
	if m := cluster.Manager(); m == nil || m.PID() != manager.PID() {
		t.Errorf("the manager did not live through the restart")
	}
}
