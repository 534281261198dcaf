package realnode

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// PauseImage is the node's only image, imported into containerd at start:
// containerd's sandbox image and, with its flags (see ./pause), a workload
// for tests. Pods that use it need imagePullPolicy Never or IfNotPresent.
const PauseImage = "jobrun.local/pause:v1"

// PauseUser is the user the image runs as unless a pod says otherwise.
const PauseUser = "65532:65532"

// buildPauseImage builds ./pause (static) and writes it as a docker-archive
// of PauseImage at archive: FROM scratch, one layer with /pause and an
// empty /tmp, entrypoint /pause, a non-root user.
func buildPauseImage(ctx context.Context, root, dir, archive string) error {
	bin := filepath.Join(dir, "pause")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./internal/realnode/pause")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the pause program: %w: %s", err, out)
	}
	program, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	layerTar, err := tarOf(map[string][]byte{"pause": program})
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = []string{"/pause"}
	cfg.Config.User = PauseUser
	cfg.Config.Env = []string{"PATH=/"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return err
	}
	tag, err := name.NewTag(PauseImage)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(archive, tag, img)
}

// tarOf returns a layer holding the executables files (name → content) and
// a world-writable /tmp, which programs such as Go's os.TempDir users expect.
func tarOf(files map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch}); err != nil {
		return nil, err
	}
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// importImage imports a docker-archive into containerd's k8s.io namespace,
// where the CRI plugin (and so the kubelet) sees it.
func importImage(ctx context.Context, socket, archive string) error {
	cmd := exec.CommandContext(ctx, "ctr", "-n", "k8s.io", "-a", socket, "images", "import", archive)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %w: %s", archive, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ImportImage imports a docker-archive (such as internal/image's
// WriteArchive writes) into the node's containerd, where pods with
// imagePullPolicy Never or IfNotPresent find it.
func (c *Cluster) ImportImage(ctx context.Context, archive string) error {
	return importImage(ctx, c.path("containerd", "containerd.sock"), archive)
}
