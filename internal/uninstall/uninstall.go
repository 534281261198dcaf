// Package uninstall deletes what jobrun creates at run time, which no
// install tool knows about: the JobRuns (the REST API's consistency marker
// among them; the garbage collector then deletes their runner pods), the
// (job type, project) guard Leases, and the manager's leader-election Lease.
// `jobrun uninstall` runs it, and so does the Helm chart's post-delete hook.
//
// Guards are not owned by their runs (see internal/guard), so they are
// deleted here rather than left to the garbage collector. With a run
// archive, runs carry the archive's finalizer until the manager archived
// them; the manager is gone by now, so the cleanup removes it: runs not yet
// archived are deleted unarchived (counted in Counts.Unarchived and logged).
package uninstall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// GuardPrefix starts the name of every guard Lease (jobsv1alpha1.GuardName).
const GuardPrefix = "jobrun-guard-"

// Options says what to delete.
type Options struct {
	// Namespace holds the runs (unless AllNamespaces) and the guards.
	Namespace string
	// AllNamespaces deletes the runs of every namespace (a manager with
	// --all-namespaces); guards and the leader Lease stay in Namespace and
	// LeaseNamespace.
	AllNamespaces bool
	// LeaseNamespace and LeaseName are the manager's leader-election Lease.
	LeaseNamespace, LeaseName string
	// Timeout bounds the whole cleanup, waiting included.
	Timeout time.Duration
	// Interval is how often it looks again until nothing is left; default 1 s.
	Interval time.Duration
}

// Counts is what Run deleted.
type Counts struct {
	// Runs is the JobRuns deleted (the consistency marker included).
	Runs int
	// Unarchived is the runs whose archive finalizer the cleanup removed:
	// deleted without having been archived.
	Unarchived int
	// Guards is the guard Leases deleted.
	Guards int
	// LeaderLease says whether the leader-election Lease was deleted.
	LeaderLease bool
}

// Run deletes, pass after pass, every JobRun, guard and the leader Lease,
// until one pass finds none of them left (so a run created behind the
// cleanup by a manager still shutting down is deleted too), or the timeout
// ends. Absent objects are no error: running it twice is harmless.
func Run(ctx context.Context, c client.Client, o Options, log logr.Logger) (Counts, error) {
	var n Counts
	if o.Namespace == "" || o.LeaseNamespace == "" || o.LeaseName == "" || o.Timeout <= 0 {
		return n, errors.New("uninstall needs a namespace, the leader Lease's namespace and name, and a positive timeout")
	}
	interval := o.Interval
	if interval <= 0 {
		interval = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var left []string
	err := wait.PollUntilContextCancel(ctx, interval, true, func(ctx context.Context) (bool, error) {
		var err error
		left, err = pass(ctx, c, o, &n, log)
		return len(left) == 0 && err == nil, err
	})
	if err != nil && ctx.Err() != nil && len(left) > 0 {
		return n, fmt.Errorf("after %s still left: %s", o.Timeout, strings.Join(left, ", "))
	}
	return n, err
}

// pass deletes what it finds and returns what it found.
func pass(ctx context.Context, c client.Client, o Options, n *Counts, log logr.Logger) ([]string, error) {
	runs, err := deleteRuns(ctx, c, o, n, log)
	if err != nil {
		return nil, err
	}
	guards, err := deleteGuards(ctx, c, o.Namespace, n, log)
	if err != nil {
		return nil, err
	}
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: o.LeaseNamespace, Name: o.LeaseName}}
	leaseFound := false
	switch err := c.Delete(ctx, lease); {
	case err == nil:
		leaseFound, n.LeaderLease = true, true
		log.Info("deleted the leader-election Lease", "namespace", o.LeaseNamespace, "name", o.LeaseName)
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("deleting the leader-election Lease %s/%s: %w", o.LeaseNamespace, o.LeaseName, err)
	}
	var left []string
	if runs > 0 {
		left = append(left, fmt.Sprintf("%d JobRuns", runs))
	}
	if guards > 0 {
		left = append(left, fmt.Sprintf("%d guard Leases", guards))
	}
	if leaseFound {
		left = append(left, "the leader Lease "+o.LeaseNamespace+"/"+o.LeaseName)
	}
	return left, nil
}

