package supervise

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func start(t *testing.T, script string) (*Process, string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start("sh", exec.Command("sh", "-c", script), f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !p.Exited() {
			p.Kill()
		}
	})
	waitLog(t, logPath, "ready")
	return p, logPath
}

// waitLog waits until the log at path holds want: the script is past its
// setup.
func waitLog(t *testing.T, path, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), want) {
			return
		}
	}
	t.Fatalf("the log never held %q", want)
}

func TestStopWithinGrace(t *testing.T) {
	p, _ := start(t, "echo ready; exec sleep 30")
	graceOver := false
	p.Stop(10*time.Second, func() { graceOver = true })
	if graceOver || !p.Exited() {
		t.Errorf("SIGTERM did not stop sleep: grace over %v, exited %v", graceOver, p.Exited())
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	p, _ := start(t, `trap "" TERM; echo ready; while :; do sleep 0.1; done`)
	graceOver := false
	p.Stop(300*time.Millisecond, func() { graceOver = true })
	if !graceOver || !p.Exited() {
		t.Errorf("a process ignoring SIGTERM: grace over %v, exited %v", graceOver, p.Exited())
	}
}

// TestStartKeepsCredential: a caller's SysProcAttr.Credential survives Start
// (internal/pgtest runs PostgreSQL as an unprivileged user this way).
func TestStartKeepsCredential(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing the user needs root")
	}
	logPath := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("id", "-u")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	p, err := Start("id", cmd, f)
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if b, _ := os.ReadFile(logPath); strings.TrimSpace(string(b)) != "65534" {
		t.Errorf("id -u printed %q, want 65534", b)
	}
	if cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL || !cmd.SysProcAttr.Setpgid {
		t.Errorf("SysProcAttr %+v: no process group or parent-death signal", cmd.SysProcAttr)
	}
}
