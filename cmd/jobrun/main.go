// Command jobrun is the one binary of the jobrun image. Its first argument
// picks the role:
//
//	jobrun manager [flags]   the operator: leader election, probes, metrics, reconcilers
//	jobrun runner [flags]    inside a run's pod: executes the run with the built-in handlers
//	jobrun devnode [flags]   local default only: a node that runs job pods as local processes
//	jobrun token [flags]     mint a development JWT for the REST API
//	jobrun apikey create     create an API key for the REST API (printed once)
//	jobrun uninstall [flags] delete what jobrun made at run time: runs, guards, the leader Lease
//
// The REST API is served by the manager (--api-bind-address). One binary, so
// one image serves every role.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func usage() {
	fmt.Fprintf(os.Stderr, "usage: jobrun <role> [flags]\n\nroles:\n  manager   run the operator (jobrun manager -h for its flags)\n  runner    execute one run inside its pod (jobrun runner -h)\n  devnode   run job pods as local processes, for the local default (jobrun devnode -h)\n  token     mint a development JWT for the REST API (jobrun token -h)\n  apikey    create an API key for the REST API: jobrun apikey create --team TEAM\n  uninstall delete the runs, guards and leader Lease jobrun made in a namespace (jobrun uninstall -h)\n")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var err error
	switch role, args := os.Args[1], os.Args[2:]; role {
	case "manager":
		err = runManager(ctx, args)
	case "apikey":
		err = runAPIKey(ctx, args)
	case "token":
		err = runToken(ctx, args)
	case "uninstall":
		err = runUninstall(ctx, args)
	case "devnode":
		err = runDevNode(ctx, args)
	case "runner":
		// The exit code tells the controller how the run ended.
		code, err := runRunner(ctx, args)
		if err != nil {
			fmt.Fprintf(os.Stderr, "jobrun runner: %v\n", err)
		}
		stop()
		os.Exit(code)
	case "-h", "-help", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "jobrun: unknown role %q\n\n", role)
		usage()
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return // -h: the role's flags printed its usage
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "jobrun %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
