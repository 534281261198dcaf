package realnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// The node's addresses inside its network namespace: a veth pair (this
// kernel has no dummy links) whose first end holds NodeIP and the default
// route, so that kubelet and kube-proxy find a node address.
const (
	nodeIP      = "10.99.0.1"
	nodeCIDR    = nodeIP + "/24"
	podCIDR     = "10.88.0.0/16"
	serviceCIDR = "10.96.0.0/16"
	// apiServiceIP is the first address of serviceCIDR: the kubernetes
	// Service, which the API server's serving certificate must name.
	apiServiceIP = "10.96.0.1"
)

// netnsPath is where `ip netns add` puts a namespace's handle.
func netnsPath(name string) string { return "/run/netns/" + name }

// createNetns creates the namespace name with lo up and the veth pair.
func createNetns(ctx context.Context, name string) error {
	if err := ip(ctx, "netns", "add", name); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "veth0", "type", "veth", "peer", "name", "veth1"},
		{"addr", "add", nodeCIDR, "dev", "veth0"},
		{"link", "set", "veth0", "up"},
		{"link", "set", "veth1", "up"},
		{"route", "add", "default", "dev", "veth0"},
	} {
		if err := ip(ctx, append([]string{"-n", name}, args...)...); err != nil {
			return err
		}
	}
	return nil
}

// deleteNetns deletes the namespace; a namespace already gone is no error.
func deleteNetns(name string) error {
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return ip(context.Background(), "netns", "delete", name)
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netnsDialer returns a DialContext that connects from inside the network
// namespace at path: the socket is created on an OS thread that has entered
// the namespace and stays in it, wherever it is used afterwards. The thread
// goes back to this process's namespace before it is released; if it cannot,
// it stays locked, and Go ends it with its goroutine.
func netnsDialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			conn, restored, err := dialIn(ctx, path, network, addr)
			if restored {
				runtime.UnlockOSThread()
			}
			done <- result{conn, err}
		}()
		r := <-done
		return r.conn, r.err
	}
}

// dialIn must run on a locked OS thread.
func dialIn(ctx context.Context, path, network, addr string) (conn net.Conn, restored bool, err error) {
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, true, err
	}
	defer self.Close()
	target, err := os.Open(path)
	if err != nil {
		return nil, true, fmt.Errorf("opening network namespace: %w", err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("entering network namespace %s: %w", path, err)
	}
	var d net.Dialer
	conn, err = d.DialContext(ctx, network, addr)
	restored = unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil
	return conn, restored, err
}
