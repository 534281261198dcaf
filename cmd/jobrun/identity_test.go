package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/test/testenv"
)

// serviceAccountKubeconfig writes a kubeconfig holding a token of service
// account ns/name (TokenRequest), so that a process runs with exactly the
// permissions an install gave that account.
func serviceAccountKubeconfig(t *testing.T, ns, name string) string {
	t.Helper()
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := env.Client.SubResource("token").Create(testenv.Context(t), sa, tr); err != nil {
		t.Fatalf("token of %s/%s: %v", ns, name, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData, InsecureSkipTLSVerify: env.Config.Insecure}
	cfg.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["sa"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "sa", Namespace: ns}
	cfg.CurrentContext = "sa"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// startJobrun runs `jobrun manager args...` with the extra environment
// until the test ends, then stops it with SIGTERM (as the kubelet does) and
// fails the test unless it exits cleanly within 30 s.
func startJobrun(t *testing.T, env []string, args ...string) {
	t.Helper()
	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"manager"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("jobrun manager exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("jobrun manager did not stop on SIGTERM")
		}
	})
}

// TestManagerAndAPIRunAsTheirServiceAccounts installs config/default and
// runs the manager and a standalone REST API replica with tokens of the
// service accounts it installs (jobrun-manager: a Role in jobrun-system;
// jobrun-api: its own Role, no pods, no status): the manager, watching only
// its namespace, starts a run's pod and judges the JobType; the API serves a
// trigger and a read.
func TestManagerAndAPIRunAsTheirServiceAccounts(t *testing.T) {
	const ns = "jobrun-system"
	ctx := testenv.Context(t)
	manifests := filepath.Join(t.TempDir(), "jobrun.yaml")
	if err := os.WriteFile(manifests, []byte(env.Kubectl(t, "kustomize", filepath.Join(env.Root, "config", "default"))), 0o644); err != nil {
		t.Fatal(err)
	}
	env.Kubectl(t, "apply", "--server-side", "--force-conflicts", "-f", manifests)

	jt := &jobsv1alpha1.JobType{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "identity-check"},
		Spec: jobsv1alpha1.JobTypeSpec{JobType: "identity_check", Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "handler", Image: "jobrun:dev", Args: []string{"runner"}}},
		}}},
	}
	project := &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "identity-project"}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "identity-team"}}
	for _, obj := range []client.Object{jt, project} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		bg := context.Background()
		_ = env.Client.DeleteAllOf(bg, &jobsv1alpha1.JobRun{}, client.InNamespace(ns), client.MatchingLabels{jobsv1alpha1.LabelJobType: "identity_check"})
		_ = env.Client.DeleteAllOf(bg, &corev1.Pod{}, client.InNamespace(ns), client.MatchingLabels{jobsv1alpha1.LabelJobType: "identity_check"})
		_ = env.Client.Delete(bg, jt)
		_ = env.Client.Delete(bg, project)
	})

	probe := testenv.FreeAddr(t)
	startJobrun(t, nil, "--kubeconfig", serviceAccountKubeconfig(t, ns, "jobrun-manager"), "--namespace", ns,
		"--leader-election-namespace", ns, "--metrics-bind-address=0", "--health-probe-bind-address", probe)
	apiProbe, api := testenv.FreeAddr(t), testenv.FreeAddr(t)
	secret := "0123456789abcdef0123456789abcdef"
	startJobrun(t, []string{"JOBRUN_JWT_SECRET=" + secret}, "--kubeconfig", serviceAccountKubeconfig(t, ns, "jobrun-api"),
		"--run-controllers=false", "--leader-elect=false", "--metrics-bind-address=0",
		"--health-probe-bind-address", apiProbe, "--api-bind-address", api, "--namespace", ns)
	testenv.Eventually(t, time.Minute, expectOK("http://"+api+"/readyz"))

	bin, err := buildJobrun()
	if err != nil {
		t.Fatal(err)
	}
	mint := exec.Command(bin, "token", "--team", "identity-team")
	mint.Env = append(os.Environ(), "JOBRUN_JWT_SECRET="+secret)
	tok, err := mint.Output()
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+api+path, bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	code, out := call(http.MethodPost, "/v1/teams/identity-team/jobs/trigger", `{"job_type":"identity_check","project_id":"identity-project"}`)
	if code != http.StatusCreated {
		t.Fatalf("trigger as jobrun-api: %d %v, want 201", code, out)
	}
	id, _ := out["job_run"].(map[string]any)["id"].(string)
	if code, out := call(http.MethodGet, "/v1/jobs/"+id, ""); code != http.StatusOK {
		t.Errorf("GET the run as jobrun-api: %d %v", code, out)
	}

	// The manager, as jobrun-manager, starts the run's pod and judges the
	// JobType.
	testenv.Eventually(t, time.Minute, func(ctx context.Context) error {
		pod := &corev1.Pod{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: id + "-1"}, pod); err != nil {
			return fmt.Errorf("the run's pod: %w", err)
		}
		if pod.Spec.ServiceAccountName != "jobrun-runner" {
			return fmt.Errorf("pod runs as %q, want jobrun-runner", pod.Spec.ServiceAccountName)
		}
		got := &jobsv1alpha1.JobType{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(jt), got); err != nil {
			return err
		}
		if c := meta.FindStatusCondition(got.Status.Conditions, jobsv1alpha1.JobTypeConditionReady); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("JobType Ready = %+v", c)
		}
		return nil
	})
}
