"""Prometheus metrics of the server, on their own HTTP port (`/metrics`).

Names follow Prometheus conventions (``enclave_`` prefix, base units, ``_total`` counters) and
vLLM's set (``vllm:time_to_first_token_seconds`` and family) for what to measure. Labels are
model, adapter and code only: never a prompt, a token or a caller.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from serve.metrics_http import MetricsServer

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
E2E = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TOKENS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


APIS = ("grpc", "http")  # the values of enclave_requests_total's api label


class Metrics:
    """Every metric of one server, in its own registry (tests start several servers in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        ma, m = ("model", "adapter"), ("model",)
        self.requests = Counter(
            "enclave_requests",
            "Finished calls by gRPC status code, finish reason (stop, length, stop_sequence, "
            "context_limit; empty for calls that produced no finished answer) and API (grpc, http: the OpenAI one)",
            ("model", "adapter", "code", "finished_reason", "api"),
            registry=r,
        )
        self.feedback = Counter(
            "enclave_feedback",
            "Reviewers' ratings of answers (the Review service, POST /v1/feedback) by verdict: good, bad, neutral",
            ("model", "adapter", "verdict"),
            registry=r,
        )
        self.feedback_errors = Counter(
            "enclave_feedback_errors",
            "Feedback store reads and writes that failed (the answers go on; the ratings or rows are lost: page)",
            registry=r,
        )
        self.model_info = Gauge(
            "enclave_model_info",
            "1 for each served model's active version: its version label, manifest digest, backend and kind",
            ("model", "version", "digest", "backend", "kind"),
            registry=r,
        )
        self.ttft = Histogram(
            "enclave_time_to_first_token_seconds", "Arrival to first generated token", ma, buckets=LATENCY, registry=r
        )
        self.itl = Histogram(
            "enclave_inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            ma,
            buckets=LATENCY,
            registry=r,
        )
        self.e2e = Histogram(
            "enclave_e2e_request_latency_seconds", "Arrival to the last token", ma, buckets=E2E, registry=r
        )
        self.queue = Histogram(
            "enclave_request_queue_time_seconds", "Arrival to the first model step", ma, buckets=LATENCY, registry=r
        )
        self.prompt_tokens = Counter("enclave_prompt_tokens", "Prompt tokens processed", ma, registry=r)
        self.generation_tokens = Counter("enclave_generation_tokens", "Tokens generated", ma, registry=r)
        self.prompt_len = Histogram(
            "enclave_request_prompt_tokens", "Prompt length per request (drift)", ma, buckets=TOKENS, registry=r
        )
        self.output_len = Histogram(
            "enclave_request_generation_tokens", "Generated length per request (drift)", ma, buckets=TOKENS, registry=r
        )
        self.context_limit = Counter(
            "enclave_request_context_limit",
            "Generations stopped by the model's context length "
            "(divided by enclave_requests_total: the share that hits the limit)",
            ma,
            registry=r,
        )
        self.running = Gauge("enclave_num_requests_running", "Requests in the running batch", m, registry=r)
        self.waiting = Gauge("enclave_num_requests_waiting", "Requests queued for a slot", m, registry=r)
        self.batch = Histogram("enclave_batch_size", "Sequences per decode step", m, buckets=BATCH, registry=r)
        self.batch_adapters = Histogram(
            "enclave_batch_adapters",
            "Distinct adapters per decode step, the base counting as one (above 1: a mixed batch)",
            m,
            buckets=(1, 2, 3, 4, 6, 8, 16),
            registry=r,
        )
        self.slots = Gauge("enclave_slot_usage_ratio", "Running requests / max_batch_size (1 = full)", m, registry=r)
        # Prefix caching, in prompt tokens as vLLM's vllm:prefix_cache_queries/hits (hit rate: hits / queries).
        self.prefix_queries = Counter(
            "enclave_prefix_cache_queries", "Prompt tokens looked up in the prefix cache", m, registry=r
        )
        self.prefix_hits = Counter(
            "enclave_prefix_cache_hits", "Prompt tokens whose KV came from the prefix cache", m, registry=r
        )
        self.prefix_bytes = Gauge("enclave_prefix_cache_bytes", "Memory held by the prefix cache", m, registry=r)
        self.load_time = Gauge(
            "enclave_model_load_seconds", "Seconds the active version took to load and warm up", m, registry=r
        )
        self.insecure = Gauge(
            "enclave_insecure_mode",
            "1 when the server runs with `insecure: true` (no TLS or no tokens on a non-loopback address)",
            registry=r,
        )
        self.reloads = Counter(
            "enclave_credentials_reloads",
            "Tokens file or TLS certificate reloads, by what and result",
            ("what", "result"),
            registry=r,
        )

    def serve(self, host: str, port: int, max_connections: int = 16, timeout: float = 10.0) -> int:
        """Start the /metrics HTTP endpoint; returns its port (``port`` 0 picks a free one)."""
        self.http = MetricsServer(self.registry, host, port, max_connections, timeout)
        return self.http.port

    def start_series(self, model: str, adapter: str = "") -> None:
        """Create a model's (or adapter's) series at zero, so rate() and alerts see them before the first call."""
        for family in (
            self.ttft,
            self.itl,
            self.e2e,
            self.queue,
            self.prompt_tokens,
            self.generation_tokens,
            self.prompt_len,
            self.output_len,
            self.context_limit,
        ):
            family.labels(model, adapter)
        for api in APIS:
            self.requests.labels(model, adapter, "OK", "stop", api)
        for verdict in ("good", "bad", "neutral"):
            self.feedback.labels(model, adapter, verdict)

    def serving(self, model: str, version: str, digest: str, backend: str, kind: str) -> None:
        """``enclave_model_info`` names this version of ``model`` only (an older one's series goes)."""
        for labels in [s for s in self.model_info._metrics if s[0] == model]:
            self.model_info.remove(*labels)
        self.model_info.labels(model, version, digest, backend, kind).set(1)

    def gauges(self, model: str) -> EngineGauges:
        return EngineGauges(self, model)

    def close(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.close()
            self.http = None


class EngineGauges:
    """What an engine reports after each step."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.running, self.waiting = metrics.running.labels(model), metrics.waiting.labels(model)
        self.slots, self.batch = metrics.slots.labels(model), metrics.batch.labels(model)
        self.prefix_queries, self.prefix_hits = metrics.prefix_queries.labels(model), metrics.prefix_hits.labels(model)
        self.prefix_bytes = metrics.prefix_bytes.labels(model)
        self.batch_adapters = metrics.batch_adapters.labels(model)

    def update(self, running: int, waiting: int, max_batch: int, stepped: bool = False, adapters: int = 0) -> None:
        """Set the gauges; after a decode step also observe its batch size and its distinct adapters."""
        self.running.set(running)
        self.waiting.set(waiting)
        self.slots.set(running / max_batch)
        if stepped and running:
            self.batch.observe(running)
        if stepped and adapters:
            self.batch_adapters.observe(adapters)

    def prefix(self, cache) -> None:
        """Count a prefix cache's lookups since the last call and report its memory."""
        stats = cache.take_stats()
        self.prefix_queries.inc(stats.queries)
        self.prefix_hits.inc(stats.hits)
        self.prefix_bytes.set(cache.bytes)
