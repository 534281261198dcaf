package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
	"jobrun.dev/jobrun/internal/benchstat"
	"jobrun.dev/jobrun/internal/localcluster"
)

// The flood scenario (issue 19): team A triggers floodRuns runs at once,
// then team B triggers floodBRuns and a system JobSchedule fires; how long
// do B's runs and the system run wait, with and without Kueue, and what does
// Kueue cost A's throughput and a lone run's dispatch?
var (
	// floodRuns is how many runs team A triggers at once.
	floodRuns int
	// floodRunMS is how long each flood run's handler works (demo_sync,
	// one item of this many ms).
	floodRunMS int
	// floodTeamRuns is the teams' ClusterQueue's quota (runs at once).
	floodTeamRuns int
	// floodWindow bounds how long a phase waits for its runs to end, from
	// A's first trigger; A's throughput is measured over it (or until A's
	// last run ended, if sooner).
	floodWindow time.Duration
	// floodOverheadSeconds is how long the admission-overhead runs are
	// triggered at 50/s, with and without Kueue.
	floodOverheadSeconds int
	// floodKueueOnly skips the phases without Kueue.
	floodKueueOnly bool
)

const (
	floodTeamA = "flood-a"
	floodTeamB = "flood-b"
	// floodBRuns is how many runs team B triggers.
	floodBRuns = 10
	// floodSystemRuns is the system ClusterQueue's quota, as make dev's.
	floodSystemRuns = 2
	// floodGoal is the goal for B's and the system run's wait with
	// Kueue (p99), and floodThroughputGoal for A's throughput with Kueue as
	// a share of A's without.
	floodGoal           = 5 * time.Second
	floodThroughputGoal = 0.9
	// floodTriggerClients is how many clients send A's triggers.
	floodTriggerClients = 64
)

// floodPhase is one side of the flood, with Kueue or without: when A's and
// B's runs were triggered and what the watches saw of them and of the
// system run.
type floodPhase struct {
	kueue bool
	// start is when A's first trigger was sent, aDone when the last one
	// was answered, bDone when B's were.
	start, aDone, bDone time.Time
	// triggered is when each of A's and B's runs was sent (its trigger's
	// request).
	triggered map[string]time.Time
	// a and b are A's and B's runs; system is the system run ("" if the
	// schedule did not fire before the wait ended).
	a, b   []string
	system string
	// aLeftAtFire is how many of A's runs had not ended when the system
	// run was created.
	aLeftAtFire int
	// waitEnd is when the phase stopped waiting (everything ended, or
	// floodWindow passed).
	waitEnd time.Time
	seen    map[string]runSeen
	// cpu is the CPU seconds each process of this machine used from
	// start to waitEnd, by name (the dev node's include its runners').
	cpu map[string]float64
	// writes is kube-apiserver's write requests from start to waitEnd, by
	// verb and resource (apiserverWrites).
	writes map[string]float64
}

// floodScenario runs the admission overhead and the flood without Kueue
// (the manager as the bench started it), then starts Kueue, restarts the
// manager with --kueue and runs both again; at the end it stops Kueue and
// restarts the manager without it, as the later scenarios expect.
func (b *bench) floodScenario(ctx context.Context) error {
	if err := b.floodSetup(ctx); err != nil {
		return err
	}
	offOverhead, off := &dispatched{}, &floodPhase{}
	if !floodKueueOnly {
		var err error
		if offOverhead, err = b.floodOverhead(ctx, false); err != nil {
			return err
		}
		if off, err = b.flood(ctx, false); err != nil {
			return err
		}
	}

	b.log("flood: starting Kueue (jobrun-teams: %d runs at once, jobrun-system: %d) and the manager with --kueue", floodTeamRuns, floodSystemRuns)
	if err := b.cl.StartKueue(ctx, localcluster.KueueOptions{TeamRuns: floodTeamRuns, SystemRuns: floodSystemRuns}); err != nil {
		return err
	}
	if err := b.restartManager(ctx); err != nil {
		return err
	}
	onOverhead, err := b.floodOverhead(ctx, true)
	if err != nil {
		return err
	}
	on, err := b.flood(ctx, true)
	if err != nil {
		return err
	}
	for _, f := range overheadFigures(offOverhead, onOverhead) {
		b.add(f)
	}
	for _, f := range floodFigures(off, on) {
		b.add(f)
	}

	b.log("flood: stopping Kueue; the manager again without --kueue")
	if err := b.cl.StopKueue(); err != nil {
		return err
	}
	return b.restartManager(ctx)
}

