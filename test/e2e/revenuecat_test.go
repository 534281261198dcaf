package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/handlers/revenuecat"
	"jobrun.dev/jobrun/handlers/revenuecat/rcfake"
	"jobrun.dev/jobrun/internal/localcluster"
	"jobrun.dev/jobrun/test/testenv"
)

// TestRevenueCatSyncThroughTheRESTAPI triggers revenuecat_sync the way the
// product does, with the sample JobType: the runner process (a pod on the
// dev node, with the runner's own service account) reads the integration
// Secret from the integrations namespace, syncs a fake RevenueCat project to
// a fake ingest endpoint (both on loopback), and the REST API shows the
// spec's progress and result shapes.
func TestRevenueCatSyncThroughTheRESTAPI(t *testing.T) {
	ctx := testenv.Context(t)
	tn := newTenant(t)
	integration := "int-" + tn.project

	jt := sampleJobType(t, "jobs_v1alpha1_jobtype_revenuecat_sync.yaml")
	jt.Namespace = apiNamespace
	if err := cluster.Client.Create(ctx, jt); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}

	const key, secret = "sk_e2e_key_0123456789", "e2e-signing-secret-0123456789abcdef"
	rc := rcfake.NewRevenueCat(key, "proj-e2e")
	defer rc.Close()
	dest := rcfake.NewDestination([]byte(secret))
	defer dest.Close()
	for i := range 200 {
		id := fmt.Sprintf("user-%03d", i)
		if i%10 == 0 {
			id = fmt.Sprintf("$RCAnonymousID:%03d", i)
		}
		rc.Put(revenuecat.Customer{ID: id, FirstSeenAt: time.Now().Add(-time.Hour).UnixMilli(), LastSeenAt: time.Now().UnixMilli()},
			revenuecat.ActiveEntitlement{EntitlementID: "premium"})
	}
	rc.OnEntitlements(func(int) { time.Sleep(30 * time.Millisecond) }) // 6 s in all: long enough to see progress
	if err := cluster.Client.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: localcluster.DefaultIntegrationsNamespace, Name: revenuecat.SecretPrefix + integration, Labels: map[string]string{
			jobsv1alpha1.LabelProject: tn.project, revenuecat.LabelIntegration: "revenuecat",
		}},
		StringData: map[string]string{
			revenuecat.KeyAPIKey: key, revenuecat.KeyRCProjectID: "proj-e2e", revenuecat.KeyBaseURL: rc.URL(),
			revenuecat.KeyDestinationURL: dest.URL(), revenuecat.KeySigningSecret: secret, revenuecat.KeyRequestsPerMinute: "30000",
		},
	}); err != nil {
		t.Fatal(err)
	}

	status, body := tn.call(t, http.MethodPost, "/v1/teams/"+tn.team+"/jobs/trigger", map[string]any{
		"job_type": "revenuecat_sync", "project_id": tn.project,
		"params": map[string]any{"project_id": tn.project, "integration_id": integration},
	})
	if status != http.StatusCreated {
		t.Fatalf("trigger: %d %v", status, body)
	}
	id := body["job_run"].(map[string]any)["id"].(string)
	running := tn.pollRun(t, id, "progress", hasProgressed)
	if msg := running["progress"].(map[string]any)["message"].(string); !strings.HasPrefix(msg, "Synced ") || !strings.Contains(msg, " skipped") {
		t.Errorf("running progress message %q, want the spec's \"Synced N users, M skipped\"", msg)
	}
	done := tn.pollRun(t, id, "completed", hasStatus("completed", "failed", "cancelled"))
	if done["status"] != "completed" {
		t.Fatalf("run ended %v: %v", done["status"], done["error"])
	}
	wantProgress := map[string]any{"processed": float64(200), "total": float64(200), "message": "Synced 180 users, 20 skipped"}
	wantResult := map[string]any{"synced": float64(180), "total": float64(200), "skipped": float64(20)}
	if fmt.Sprint(done["progress"]) != fmt.Sprint(wantProgress) || fmt.Sprint(done["result"]) != fmt.Sprint(wantResult) {
		t.Errorf("progress %v result %v; want %v and %v", done["progress"], done["result"], wantProgress, wantResult)
	}
	if st := dest.Stats(); st.Customers != 180 || st.BadSignatures != 0 {
		t.Errorf("destination %+v, want 180 customers with good signatures", st)
	}
}
