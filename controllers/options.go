package controllers

import (
	"time"

	"k8s.io/utils/clock"
)

// Option configures jobrun's reconcilers. Every constructor takes the same
// options and uses the ones that concern it, so the manager passes one list
// to all of them (as kueue's jobframework.Option).
type Option func(*options)

// options are the settings an Option sets, with their defaults from
// newOptions.
type options struct {
	clock    clock.PassiveClock
	policy   PodPolicy
	workers  int
	notifier Notifier
	// archive, if set, receives finished runs (WithArchive).
	archive        Archive
	archiveLiveTTL time.Duration
	// kueue, if set, sends run pods through Kueue (WithKueue).
	kueue *KueueQueues
	// kueuePositions, if set, puts queued runs' positions in their Queued
	// condition (WithKueuePositions).
	kueuePositions *KueuePositions
}

func newOptions(opts []Option) options {
	o := options{
		clock:   clock.RealClock{},
		policy:  PodPolicy{RunnerServiceAccount: DefaultRunnerServiceAccount},
		workers: 16,
	}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithClock sets the clock that deadlines, grace periods, TTLs, schedules
// and condition times are read from (tests move it).
func WithClock(c clock.PassiveClock) Option { return func(o *options) { o.clock = c } }

// WithWorkers sets how many runs the JobRun reconciler reconciles at once
// (default 16).
func WithWorkers(n int) Option { return func(o *options) { o.workers = n } }

// WithRunnerServiceAccount sets the service account of run pods whose
// template names none.
func WithRunnerServiceAccount(name string) Option {
	return func(o *options) { o.policy.RunnerServiceAccount = name }
}

// WithAllowedServiceAccounts sets the service accounts a JobType's template
// may name besides the runner's; a template that names another one gets no
// pod, and its JobType is not Ready.
func WithAllowedServiceAccounts(names ...string) Option {
	return func(o *options) { o.policy.AllowedServiceAccounts = names }
}

// WithNotifier sets how the JobRun reconciler sends completion emails;
// without one, runs that ask for an email record that none was sent and why.
func WithNotifier(n Notifier) Option { return func(o *options) { o.notifier = n } }
