// Package kueue runs a real Kueue (sigs.k8s.io/kueue's manager, built by
// hack/build-tools.sh kueue into bin/kueue/) against an already-running
// control plane (internal/controlplane): the one way jobrun starts Kueue,
// for make dev (internal/localcluster) and the tests (internal/kueuetest).
//
// Start installs Kueue's CRDs and webhook configurations, and starts the
// manager as a child process with its webhook server on 127.0.0.1 and a
// self-signed certificate: the webhooks (and the CRDs' conversion webhooks)
// are pointed at it by clientConfig.url with that certificate's CA as
// caBundle, since there is no Service to route to. jobrun needs no Kueue
// integration (it writes a Workload per run itself), so only the webhooks
// for Kueue's own kinds are installed, and Kueue runs its one unavoidable
// integration, batch/job, for namespaces labelled NamespaceLabel=true only
// (Jobs elsewhere never wait on Kueue; no Job webhook is installed). With
// Options.PodIntegration, Kueue's plain-Pod integration runs instead, its
// webhooks limited to those namespaces too.
package kueue

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"jobrun.dev/jobrun/internal/controlplane"
	"jobrun.dev/jobrun/internal/selfsigned"
)

const (
	// NamespaceLabel marks the namespaces whose pods Kueue manages (its
	// managedJobsNamespaceSelector, and the pod webhooks' namespaceSelector):
	// NamespaceLabel=true.
	NamespaceLabel = "kueue.jobrun.dev/managed"

	// QueueLabel names the LocalQueue a pod (or other job) is submitted to.
	QueueLabel = "kueue.x-k8s.io/queue-name"
	// AdmissionGate is the scheduling gate Kueue's pod webhook adds to a
	// managed pod; Kueue removes it when the pod's Workload is admitted.
	AdmissionGate = "kueue.x-k8s.io/admission"
	// ManagedLabel is set to "true" on pods Kueue manages; it is also the
	// finalizer Kueue puts on them.
	ManagedLabel = "kueue.x-k8s.io/managed"

	// Namespace is Kueue's own namespace (its Configuration's namespace).
	Namespace = "kueue-system"

	mutatingName   = "kueue-mutating-webhook-configuration"
	validatingName = "kueue-validating-webhook-configuration"
)

// conversionCRDs are the CRDs Kueue's kustomize config gives a conversion
// webhook (config/components/crd/kustomization.yaml), /convert on the manager.
var conversionCRDs = []string{
	"localqueues.kueue.x-k8s.io",
	"clusterqueues.kueue.x-k8s.io",
	"cohorts.kueue.x-k8s.io",
	"workloads.kueue.x-k8s.io",
	"multikueueclusters.kueue.x-k8s.io",
}

// Options tune Start.
type Options struct {
	// Dir holds Kueue's configuration, certificates, kubeconfig and log
	// (kueue.log); required.
	Dir string
	// Root is the repository root (bin/kueue is under it); default: found
	// from this file's location.
	Root string
	// FeatureGates are Kueue feature gates (its Configuration's featureGates).
	FeatureGates map[string]bool
	// LogLevel is the manager's zap log level (--zap-log-level); default 2.
	LogLevel int
	// UsageSamplingInterval is how often Kueue samples the LocalQueues'
	// usage for Admission Fair Sharing (its admissionFairSharing config;
	// default 10s); UsageHalfLife is how fast that usage decays (default
	// 10m).
	UsageSamplingInterval, UsageHalfLife time.Duration
	// PodIntegration enables Kueue's plain-Pod integration and its pod
	// webhooks (internal/kueuetest's test of Kueue's pod admission). Off,
	// Kueue neither watches nor reconciles pods: its pod controller queued
	// a pass for every pod event and every Workload event of the cluster,
	// work for nothing under jobrun's floods.
	PodIntegration bool
}

// Kueue is a running Kueue manager.
type Kueue struct {
	// Dir holds its configuration, certificates, kubeconfig and log
	// (kueue.log).
	Dir string
	// WebhookURL is https://127.0.0.1:PORT, the webhook server.
	WebhookURL string
	// HealthURL is http://127.0.0.1:PORT, the health probes (/healthz, /readyz).
	HealthURL string
	// VisibilityURL is https://127.0.0.1:PORT, Kueue's visibility API server
	// (visibility.kueue.x-k8s.io: pending workloads and their positions),
	// served directly: it is not registered with kube-apiserver's aggregation
	// layer (an APIService needs a Service).
	VisibilityURL string
	// CAPEM is the certificate of the webhook and visibility servers (self-
	// signed), and CAPool trusts it.
	CAPEM  []byte
	CAPool *x509.CertPool

	cmd     *exec.Cmd
	cs      kubernetes.Interface
	exited  chan struct{}
	waitErr error
}

