"""All settings in one place: typed, overridable with CROSSPATHS_* environment variables."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from geo.crossings import CrossingParams

_CROSSING = CrossingParams()  # the crossing defaults are declared there, once


def _default_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crosspaths"


class Settings(BaseSettings):
    """Crosspaths configuration; every field is CROSSPATHS_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="CROSSPATHS_", frozen=True, extra="ignore")

    # Kafka and the worker
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: int = Field(4, ge=1, le=256)
    app_id: str = "crosspaths"
    web_port: int = 6066
    home: Path = Field(default_factory=_default_home)

    # Credentials (streams/clients.py): every client of the worker and the commands takes them from here.
    # client_properties is a Kafka client properties file (what `broker start --secure` writes per
    # principal); a field set here as well wins over the file's value.
    client_properties: Path | None = None
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] | None = None  # None: the file's, else PLAINTEXT
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] | None = None  # None: the file's, else SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None  # SASL_SSL: the CA that signed the brokers' certificates (None: the system's)

    # Replication (topics create, the worker's own topics and changelogs). One local broker: 1, 1, 0.
    # A production cluster: 3 replicas, min.insync.replicas 2 (acks=all then survives one lost broker).
    replication_factor: int = Field(1, ge=1)
    min_insync_replicas: int = Field(1, ge=1)
    table_standby_replicas: int = Field(0, ge=0)  # workers keeping a hot copy of each table partition

    # Local broker (crosspaths broker start)
    kafka_version: str = "4.1.1"
    broker_port: int = 9092
    controller_port: int = 9093
    broker_heap: str = "768m"

    # Ingestion
    # At most 512 KiB: an accepted ping travels on to crossing-cells with its raw bytes (base64, for a
    # late ping's dead letter), and that message must stay under the producer's 1 MB request limit.
    max_message_bytes: int = Field(64 * 1024, ge=256, le=512 * 1024)
    max_future_skew_s: float = Field(300.0, ge=0)
    consent_max_age_months: int = Field(13, ge=1, le=13)

    # Poison messages and producer errors (streams.plumbing.deadletters, streams.plumbing.outbox)
    dead_letter_prefix_bytes: int = Field(4096, ge=0, le=64 * 1024)  # of key and value; beyond: size + SHA-256
    send_retry_s: float = Field(30.0, ge=0)  # a send failing transiently is retried this long, then quarantined

    # Crossings
    crossing_distance_m: float = _CROSSING.distance_m
    crossing_window_s: float = _CROSSING.window_s
    crossing_max_accuracy_m: float = _CROSSING.max_accuracy_m
    crossing_cooldown_s: float = _CROSSING.cooldown_s
    crossing_lateness_s: float = _CROSSING.lateness_s
    crossing_place_resolution: int = _CROSSING.place_resolution
    # The crowd rule (geo/README.md): more distinct users than this at one partition key within one
    # crossing window is a crowd, whose pings are counted, not matched pairwise. 0: no crowd rule.
    crossing_crowd_users: int = Field(_CROSSING.crowd_users, ge=0)
    zones_path: Path | None = None

    # Statistics
    k: int = Field(10, ge=2)
    stats_window_s: int = Field(3600, ge=60)
    stats_lateness_s: int = Field(300, ge=0)
    h3_base_resolution: int = Field(9, ge=0, le=15)
    h3_coarsest_resolution: int = Field(5, ge=0, le=15)
    connection_group_by: str = "os_family,browser_family,language"
    pseudonym_secret: SecretStr | None = None
    pseudonym_secret_file: Path | None = None
    pseudonym_rotation_s: int = 86400
    # Differential privacy for partner-statistics, on by default: epsilon per window; 0 turns it off
    # (k-anonymous regions alone, exact counts).
    dp_epsilon: float = Field(1.0, ge=0)
    dp_max_cells_per_user: int = 4
    dp_delta: float = 1e-6  # at most anonymizers.dp.MAX_DELTA: the worker refuses more
    # H3 resolution of the noisy cells (fixed, data-independent); None: 8 over a declared area, 7 without
    # (cells taken from the data need a noisy count of ~60 to show: coarser cells reach it).
    dp_resolution: int | None = Field(None, ge=0, le=15)
    # The declared service area (anonymizers.servicearea): a GeoJSON polygon file, or a file of H3 cells.
    # Set: every cell of it at dp_resolution gets a noisy count each window (pure epsilon-DP, threshold k).
    dp_domain: Path | None = None

    # Retention
    # Every record of the raw input and internal topics is gone from the broker within this many hours
    # of being written (retention + segment roll + the broker's retention check: streams/topics.py).
    raw_lifetime_hours: float = Field(24, gt=0, le=24 * 31)
    # Compacted topics and changelogs: a tombstoned or overwritten value is compacted away within
    # compaction_lag_s (+ segment roll), the tombstone itself kept tombstone_retention_s more: consumers
    # of `crossings` must read within that to see every tombstone.
    compaction_lag_s: float = Field(6 * 3600, ge=1)
    tombstone_retention_s: float = Field(86400, ge=0)
    # Kafka's log cleaner threads serve every compacted log of the broker in turn: the time allowed per
    # cleaning pass for them to reach one (counted twice in an erasure's horizon on compacted topics).
    cleaner_slack_s: float = Field(1800, ge=0)
    broker_retention_check_ms: int = Field(300_000, ge=1000)  # the cluster's log.retention.check.interval.ms
    crossings_retention_days: int = Field(30, ge=1)  # also bounds who-met-whom state (pair stage)
    stats_retention_days: int = 25 * 31
    inactivity_days: int = 3 * 365
    inactivity_grace_days: int = 30

    @model_validator(mode="after")
    def _writes_can_succeed(self) -> "Settings":
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"min_insync_replicas={self.min_insync_replicas} exceeds replication_factor="
                             f"{self.replication_factor}: no acks=all write could ever succeed")
        return self

    def crossing_params(self, **overrides) -> CrossingParams:
        """The crossing rules of these settings as geo.crossings.CrossingParams (fields overridable)."""
        return CrossingParams(**{
            "distance_m": self.crossing_distance_m, "window_s": self.crossing_window_s,
            "max_accuracy_m": self.crossing_max_accuracy_m, "cooldown_s": self.crossing_cooldown_s,
            "lateness_s": self.crossing_lateness_s, "place_resolution": self.crossing_place_resolution,
            "crowd_users": self.crossing_crowd_users, **overrides})

    def topic(self, name: str) -> str:
        """The full topic name for a logical topic name."""
        return f"{self.topic_prefix}{name}"

    @property
    def broker_url(self) -> str:
        """Faust broker URL(s) for the bootstrap servers."""
        return ";".join(f"kafka://{s.strip()}" for s in self.bootstrap_servers.split(","))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def pseudonym_secret(settings: Settings) -> bytes:
    """The pseudonym HMAC secret: from the setting, its file, or a random one kept in the home folder."""
    if settings.pseudonym_secret is not None:
        return settings.pseudonym_secret.get_secret_value().encode()
    path = settings.pseudonym_secret_file or Path(settings.home).expanduser() / "pseudonym.key"
    if not path.exists():
        # Local development only: production sets CROSSPATHS_PSEUDONYM_SECRET(_FILE) for every worker.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    return path.read_bytes().strip()
