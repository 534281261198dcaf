package probes_test

import (
	"net/http"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/probes"
	"jobrun.dev/jobrun/test/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

func TestKindsServed(t *testing.T) {
	httpClient, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper, err := apiutil.NewDynamicRESTMapper(env.Config, httpClient)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "/readyz", nil)

	ready := probes.KindsServed(mapper, jobsv1alpha1.GroupVersion, "JobRun", "JobType", "JobSchedule", "Project")
	if err := ready(req); err != nil {
		t.Errorf("with the CRDs installed: %v", err)
	}

	missing := probes.KindsServed(mapper, schema.GroupVersion{Group: "jobs.jobrun.dev", Version: "v1alpha1"}, "JobRun", "JobBatch")
	err = missing(req)
	if err == nil || !strings.Contains(err.Error(), "kind JobBatch of jobs.jobrun.dev/v1alpha1 is not served") {
		t.Errorf("with a kind that is not installed: %v, want it named", err)
	}
}
