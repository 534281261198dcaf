// Command pause is a pod sandbox's process, like registry.k8s.io/pause: it
// holds the pod's namespaces by sleeping until SIGTERM or SIGINT. A node that
// cannot pull images uses the image that internal/image builds around it
// (make pause-image). As PID 1 of a pod that shares its process namespace it
// also reaps orphaned children.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return
		}
		for {
			// Reap every exited child; stop when none is left or none has exited.
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
