// Package cachetrim is the manager's cache transform: what an informer keeps
// of each object it caches. A cached JobRun is read by the controllers and
// served by the REST API, so every field of it stays; what goes is what no
// reader looks at (managedFields, kubectl's last-applied annotation), and the
// strings that many objects share (namespace, label keys and values, job
// type, team, project, triggered_by, phase, condition types and reasons) are
// kept once instead of once per object, as the JSON decoder made them. Runs
// with the same labels share one label map.
//
// Objects in a cache are never changed (controller-runtime's reads return
// copies; the REST API only reads): with shared maps, a change would now
// show in many objects instead of one.
package cachetrim

import (
	"encoding/binary"
	"slices"
	"sync"
	"unique"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// lastApplied is the annotation where `kubectl apply` keeps the whole
// object it last applied; nothing in jobrun reads it.
const lastApplied = corev1.LastAppliedConfigAnnotation

// Transform returns the cache's transform (cache.Options.DefaultTransform):
// it trims every object's metadata and a JobRun's spec and status strings,
// in place (the informer's object is not shared yet), and never fails.
func Transform() toolscache.TransformFunc {
	runLabels := &labelSets{sets: map[string]map[string]string{}}
	return func(in any) (any, error) {
		obj, ok := in.(metav1.Object)
		if !ok {
			return in, nil // a DeletedFinalStateUnknown: its object was trimmed when cached
		}
		trimMeta(obj)
		if run, ok := in.(*jobsv1alpha1.JobRun); ok {
			trimRun(run)
			run.Labels = runLabels.shared(run.Labels)
		}
		return in, nil
	}
}

// maxLabelSets bounds the label sets remembered: a run's labels are its
// team, project, job type, phase and schedule, so a cache holds far fewer
// sets than runs, but nothing stops a user labelling each run apart.
const maxLabelSets = 4096

// labelSets are the label maps that runs share: a map of four labels takes
// about 340 bytes, as much as the rest of a pending run's metadata.
type labelSets struct {
	mu   sync.Mutex
	sets map[string]map[string]string
}

// shared returns the remembered map equal to labels, or remembers labels.
// When maxLabelSets are remembered, all are forgotten: runs keep the maps
// they have, and the next ones share new maps.
func (s *labelSets) shared(labels map[string]string) map[string]string {
	if len(labels) == 0 {
		return labels
	}
	key := setKey(labels)
	s.mu.Lock()
	defer s.mu.Unlock()
	if m, ok := s.sets[key]; ok {
		return m
	}
	if len(s.sets) >= maxLabelSets {
		clear(s.sets)
	}
	s.sets[key] = labels
	return labels
}

// setKey is labels as one string: its keys in order, each key and value
// preceded by its length, so that no two sets have the same key.
func setKey(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b []byte
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(labels[k])))
		b = append(b, labels[k]...)
	}
	return string(b)
}

// trimMeta drops managedFields and the last-applied annotation and interns
// the metadata strings objects share. Name, uid and resourceVersion are each
// object's own: interning them would only copy them.
func trimMeta(obj metav1.Object) {
	// Nil-checked: setting nil on an object that has none is not free
	// (kubernetes/kubernetes#124337).
	if obj.GetManagedFields() != nil {
		obj.SetManagedFields(nil)
	}
	obj.SetNamespace(intern(obj.GetNamespace()))
	obj.SetGenerateName(intern(obj.GetGenerateName()))
	if l := obj.GetLabels(); l != nil {
		obj.SetLabels(internMap(l))
	}
	if a := obj.GetAnnotations(); a != nil {
		delete(a, lastApplied)
		obj.SetAnnotations(internKeys(a))
	}
	if refs := obj.GetOwnerReferences(); refs != nil {
		for i := range refs {
			refs[i].APIVersion, refs[i].Kind, refs[i].Name = intern(refs[i].APIVersion), intern(refs[i].Kind), intern(refs[i].Name)
		}
	}
	for i, f := range obj.GetFinalizers() {
		obj.GetFinalizers()[i] = intern(f)
	}
}

// trimRun interns the spec and status strings that runs share.
func trimRun(run *jobsv1alpha1.JobRun) {
	s := &run.Spec
	s.JobType, s.TeamID, s.ProjectID, s.TriggeredBy, s.NotifyEmail = intern(s.JobType), intern(s.TeamID), intern(s.ProjectID), intern(s.TriggeredBy), intern(s.NotifyEmail)
	st := &run.Status
	st.Phase = jobsv1alpha1.JobRunPhase(intern(string(st.Phase)))
	if n := st.Notification; n != nil {
		n.State = jobsv1alpha1.NotificationState(intern(string(n.State)))
	}
	for i := range st.Conditions {
		c := &st.Conditions[i]
		c.Type, c.Status, c.Reason = intern(c.Type), metav1.ConditionStatus(intern(string(c.Status))), intern(c.Reason)
	}
}

// internMap returns m with interned keys and values (a new map: keys
// rewritten while ranging over m could be visited again).
func internMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[intern(k)] = intern(v)
	}
	return out
}

// internKeys returns m with interned keys; its values may be long or each
// object's own (a time), so they stay as they are.
func internKeys(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[intern(k)] = v
	}
	return out
}

// intern returns the one copy of s that objects share. unique's table holds
// it only while something is being interned, so it does not grow with the
// strings ever seen: after a garbage collection the next s is a new copy,
// shared from then on.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}