// restartManager stops the manager gracefully and starts it again with the
// cluster's current flags, then waits for its REST API.
func (b *bench) restartManager(ctx context.Context) error {
	b.cl.StopManager()
	if err := b.cl.StartManager(); err != nil {
		return err
	}
	return b.waitReady(ctx)
}

// floodSetup creates the system JobType the schedule starts (the sample's
// demo_maintenance, no retries) and teams A's and B's projects for both
// phases.
func (b *bench) floodSetup(ctx context.Context) error {
	if err := b.createSampleJobType(ctx, "jobs_v1alpha1_jobtype_demo_maintenance.yaml"); err != nil {
		return err
	}
	type project struct{ team, name string }
	var projects []project
	for _, phase := range []bool{false, true} {
		for i := range floodRuns {
			projects = append(projects, project{floodTeamA, floodProject(floodTeamA, phase, i)})
		}
		for i := range floodBRuns {
			projects = append(projects, project{floodTeamB, floodProject(floodTeamB, phase, i)})
		}
	}
	b.log("flood: creating %d projects of teams %s and %s", len(projects), floodTeamA, floodTeamB)
	return parallel(32, len(projects), func(i int) error {
		p := projects[i]
		return b.c.Create(ctx, &jobsv1alpha1.Project{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.name}, Spec: jobsv1alpha1.ProjectSpec{TeamID: p.team}})
	})
}

// floodProject is team's i-th project of the phase with Kueue (withKueue) or
// without: each phase has its own, so no trigger meets a run of the other
// phase still active on its project.
func floodProject(team string, withKueue bool, i int) string {
	phase := "off"
	if withKueue {
		phase = "on"
	}
	return fmt.Sprintf("%s-%s-%05d", team, phase, i)
}

// teamToken is a user's JWT for team with jobs:read and jobs:write, as a
// member of that team would hold.
func (b *bench) teamToken(team string) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "bench-" + team, "teams": []string{team}, "permissions": []string{"jobs:read", "jobs:write"}, "exp": time.Now().Add(24 * time.Hour).Unix(),
	}).SignedString([]byte(b.cl.JWTSecret))
}

// floodOverhead triggers runs at 50/s for floodOverheadSeconds with nothing
// else running (the dispatch scenario's code; team bench, whose queue no
// other team shares) and waits until they ended.
func (b *bench) floodOverhead(ctx context.Context, withKueue bool) (*dispatched, error) {
	b.log("flood: admission overhead, 50 triggers/s for %d s, Kueue %v", floodOverheadSeconds, withKueue)
	return b.triggerAtRate(ctx, 50*floodOverheadSeconds, false)
}

// overheadFigures compare trigger -> admitted and trigger -> running at 50
// triggers/s with Kueue (value) to without (ceiling).
func overheadFigures(off, on *dispatched) []Figure {
	var figs []Figure
	for _, step := range []struct {
		name string
		at   func(*dispatched) map[string]time.Time
	}{
		{"trigger -> admitted (its pod created: jobrun creates it once Kueue admitted the run's Workload; no Kueue: pod created)", func(d *dispatched) map[string]time.Time { return d.admittedAt }},
		{"trigger -> running", func(d *dispatched) map[string]time.Time { return d.runningAt }},
	} {
		for _, p := range []float64{0.5, 0.99} {
			v := benchstat.Percentile(sinceTriggered(on.triggeredAt, step.at(on)), p)
			c := benchstat.Percentile(sinceTriggered(off.triggeredAt, step.at(off)), p)
			figs = append(figs, Figure{Scenario: "kueue", Name: fmt.Sprintf("%s p%.0f, 50/s, Kueue (ceiling: without)", step.name, p*100),
				Value: benchstat.Millis(v), Unit: "ms", Ceiling: benchstat.Millis(c)})
		}
	}
	return figs
}

