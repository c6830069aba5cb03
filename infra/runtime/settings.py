"""Settings from environment variables (prefix ``EXITREC_``); the README's configuration table lists them all.

One :class:`Settings` object is built per process (:func:`get_settings`); tests build their own.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_cache() -> Path:
    return Path.home() / ".cache" / "exitrec"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXITREC_", extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    topic_prefix: str = Field("", description="prefix for every topic name (isolates tests and tenants)")
    topic_partitions: int = Field(4, ge=1, le=1024, description="partitions of the topics the worker creates")
    consumer_group: str = Field("exitrec", description="faust app id; the click loop consumes as <group>.graph-updater")
    session_timeout_s: float = Field(10.0, ge=1.0, le=300.0,
                                     description="consumer session timeout: how fast a dead replica's partitions move")
    data_dir: Path = Field(REPO_ROOT.parent / "shared" / "data", description="root of the datasets")
    cache_dir: Path = Field(default_factory=default_cache, description="models, checkpoints, venv, Kafka jars")
    state_dir: Path | None = Field(None, description="faust table state; default <cache_dir>/state/<group>")
    vector_backend: Literal["edge", "qdrant"] = Field(
        "edge", description="embedded engine when no URL is set: edge = qdrant-edge-py (Qdrant's Rust engine in "
                            "process), qdrant = qdrant-client local mode (Python; filtered queries are slow)")
    qdrant_url: str | None = Field(None, description="Qdrant server URL (qdrant-client); unset = embedded store")
    qdrant_path: str = Field(":memory:", description="embedded store folder; ':memory:' = a temporary one")
    collection_prefix: str = Field("exitrec", description="Qdrant collections are <prefix>_users and <prefix>_items")
    graph_checkpoint: Path | None = Field(None, description="LightGCN checkpoint folder the updater starts from")
    updater_batch_size: int = Field(1024, ge=1, le=100_000, description="clicks per graph micro-batch (max)")
    updater_batch_max: int = Field(16_384, ge=1, le=100_000,
                                   description="clicks per micro-batch under a backlog: the cap doubles from "
                                               "updater_batch_size while polls come back full, reset by one "
                                               "below updater_batch_size")
    updater_batch_wait_ms: int = Field(100, ge=1, le=60_000, description="max wait to fill a micro-batch")
    refine_every_clicks: int = Field(20_000, ge=0, description="BPR refinement after this many clicks (0 = off)")
    refine_steps: int = Field(5, ge=1, le=1000, description="BPR steps per refinement")
    refine_min_change: float = Field(0.05, ge=0.0, le=1.0,
                                     description="a refined vector is rewritten when it moved more than this "
                                                 "(relative); the rest keep their stored vector until their next click")
    payload_recent_items: int = Field(20, ge=1, le=1000,
                                      description="recent items kept per user in the payload; also each user's "
                                                  "idempotency window of event ids")
    replica_id: str | None = Field(
        None, description="worker replica name; with an embedded store each replica follows the click log itself "
                          "as <group>.graph-updater.<replica_id> (default: the host name)")
    scorer_checkpoint: Path | None = Field(None, description="early-exit model folder (exitrec train-model writes "
                                                             "<cache>/models/early-exit-<dataset>-<backbone>)")
    scorer_batch_size: int = Field(64, ge=1, le=10_000, description="impression requests per micro-batch (max)")
    scorer_batch_wait_ms: int = Field(5, ge=1, le=60_000, description="max wait to fill an impression micro-batch")
    model_batch_size: int = Field(32, ge=1, le=4096, description="candidates per model pass (sorted by length)")
    retriever: Literal["gcn", "text", "none"] = Field(
        "gcn", description="neighbour retrieval: gcn = LightGCN vectors, text = MiniLM history embeddings, "
                    "none = no neighbours (the user's own history is still read)")
    neighbours: int = Field(10, ge=1, le=1000, description="similar users retrieved per (user, candidate)")
    history_len: int = Field(10, ge=0, le=100, description="recent reactions of the user in the prompt")
    retrieval_budget_ms: float = Field(50.0, gt=0, le=60_000,
                                       description="retrieval time per request; candidates past it get no neighbours")
    latency_slo_ms: float | None = Field(None, gt=0, le=60_000,
                                         description="SLO mode: impression -> score aim; a micro-batch infers "
                                                     "within a quarter of it and answers at the first head when a "
                                                     "request of it waited a quarter, a request taken after half of "
                                                     "it has its retrieval shed, as a request nears it the exit rule "
                                                     "relaxes, and at it the request is answered from the deepest "
                                                     "head computed (flag slo); unset = off")
    text_index_users: int = Field(10_000, ge=0, le=10_000_000,
                                  description="retriever=text: users embedded at start, most active first")
    model_reload_s: float = Field(30.0, ge=0, le=86_400,
                                  description="seconds between looks at the model folder for a new checkpoint to "
                                              "hot-load (0 = never)")
    exit_rule: Literal["calibrated", "never"] = Field(
        "calibrated", description="calibrated = the checkpoint's exit rule, never = full depth")
    catalogue: str | None = Field(None, description="dataset whose item texts name items in prompts (ml-100k, ml-1m, "
                                                    "bookcrossing, videogames, or a tenant's CSV folder); the items "
                                                    "topic overlays it; unset = the items topic alone")
    log_level: str = Field("INFO", description="structlog level")
    metrics_port: int | None = Field(None, ge=0, le=65535,
                                     description="port serving /metrics (Prometheus), /healthz and /readyz; unset = "
                                                 "none, 0 = any free port")

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def environment(self) -> dict[str, str]:
        """These settings as ``EXITREC_*`` variables (unset ones left out): what a child process needs to get them."""
        return {f"EXITREC_{k.upper()}": str(v) for k, v in self.model_dump().items() if v is not None}

    def resolved_state_dir(self) -> Path:
        return self.state_dir or self.cache_dir / "state" / self.consumer_group


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