// Root is the repository root, found from this file's location.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Binary is the Kueue manager's path under root, failing with the command to
// run when it is not built.
func Binary(root string) (string, error) {
	bin := filepath.Join(root, "bin", "kueue", "kueue")
	for _, p := range []string{bin, filepath.Join(root, "bin", "kueue", "crds"), filepath.Join(root, "bin", "kueue", "webhook", "manifests.yaml")} {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("kueue: %s missing: run `hack/build-tools.sh kueue` first: %w", p, err)
		}
	}
	return bin, nil
}

// Start installs Kueue's CRDs and webhooks into cp's API server, starts the
// manager and returns once it is ready and its webhooks answer (within 2
// minutes). Stop deletes the webhook configurations (so that the API server
// stops calling a dead server) and stops the manager; the CRDs and the
// kueue-system namespace stay. One Kueue per control plane at a time: the
// webhook configurations have fixed names.
func Start(ctx context.Context, cp *controlplane.ControlPlane, opts Options) (k *Kueue, err error) {
	if opts.Dir == "" {
		return nil, errors.New("kueue: Options.Dir is required")
	}
	if opts.Root == "" {
		opts.Root = Root()
	}
	if opts.LogLevel == 0 {
		opts.LogLevel = 2
	}
	bin, err := Binary(opts.Root)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	dir := opts.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	certPEM, keyPEM, pool, err := selfsigned.Loopback("jobrun kueue", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	// The webhook server, the metrics server (required by the manager
	// without internalCertManagement) and the visibility server (read from
	// ./visibility, relative to the working directory; see build-tools.sh)
	// share one certificate, for 127.0.0.1 and localhost.
	for _, sub := range []string{"webhook-certs", "metrics-certs", "visibility"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, sub, "tls.crt"), certPEM, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, sub, "tls.key"), keyPEM, 0o600); err != nil {
			return nil, err
		}
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := cp.WriteAdminKubeconfig(kubeconfig); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	webhookPort, healthPort, visibilityPort := ports[0], ports[1], ports[2]
	k = &Kueue{
		Dir:           dir,
		WebhookURL:    fmt.Sprintf("https://127.0.0.1:%d", webhookPort),
		HealthURL:     fmt.Sprintf("http://127.0.0.1:%d", healthPort),
		VisibilityURL: fmt.Sprintf("https://127.0.0.1:%d", visibilityPort),
		CAPEM:         certPEM,
		CAPool:        pool,
		exited:        make(chan struct{}),
	}
	configPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(configPath, configYAML(dir, webhookPort, healthPort, visibilityPort, opts), 0o600); err != nil {
		return nil, err
	}

	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return nil, err
	}
	k.cs = cs
	if err := installCRDs(cp.Config, filepath.Join(opts.Root, "bin", "kueue", "crds"), k.WebhookURL+"/convert", certPEM); err != nil {
		return nil, err
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating namespace %s: %w", Namespace, err)
	}

	logPath := filepath.Join(dir, "kueue.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	k.cmd = exec.Command(bin,
		"--config="+configPath,
		"--kubeconfig="+kubeconfig,
		"--metrics-cert-dir="+filepath.Join(dir, "metrics-certs"),
		"--visibility-server-port="+strconv.Itoa(visibilityPort),
		"--zap-log-level="+strconv.Itoa(opts.LogLevel),
	)
	k.cmd.Dir = dir
	k.cmd.Stdout, k.cmd.Stderr = logFile, logFile
	// Its own process group, so that a test binary's death does not leave
	// it behind on Ctrl-C; a SIGKILLed test binary still does (Pdeathsig).
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	go func() {
		k.waitErr = k.cmd.Wait()
		logFile.Close()
		close(k.exited)
	}()
	defer func() {
		if err != nil {
			_ = k.Stop()
			err = fmt.Errorf("%w\nkueue log (last lines of %s):\n%s", err, logPath, k.LogTail(60))
		}
	}()
	if err := k.waitReady(ctx); err != nil {
		return nil, err
	}
	if err := installWebhooks(ctx, cs, filepath.Join(opts.Root, "bin", "kueue", "webhook", "manifests.yaml"), k.WebhookURL, certPEM, opts.PodIntegration); err != nil {
		return nil, err
	}
	if err := k.waitWorkloadWebhook(ctx, cp.Config); err != nil {
		return nil, err
	}
	if opts.PodIntegration {
		if err := k.waitPodWebhook(ctx, cs); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Stop deletes the webhook configurations (with failurePolicy Fail, a dead
// webhook server would block every later pod create in the managed
// namespaces), then stops the manager: SIGTERM, SIGKILL after 10 s.
func (k *Kueue) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := errors.Join(
		client.IgnoreNotFound(k.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, mutatingName, metav1.DeleteOptions{})),
		client.IgnoreNotFound(k.cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, validatingName, metav1.DeleteOptions{})))
	k.stop()
	return err
}