// sinceTriggered is each run's time from its trigger to its time in at.
func sinceTriggered(triggered, at map[string]time.Time) []time.Duration {
	var d []time.Duration
	for id, t := range triggered {
		if a, ok := at[id]; ok {
			d = append(d, a.Sub(t))
		}
	}
	return d
}

// flood runs one phase: A's floodRuns triggers at once (floodTriggerClients
// clients, each run on a project of its own), then B's floodBRuns, then a
// system JobSchedule that fires at the next full minute; it waits until
// every run ended or floodWindow passed since A's first trigger, and then
// cancels what is left, so that the next phase starts on an idle node.
func (b *bench) flood(ctx context.Context, withKueue bool) (*floodPhase, error) {
	b.log("flood: %d runs of team %s at once, then %d of team %s and a system schedule; Kueue %v", floodRuns, floodTeamA, floodBRuns, floodTeamB, withKueue)
	tokenA, err := b.teamToken(floodTeamA)
	if err != nil {
		return nil, err
	}
	tokenB, err := b.teamToken(floodTeamB)
	if err != nil {
		return nil, err
	}
	wctx, stopWatches := context.WithCancel(ctx)
	defer stopWatches()
	t, err := b.trackRuns(wctx)
	if err != nil {
		return nil, err
	}
	ph := &floodPhase{kueue: withKueue, triggered: map[string]time.Time{}}
	params := map[string]any{"items": 1, "item_ms": floodRunMS}
	var mu sync.Mutex
	send := func(token, team string, n, clients int, runs *[]string) error {
		return parallel(clients, n, func(i int) error {
			at := time.Now()
			id, err := b.triggerAs(token, team, floodProject(team, withKueue, i), params)
			if err != nil {
				return err
			}
			mu.Lock()
			ph.triggered[id] = at
			*runs = append(*runs, id)
			mu.Unlock()
			return nil
		})
	}
	hc, err := rest.HTTPClientFor(b.cfg)
	if err != nil {
		return nil, err
	}
	writesBefore, err := b.apiserverWrites(ctx, hc)
	if err != nil {
		return nil, err
	}
	cpuBefore := takeCPU()
	ph.start = time.Now()
	if err := send(tokenA, floodTeamA, floodRuns, floodTriggerClients, &ph.a); err != nil {
		return nil, err
	}
	ph.aDone = time.Now()
	if err := send(tokenB, floodTeamB, floodBRuns, floodBRuns, &ph.b); err != nil {
		return nil, err
	}
	ph.bDone = time.Now()
	b.log("flood: A's %d triggers took %s, B's %d %s", floodRuns, ph.aDone.Sub(ph.start).Round(time.Millisecond), floodBRuns, ph.bDone.Sub(ph.aDone).Round(time.Millisecond))

	// A real system schedule, every minute: created now, it fires at the
	// next full minute. Suspended once it has, so it starts one run.
	sched := &jobsv1alpha1.JobSchedule{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "flood-system-" + map[bool]string{false: "off", true: "on"}[withKueue]},
		Spec:       jobsv1alpha1.JobScheduleSpec{Schedule: "* * * * *", JobType: "demo_maintenance", ConcurrencyPolicy: jobsv1alpha1.ConcurrencyForbid},
	}
	if err := b.c.Create(ctx, sched); err != nil {
		return nil, err
	}
	isSystem := func(r runSeen) bool { return r.schedule == sched.Name }
	deadline := ph.start.Add(floodWindow)
	all := append(append([]string(nil), ph.a...), ph.b...)
	lastLog := time.Now()
	waitFor(time.Until(deadline), 250*time.Millisecond, func() bool {
		if ph.system == "" {
			if ph.system = t.find(isSystem); ph.system != "" {
				ph.aLeftAtFire = len(ph.a) - t.count(ph.a, func(r runSeen) bool { return !r.end.IsZero() })
				b.log("flood: the system schedule fired (%s), %d of A's runs not ended", ph.system, ph.aLeftAtFire)
				patch := client.MergeFrom(sched.DeepCopy())
				sched.Spec.Suspend = ptr.To(true)
				if err := b.c.Patch(ctx, sched, patch); err != nil {
					b.log("flood: suspending %s: %v", sched.Name, err)
				}
			}
		}
		ended := t.count(all, func(r runSeen) bool { return !r.end.IsZero() })
		if time.Since(lastLog) > 30*time.Second {
			lastLog = time.Now()
			b.log("flood: %d of %d runs of A and B ended", ended, len(all))
		}
		return ended == len(all) && ph.system != "" && t.count([]string{ph.system}, func(r runSeen) bool { return !r.end.IsZero() }) == 1
	})
	ph.waitEnd = time.Now()
	ph.cpu = cpuSince(cpuBefore, takeCPU())
	writes, err := b.apiserverWrites(ctx, hc)
	if err != nil {
		return nil, err
	}
	ph.writes = map[string]float64{}
	for k, v := range writes {
		if d := v - writesBefore[k]; d != 0 {
			ph.writes[k] = d
		}
	}
	ph.seen = t.snapshot()
	if left := len(all) - t.count(all, func(r runSeen) bool { return !r.end.IsZero() }); left > 0 {
		b.log("flood: %d runs not ended after %s; cancelling them", left, floodWindow)
		if err := b.cancelRuns(ctx, t, all); err != nil {
			return nil, err
		}
	}
	if ph.system != "" && t.count([]string{ph.system}, func(r runSeen) bool { return !r.end.IsZero() }) == 0 {
		b.log("flood: the system run %s has not ended; deleting its schedule (and so the run)", ph.system)
	}
	// The schedule's run goes with it (owner reference).
	if err := b.c.Delete(ctx, sched); err != nil {
		return nil, err
	}
	if err := b.waitNodeIdle(ctx); err != nil {
		return nil, err
	}
	b.log("flood: phase done in %s", time.Since(ph.start).Round(time.Second))
	return ph, nil
}

