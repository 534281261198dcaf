package apiserver

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Request metrics, on the manager's /metrics. The route is chi's pattern
// (/v1/jobs/{runId}), never the raw path, so run ids do not become labels.
var (
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "jobrun_api_requests_total",
		Help: "REST API requests by route, method and status code.",
	}, []string{"route", "method", "code"})
	requestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "jobrun_api_request_duration_seconds",
		Help:    "REST API request latency by route and method.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14), // 1 ms to ~8 s
	}, []string{"route", "method"})
)

func init() {
	metrics.Registry.MustRegister(requestsTotal, requestDuration)
}

// instrument counts requests and their latency by route.
func instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		requestsTotal.WithLabelValues(route, r.Method, strconv.Itoa(ww.Status())).Inc()
		requestDuration.WithLabelValues(route, r.Method).Observe(time.Since(start).Seconds())
	})
}
