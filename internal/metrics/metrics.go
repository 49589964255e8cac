// Package metrics owns the bot's Prometheus collectors. Each bot gets its
// own registry, so tests and two bots in one process never share counters.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type Metrics struct {
	Registry  *prometheus.Registry
	Commands  *prometheus.CounterVec   // command, outcome
	Ack       *prometheus.HistogramVec // transport
	AWSErrors *prometheus.CounterVec   // service, operation, code
	Rejected  *prometheus.CounterVec   // reason: signature, stale, too_large, duplicate, busy
}

func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circlebot_commands_total",
			Help: "Commands handled, by command name and outcome (ok, refused, usage, failed, unavailable).",
		}, []string{"command", "outcome"}),
		Ack: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "circlebot_ack_seconds",
			Help: "Time from receiving a Slack request to acknowledging it (Slack allows 3 s).",
			// Slack's deadline is 3 s; the interesting range is far below it.
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 3},
		}, []string{"transport"}),
		AWSErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circlebot_aws_errors_total",
			Help: "AWS API calls that failed after retries, by service, operation and error code.",
		}, []string{"service", "operation", "code"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "circlebot_slack_requests_rejected_total",
			Help: "Slack requests refused before running anything, by reason.",
		}, []string{"reason"}),
	}
	m.Registry.MustRegister(m.Commands, m.Ack, m.AWSErrors, m.Rejected,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
