package main

import (
	"context"
	"os"
	"path/filepath"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// createSampleJobType creates the JobType of config/samples/file, without
// retries.
func (b *bench) createSampleJobType(ctx context.Context, file string) error {
	data, err := os.ReadFile(filepath.Join("config", "samples", file))
	if err != nil {
		return err
	}
	jt := &jobsv1alpha1.JobType{}
	if err := yaml.UnmarshalStrict(data, jt); err != nil {
		return err
	}
	jt.Namespace = ns
	jt.Spec.RetryLimit = ptr.To[int32](0)
	return b.c.Create(ctx, jt)
}

// setup creates the demo_sync JobType (from the sample, no retries) and
// the first n of the projects the scenarios trigger for (see projects).
func (b *bench) setup(ctx context.Context, n int) error {
	if err := b.createSampleJobType(ctx, "jobs_v1alpha1_jobtype_demo_sync.yaml"); err != nil {
		return err
	}
	b.projects.count = n
	if n == 0 {
		return nil
	}
	if n == projectCount {
		b.log("creating 24,000 projects (the trigger scenario, which takes what the others leave, uses up to ~15,000 on a fast machine)")
	} else {
		b.log("creating %d projects", n)
	}
	return parallel(32, n, func(i int) error {
		return b.c.Create(ctx, &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: projectName(i)}, Spec: jobsv1alpha1.ProjectSpec{TeamID: "bench"}})
	})
}
