package realnode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// process is a daemon of the cluster, run inside the namespace.
type process struct {
	name, log string
	cmd       *exec.Cmd
	exited    chan struct{}
	err       error // set before exited closes
}

// start runs path with args inside the namespace (nsenter --net, which,
// unlike `ip netns exec`, leaves /sys and so the cgroup mounts alone), in a
// process group of its own, its output in Dir/logs/NAME.log.
func (c *Cluster) start(_ context.Context, name, path string, args ...string) (*process, error) {
	logPath := c.path("logs", name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + c.NetnsPath, "--", path}, args...)...)
	cmd.Dir = c.Dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, log: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	c.procs = append(c.procs, p)
	c.opts.Log("started %s (pid %d), log %s", name, cmd.Process.Pid, logPath)
	return p, nil
}

// stop sends SIGTERM (if graceful) and waits up to 15 s, then SIGKILLs the
// process group.
func (p *process) stop(graceful bool) {
	select {
	case <-p.exited:
		return
	default:
	}
	if graceful {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.exited:
			return
		case <-time.After(15 * time.Second):
		}
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(string(bytes.TrimRight(b, "\n")), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
