// Package devnode is the dev node agent of jobrun's local default: where no
// kubelet exists, it registers a Node that the scheduler binds job pods to
// and runs each pod's container as a local process. It is built on
// virtual-kubelet's node and pod controllers (node registration, leases, pod
// status sync, graceful deletion); this package provides the processes.
//
// On a real cluster the kubelet does this job and the agent is not used.
package devnode

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/go-logr/logr"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeinformers "k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Options configure the agent.
type Options struct {
	// NodeName is the Node the agent registers (default jobrun-dev-node).
	NodeName string
	// Config is how the agent reaches the API server; pods' processes get
	// the same server address with their own service-account token.
	Config *rest.Config
	// Images maps container images to the local binary that stands for the
	// image's entrypoint, e.g. jobrun:dev -> bin/jobrun.
	Images map[string]string
	// WorkDir holds each pod's kubeconfig and log.
	WorkDir string
	// Log receives the agent's log lines.
	Log logr.Logger
}

// Run registers the node and runs pods until ctx ends; their processes are
// killed then.
func Run(ctx context.Context, o Options) error {
	if o.NodeName == "" {
		o.NodeName = "jobrun-dev-node"
	}
	kube, err := kubernetes.NewForConfig(o.Config)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return err
	}
	ctx = log.WithLogger(ctx, vkslog.FromSlog(slog.New(logr.ToSlogHandler(o.Log.WithName("virtual-kubelet")))))

	procs := &processes{
		log: o.Log, kube: kube, restConfig: o.Config, images: o.Images, workDir: o.WorkDir,
		pods: map[string]*process{},
	}
	defer procs.stopAll()

	podInformers := kubeinformers.NewSharedInformerFactoryWithOptions(kube, time.Minute, nodeutil.PodInformerFilter(o.NodeName))
	otherInformers := kubeinformers.NewSharedInformerFactory(kube, time.Minute)
	broadcaster := record.NewBroadcaster()
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: kube.CoreV1().Events(corev1.NamespaceAll)})

	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:         kube.CoreV1(),
		PodInformer:       podInformers.Core().V1().Pods(),
		EventRecorder:     broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "jobrun-devnode", Host: o.NodeName}),
		Provider:          procs,
		ConfigMapInformer: otherInformers.Core().V1().ConfigMaps(),
		SecretInformer:    otherInformers.Core().V1().Secrets(),
		ServiceInformer:   otherInformers.Core().V1().Services(),
		// A kubelet starts every pod it is given at once; virtual-kubelet's
		// default limiter lets 10 pod events a second through its queues in
		// all (client-go's controller default), which made this node start
		// at most ~10 pods a second and, after a burst, queued a new pod
		// behind a minute of older events.
		SyncPodsFromKubernetesRateLimiter:    podQueueRateLimiter(),
		DeletePodsFromKubernetesRateLimiter:  podQueueRateLimiter(),
		SyncPodStatusFromProviderRateLimiter: podQueueRateLimiter(),
	})
	if err != nil {
		return fmt.Errorf("creating the pod controller: %w", err)
	}
	nodeProvider := node.NewNaiveNodeProvider()
	nodeSpec := nodeObject(o.NodeName)
	nc, err := node.NewNodeController(nodeProvider, nodeSpec, kube.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(nodeutil.NodeLeaseV1Client(kube), node.DefaultLeaseDuration))
	if err != nil {
		return fmt.Errorf("creating the node controller: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	podInformers.Start(ctx.Done())
	otherInformers.Start(ctx.Done())
	go func() { _ = pc.Run(ctx, podWorkers) }()
	if up, err := waitReady(ctx, pc); !up {
		return err
	}
	go func() { _ = nc.Run(ctx) }()
	if up, err := waitReady(ctx, nc); !up {
		return err
	}
	if err := nodeProvider.UpdateStatus(ctx, nodeSpec); err != nil {
		return fmt.Errorf("marking the node ready: %w", err)
	}
	o.Log.Info("dev node ready", "node", o.NodeName)
	select {
	case <-ctx.Done():
		<-pc.Done()
		<-nc.Done()
		return nil
	case <-pc.Done():
		return pc.Err()
	case <-nc.Done():
		return nc.Err()
	}
}

// podWorkers is how many pods the agent starts, stops or reports at once.
const podWorkers = 4

// podQueueRateLimiterBase is the first retry delay of a pod's failed sync.
const podQueueRateLimiterBase = 5 * time.Millisecond

// podQueueRateLimiter paces the agent's pod queues per pod only: a pod whose
// sync failed is retried after 5 ms, doubling up to 30 s; no pod waits for
// other pods' turns.
func podQueueRateLimiter() workqueue.TypedRateLimiter[any] {
	return workqueue.NewTypedItemExponentialFailureRateLimiter[any](podQueueRateLimiterBase, 30*time.Second)
}

// nodeObject is the Node the scheduler sees: ready, untainted, with room for
// many small job pods.
func nodeObject(name string) *corev1.Node {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("16"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   resource.MustParse("200"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "virtual-kubelet",
			"jobs.jobrun.dev/dev-node": "true",
		}},
		Status: corev1.NodeStatus{
			Capacity: capacity, Allocatable: capacity,
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: name}},
			NodeInfo:  corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "jobrun-devnode"},
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "DevNodeReady", Message: "jobrun dev node agent runs pods as local processes"},
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse},
				{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse},
				{Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionFalse},
			},
		},
	}
}

// controller is what virtual-kubelet's pod and node controllers share.
type controller interface {
	Ready() <-chan struct{}
	Done() <-chan struct{}
	Err() error
}

// waitReady waits until c is ready (up); if c stops first it returns c's
// error, if ctx ends first nil.
func waitReady(ctx context.Context, c controller) (up bool, err error) {
	select {
	case <-c.Ready():
		return true, nil
	case <-c.Done():
		return false, c.Err()
	case <-ctx.Done():
		return false, nil
	}
}
