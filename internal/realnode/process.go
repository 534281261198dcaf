package realnode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"jobrun.dev/jobrun/internal/supervise"
)

// process is a daemon of the cluster, run inside the namespace.
type process struct {
	*supervise.Process
	log string
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
	cmd := exec.Command("nsenter", append([]string{"--net=" + c.NetnsPath, "--", path}, args...)...)
	cmd.Dir = c.Dir
	sp, err := supervise.Start(name, cmd, logFile)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{Process: sp, log: logPath}
	c.procs = append(c.procs, p)
	c.opts.Log("started %s (pid %d), log %s", name, p.Pid(), logPath)
	return p, nil
}

// stop sends SIGTERM (if graceful) and waits up to 15 s, then SIGKILLs the
// process group.
func (p *process) stop(graceful bool) {
	switch {
	case p.Exited():
	case graceful:
		p.Stop(15*time.Second, nil)
	default:
		p.Kill()
	}
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
