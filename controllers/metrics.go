package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	jobsv1alpha1 "jobrun.dev/jobrun/api/v1alpha1"
)

// runMetrics are the run lifecycle metrics on the manager's /metrics. Each is
// counted when the controller records the transition in the run's status, so
// a restart or a conflict never counts one twice.
type runMetrics struct {
	startedTotal  *prometheus.CounterVec
	finishedTotal *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	startLatency  *prometheus.HistogramVec
}

var defaultRunMetrics = newRunMetrics(metrics.Registry)

func newRunMetrics(reg prometheus.Registerer) *runMetrics {
	m := &runMetrics{
		startedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jobrun_runs_started_total",
			Help: "Runs whose handler started, by job type.",
		}, []string{"job_type"}),
		finishedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jobrun_runs_finished_total",
			Help: "Runs that ended, by job type and status (completed, failed, cancelled).",
		}, []string{"job_type", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "jobrun_run_duration_seconds",
			Help:    "Time from a run's start (or creation, if it never started) to its end, by job type and status.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 16), // 0.5 s to ~4.5 h
		}, []string{"job_type", "status"}),
		startLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "jobrun_run_start_latency_seconds",
			Help:    "Time from a run's creation to its handler running (pending to running), by job type.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14), // 50 ms to ~7 min
		}, []string{"job_type"}),
	}
	reg.MustRegister(m.startedTotal, m.finishedTotal, m.duration, m.startLatency)
	return m
}

// scheduleDelay is how late a JobSchedule's runs are created after their
// schedule time: the controller's own lag (queue, API server), not the run's.
var scheduleDelay = func() prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "jobrun_schedule_start_delay_seconds",
		Help:    "Time from a JobSchedule's schedule time to the creation of its run.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 16), // 10 ms to ~5.5 min
	})
	metrics.Registry.MustRegister(h)
	return h
}()

func (m *runMetrics) started(run *jobsv1alpha1.JobRun) {
	m.startedTotal.WithLabelValues(run.Spec.JobType).Inc()
	if run.Status.StartedAt != nil {
		m.startLatency.WithLabelValues(run.Spec.JobType).Observe(run.Status.StartedAt.Sub(run.CreatedAt()).Seconds())
	}
}

func (m *runMetrics) finished(run *jobsv1alpha1.JobRun) {
	status := string(run.Status.Phase)
	m.finishedTotal.WithLabelValues(run.Spec.JobType, status).Inc()
	if run.Status.CompletedAt == nil {
		return
	}
	from := run.CreatedAt()
	if run.Status.StartedAt != nil {
		from = run.Status.StartedAt.Time
	}
	m.duration.WithLabelValues(run.Spec.JobType, status).Observe(run.Status.CompletedAt.Sub(from).Seconds())
}
