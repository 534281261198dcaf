package apiserver

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/cachetrim"
	jobscheme "jobrun.dev/jobrun/internal/scheme"
)

// BenchmarkCachedRunMemory measures the Go heap one cached run takes in the
// manager: the JobRun as the informer's store keeps it (decoded from the API
// server's JSON, one object per watch event, then the cache's transform)
// and the run index's entries for it. It reports bytes per run for the
// store (B/run-store), the index (B/run-index) and both (B/run), with the
// transform the manager had before (managedFields stripped) and cachetrim's;
// the runs are pending REST runs of one team over 100 projects and 4 job
// types, as the bench's list scenario makes them.
//
//	go test -run XXX -bench CachedRunMemory -benchtime 1x ./apiserver
func BenchmarkCachedRunMemory(b *testing.B) {
	for _, n := range []int{10000, 50000} {
		docs := runDocs(b, n)
		for _, tr := range []struct {
			name string
			f    toolscache.TransformFunc
		}{{"stripManagedFields", cache.TransformStripManagedFields()}, {"cachetrim", cachetrim.Transform()}} {
			b.Run(fmt.Sprintf("runs=%d/transform=%s", n, tr.name), func(b *testing.B) {
				var store, index float64
				for b.Loop() {
					store, index = cachedRunBytes(b, docs, tr.f)
				}
				b.ReportMetric(store, "B/run-store")
				b.ReportMetric(index, "B/run-index")
				b.ReportMetric(store+index, "B/run")
			})
		}
	}
}

// runDocs is n runs as the API server sends them: server-set metadata and
// a managedFields entry included.
func runDocs(b *testing.B, n int) [][]byte {
	b.Helper()
	base := time.Date(2024, 1, 15, 10, 0, 0, 0, time.UTC)
	docs := make([][]byte, n)
	for i := range docs {
		run := jobsv1alpha1.NewJobRun("jobrun-system", uuid.NewString(), jobsv1alpha1.JobRunSpec{
			JobType: []string{"revenuecat_sync", "demo_sync", "cleanup_project", "export_events"}[i%4], TeamID: "team-1",
			ProjectID: fmt.Sprintf("project-%03d", i%100), TriggeredBy: fmt.Sprintf("manual:user:u%d", i%20), Notify: true,
		}, base.Add(time.Duration(i)*time.Second))
		run.APIVersion, run.Kind = jobsv1alpha1.GroupVersion.String(), "JobRun"
		run.UID, run.ResourceVersion, run.Generation = types.UID(uuid.NewString()), fmt.Sprint(100000+i), 1
		run.CreationTimestamp = metav1.NewTime(base.Add(time.Duration(i) * time.Second))
		run.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "jobrun", Operation: metav1.ManagedFieldsOperationUpdate,
			APIVersion: run.APIVersion, Time: &run.CreationTimestamp, FieldsType: "FieldsV1",
			FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:metadata":{"f:labels":{".":{},"f:jobs.jobrun.dev/job-type":{},"f:jobs.jobrun.dev/project":{},"f:jobs.jobrun.dev/status":{},"f:jobs.jobrun.dev/team":{}}},"f:spec":{".":{},"f:createdAt":{},"f:jobType":{},"f:notify":{},"f:projectID":{},"f:teamID":{},"f:triggeredBy":{}}}`)}}}
		data, err := json.Marshal(run)
		if err != nil {
			b.Fatal(err)
		}
		docs[i] = data
	}
	return docs
}

// cachedRunBytes decodes docs as the informer does, transforms each run with
// f into a store like the cache's (namespace-indexed), then feeds a
// RunIndex; it returns the heap each run added to the store and to the
// index.
func cachedRunBytes(b *testing.B, docs [][]byte, f toolscache.TransformFunc) (store, index float64) {
	b.Helper()
	scheme, err := jobscheme.New()
	if err != nil {
		b.Fatal(err)
	}
	decoder := serializer.NewCodecFactory(scheme).UniversalDeserializer()
	m0 := heapAlloc()
	s := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	for _, doc := range docs {
		obj, _, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		if obj, err := f(obj); err != nil {
			b.Fatal(err)
		} else if err := s.Add(obj); err != nil {
			b.Fatal(err)
		}
	}
	m1 := heapAlloc()
	x := NewRunIndex()
	for _, obj := range s.List() {
		x.set(obj)
	}
	m2 := heapAlloc()
	runtime.KeepAlive(s)
	runtime.KeepAlive(x)
	n := float64(len(docs))
	return (m1 - m0) / n, (m2 - m1) / n
}

// heapAlloc is the heap in live objects, after a collection.
func heapAlloc() float64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc)
}
