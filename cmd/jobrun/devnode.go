package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"jobrun.dev/jobrun/internal/devnode"
)

// imageFlags collect --image image=binary mappings.
type imageFlags map[string]string

func (f imageFlags) String() string { return fmt.Sprint(map[string]string(f)) }

func (f imageFlags) Set(v string) error {
	image, bin, ok := strings.Cut(v, "=")
	if !ok || image == "" || bin == "" {
		return fmt.Errorf("want image=binary, got %q", v)
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	f[image] = abs
	return nil
}

// runDevNode runs the dev node agent: the kubelet's part in the local
// default, running job pods as local processes.
func runDevNode(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("jobrun devnode", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "Path to a kubeconfig. Empty: $KUBECONFIG.")
	nodeName := fs.String("node-name", "jobrun-dev-node", "Name of the Node to register.")
	workDir := fs.String("work-dir", filepath.Join(os.TempDir(), "jobrun-devnode"), "Folder for each pod's kubeconfig and log.")
	images := imageFlags{}
	fs.Var(images, "image", "image=binary: run containers of image with the local binary as entrypoint (repeatable). Default: jobrun:dev=this binary.")
	opts := zap.Options{}
	opts.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	if len(images) == 0 {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		images["jobrun:dev"] = self
	}
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	return devnode.Run(ctx, devnode.Options{
		NodeName: *nodeName, Config: cfg, Images: images, WorkDir: *workDir,
		Log: ctrl.Log.WithName("devnode"),
	})
}
