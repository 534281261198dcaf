package realnode_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"jobrun.dev/jobrun/internal/realnode"
)

// TestRealNode starts a real node (containerd, kubelet, kube-proxy, CNI, in a
// network namespace), runs pods of a locally built image on it, reads their
// logs through the kubelet, checks that deleting a pod delivers SIGTERM and
// that a ClusterIP Service reaches a pod, then stops it and checks that the
// host is as before.
func TestRealNode(t *testing.T) {
	root := usableRoot(t)
	before := recordHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	began := time.Now()
	c, err := realnode.Start(ctx, realnode.Options{Root: root, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %s", time.Since(began).Round(100*time.Millisecond))
	stopped := false
	defer func() {
		if !stopped {
			if err := c.Stop(); err != nil {
				t.Errorf("stopping: %v", err)
			}
		}
	}()

	t.Run("PodRunsToCompletion", func(t *testing.T) {
		pod := pausePod("hello", "-say", "hello from a real node", "-exit")
		pod.Spec.RestartPolicy = corev1.RestartPolicyNever
		create(ctx, t, c, pod)
		waitPod(ctx, t, c, pod.Name, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
		if logs := kubectl(ctx, t, c, "logs", pod.Name); !strings.Contains(logs, "hello from a real node") {
			t.Errorf("kubectl logs: got %q, want the pod's line", logs)
		}
	})

	t.Run("DeleteDeliversSIGTERM", func(t *testing.T) {
		pod := pausePod("sleeper", "-say", "waiting")
		create(ctx, t, c, pod)
		waitPod(ctx, t, c, pod.Name, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		// Follow the log through the kubelet while the pod is deleted: the
		// program's last line says which signal stopped it.
		logs := c.KubectlCommand(ctx, "logs", "-f", pod.Name)
		out, err := logs.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := logs.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1)
		go func() {
			b, _ := io.ReadAll(out)
			lines <- string(b)
		}()
		waitLog(ctx, t, c, pod.Name, "waiting")
		if err := c.Client.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		var followed string
		select {
		case followed = <-lines:
		case <-ctx.Done():
			t.Fatal("kubectl logs -f did not end after the pod was deleted")
		}
		_ = logs.Wait()
		if !strings.Contains(followed, "got terminated") {
			t.Errorf("the deleted pod's log: got %q, want it to end with %q (SIGTERM)", followed, "got terminated")
		}
		waitGone(ctx, t, c, pod.Name)
	})

	t.Run("ClusterIPService", func(t *testing.T) {
		pod := pausePod("web", "-say", "served by web", "-listen", ":8080")
		pod.Labels = map[string]string{"app": "web"}
		create(ctx, t, c, pod)
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{
				Selector: map[string]string{"app": "web"},
				Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
			},
		}
		svc, err := c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		waitPod(ctx, t, c, pod.Name, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		url := fmt.Sprintf("http://%s/", svc.Spec.ClusterIP)
		var last error
		deadline := time.Now().Add(2 * time.Minute)
		for {
			body, err := get(c, url)
			if err == nil && strings.Contains(body, "served by web") {
				break
			}
			last = fmt.Errorf("%v (body %q)", err, body)
			if time.Now().After(deadline) {
				t.Fatalf("GET %s from inside the namespace: %v", url, last)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	dir, netns, cgroupRoot := c.Dir, c.NetnsPath, c.CgroupRoot
	stopped = true
	began = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	t.Logf("stopped in %s", time.Since(began).Round(100*time.Millisecond))

	assertRestored(t, dir, netns, cgroupRoot, before)
}

// TestStartFailsCleanly gives Start too little time: it fails halfway (on
// a fast machine it may succeed, and Stop runs instead); either way nothing
// is left on the host.
func TestStartFailsCleanly(t *testing.T) {
	root := usableRoot(t)
	before := recordHost(t)
	dir := t.TempDir() + "/node"
	var netns, cgroupRoot string
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	c, err := realnode.Start(ctx, realnode.Options{Root: root, Dir: dir, Log: func(format string, args ...any) {
		t.Logf(format, args...)
	}})
	if err == nil {
		t.Log("started within the bound; stopping instead")
		netns, cgroupRoot = c.NetnsPath, c.CgroupRoot
		if err := c.Stop(); err != nil {
			t.Fatalf("stopping: %v", err)
		}
	} else {
		t.Logf("Start failed as expected: %v", err)
	}
	assertRestored(t, dir, netns, cgroupRoot, before)
	// Whatever namespace and cgroup root it made are gone too.
	if matches, _ := filepath.Glob("/sys/fs/cgroup/*/jobrun-*"); len(matches) > 0 {
		t.Logf("cgroups named jobrun-* exist (another test's node?): %v", matches)
	}
}

// TestStaleNodeIsSwept starts a node with a pod on it in a child test
// process and SIGKILLs that process, as go test's -timeout or a CI runner
// would: no Stop runs, and the node's containers, shims, mounts, cgroups,
// namespace and sysctls stay. The next Start tears that node down first,
// and refuses to start beside a live one.
func TestStaleNodeIsSwept(t *testing.T) {
	if os.Getenv(startAndDieEnv) != "" {
		startAndDie(t)
		return
	}
	root := usableRoot(t)
	before := recordHost(t)
	child := exec.Command(os.Args[0], "-test.run=^TestStaleNodeIsSwept$", "-test.v")
	child.Env = append(os.Environ(), startAndDieEnv+"=1")
	out, err := child.Output()
	var stale struct{ Dir, NetnsPath, CgroupRoot string }
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, staleLinePrefix); ok {
			if err := json.Unmarshal([]byte(rest), &stale); err != nil {
				t.Fatal(err)
			}
		}
	}
	if stale.Dir == "" {
		t.Fatalf("the child did not start a node (%v):\n%s", err, out)
	}
	if exit := (*exec.ExitError)(nil); !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child should have been killed, got %v", err)
	}
	// Something to sweep: the pod's shim and container outlive the child.
	if pids, _ := realnode.ProcessesUsing(stale.Dir); len(pids) == 0 {
		t.Errorf("no process of the killed child's node left (its shims should be): nothing to sweep")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := realnode.Start(ctx, realnode.Options{Root: root, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop() //nolint:errcheck // stopped below; this is for a failure
	assertRestored(t, stale.Dir, stale.NetnsPath, stale.CgroupRoot, hostBefore{})
	if _, err := realnode.Start(ctx, realnode.Options{Root: root}); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("a second node beside a running one: got %v, want a refusal", err)
	}
	dir, netns, cgroupRoot := c.Dir, c.NetnsPath, c.CgroupRoot
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	assertRestored(t, dir, netns, cgroupRoot, before)
}

const (
	startAndDieEnv  = "JOBRUN_REALNODE_START_AND_DIE"
	staleLinePrefix = "STALE NODE "
)

// startAndDie is TestStaleNodeIsSwept's child: it starts a node, runs a pod,
// prints where the node lives and kills itself.
func startAndDie(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := realnode.Start(ctx, realnode.Options{Root: usableRoot(t), Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	create(ctx, t, c, pausePod("left-behind"))
	waitPod(ctx, t, c, "left-behind", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	line, _ := json.Marshal(map[string]string{"Dir": c.Dir, "NetnsPath": c.NetnsPath, "CgroupRoot": c.CgroupRoot})
	fmt.Printf("\n%s%s\n", staleLinePrefix, line)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

// requireUsable skips the test when this machine cannot run a real node,
// or fails it when JOBRUN_REAL_NODE=require (make test sets it as root, so
// that CI never skips it silently).
func requireUsable(t *testing.T, root string) {
	t.Helper()
	if err := realnode.Usable(root); err != nil {
		if os.Getenv("JOBRUN_REAL_NODE") == "require" {
			t.Fatalf("JOBRUN_REAL_NODE=require, but this machine cannot run a real node: %v", err)
		}
		t.Skipf("cannot run a real node on this machine: %v", err)
	}
}

// usableRoot is the repository's root, once requireUsable let the test go
// on.
func usableRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	requireUsable(t, root)
	return root
}

// hostBefore is the host as a test found it, for assertRestored: the
// sysctls the kubelet changes, and the host paths that did not exist.
type hostBefore struct {
	sysctls map[string]string
	absent  []string
}

func recordHost(t *testing.T) hostBefore {
	t.Helper()
	sysctls, err := realnode.ReadSysctls()
	if err != nil {
		t.Fatal(err)
	}
	var absent []string
	for _, p := range append([]string{realnode.StateDir}, realnode.HostPaths...) {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			absent = append(absent, p)
		}
	}
	return hostBefore{sysctls: sysctls, absent: absent}
}

// assertRestored checks that no process, mount, cgroup, sysctl change,
// namespace, work dir or created host path is left.
func assertRestored(t *testing.T, dir, netns, cgroupRoot string, before hostBefore) {
	t.Helper()
	if pids, err := realnode.ProcessesUsing(dir); err != nil || len(pids) > 0 {
		t.Errorf("processes of the work dir left: %v %v", pids, err)
	}
	if mounts, err := realnode.MountsUnder(dir); err != nil || len(mounts) > 0 {
		t.Errorf("mounts under the work dir left: %v %v", mounts, err)
	}
	if cgroupRoot != "" {
		if cgroups, err := realnode.CgroupDirs(cgroupRoot); err != nil || len(cgroups) > 0 {
			t.Errorf("cgroups left: %v %v", cgroups, err)
		}
	}
	after, err := realnode.ReadSysctls()
	if err != nil {
		t.Fatal(err)
	}
	for name, value := range before.sysctls {
		if after[name] != value {
			t.Errorf("sysctl %s: %s after the test, %s before", name, after[name], value)
		}
	}
	paths := append([]string{dir}, before.absent...)
	if netns != "" {
		paths = append(paths, netns)
	}
	for _, path := range paths {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s left behind (stat: %v)", path, err)
		}
	}
}

// pausePod runs the node's image with args in the default namespace.
func pausePod(name string, args ...string) *corev1.Pod {
	grace := int64(30)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           realnode.PauseImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            args,
			}},
		},
	}
}

func create(ctx context.Context, t *testing.T, c *realnode.Cluster, pod *corev1.Pod) {
	t.Helper()
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating pod %s: %v", pod.Name, err)
	}
}

// waitPod polls pod name until done says so; it fails after 3 minutes with
// the pod's last status.
func waitPod(ctx context.Context, t *testing.T, c *realnode.Cluster, name string, done func(*corev1.Pod) bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var last *corev1.Pod
	for time.Now().Before(deadline) {
		pod, err := c.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if done(pod) {
				return
			}
			last = pod
		}
		time.Sleep(500 * time.Millisecond)
	}
	if last == nil {
		t.Fatalf("pod %s: never read", name)
	}
	t.Fatalf("pod %s: phase %s, conditions %+v, container statuses %+v", name, last.Status.Phase, last.Status.Conditions, last.Status.ContainerStatuses)
}

func waitGone(ctx context.Context, t *testing.T, c *realnode.Cluster, name string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		_, err := c.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("pod %s still there 2 minutes after its deletion", name)
}

func waitLog(ctx context.Context, t *testing.T, c *realnode.Cluster, pod, want string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		b, err := c.Client.CoreV1().Pods("default").GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err == nil && strings.Contains(string(b), want) {
			return
		}
		last = fmt.Sprintf("%q %v", b, err)
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("pod %s's log never held %q: %s", pod, want, last)
}

func kubectl(ctx context.Context, t *testing.T, c *realnode.Cluster, args ...string) string {
	t.Helper()
	out, err := c.KubectlCommand(ctx, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func get(c *realnode.Cluster, url string) (string, error) {
	resp, err := c.HTTPClient().Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
