"""One frozen settings object for every command and worker.

Values come from, highest priority first: keyword arguments, environment
variables prefixed ``CLUSTERSTREAM_`` (e.g. ``CLUSTERSTREAM_TOP_M=3``), a TOML
file (``CLUSTERSTREAM_CONFIG=path.toml``, keys as the field names), then the
defaults below. Names of the core's knobs match :class:`stream.core.pipeline.EngineConfig`.

>>> s = Settings(top_m=3, app_id="news")
>>> s.engine_config().top_m, s.topic("clicks")
(3, 'news-clicks')
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stream.core.pipeline import EngineConfig
from stream.core.recall import RecallWeights
from stream.errors import ConfigError

DAY_S = 86_400.0


class Settings(BaseSettings):
    """Everything configurable, validated once, immutable afterwards."""

    model_config = SettingsConfigDict(env_prefix="CLUSTERSTREAM_", frozen=True, extra="forbid")

    # -- Kafka ----------------------------------------------------------------
    bootstrap_servers: str = "127.0.0.1:9092"
    embedded_broker: bool = Field(
        False, description="the broker is the embedded tansu build (enables its workarounds)"
    )
    app_id: str = Field("clusterstream", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(4, ge=1, description="partitions of the topics this app creates")
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)

    # -- state and worker ---------------------------------------------------------
    data_dir: Path = Path("./var")
    batch_size: int = Field(8192, ge=1, description="max clicks fetched per hot-path batch")
    batch_wait_ms: int = Field(50, ge=0, description="max wait for a batch to fill")
    batch_linger_ms: int = Field(
        20,
        ge=0,
        description="a fetched batch under a quarter of batch_size waits this long for more "
        "clicks (fewer, larger batches under load; adds up to this much latency)",
    )
    user_cache_rows: int = Field(
        262_144, ge=1024, description="user records kept in memory per clicks partition"
    )
    cf_snapshot_interval_s: float = Field(10.0, gt=0, description="CF table snapshot period")
    cf_apply_local: bool = Field(
        True,
        description="the hot path adds CF deltas of clusters whose cf-deltas partition this "
        "worker owns to their table at once (their records still go to the topic)",
    )
    worker_coclicks: bool = Field(
        False,
        description="workers keep the co-click tables eval uses: each batch's co-click pairs go "
        "with its cf-deltas to each cluster's owner, and recommendations blend them "
        "(recall_coclick); off, the worker serves cf and vector only. It costs the hot path "
        "in proportion to coclick_window (README, 'Co-clicks in the worker')",
    )
    flush_interval_s: float = Field(
        5.0, ge=0, description="user state to the changelog and RocksDB at least this often"
    )
    flush_max_clicks: int = Field(
        250_000, ge=1, description="... and after at most this many clicks per partition"
    )
    flush_max_rows: int = Field(
        25_000, ge=1, description="... and once this many users of a partition are dirty"
    )
    bootstrap_users: int = Field(
        500, ge=1, description="users with a vector before the first centre set is made"
    )
    bootstrap_after_s: float = Field(
        30.0, ge=0, description="... or this long after the first user, with bootstrap_min_users"
    )
    bootstrap_min_users: int = Field(
        20, ge=1, description="users with a vector a late bootstrap needs (k <= users / 5)"
    )

    trace_latency: bool = Field(
        False,
        description="keep (source offset, time) of applied CF deltas for GET /debug/cf-applied",
    )
    crash_at: str | None = Field(
        None,
        pattern=r"^(before_outputs|after_outputs|after_changelog|after_commit|stall_fetch|"
        r"lose_assignment|cf_stall_fetch):[0-9]+$",
        description=(
            "fault injection for tests: 'point:n' exits the process at that point of the "
            "n-th batch (before_outputs, after_outputs) or of the n-th flush (after_changelog, "
            "after_commit); stall_fetch / lose_assignment pause the clicks fetch / drop the "
            "consumer's assignment after the n-th batch instead, cf_stall_fetch pauses the "
            "cf-deltas fetch after the CF loop's n-th batch (stall tests)"
        ),
    )
    stall_s: float = Field(
        60.0,
        ge=0,
        description="a clicks partition behind its log end with no click applied this long is "
        "stalled: fetched again, then its consumer restarted, then the process exits; 0: off",
    )
    stop_timeout_s: float = Field(
        60.0,
        gt=0,
        description="a stopping worker that has not saved its state this long after SIGTERM "
        "(its broker away) exits anyway, code 1; the clicks since its last flush are applied "
        "again by the next owner, as after a crash",
    )

    # -- core (names of EngineConfig) ---------------------------------------------
    dim: int = Field(64, ge=1)
    half_life_s: float = Field(7 * DAY_S, gt=0)
    top_m: int = Field(2, ge=1)
    min_score: float = Field(0.0, ge=-1, le=1)
    hysteresis_margin: float = Field(0.05, ge=0)
    recent_items: int = Field(16, ge=1)
    cf_half_life_s: float = Field(DAY_S, gt=0)
    cf_max_items: int = Field(2000, ge=1)
    cf_prune_below: float = Field(0.01, ge=0)
    coclick_half_life_s: float = Field(
        30 * DAY_S, gt=0, description="half-life of in-cluster item-to-item co-clicks"
    )
    coclick_window: int = Field(
        10, ge=0,
        description="a click co-counts with this many of the user's previous items; 0: no "
        "co-clicks are kept (nor sent to the CF owners)",
    )  # fmt: skip
    coclick_max_neighbours: int = Field(200, ge=1, description="co-click entries kept per item")
    coclick_directed: bool = Field(
        True,
        description="an item's co-clicks are the items its readers click after it (a news "
        "feed's next story), not those clicked with it either way round; every worker must agree",
    )
    recall_cf: float = Field(0.25, ge=0, description="blend weight of the clusters' decayed CF")
    recall_coclick: float = Field(1.0, ge=0, description="blend weight of in-cluster co-clicks")
    recall_vector: float = Field(0.0, ge=0, description="blend weight of embedding recall")
    popular_cache_s: float = Field(
        1.0,
        ge=0,
        description="a sum of every cluster's top items (the popular fill of short lists and "
        "of new users) serves the requests while it is read and this long after",
    )
    coclick_prior: float = Field(
        5.0, ge=0, description="co-click mass at which a cluster's row weighs as the global row"
    )
    coclick_norm: float = Field(
        0.0, ge=0, le=1, description="co-click rows divided by their total ** this (0: raw counts)"
    )
    coclick_recency: float = Field(
        0.0, ge=0, description="weight of the i-th of n recent items is (i / n) ** this"
    )
    coclick_history_prior: float = Field(
        0.0,
        ge=0,
        description="a user's clusters get clicks / (clicks + this) of the co-click weight, "
        "the global rows the rest (0: all of it)",
    )
    dedupe_window: int = Field(
        16, ge=0, description="event ids remembered per user to drop duplicate clicks; 0: off"
    )
    item_learn_min_clicks: float = Field(
        3.0,
        ge=0,
        description=(
            "clicks by users with clusters before an item without a given vector gets one "
            "learnt from its clickers' centres; 0: items learn no vector"
        ),
    )
    item_learn_every_s: float = Field(
        60.0,
        gt=0,
        description="learnt item vectors are installed once per epoch of event time this long",
    )
    item_seed_vectors: bool = Field(
        True, description="an item met without any vector gets a seed vector from its id"
    )
    threads: int = Field(
        1,
        ge=1,
        description=(
            "threads of a batch's user phase (one worker process per core: 1); above 1, "
            "numba's omp or tbb layer (workqueue cannot run two parallel regions at once)"
        ),
    )

    # -- jobs ------------------------------------------------------------------
    k: int = Field(64, ge=1, description="number of centres for bootstrap and recompute")
    k_range: str | None = Field(None, description="'A:B' to choose k by the elbow method")
    min_cluster_size: int = Field(
        5, ge=0, description="merge rule: a cluster below this many members is merged (floor)"
    )
    min_cluster_share: float = Field(
        0.002, ge=0, le=1, description="merge rule: ... or below this share of all members"
    )
    merge_interval_s: float = Field(600.0, gt=0, description="dynamic-rule merge period (leader)")
    recompute_cron: str = Field(
        "0 4 * * *", description='off-peak recompute schedule (leader); "off": none'
    )
    recompute_timezone: str = Field("UTC", description="time zone of recompute_cron")
    recompute_sample: int = Field(
        200_000, ge=1, description="k-means runs on at most this many users"
    )
    recompute_max_churn: float = Field(
        0.05, ge=0, le=1, description="a recompute moving more users' primary id than this..."
    )
    recompute_min_gain: float = Field(
        0.02, ge=0, description="... is published only if it lowers the inertia by this share"
    )
    match_threshold: float = Field(0.5, ge=-1, le=1, description="min cosine to keep an id")
    recompute_on_drift: bool = False
    min_recompute_interval_s: float = Field(3600.0, ge=0)
    sweep_rate: float = Field(20_000.0, gt=0, description="users/s re-assigned after new centres")
    user_ttl_s: float = Field(
        0.0, ge=0, description="expire users idle this long (event time); 0: never"
    )
    user_ttl_check_s: float = Field(60.0, gt=0, description="how often idle users are looked for")
    malloc_arena_max: int = Field(
        0,
        ge=0,
        description="glibc malloc arenas at most (fewer keep less freed memory); 0: 8 a core",
    )
    malloc_mmap_threshold_kb: int = Field(
        0,
        ge=0,
        le=32 * 1024,  # glibc refuses more (its DEFAULT_MMAP_THRESHOLD_MAX on 64 bits)
        description="glibc malloc maps blocks this large or more on their own, given back when freed; 0: glibc's sliding default",
    )
    malloc_trim_s: float = Field(
        60.0, ge=0, description="give freed memory back to the system this often (glibc); 0: never"
    )
    candidates_interval_s: float = Field(30.0, gt=0)
    candidates_n: int = Field(50, ge=1)
    registry_interval_s: float = Field(2.0, gt=0)
    advertised_url: str | None = Field(
        None, description="how other workers reach this one (default http://web_host:web_port)"
    )
    seed: int = 0

    # -- web ---------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token for POST /admin/*; without one those endpoints are disabled",
    )
    status_log_interval_s: float = Field(
        30.0, gt=0, description="the worker logs one line of what it is doing this often"
    )

    @field_validator("k_range")
    @classmethod
    def _check_k_range(cls, value: str | None) -> str | None:
        if value is not None:
            parse_k_range(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("CLUSTERSTREAM_CONFIG")
        if path:
            # pydantic-settings reads a missing file as empty: a typo would run on defaults
            if not Path(path).is_file():
                raise ConfigError(f"CLUSTERSTREAM_CONFIG={path}: no such file")
            try:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
            except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
                raise ConfigError(f"CLUSTERSTREAM_CONFIG={path}: not a TOML file: {exc}") from None
        return tuple(sources)

    # -- derived ---------------------------------------------------------------------
    def engine_config(self) -> EngineConfig:
        names = {f.name for f in dataclasses.fields(EngineConfig)}
        return EngineConfig(**{n: getattr(self, n) for n in names})

    def worker_engine_config(self) -> EngineConfig:
        """:meth:`engine_config` as a worker runs it: without ``worker_coclicks``
        no co-click pairs are computed (``coclick_window`` 0)."""
        engine = self.engine_config()
        return engine if self.worker_coclicks else dataclasses.replace(engine, coclick_window=0)

    def recall_weights(self) -> RecallWeights:
        return RecallWeights(
            cf=self.recall_cf,
            coclick=self.recall_coclick,
            vector=self.recall_vector,
            coclick_prior=self.coclick_prior,
            coclick_norm=self.coclick_norm,
            coclick_recency=self.coclick_recency,
            coclick_history_prior=self.coclick_history_prior,
        )

    def topic(self, name: str) -> str:
        """Full topic name: ``<app_id>-<name>``."""
        return f"{self.app_id}-{name}"

    @field_validator("recompute_cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        from croniter import croniter

        if value == "off":
            return value
        if not croniter.is_valid(value):
            raise ValueError(f"not a cron expression: {value!r}")
        return value

    @field_validator("recompute_timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(value)
        except Exception:
            raise ValueError(f"unknown time zone: {value!r}") from None
        return value

    def sasl_secret(self) -> str | None:
        """The SASL password in clear, for the Kafka clients only."""
        return self.sasl_password.get_secret_value() if self.sasl_password else None

    def url(self) -> str:
        """Where other workers and clients reach this worker's web server."""
        return self.advertised_url or f"http://{self.web_host}:{self.web_port}"

    def k_bounds(self) -> tuple[int, int] | None:
        return parse_k_range(self.k_range) if self.k_range else None


def parse_k_range(text: str) -> tuple[int, int]:
    """``"A:B"`` -> (A, B) with 1 <= A <= B.

    >>> parse_k_range("8:64")
    (8, 64)
    """
    try:
        lo, hi = (int(p) for p in text.split(":"))
    except ValueError:
        raise ValueError(f"k range must look like A:B, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"k range must satisfy 1 <= A <= B, got {text!r}")
    return lo, hi


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, raising :class:`ConfigError` with one line per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def parse_assignments(pairs: list[str] | None) -> dict[str, str]:
    """``["name=value", ...]`` (``--set``) -> ``{name: value}``; names must be settings.

    >>> parse_assignments(["half_life_s=3600", "top_m=1"])
    {'half_life_s': '3600', 'top_m': '1'}
    >>> parse_assignments(["halflife=1"])
    Traceback (most recent call last):
    ...
    stream.errors.ConfigError: --set halflife=1: no setting named 'halflife'
    """
    out: dict[str, str] = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--set {pair}: must look like name=value")
        if name not in Settings.model_fields:
            raise ConfigError(f"--set {pair}: no setting named {name!r}")
        out[name] = value.strip()
    return out
