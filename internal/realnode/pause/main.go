// Command pause is the real-node cluster's only image: containerd's sandbox
// (pause) image and the test's workload. Static, no libc, so it runs FROM
// scratch.
//
// Without flags it waits for SIGTERM or SIGINT and exits 0. -say prints a line
// first; -exit returns at once; -listen serves -say over HTTP until the
// signal. It prints "got <signal>" when it is stopped, so that a test can read
// in the pod's log that the kubelet delivered SIGTERM.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	say := flag.String("say", "", "a line to print on start (and to serve with -listen)")
	exit := flag.Bool("exit", false, "exit 0 after printing instead of waiting for a signal")
	listen := flag.String("listen", "", "serve -say over HTTP on this address")
	flag.Parse()
	if *say != "" {
		fmt.Println(*say)
	}
	if *exit {
		return
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	if *listen != "" {
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go func() {
			_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprintln(w, *say)
			}))
		}()
	}
	fmt.Printf("got %s\n", <-signals)
}
