// Package image builds jobrun's container image, and a pause image for a test
// node, without Docker: FROM scratch, one reproducible layer holding a static
// binary (and, for jobrun, the CA certificates its outbound TLS needs), a
// config with a numeric non-root user and no shell. The same binary and
// certificates always give the same image digest.
//
// The Dockerfile builds the same contents for people with a Docker engine;
// TestDockerfileMatchesJobrun keeps the two in step.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// JobrunPath is where jobrun's binary lives in its image, as in the Dockerfile.
const JobrunPath = "/jobrun"

// JobrunUser is the numeric user:group jobrun runs as (distroless's nonroot,
// which the chart's and README's securityContexts assume).
const JobrunUser = "65532:65532"

// CACertificatesPath is where Go's crypto/x509 looks first on Linux for the
// system roots; jobrun's TLS calls (SMTP, JWKS, RevenueCat) verify against it.
const CACertificatesPath = "/etc/ssl/certs/ca-certificates.crt"

// PauseUser is the user of the pause image, as registry.k8s.io/pause's.
const PauseUser = "65535:65535"

// GoBuildFlags are the `go build` flags of the binaries in images: no local
// paths, no symbol table or DWARF (stack traces keep function names and
// lines). The Dockerfile uses the same with CGO_ENABLED=0.
var GoBuildFlags = []string{"-trimpath", `-ldflags=-s -w`}

// File is one regular file of the image's layer.
type File struct {
	// Path is the absolute path in the image.
	Path string
	// Source is the file on the build machine whose bytes are copied.
	Source string
	// Mode is the permission bits (owner is always root:root, 0:0).
	Mode int64
}

// Spec describes an image of one layer on scratch.
type Spec struct {
	// Files are the layer's regular files; their parent directories are
	// added with mode 0755.
	Files []File
	// Entrypoint, Cmd, User and WorkingDir go into the image config.
	Entrypoint []string
	Cmd        []string
	User       string
	WorkingDir string
	// Arch is the GOARCH of the binaries ("" means this machine's).
	Arch string
	// Created is the time of every file and of the config: the Unix epoch
	// when zero. Set it from SOURCE_DATE_EPOCH for a meaningful date.
	Created time.Time
}

// Jobrun is the Spec of jobrun's image around a static jobrun binary and a
// CA bundle (usually the build machine's /etc/ssl/certs/ca-certificates.crt).
// It holds what the Dockerfile's image holds: the binary at /jobrun, the CA
// certificates, user 65532:65532, entrypoint /jobrun, default role manager.
// Time zones are compiled into the binary (time/tzdata); jobrun needs no
// /tmp, /etc/passwd or shell.
func Jobrun(binary, caCertificates string) Spec {
	return Spec{
		Files: []File{
			{Path: JobrunPath, Source: binary, Mode: 0o755},
			{Path: CACertificatesPath, Source: caCertificates, Mode: 0o644},
		},
		Entrypoint: []string{JobrunPath},
		Cmd:        []string{"manager"},
		User:       JobrunUser,
		WorkingDir: "/",
	}
}

// Pause is the Spec of a pod sandbox ("pause") image around a static binary
// such as hack/pause's, for a node that cannot pull registry.k8s.io/pause.
func Pause(binary string) Spec {
	return Spec{
		Files:      []File{{Path: "/pause", Source: binary, Mode: 0o755}},
		Entrypoint: []string{"/pause"},
		User:       PauseUser,
		WorkingDir: "/",
	}
}

// Build builds the image of spec. The layer is in memory (jobrun's is ~30 MB
// compressed) and compressed once.
func Build(spec Spec) (v1.Image, error) {
	created := spec.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	created = created.UTC()
	arch := spec.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	layerTar, err := layerTar(spec.Files, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "jobrun.dev/jobrun/internal/image", Comment: "static binary on scratch"},
	})
	if err != nil {
		return nil, fmt.Errorf("appending the layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Created = v1.Time{Time: created}
	cfg.OS = "linux"
	cfg.Architecture = arch
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Cmd = spec.Cmd
	cfg.Config.User = spec.User
	cfg.Config.WorkingDir = spec.WorkingDir
	return mutate.ConfigFile(img, cfg)
}

// layerTar writes files and their parent directories, sorted by path, with
// fixed owners, modes and times, so the same inputs give the same bytes.
func layerTar(files []File, mtime time.Time) ([]byte, error) {
	type entry struct {
		hdr    *tar.Header
		source string
	}
	entries := map[string]entry{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, fmt.Errorf("image path %q: want a clean absolute path", f.Path)
		}
		if _, dup := entries[f.Path]; dup {
			return nil, fmt.Errorf("image path %q given twice", f.Path)
		}
		info, err := os.Stat(f.Source)
		if err != nil {
			return nil, err
		}
		if !info.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: not a regular file", f.Source)
		}
		entries[f.Path] = entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: f.Mode, Size: info.Size(), ModTime: mtime, Format: tar.FormatPAX}, source: f.Source}
		for dir := path.Dir(f.Path); dir != "/"; dir = path.Dir(dir) {
			if e, ok := entries[dir]; ok && e.hdr.Typeflag != tar.TypeDir {
				return nil, fmt.Errorf("image path %q is both a file and a directory", dir)
			}
			entries[dir] = entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(dir, "/") + "/", Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}}
		}
	}
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := entries[p]
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, err
		}
		if e.source == "" {
			continue
		}
		if err := copyFile(tw, e.source, e.hdr.Size); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func copyFile(w io.Writer, source string, size int64) error {
	f, err := os.Open(source)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	if n != size {
		return fmt.Errorf("%s changed while it was read (%d bytes, was %d)", source, n, size)
	}
	return nil
}

// WriteArchive writes img as a docker-archive tarball tagged ref, the format
// of `docker save` that `docker load` and `ctr -n k8s.io images import` read.
func WriteArchive(file string, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	return tarball.WriteToFile(file, tag, img)
}

// Push writes img to a registry as ref, with the credentials of the default
// keychain (~/.docker/config.json, credential helpers).
func Push(ctx context.Context, ref string, img v1.Image) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	return remote.Write(r, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
}

// GoBuild builds the static binary of the Go package pkg (a path such as
// ./cmd/jobrun, relative to dir) into out for linux/arch ("" means this
// machine's), with GoBuildFlags and CGO_ENABLED=0.
func GoBuild(ctx context.Context, dir, pkg, out, arch string) error {
	if arch == "" {
		arch = runtime.GOARCH
	}
	args := append([]string{"build"}, GoBuildFlags...)
	args = append(args, "-o", out, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return errors.Join(fmt.Errorf("go %s: %w", strings.Join(args, " "), err), errors.New(stderr.String()))
	}
	return nil
}
