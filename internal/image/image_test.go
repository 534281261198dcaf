package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// repoRoot is the module's root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildPause builds hack/pause: a small static binary for most tests.
func buildPause(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "pause")
	if err := GoBuild(context.Background(), repoRoot(t), "./hack/pause", out, ""); err != nil {
		t.Fatal(err)
	}
	return out
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestBuildIsReproducible: the digest depends on the bytes of the inputs only,
// not on their mtime, mode or path on the build machine, nor on when the
// build ran; and it does change when a byte or the date changes.
func TestBuildIsReproducible(t *testing.T) {
	bin := buildPause(t)
	first, err := Build(Pause(bin))
	if err != nil {
		t.Fatal(err)
	}

	// The same bytes elsewhere, with another mode and mtime, a second later.
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(t.TempDir(), "other-name")
	if err := os.WriteFile(copyPath, data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(copyPath, time.Now(), time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // a build a second later: no wall-clock time in the image
	second, err := Build(Pause(copyPath))
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := digest(t, first), digest(t, second); d1 != d2 {
		t.Fatalf("two builds of the same binary: %s and %s", d1, d2)
	}
	t.Logf("pause image %s", digest(t, first))

	data[len(data)-1] ^= 1
	if err := os.WriteFile(copyPath, data, 0o755); err != nil {
		t.Fatal(err)
	}
	changed, err := Build(Pause(copyPath))
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, changed) == digest(t, first) {
		t.Error("a changed binary gave the same digest")
	}
	dated := Pause(bin)
	dated.Created = time.Unix(1700000000, 0)
	datedImg, err := Build(dated)
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, datedImg) == digest(t, first) {
		t.Error("another SOURCE_DATE_EPOCH gave the same digest")
	}
}

// entry is what a test checks of one file in the layer.
type entry struct {
	Name     string
	Type     byte
	Mode     int64
	UID, GID int
	ModTime  time.Time
	Size     int64
}

// readBack writes img as a docker-archive tagged ref, reads the archive back
// with go-containerregistry's tarball package (as `docker load` or
// `ctr images import` would) and returns the image read, its layer's entries
// and the contents of its regular files.
func readBack(t *testing.T, img v1.Image, ref string) (v1.Image, []entry, map[string][]byte) {
	t.Helper()
	archive := filepath.Join(t.TempDir(), "image.tar")
	if err := WriteArchive(archive, ref, img); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatalf("reading the archive back: %v", err)
	}
	if got, want := digest(t, loaded), digest(t, img); got != want {
		t.Errorf("archive's image digest %s, built %s", got, want)
	}
	layers, err := loaded.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var entries []entry
	contents := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, entry{Name: hdr.Name, Type: hdr.Typeflag, Mode: hdr.Mode, UID: hdr.Uid, GID: hdr.Gid, ModTime: hdr.ModTime.UTC(), Size: hdr.Size})
		if hdr.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			contents[hdr.Name] = data
		}
	}
	return loaded, entries, contents
}

// TestPauseImage: the archive reads back as the image built, with the pause
// binary alone (byte for byte), root-owned and dated at the epoch, run as
// 65535 with no shell.
func TestPauseImage(t *testing.T) {
	bin := buildPause(t)
	img, err := Build(Pause(bin))
	if err != nil {
		t.Fatal(err)
	}
	loaded, entries, contents := readBack(t, img, "localhost/jobrun-pause:test")

	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(0, 0).UTC()
	if diff := cmp.Diff([]entry{
		{Name: "pause", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Size: int64(len(want))},
	}, entries); diff != "" {
		t.Errorf("layer entries (-want +got):\n%s", diff)
	}
	if !bytes.Equal(contents["pause"], want) {
		t.Error("/pause in the image differs from the binary built")
	}

	cfg, err := loaded.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535", WorkingDir: "/"}, cfg.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH || !cfg.Created.Time.Equal(epoch) {
		t.Errorf("os %q, architecture %q, created %v", cfg.OS, cfg.Architecture, cfg.Created)
	}
}

