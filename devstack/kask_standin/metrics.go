package main

import (
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, labels and latency buckets are Kask's, so dashboards and tests read both alike.
var (
	requestsTotal = prometheus.NewCounterVec(
		prometheus.CounterOpts{
			Name: "http_requests_total",
			Help: "HTTP requests under the base URI, by status code and method.",
		},
		[]string{"code", "method"},
	)

	requestSeconds = prometheus.NewHistogramVec(
		prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "Time to answer HTTP requests under the base URI, by status code and method.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		},
		[]string{"code", "method"},
	)
)

func registerMetrics() {
	buildInfoGauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kask_build_info",
		Help: "Build of the running service; the value is always 1.",
		ConstLabels: prometheus.Labels{
			"version":        version,
			"git":            gitCommit,
			"build_date":     buildDate,
			"build_host":     buildHost,
			"go_version":     runtime.Version(),
			"implementation": implementation,
		},
	})
	buildInfoGauge.Set(1)
	prometheus.MustRegister(requestsTotal, requestSeconds, buildInfoGauge)
}

// statusRecorder remembers the status a handler wrote; handlers that never call WriteHeader send 200.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(status int) {
	s.status = status
	s.ResponseWriter.WriteHeader(status)
}

// instrument counts and times every request that next handles.
func instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started := time.Now()
		recorder := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(recorder, r)
		code := strconv.Itoa(recorder.status)
		requestSeconds.WithLabelValues(code, r.Method).Observe(time.Since(started).Seconds())
		requestsTotal.WithLabelValues(code, r.Method).Inc()
	})
}
