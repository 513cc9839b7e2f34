"""Prometheus metrics, defined once against a registry passed in (one per app, no globals).

Naming: ``sbnn_`` prefix, base units in the name, ``_total`` counters, low-cardinality labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from app.serve.drift import DriftCollector
from app.serve.histograms import ArrayHistogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
NATS_BUCKETS = (1e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.7)


class ServiceMetrics:
    """Every metric the service exposes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, …: the server's own
        # (read from /proc at scrape time; absent where there is no /proc).
        ProcessCollector(registry=registry)
        self.request_duration = Histogram(
            "sbnn_request_duration_seconds",
            "Time from request received to response sent, by model, route template and HTTP status.",
            ["model", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "sbnn_inference_stage_duration_seconds",
            "Time spent per inference stage: queue (waiting to join a batch) and compute (the batched pass).",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "sbnn_batch_rows",
            "Rows evaluated together in one batched Monte Carlo pass.",
            ["model"],
            buckets=ROWS_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "sbnn_batch_requests",
            "Requests coalesced into one batched pass.",
            ["model"],
            buckets=ROWS_BUCKETS,
            registry=registry,
        )
        self.epistemic = ArrayHistogram(  # a request's rows observed in one call
            "sbnn_epistemic_uncertainty_nats",
            "Epistemic uncertainty (mutual information, nats) of each predicted row.",
            "model",
            NATS_BUCKETS,
        )
        registry.register(self.epistemic)
        self.predictions = Counter(
            "sbnn_predictions_total", "Rows answered, whatever the gate decided.", ["model"], registry=registry
        )
        self.decisions = Counter(
            "sbnn_decisions_total",
            "Rows by gate decision (accept, refer or reject).",
            ["model", "decision"],
            registry=registry,
        )
        self.gate_reasons = Counter(
            "sbnn_gate_reasons_total",
            "Rows referred or rejected, by the gate component that gave a reason (bounds, support, density, "
            "epistemic); a row with several reasons counts under each.",
            ["model", "reason"],
            registry=registry,
        )
        self.drift = DriftCollector()
        registry.register(self.drift)
        self.model_info = Gauge(
            "sbnn_model_info",
            "Loaded model identity (value 1): name, version, sha256 of the weights, kind and ranks.",
            ["model", "version", "sha256", "kind", "rank"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "sbnn_model_ready",
            "1 when the model is loaded, verified and warm; 0 otherwise.",
            ["model"],
            registry=registry,
        )
        self.model_loads = Counter(
            "sbnn_model_loads_total",
            "Model (re)loads by result: loaded (swapped in), kept (a version failed; the old ones serve on), "
            "failed (nothing serving), unloaded.",
            ["model", "result"],
            registry=registry,
        )