// TestJobrunImage builds the real jobrun binary as make image does and
// checks its image: exactly the binary and the CA bundle given, root-owned,
// with fixed modes; user 65532:65532, entrypoint /jobrun, role manager; no
// shell, no /tmp. Then it runs the binary taken out of the image with no
// usable temporary or cache folder: a production binary must not touch the
// file system at init (envtest's init did: "mkdir /tmp: permission denied"
// on the first real node).
func TestJobrunImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds jobrun")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "jobrun")
	start := time.Now()
	if err := GoBuild(context.Background(), repoRoot(t), "./cmd/jobrun", bin, ""); err != nil {
		t.Fatal(err)
	}
	t.Logf("go build ./cmd/jobrun: %v", time.Since(start).Round(time.Millisecond))
	// A CA bundle of the test's own, so the test does not depend on the host's.
	caBundle := []byte("-----BEGIN CERTIFICATE-----\nnot a real certificate\n-----END CERTIFICATE-----\n")
	caPath := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caPath, caBundle, 0o600); err != nil {
		t.Fatal(err)
	}

	start = time.Now()
	img, err := Build(Jobrun(bin, caPath))
	if err != nil {
		t.Fatal(err)
	}
	loaded, entries, contents := readBack(t, img, "jobrun:test")
	t.Logf("image built and read back: %v", time.Since(start).Round(time.Millisecond))

	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(0, 0).UTC()
	if diff := cmp.Diff([]entry{
		{Name: "etc/", Type: tar.TypeDir, Mode: 0o755, ModTime: epoch},
		{Name: "etc/ssl/", Type: tar.TypeDir, Mode: 0o755, ModTime: epoch},
		{Name: "etc/ssl/certs/", Type: tar.TypeDir, Mode: 0o755, ModTime: epoch},
		{Name: "etc/ssl/certs/ca-certificates.crt", Type: tar.TypeReg, Mode: 0o644, ModTime: epoch, Size: int64(len(caBundle))},
		{Name: "jobrun", Type: tar.TypeReg, Mode: 0o755, ModTime: epoch, Size: int64(len(want))},
	}, entries); diff != "" {
		t.Errorf("layer entries (-want +got):\n%s", diff)
	}
	if !bytes.Equal(contents["jobrun"], want) {
		t.Error("/jobrun in the image differs from the binary built")
	}
	if !bytes.Equal(contents["etc/ssl/certs/ca-certificates.crt"], caBundle) {
		t.Error("the CA bundle in the image differs from the one given")
	}
	cfg, err := loaded.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v1.Config{Entrypoint: []string{"/jobrun"}, Cmd: []string{"manager"}, User: "65532:65532", WorkingDir: "/"}, cfg.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	size, err := loaded.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("jobrun image %s: binary %.1f MB, layer %.1f MB compressed", digest(t, img), float64(len(want))/1e6, float64(size.Layers[0].Size)/1e6)

	// The binary out of the image, with TMPDIR, HOME and XDG_CACHE_HOME
	// below a regular file: no folder can be created there, even by root.
	imageBin := filepath.Join(dir, "from-image")
	if err := os.WriteFile(imageBin, contents["jobrun"], 0o755); err != nil {
		t.Fatal(err)
	}
	noDir := filepath.Join(caPath, "tmp")
	for _, args := range [][]string{{"manager", "-h"}, {"runner", "-h"}, {"token", "-h"}, {"devnode", "-h"}, {"help"}} {
		t.Run(args[0], func(t *testing.T) {
			cmd := exec.Command(imageBin, args...)
			cmd.Dir = dir
			cmd.Env = []string{"TMPDIR=" + noDir, "HOME=" + noDir, "XDG_CACHE_HOME=" + noDir}
			out, err := cmd.CombinedOutput()
			if err != nil || bytes.Contains(out, []byte("panic: ")) || bytes.Contains(out, []byte("goroutine 1 [")) || !bytes.Contains(out, []byte("usage")) && !bytes.Contains(out, []byte("Usage")) {
				t.Errorf("jobrun %v with no usable temporary folder: %v\n%s", args, err, out)
			}
		})
	}
}
