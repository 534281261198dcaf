// Command image builds jobrun's container image (or a pause image) without
// Docker, with internal/image: FROM scratch, one reproducible layer, a
// non-root user. It writes a docker-archive for `ctr images import` or
// `docker load`, and/or pushes to a registry.
//
//	go run ./hack/image --package ./cmd/jobrun --tag jobrun:dev --out bin/image/jobrun.tar
//	go run ./hack/image --package ./cmd/jobrun --tag registry.example.com/jobrun:0.1.0 --push
//	go run ./hack/image --kind pause --package ./hack/pause --tag localhost/jobrun-pause:dev --out bin/image/pause.tar
//
// SOURCE_DATE_EPOCH, when set, dates the files and the config; else the Unix
// epoch.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"jobrun.dev/jobrun/internal/image"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	kind := fs.String("kind", "jobrun", "Which image: jobrun or pause.")
	pkg := fs.String("package", "", "Go package to build the binary from (./cmd/jobrun, ./hack/pause), built static with the Dockerfile's flags. Or --binary.")
	binary := fs.String("binary", "", "A static binary already built (instead of --package); it is written there when --package is set too.")
	caCerts := fs.String("ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle of the build machine to put in jobrun's image.")
	arch := fs.String("arch", "", "GOARCH of the image (default: this machine's).")
	tag := fs.String("tag", "jobrun:dev", "Image reference to tag the archive with and push to.")
	out := fs.String("out", "", "Write a docker-archive tarball here.")
	push := fs.Bool("push", false, "Push the image to --tag's registry (credentials from ~/.docker/config.json).")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" && !*push {
		return errors.New("nothing to do: give --out and/or --push")
	}
	if *pkg != "" {
		if *binary == "" {
			dir, err := os.MkdirTemp("", "jobrun-image-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			*binary = filepath.Join(dir, *kind)
		}
		start := time.Now()
		if err := image.GoBuild(ctx, ".", *pkg, *binary, *arch); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "built %s in %.1fs\n", *binary, time.Since(start).Seconds())
	}
	if *binary == "" {
		return errors.New("give --package or --binary")
	}

	var spec image.Spec
	switch *kind {
	case "jobrun":
		spec = image.Jobrun(*binary, *caCerts)
	case "pause":
		spec = image.Pause(*binary)
	default:
		return fmt.Errorf("--kind %q: want jobrun or pause", *kind)
	}
	spec.Arch = *arch
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
		}
		spec.Created = time.Unix(sec, 0)
	}

	start := time.Now()
	img, err := image.Build(spec)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	// The config's digest is the image ID that `ctr images import` and
	// `docker load` keep; they write a manifest of their own, so the
	// manifest digest (a registry's) shows only after a push.
	id, err := img.ConfigName()
	if err != nil {
		return err
	}
	if *out != "" {
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			return err
		}
		if err := image.WriteArchive(*out, *tag, img); err != nil {
			return err
		}
		info, err := os.Stat(*out)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "wrote %s (%.1f MB) in %.1fs\n", *out, float64(info.Size())/1e6, time.Since(start).Seconds())
	}
	if *push {
		if err := image.Push(ctx, *tag, img); err != nil {
			return fmt.Errorf("pushing %s: %w", *tag, err)
		}
		fmt.Fprintf(os.Stderr, "pushed %s\n", *tag)
	}
	fmt.Fprintf(os.Stderr, "image id (config digest) %s\n", id)
	fmt.Printf("%s@%s\n", *tag, digest)
	return nil
}
