package image

import (
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// testCode are packages that must never be linked into the production
// binary: test frameworks and jobrun's own test harness. envtest's init, in
// sigs.k8s.io/controller-runtime/pkg/internal/testing/addr, creates folders
// under the user's cache or /tmp and panics when it cannot; it once made
// every runner pod on a real node crash with "mkdir /tmp: permission denied".
var testCode = regexp.MustCompile(`^(` + strings.Join([]string{
	`testing(/.*)?`,
	`net/http/httptest`,
	`sigs\.k8s\.io/controller-runtime/pkg/envtest(/.*)?`,
	`sigs\.k8s\.io/controller-runtime/pkg/internal/testing(/.*)?`,
	`sigs\.k8s\.io/controller-runtime/pkg/client/fake`,
	`jobrun\.dev/jobrun/test(/.*)?`,
	`jobrun\.dev/jobrun/internal/controlplane`,
	`jobrun\.dev/jobrun/internal/localcluster`,
	`github\.com/onsi/.*`,
	`github\.com/stretchr/testify(/.*)?`,
	`gotest\.tools(/.*)?`,
}, "|") + `)$`)

// looksLikeTestCode are the names of test helpers in other libraries.
var looksLikeTestCode = regexp.MustCompile(`(^|/)(testing|fakes?|testutils?|testhelpers?|testrestmapper|testdata|envtest|testenv)(/|$)`)

// knownTestHelpers are test helpers of Kubernetes libraries that the binary
// links today, reviewed; none has an init with side effects. The fake
// clientsets and the metrics testutil packages come with the devnode role:
// virtual-kubelet's node/nodeutil imports k8s.io/apiserver/pkg/server/options,
// whose non-test files import them. k8s.io/client-go/testing and
// testrestmapper come also through controller-runtime's secure metrics filter
// (pkg/metrics/filters, k8s.io/apiserver's delegating authn/authz). A new
// entry needs the same review, not just adding here.
var knownTestHelpers = []string{
	"github.com/prometheus/client_golang/prometheus/testutil",
	"github.com/prometheus/client_golang/prometheus/testutil/promlint",
	"github.com/prometheus/client_golang/prometheus/testutil/promlint/validations",
	"k8s.io/apimachinery/pkg/api/meta/testrestmapper",
	"k8s.io/client-go/discovery/fake",
	"k8s.io/client-go/dynamic/fake",
	"k8s.io/client-go/kubernetes/fake",
	"k8s.io/client-go/rest/fake",
	"k8s.io/client-go/testing",
	"k8s.io/component-base/metrics/testutil",
}

// TestNoTestCodeInJobrun fails when cmd/jobrun links a test package, or a
// test helper of a library that is not among the reviewed knownTestHelpers.
func TestNoTestCodeInJobrun(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./cmd/jobrun")
	cmd.Dir = repoRoot(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/jobrun: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "jobrun.dev/jobrun/cmd/jobrun") {
		t.Fatalf("go list -deps ./cmd/jobrun did not list cmd/jobrun:\n%s", out)
	}
	for _, p := range deps {
		isFakeClientset := strings.HasPrefix(p, "k8s.io/client-go/kubernetes/typed/") && strings.HasSuffix(p, "/fake")
		switch {
		case testCode.MatchString(p):
			t.Errorf("cmd/jobrun links test code: %s (see go list -deps -f '{{.ImportPath}}: {{.Imports}}' ./cmd/jobrun for who imports it)", p)
		case looksLikeTestCode.MatchString(p) && !isFakeClientset && !slices.Contains(knownTestHelpers, p):
			t.Errorf("cmd/jobrun links %s, which looks like a test helper and is not among the reviewed knownTestHelpers", p)
		}
	}
}