// Kill ends the manager at once (SIGKILL), as a crash would: its webhook
// configurations stay, so the API server refuses pods of the managed
// namespaces until a Kueue started again serves them (Start replaces the
// configurations).
func (k *Kueue) Kill() {
	_ = k.cmd.Process.Kill()
	<-k.exited
}

// Exited is closed when the manager process has exited.
func (k *Kueue) Exited() <-chan struct{} { return k.exited }

// Log returns the manager's log so far.
func (k *Kueue) Log() string {
	data, _ := os.ReadFile(filepath.Join(k.Dir, "kueue.log"))
	return string(data)
}

// LogTail is the last lines of the manager's log.
func (k *Kueue) LogTail(lines int) string { return k.LogLines(lines, "") }

// LogLines is the last lines of the manager's log that contain substr.
func (k *Kueue) LogLines(lines int, substr string) string {
	var l []string
	for _, line := range strings.Split(strings.TrimRight(k.Log(), "\n"), "\n") {
		if strings.Contains(line, substr) {
			l = append(l, line)
		}
	}
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// stop sends SIGTERM, and SIGKILL after 10 s.
func (k *Kueue) stop() {
	select {
	case <-k.exited:
		return
	default:
	}
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.exited:
	case <-time.After(10 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.exited
	}
}

// waitReady waits for the manager's /readyz, which Kueue makes ready once
// its webhook server listens.
func (k *Kueue) waitReady(ctx context.Context) error {
	return k.poll(ctx, "kueue not ready", func() error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, k.HealthURL+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s: %s", resp.Status, bytes.TrimSpace(body))
		}
		return nil
	})
}

// waitWorkloadWebhook waits until the API server calls Kueue's Workload
// webhooks: a dry-run create of a Workload that only Kueue's validating
// webhook refuses (two pod sets with minCount) is refused by it. (The API
// server picks up new webhook configurations asynchronously.)
func (k *Kueue) waitWorkloadWebhook(ctx context.Context, cfg *rest.Config) error {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	podSet := func(name string) map[string]any {
		return map[string]any{"name": name, "count": int64(1), "minCount": int64(1), "template": map[string]any{
			"spec": map[string]any{"containers": []any{map[string]any{"name": "c", "image": "probe"}}},
		}}
	}
	wl := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
		"metadata": map[string]any{"name": "probe", "namespace": Namespace},
		"spec":     map[string]any{"queueName": "probe", "podSets": []any{podSet("a"), podSet("b")}},
	}}
	api := dyn.Resource(schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "workloads"}).Namespace(Namespace)
	return k.poll(ctx, "kueue's Workload webhook never answered", func() error {
		_, err := api.Create(ctx, wl, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case err == nil:
			return errors.New("a dry-run Workload with two minCounts was accepted: the validating webhook is not called yet")
		case strings.Contains(err.Error(), `admission webhook "vworkload.kb.io" denied`):
			return nil
		}
		return err
	})
}