// deleteRuns deletes every JobRun in scope, one delete-collection per
// namespace (the API server has none across namespaces), and returns how
// many it found, those already being deleted included. It lists metadata
// only: a run's status can be large.
func deleteRuns(ctx context.Context, c client.Client, o Options, n *Counts, log logr.Logger) (int, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(jobsv1alpha1.GroupVersion.WithKind("JobRunList"))
	var opts []client.ListOption
	where := "every namespace"
	if !o.AllNamespaces {
		opts, where = append(opts, client.InNamespace(o.Namespace)), "namespace "+o.Namespace
	}
	if err := c.List(ctx, list, opts...); err != nil {
		return 0, fmt.Errorf("listing the JobRuns of %s: %w", where, err)
	}
	perNamespace := map[string]int{}
	for _, r := range list.Items {
		if r.DeletionTimestamp == nil {
			perNamespace[r.Namespace]++
		}
	}
	for ns, count := range perNamespace {
		err := c.DeleteAllOf(ctx, &jobsv1alpha1.JobRun{}, client.InNamespace(ns), client.PropagationPolicy(metav1.DeletePropagationBackground))
		if err != nil && !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("deleting the JobRuns of namespace %s: %w", ns, err)
		}
		n.Runs += count
		log.Info("deleted JobRuns", "namespace", ns, "count", count)
	}
	// Runs held by the archive's finalizer: no manager is left to archive
	// them. (A later pass sees those deleted above.)
	for i := range list.Items {
		r := &list.Items[i]
		if r.DeletionTimestamp == nil || !slices.Contains(r.Finalizers, jobsv1alpha1.FinalizerArchive) {
			continue
		}
		if err := removeFinalizer(ctx, c, r, jobsv1alpha1.FinalizerArchive); err != nil {
			return 0, err
		}
		n.Unarchived++
		log.Info("removed the archive finalizer of a run not archived; it is deleted unarchived", "namespace", r.Namespace, "run", r.Name)
	}
	return len(list.Items), nil
}

// removeFinalizer removes finalizer f from obj with a JSON patch that tests
// it is where it was read, so that no other finalizer is dropped; a run
// gone or changed meanwhile is left to the next pass.
func removeFinalizer(ctx context.Context, c client.Client, obj *metav1.PartialObjectMetadata, f string) error {
	i := slices.Index(obj.Finalizers, f)
	path := fmt.Sprintf("/metadata/finalizers/%d", i)
	patch := fmt.Sprintf(`[{"op":"test","path":%q,"value":%q},{"op":"remove","path":%q}]`, path, f, path)
	err := c.Patch(ctx, obj, client.RawPatch(types.JSONPatchType, []byte(patch)))
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsInvalid(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("removing the archive finalizer of JobRun %s/%s: %w", obj.Namespace, obj.Name, err)
	}
	return nil
}

// deleteGuards deletes the guard Leases of namespace ns (named GuardPrefix...
// and labelled with a job type and a project) and returns how many it found.
func deleteGuards(ctx context.Context, c client.Client, ns string, n *Counts, log logr.Logger) (int, error) {
	sel := labels.NewSelector()
	for _, key := range []string{jobsv1alpha1.LabelJobType, jobsv1alpha1.LabelProject} {
		req, err := labels.NewRequirement(key, selection.Exists, nil)
		if err != nil {
			return 0, err
		}
		sel = sel.Add(*req)
	}
	list := &coordinationv1.LeaseList{}
	if err := c.List(ctx, list, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return 0, fmt.Errorf("listing the guard Leases of namespace %s: %w", ns, err)
	}
	found, deleted := 0, 0
	for i := range list.Items {
		lease := &list.Items[i]
		if !strings.HasPrefix(lease.Name, GuardPrefix) {
			continue
		}
		found++
		err := c.Delete(ctx, lease, client.Preconditions{UID: &lease.UID})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return 0, fmt.Errorf("deleting guard Lease %s/%s: %w", ns, lease.Name, err)
		}
		if err == nil {
			deleted++
		}
	}
	if deleted > 0 {
		n.Guards += deleted
		log.Info("deleted guard Leases", "namespace", ns, "count", deleted)
	}
	return found, nil
}
