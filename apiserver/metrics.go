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

// Request metrics, on the manager's /metrics. Every label value comes from a
// fixed set: the route is chi's pattern (/v1/jobs/{runId}) or "unmatched",
// never the raw path; the method is a standard one or "other"; the code is
// the status the server chose.
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
		method := methodLabel(r.Method)
		requestsTotal.WithLabelValues(route, method, strconv.Itoa(ww.Status())).Inc()
		requestDuration.WithLabelValues(route, method).Observe(time.Since(start).Seconds())
	})
}

// methodLabel is the method as a label value: one of the standard methods,
// or "other". A client may send any token as its method (net/http accepts
// up to the header limit, ~1 MB); each distinct label value is a series
// kept for the life of the process.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}
