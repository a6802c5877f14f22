"""Settings, read from the environment (prefix ``REVIEWSTREAM_``) and an optional ``.env`` file.

The names are a public contract: operators set them in compose files and ``.env``. Every field
here is documented in ``.env.example``; add rather than rename.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderName = Literal["simulated", "openai", "anthropic"]
OpenAIContinuation = Literal["auto", "prefill", "prefix", "instruction"]
WorkersIn = Literal["process", "thread", "inline"]
LogFormat = Literal["text", "json"]


class Settings(BaseSettings):
    """Everything reviewstream can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="REVIEWSTREAM_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Redis. Unset: `reviewstream serve` starts a private redis-server and stops it on exit.
    redis_url: str | None = None
    # The URL names any node of a Redis Cluster (>= 7): the cluster client and sharded pub/sub.
    redis_cluster: bool = False
    redis_max_connections: int = Field(default=64, ge=4)
    # A command waits this long for a free pooled connection before failing (503).
    redis_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    key_prefix: str = Field(default="rs", pattern=r"^[A-Za-z0-9_.-]+$")
    retention_seconds: int = Field(default=3600, ge=1)

    # Providers.
    provider: ProviderName = "simulated"
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = None
    openai_model: str = "gpt-4o-mini"
    # How a continued attempt gives the model the stored text (see providers/openai.py).
    openai_continuation: OpenAIContinuation = "auto"
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_api_key: SecretStr | None = None
    anthropic_model: str = "claude-sonnet-4-5"
    anthropic_version: str = "2023-06-01"
    max_output_tokens: int = Field(default=800, ge=1, le=32000)
    sim_tokens_per_second: float = Field(default=20.0, gt=0, le=100000)
    sim_first_token_ms: float = Field(default=400.0, ge=0)

    # Upstream robustness: timeouts and retries (retries only before the first token).
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    upstream_first_token_timeout: float = Field(default=60.0, gt=0)
    upstream_idle_timeout: float = Field(default=30.0, gt=0)
    upstream_max_retries: int = Field(default=3, ge=0)
    upstream_backoff_base: float = Field(default=0.5, ge=0)
    upstream_backoff_max: float = Field(default=20.0, ge=0)

    # Workers.
    # Jobs a worker runs at once: high enough that its CPU, not this, is what limits it at
    # the usual 20-100 tokens/s per job (README, "Scale out and sizing").
    worker_concurrency: int = Field(default=256, ge=1)
    # A worker sends the tokens of all its running jobs to Redis in one round trip per flush,
    # as soon as its loop is idle, and starts flushes at least this far apart (ms).
    append_flush_ms: float = Field(default=5.0, ge=0, le=1000)
    lease_seconds: float = Field(default=10.0, gt=0)
    claim_idle_seconds: float = Field(default=15.0, gt=0)
    reap_interval_seconds: float = Field(default=1.0, gt=0)
    # Shards of the worker queue and lease index (each its own Redis Cluster hash tag).
    queue_shards: int = Field(default=1, ge=1, le=1024)
    # On shutdown, running jobs get this long to finish before they are handed over (requeued).
    worker_grace_seconds: float = Field(default=10.0, ge=0)
    # Where `reviewstream serve` runs its workers (unless --api-only): a child process it starts
    # and supervises, a thread with its own event loop, or the API's own event loop.
    serve_workers: WorkersIn = "process"
    # API processes `reviewstream serve` runs on its one port (`--processes N`): uvicorn's own
    # supervisor; the embedded Redis and the worker process are the parent's, shared by all.
    processes: int = Field(default=1, ge=1)

    # Durable jobs. A job whose producer is lost (lease lapsed, worker shut down, Redis trouble)
    # goes back to the queue for another attempt, up to max_attempts in all; on_producer_loss:
    # continue after the stored text, restart from the prompt, or fail the job.
    max_attempts: int = Field(default=3, ge=1)
    on_producer_loss: Literal["continue", "restart", "fail"] = "continue"
    # A producer keeps its tokens and retries appends this long while Redis is unreachable.
    redis_outage_seconds: float = Field(default=30.0, ge=0)
    # A running job nobody followed or polled for this long is cancelled; 0: never.
    abandon_seconds: float = Field(default=0.0, ge=0)

    # Delivery.
    long_poll_max_timeout: float = Field(default=25.0, gt=0)
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0)
    sse_retry_ms: int = Field(default=1000, ge=0)
    ws_ping_seconds: float = Field(default=20.0, gt=0)
    ws_per_message_deflate: bool = False
    coalesce_ms: float = Field(default=0.0, ge=0)
    page_size: int = Field(default=256, ge=1, le=10000)
    resync_seconds: float = Field(default=5.0, gt=0)

    # Fan-out (the per-process hub).
    hub_buffer_tokens: int = Field(default=1024, ge=1)
    subscribe_timeout_seconds: float = Field(default=10.0, gt=0)
    feed_linger_seconds: float = Field(default=5.0, ge=0)

    # Requests.
    max_request_bytes: int = Field(default=65536, ge=1024)
    # A Durable Streams append's body (its own bound: the API's request limit is for JSON).
    max_append_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    ws_max_message_bytes: int = Field(default=4096, ge=64, le=1 << 20)
    # Requests and WebSocket sessions one process serves at once (idle keep-alive connections
    # aside: uvicorn's limit, a tenth above, bounds those); beyond it: a JSON 503, Retry-After.
    max_open_connections: int = Field(default=10000, ge=1)
    # Origins (comma-separated) allowed to call the API from a browser; empty: same origin only.
    cors_origins: str = ""

    # Tenancy. API keys: comma-separated NAME:KEY or NAME:sha256:HEX. Unset: open mode.
    api_keys: SecretStr | None = None
    stream_token_ttl_seconds: int = Field(default=3600, ge=1)
    # Signs stream tokens; unset: generated once and shared through Redis.
    token_secret: SecretStr | None = None

    # Admission. Per-key limits are off when unset (0).
    max_active_jobs_per_key: int = Field(default=0, ge=0)
    jobs_per_minute_per_key: int = Field(default=0, ge=0)
    max_streams_per_key: int = Field(default=0, ge=0)
    # Streams a key creates at /v1/stream/ (Durable Streams): open at once, and created a minute.
    max_open_durable_streams_per_key: int = Field(default=0, ge=0)
    durable_streams_per_minute_per_key: int = Field(default=0, ge=0)
    max_queued_jobs: int = Field(default=10000, ge=1)
    queued_timeout_seconds: float = Field(default=600.0, gt=0)
    # A worker is alive while its heartbeat is younger than this; with none, jobs are refused.
    worker_heartbeat_timeout_seconds: float = Field(default=15.0, gt=0)

    # Observability. Every line a process writes: human-readable text, or one JSON object per
    # line (ts, level, logger, message, and job_id, key, mode, status, duration_ms where known).
    log_format: LogFormat = "text"
    # `reviewstream worker` started on its own (not `serve`'s child, whose series the API's
    # /metrics shows) serves its series at http://0.0.0.0:PORT/metrics; 0: off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # /metrics renders every process's series on the loop that delivers tokens: a scrape within
    # this many seconds of the last rendering gets that text again (0: render every scrape).
    metrics_max_age_seconds: float = Field(default=1.0, ge=0, le=60)

    @model_validator(mode="after")
    def _cluster_needs_a_url(self) -> Settings:
        if self.redis_cluster and self.redis_url is None:
            raise ValueError(
                "REVIEWSTREAM_REDIS_CLUSTER needs REVIEWSTREAM_REDIS_URL (any node of the"
                " cluster): the embedded Redis is a single server"
            )
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        """``cors_origins`` as a list of origins (``scheme://host[:port]``)."""
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]