// poll calls probe every 100 ms until it returns nil, Kueue exits or ctx
// ends; what says what the wait was for, in the error.
func (k *Kueue) poll(ctx context.Context, what string, probe func() error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		last := probe()
		if last == nil {
			return nil
		}
		select {
		case <-k.exited:
			return fmt.Errorf("kueue exited (%s): %v", what, k.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// waitPodWebhook waits until the API server calls Kueue's pod webhook: a
// dry-run create of a queued pod in a managed namespace comes back gated.
func (k *Kueue) waitPodWebhook(ctx context.Context, cs kubernetes.Interface) error {
	const probeNS = "kueue-probe"
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: probeNS, Labels: map[string]string{NamespaceLabel: "true"},
	}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", probeNS, err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: probeNS, Labels: map[string]string{QueueLabel: "probe"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "probe"}}},
	}
	return k.poll(ctx, "kueue's pod webhook never answered", func() error {
		got, err := cs.CoreV1().Pods(probeNS).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && !slices.ContainsFunc(got.Spec.SchedulingGates, func(g corev1.PodSchedulingGate) bool { return g.Name == AdmissionGate }) {
			err = errors.New("a dry-run pod came back without Kueue's scheduling gate")
		}
		return err
	})
}

// configYAML is the manager's Configuration: no leader election, no
// internal certificate management (the certificates are ours), every
// server on loopback, one integration (batch/job, or pod with
// Options.PodIntegration), for NamespaceLabel=true.
// Its controllers' concurrency is that of Kueue's release manifests
// (config/components/manager/controller_manager_config.yaml): without it
// each controller gets controller-runtime's one worker, and under a flood
// of run pods the one pod worker took 3-17 s to lift an admitted pod's
// gate and to release a finished pod's quota (make bench's flood).
func configYAML(dir string, webhookPort, healthPort, visibilityPort int, opts Options) []byte {
	gates := opts.FeatureGates
	sampling, halfLife := opts.UsageSamplingInterval, opts.UsageHalfLife
	// Kueue runs at least one integration (none listed means batch/job).
	framework := "batch/job"
	if opts.PodIntegration {
		framework = "pod"
	}
	if sampling <= 0 {
		sampling = 10 * time.Second
	}
	if halfLife <= 0 {
		halfLife = 10 * time.Minute
	}
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: %s
health:
  healthProbeBindAddress: 127.0.0.1:%d
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: %d
  certDir: %s
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
controller:
  groupKindConcurrency:
    Pod: 5
    Workload.kueue.x-k8s.io: 5
    LocalQueue.kueue.x-k8s.io: 1
    Cohort.kueue.x-k8s.io: 1
    ClusterQueue.kueue.x-k8s.io: 1
    ResourceFlavor.kueue.x-k8s.io: 1
clientConnection:
  qps: 100
  burst: 200
visibilityServer:
  bindAddress: 127.0.0.1
  bindPort: %d
manageJobsWithoutQueueName: false
managedJobsNamespaceSelector:
  matchLabels:
    %s: "true"
integrations:
  frameworks:
  - %s
admissionFairSharing:
  usageSamplingInterval: %s
  usageHalfLifeTime: %s
`, Namespace, healthPort, webhookPort, filepath.Join(dir, "webhook-certs"), visibilityPort, NamespaceLabel, framework, sampling, halfLife)
	if len(gates) > 0 {
		b.WriteString("featureGates:\n")
		names := make([]string, 0, len(gates))
		for n := range gates {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			fmt.Fprintf(&b, "  %s: %t\n", n, gates[n])
		}
	}
	return []byte(b.String())
}

// installCRDs installs (or updates) Kueue's CRDs from dir, with the
// conversion webhook of those that have one pointed at convertURL, and waits
// until they are served.
func installCRDs(cfg *rest.Config, dir, convertURL string, caPEM []byte) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(data, crd); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if slices.Contains(conversionCRDs, crd.Name) {
			crd.Spec.Conversion = &apiextensionsv1.CustomResourceConversion{
				Strategy: apiextensionsv1.WebhookConverter,
				Webhook: &apiextensionsv1.WebhookConversion{
					ClientConfig:             &apiextensionsv1.WebhookClientConfig{URL: &convertURL, CABundle: caPEM},
					ConversionReviewVersions: []string{"v1"},
				},
			}
		}
		crds = append(crds, crd)
	}
	if len(crds) == 0 {
		return fmt.Errorf("no CRDs in %s", dir)
	}
	_, err = envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{CRDs: crds, MaxTime: time.Minute})
	if err != nil {
		return fmt.Errorf("installing Kueue's CRDs: %w", err)
	}
	return nil
}

// installWebhooks creates (or replaces) Kueue's webhook configurations from
// its manifests.yaml: only the webhooks for kueue.x-k8s.io kinds, and with
// pods those for pods, limited to NamespaceLabel=true namespaces; each
// pointed at baseURL+its path.
func installWebhooks(ctx context.Context, cs kubernetes.Interface, path, baseURL string, caPEM []byte, pods bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	decoder := serializer.NewCodecFactory(scheme.Scheme).UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	nsSelector := &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceLabel: "true"}}
	clientConfig := func(svc *admissionv1.ServiceReference) admissionv1.WebhookClientConfig {
		u := baseURL
		if svc != nil && svc.Path != nil {
			u += *svc.Path
		}
		return admissionv1.WebhookClientConfig{URL: &u, CABundle: caPEM}
	}
	var found int
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		switch o := obj.(type) {
		case *admissionv1.MutatingWebhookConfiguration:
			found++
			keep := ours(o.Webhooks, func(w *admissionv1.MutatingWebhook) ([]admissionv1.RuleWithOperations, *admissionv1.WebhookClientConfig, **metav1.LabelSelector) {
				return w.Rules, &w.ClientConfig, &w.NamespaceSelector
			}, clientConfig, nsSelector, pods)
			wc := &admissionv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: mutatingName}, Webhooks: keep}
			if err := replace(ctx, cs.AdmissionregistrationV1().MutatingWebhookConfigurations(), mutatingName, wc); err != nil {
				return err
			}
		case *admissionv1.ValidatingWebhookConfiguration:
			found++
			keep := ours(o.Webhooks, func(w *admissionv1.ValidatingWebhook) ([]admissionv1.RuleWithOperations, *admissionv1.WebhookClientConfig, **metav1.LabelSelector) {
				return w.Rules, &w.ClientConfig, &w.NamespaceSelector
			}, clientConfig, nsSelector, pods)
			wc := &admissionv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: validatingName}, Webhooks: keep}
			if err := replace(ctx, cs.AdmissionregistrationV1().ValidatingWebhookConfigurations(), validatingName, wc); err != nil {
				return err
			}
		}
	}
	if found != 2 {
		return fmt.Errorf("%s: found %d webhook configurations, want a mutating and a validating one", path, found)
	}
	return nil
}

// ours keeps the webhooks (mutating or validating: fields gives a
// webhook's rules, client config and namespace selector) of Kueue's own
// kinds and, with withPods, of pods, pointed at the manager by
// clientConfig; the pod webhooks only for nsSelector's namespaces.
func ours[W any](hooks []W, fields func(*W) ([]admissionv1.RuleWithOperations, *admissionv1.WebhookClientConfig, **metav1.LabelSelector),
	clientConfig func(*admissionv1.ServiceReference) admissionv1.WebhookClientConfig, nsSelector *metav1.LabelSelector, withPods bool) []W {
	var keep []W
	for _, w := range hooks {
		rules, cc, sel := fields(&w)
		kueueKind, pods := classify(rules)
		if !kueueKind && !(pods && withPods) {
			continue
		}
		*cc = clientConfig(cc.Service)
		if pods {
			*sel = nsSelector
		}
		keep = append(keep, w)
	}
	return keep
}

// webhookConfigs is the API of one kind of webhook configuration.
type webhookConfigs[T any] interface {
	Delete(ctx context.Context, name string, opts metav1.DeleteOptions) error
	Create(ctx context.Context, obj *T, opts metav1.CreateOptions) (*T, error)
}

// replace creates obj, named name, in place of any earlier one.
func replace[T any](ctx context.Context, api webhookConfigs[T], name string, obj *T) error {
	if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if _, err := api.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating %s: %w", name, err)
	}
	return nil
}

// classify says whether rules are about Kueue's own kinds, or about pods.
func classify(rules []admissionv1.RuleWithOperations) (kueueKind, pods bool) {
	for _, r := range rules {
		for _, g := range r.APIGroups {
			if g == "kueue.x-k8s.io" {
				kueueKind = true
			}
			if g == "" && slices.Contains(r.Resources, "pods") {
				pods = true
			}
		}
	}
	return kueueKind, pods
}

// VisibilityConfig is base (its credentials) pointed at Kueue's visibility
// server directly on loopback, trusting its certificate: the local stand-in
// for the API server's aggregation, which a cluster's Kueue install
// registers (an APIService) and a local control plane has not.
func (k *Kueue) VisibilityConfig(base *rest.Config) *rest.Config {
	cfg := rest.CopyConfig(base)
	cfg.Host = k.VisibilityURL
	cfg.TLSClientConfig.CAFile = ""
	cfg.TLSClientConfig.CAData = k.CAPEM
	return cfg
}

// VisibilityCAFile holds the visibility server's certificate (for
// --kueue-visibility-ca-file).
func (k *Kueue) VisibilityCAFile() string { return filepath.Join(k.Dir, "visibility", "tls.crt") }

// TLSConfig trusts the webhook and visibility servers' certificate.
func (k *Kueue) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: k.CAPool, MinVersion: tls.VersionTLS12}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 (free when
// asked: another process may still take one before Kueue binds it).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
