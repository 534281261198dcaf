package devnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"

	"jobrun.dev/jobrun/internal/supervise"
)

// processes is the virtual-kubelet pod lifecycle handler of the dev node: it
// runs each pod's single container as a local process.
type processes struct {
	log        logr.Logger
	kube       kubernetes.Interface
	restConfig *rest.Config
	images     map[string]string // image -> local binary that stands for its entrypoint
	workDir    string

	mu     sync.Mutex
	pods   map[string]*process // by namespace/name
	notify func(*corev1.Pod)
}

// process is one pod and, once started, its local process.
type process struct {
	mu   sync.Mutex
	pod  *corev1.Pod // status kept current
	proc *supervise.Process
	done chan struct{} // closed once the pod's final status is published
}

func podKey(ns, name string) string { return ns + "/" + name }

// NotifyPods registers virtual-kubelet's callback for status changes.
func (p *processes) NotifyPods(_ context.Context, notify func(*corev1.Pod)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notify = notify
}

func (p *processes) publish(pr *process) {
	pr.mu.Lock()
	pod := pr.pod.DeepCopy()
	pr.mu.Unlock()
	p.mu.Lock()
	notify := p.notify
	p.mu.Unlock()
	if notify != nil {
		notify(pod)
	}
}

// CreatePod starts the pod's container as a local process, with a kubeconfig
// holding a token for the pod's service account, as a kubelet projects one.
func (p *processes) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	if _, ok := p.pods[key]; ok {
		p.mu.Unlock()
		return nil
	}
	pr := &process{pod: pod.DeepCopy(), done: make(chan struct{})}
	p.pods[key] = pr
	p.mu.Unlock()
	log := p.log.WithValues("pod", key)

	// A pod that already ran here before this agent restarted: its process
	// died with the old agent. Like a lost node, report it failed rather
	// than run it a second time.
	if pod.Status.Phase == corev1.PodRunning {
		log.Info("pod was running under a previous agent; reporting it failed")
		p.fail(pr, "NodeAgentRestarted", "the dev node agent restarted and the pod's process was lost", 137)
		return nil
	}
	if err := p.start(ctx, pr); err != nil {
		log.Error(err, "cannot start the pod's process")
		p.fail(pr, "StartError", err.Error(), 128)
		return nil
	}
	return nil
}

func (p *processes) start(ctx context.Context, pr *process) error {
	pod := pr.pod
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 0 {
		return fmt.Errorf("the dev node runs pods with exactly one container and no init containers; %s has %d and %d", pod.Name, len(pod.Spec.Containers), len(pod.Spec.InitContainers))
	}
	c := pod.Spec.Containers[0]
	argv, err := p.command(c)
	if err != nil {
		return err
	}
	dir := filepath.Join(p.workDir, pod.Namespace, pod.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	kubeconfig, err := p.writeKubeconfig(ctx, pod, dir)
	if err != nil {
		return err
	}
	env := []string{"KUBECONFIG=" + kubeconfig, "HOME=" + dir, "PATH=" + os.Getenv("PATH")}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			p.log.Info("env var from a reference is not supported on the dev node; left out", "pod", pod.Name, "var", e.Name)
			continue
		}
		env = append(env, e.Name+"="+e.Value)
	}
	logFile, err := os.Create(filepath.Join(dir, c.Name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Dir = env, dir
	// Its own process group, so signals reach the whole container; killed
	// with the agent, as a container dies with its node.
	proc, err := supervise.Start(podKey(pod.Namespace, pod.Name), cmd, logFile)
	if err != nil {
		return fmt.Errorf("starting %s: %w", argv[0], err)
	}
	p.log.Info("started pod process", "pod", podKey(pod.Namespace, pod.Name), "pid", proc.Pid(), "command", argv)

	now := metav1.Now()
	pr.mu.Lock()
	pr.proc = proc
	pr.pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    "127.0.0.1",
		PodIP:     "127.0.0.1",
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: ptr.To(true),
			ContainerID: fmt.Sprintf("process://%d", proc.Pid()),
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		}},
	}
	pr.mu.Unlock()
	p.publish(pr)

	go func() {
		<-proc.Done()
		err := proc.Err()
		code := int32(0)
		reason := "Completed"
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			code = int32(exitErr.ExitCode())
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int32(ws.Signal())
			}
			reason = "Error"
		} else if err != nil {
			code, reason = 128, "Error"
		}
		p.log.Info("pod process exited", "pod", podKey(pod.Namespace, pod.Name), "exitCode", code)
		p.terminated(pr, code, reason, "")
		close(pr.done)
	}()
	return nil
}

