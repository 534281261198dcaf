package image

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestDockerfileMatchesJobrun: `make docker-build` and `make image` give the
// same contents. The Dockerfile's last stage is scratch with the same files
// (the CA bundle from the build stage's Debian, the binary built with
// GoBuildFlags), the same user, working folder, entrypoint and command as
// Jobrun. hack/check-dockerfile.sh (make verify) runs it.
func TestDockerfileMatchesJobrun(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("Dockerfile: %q before the first FROM", line)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], line)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile: %d stages, want a build stage and the image", len(stages))
	}

	wantBuild := "RUN CGO_ENABLED=0 go build " + strings.Join([]string{GoBuildFlags[0], `-ldflags="-s -w"`}, " ") + " -o /out/jobrun ./cmd/jobrun"
	if GoBuildFlags[1] != `-ldflags=-s -w` || !slices.Contains(stages[len(stages)-2], wantBuild) {
		t.Errorf("Dockerfile's build stage does not build with GoBuildFlags %q: want the line\n%s", GoBuildFlags, wantBuild)
	}

	spec := Jobrun("/out/jobrun", CACertificatesPath)
	want := []string{"FROM scratch"}
	for _, f := range spec.Files {
		want = append(want, "COPY --from=build "+f.Source+" "+f.Path)
	}
	slices.Sort(want[1:])
	want = append(want, "USER "+spec.User, "WORKDIR "+spec.WorkingDir, "ENTRYPOINT "+jsonArray(t, spec.Entrypoint), "CMD "+jsonArray(t, spec.Cmd))
	got := slices.Clone(stages[len(stages)-1])
	var copies []string
	for _, l := range got {
		if strings.HasPrefix(l, "COPY ") {
			copies = append(copies, l)
		}
	}
	slices.Sort(copies)
	got = append(append([]string{got[0]}, copies...), slices.DeleteFunc(got[1:], func(l string) bool { return strings.HasPrefix(l, "COPY ") })...)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Dockerfile's image stage differs from internal/image's Jobrun (-want +got):\n%s", diff)
	}
}

func jsonArray(t *testing.T, s []string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