// waitNodeIdle waits up to 5 minutes until no pod of the namespace is
// pending or running: the runs a phase cancelled have ended, but their pods
// may still wait for the node; the next phase (the overhead with Kueue
// follows the flood without) would otherwise queue behind them and measure
// the last phase's backlog.
func (b *bench) waitNodeIdle(ctx context.Context) error {
	start := time.Now()
	busy := 0
	idle := waitFor(5*time.Minute, time.Second, func() bool {
		pods := &corev1.PodList{}
		if err := b.c.List(ctx, pods, client.InNamespace(ns)); err != nil {
			b.log("flood: listing pods: %v", err)
			return false
		}
		busy = 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodPending || p.Status.Phase == corev1.PodRunning {
				busy++
			}
		}
		return busy == 0
	})
	if !idle {
		return fmt.Errorf("flood: %d pods still pending or running 5 minutes after the phase ended", busy)
	}
	b.log("flood: the node is idle after %s", time.Since(start).Round(time.Second))
	return nil
}

// cancelRuns asks those of runs that have not ended to stop and waits up
// to 2 minutes until they ended. It writes the cancel annotation itself, as
// a schedule's Replace does: the REST API cancels only running runs, and
// most of these are pending.
func (b *bench) cancelRuns(ctx context.Context, t *runTracker, runs []string) error {
	seen := t.snapshot()
	var open []string
	for _, id := range runs {
		if seen[id].end.IsZero() {
			open = append(open, id)
		}
	}
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%q}}}`,
		jobsv1alpha1.AnnotationCancelRequested, time.Now().UTC().Format(time.RFC3339)))
	if err := parallel(16, len(open), func(i int) error {
		run := &jobsv1alpha1.JobRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: open[i]}}
		return client.IgnoreNotFound(b.c.Patch(ctx, run, patch))
	}); err != nil {
		return err
	}
	if !waitFor(2*time.Minute, 250*time.Millisecond, func() bool {
		return t.count(open, func(r runSeen) bool { return !r.end.IsZero() }) == len(open)
	}) {
		return fmt.Errorf("flood: %d cancelled runs did not end within 2 minutes", len(open)-t.count(open, func(r runSeen) bool { return !r.end.IsZero() }))
	}
	return nil
}