// command maps the container to a local command line: an image this node
// knows stands for a local binary (the image's entrypoint), which gets the
// container's args; a container with its own command runs that command.
func (p *processes) command(c corev1.Container) ([]string, error) {
	if len(c.Command) > 0 {
		if bin, ok := p.images[c.Image]; ok && filepath.Base(c.Command[0]) == filepath.Base(bin) {
			return append(append([]string{bin}, c.Command[1:]...), c.Args...), nil
		}
		return append(append([]string{}, c.Command...), c.Args...), nil
	}
	bin, ok := p.images[c.Image]
	if !ok {
		return nil, fmt.Errorf("image %q has no local binary on the dev node (known: %v); set the container's command or map the image with --image", c.Image, keys(p.images))
	}
	return append([]string{bin}, c.Args...), nil
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// writeKubeconfig asks the API server for a token of the pod's service
// account, bound to the pod (TokenRequest, as the kubelet's projected volume
// does), and writes a kubeconfig with it: RBAC applies to the process for
// real.
func (p *processes) writeKubeconfig(ctx context.Context, pod *corev1.Pod, dir string) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := p.kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["dev"] = &clientcmdapi.Cluster{Server: p.restConfig.Host, CertificateAuthorityData: p.restConfig.CAData, InsecureSkipTLSVerify: len(p.restConfig.CAData) == 0 && p.restConfig.Insecure}
	cfg.AuthInfos["pod"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["pod"] = &clientcmdapi.Context{Cluster: "dev", AuthInfo: "pod", Namespace: pod.Namespace}
	cfg.CurrentContext = "pod"
	path := filepath.Join(dir, "kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}

// fail reports a pod that could not run.
func (p *processes) fail(pr *process, reason, message string, code int32) {
	p.terminated(pr, code, reason, message)
	close(pr.done)
}

func (p *processes) terminated(pr *process, code int32, reason, message string) {
	now := metav1.Now()
	pr.mu.Lock()
	st := &pr.pod.Status
	st.Phase = corev1.PodFailed
	if code == 0 {
		st.Phase = corev1.PodSucceeded
	}
	st.Reason, st.Message = "", message
	for i := range st.Conditions {
		if st.Conditions[i].Type == corev1.PodReady || st.Conditions[i].Type == corev1.ContainersReady {
			st.Conditions[i].Status, st.Conditions[i].LastTransitionTime = corev1.ConditionFalse, now
		}
	}
	c := pr.pod.Spec.Containers[0]
	var started metav1.Time
	if len(st.ContainerStatuses) == 1 && st.ContainerStatuses[0].State.Running != nil {
		started = st.ContainerStatuses[0].State.Running.StartedAt
	}
	st.ContainerStatuses = []corev1.ContainerStatus{{
		Name: c.Name, Image: c.Image, ImageID: c.Image, Started: ptr.To(false),
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: code, Reason: reason, Message: message, StartedAt: started, FinishedAt: now,
		}},
	}}
	pr.mu.Unlock()
	p.publish(pr)
}

// UpdatePod has nothing to do: a running process cannot change.
func (p *processes) UpdatePod(context.Context, *corev1.Pod) error { return nil }

// DeletePod stops the pod's process: SIGTERM, then SIGKILL when the pod's
// grace period ends, as a kubelet does.
func (p *processes) DeletePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	pr, ok := p.pods[key]
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFoundf("pod %s is not on this node", key)
	}
	pr.mu.Lock()
	proc := pr.proc
	pr.mu.Unlock()
	grace := time.Duration(ptr.Deref(pod.DeletionGracePeriodSeconds, ptr.Deref(pod.Spec.TerminationGracePeriodSeconds, 30))) * time.Second
	go func() {
		defer func() {
			p.mu.Lock()
			delete(p.pods, key)
			p.mu.Unlock()
		}()
		if proc == nil {
			return
		}
		select {
		case <-pr.done:
			return
		default:
		}
		p.log.Info("stopping pod process", "pod", key, "grace", grace)
		proc.Stop(grace, func() { p.log.Info("grace period over; killing pod process", "pod", key) })
		<-pr.done
	}()
	return nil
}

// GetPod returns the pod as this node last saw it.
func (p *processes) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	pr, ok := p.pods[podKey(ns, name)]
	p.mu.Unlock()
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", ns, name)
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pod.DeepCopy(), nil
}

// GetPodStatus returns the pod's current status.
func (p *processes) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns every pod on this node.
func (p *processes) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.pods))
	for _, pr := range p.pods {
		pr.mu.Lock()
		out = append(out, pr.pod.DeepCopy())
		pr.mu.Unlock()
	}
	return out, nil
}

// stopAll kills every process, for the agent's shutdown.
func (p *processes) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range p.pods {
		pr.mu.Lock()
		if pr.proc != nil {
			pr.proc.Signal(syscall.SIGKILL)
		}
		pr.mu.Unlock()
	}
}
