package realnode

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"jobrun.dev/jobrun/internal/image"
)

// PauseImage is the node's only image, imported into containerd at start:
// containerd's sandbox (pause) image and, with its flags (see ./pause), a
// workload for tests. Pods that use it need imagePullPolicy Never or
// IfNotPresent. It runs as image.PauseUser.
const PauseImage = "jobrun.local/pause:v1"

// buildPauseImage builds ./pause and writes it as a docker-archive of
// PauseImage at archive, as internal/image builds every image of ours.
func buildPauseImage(ctx context.Context, root, dir, archive string) error {
	bin := filepath.Join(dir, "pause")
	if err := image.GoBuild(ctx, root, "./internal/realnode/pause", bin, ""); err != nil {
		return fmt.Errorf("building the pause program: %w", err)
	}
	img, err := image.Build(image.Pause(bin))
	if err != nil {
		return err
	}
	return image.WriteArchive(archive, PauseImage, img)
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
