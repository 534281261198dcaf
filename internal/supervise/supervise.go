// Package supervise runs child processes the way jobrun's local clusters and
// dev node do: each in a process group of its own, killed with its parent,
// its output in a log file, stopped with SIGTERM, a grace period and SIGKILL.
package supervise

import (
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is a started child.
type Process struct {
	// Name says what the process is, for log lines and errors.
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done closes
}

// Start starts cmd with its output in logFile, in a process group of its
// own (so a signal reaches the whole group, and a Ctrl-C in the terminal
// reaches the parent only), SIGKILLed if the parent dies. The rest of
// cmd.SysProcAttr is kept (a Credential, say: Go sets the parent-death signal
// after changing the user, which would otherwise clear it). logFile is closed
// when the process has exited, or at once if it cannot start.
func Start(name string, cmd *exec.Cmd, logFile *os.File) (*Process, error) {
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pdeathsig = true, syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	p := &Process{Name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id, which is also its process group's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process exited (exec.Cmd.Wait's error); valid once Done is
// closed.
func (p *Process) Err() error { return p.err }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.Pid(), sig)
}

// Kill SIGKILLs the process group and waits until the process has exited.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop stops a running process: SIGTERM to the process group, then, if it
// has not exited within grace, graceOver (when not nil) and Kill. It returns
// once the process has exited.
func (p *Process) Stop(grace time.Duration, graceOver func()) {
	if p.Exited() {
		return
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		if graceOver != nil {
			graceOver()
		}
		p.Kill()
	}
}
