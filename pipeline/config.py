"""One typed configuration object, read once: defaults < flowctl.toml < FLOWCTL_* environment < flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "FLOWCTL_"
DEFAULT_CONFIG_FILE = "flowctl.toml"


class ConfigError(ValueError):
    pass


@dataclass
class Settings:
    # Kafka. Empty bootstrap_servers means: use the embedded broker.
    bootstrap_servers: str = ""
    # "embedded" when bootstrap_servers points at an embedded broker (set by the verbs that start or
    # find one): it drops old data past ~5 MiB per partition, so producers wait for consumers.
    broker_kind: str = "kafka"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""
    partitions: int = 8
    replication_factor: int = 1
    # Kafka-level compression. Arrow batch bodies are already zstd-compressed inside the IPC
    # stream, so "none" is right for them; lz4/zstd/snappy/gzip for other producers.
    compression: str = "none"
    # Where state shared by the verbs lives (embedded broker address, checkpoints).
    state_dir: str = ".flowctl"
    # Lake root: a directory (or s3://bucket/prefix).
    lake: str = "lake"
    # Embedded brokers start their offsets at 0 on every run; their lake files carry this run id
    # in the topic part of the name so one run never overwrites another's files.
    lake_source_id: str = ""
    cluster: str = "default"
    node: str = ""
    # Agent
    batch_rows: int = 2000
    max_lag_bytes: int = 5 * 1024 * 1024 // 2
    # Worker
    worker_group: str = "flowctl-worker"
    window_seconds: int = 60
    grace_seconds: int = 120
    idle_flush_seconds: float = 5.0
    # Enrichment: a `kubectl get pods -A -o json` snapshot, rule/catalog files that extend the
    # packaged ones, and the cluster's address ranges (comma-separated CIDRs).
    inventory: str = ""
    genai_rules: str = ""
    domain_catalog: str = ""
    pod_cidrs: str = ""
    service_cidrs: str = ""
    node_cidrs: str = ""
    # Sink
    sink_group: str = "flowctl-sink"
    sink_flush_rows: int = 500_000
    sink_flush_seconds: float = 1.0
    log_level: str = "warning"
    # Port for Prometheus /metrics of long-running verbs (0: off).
    metrics_port: int = 0
    # Anomaly detection (`flowctl detect`, docs/detection.md)
    detect_bucket_seconds: int = 300
    detect_lookback_hours: float = 168.0
    detect_min_history_buckets: int = 288
    detect_merge_gap_seconds: int = 1800
    detect_webhook_url: str = ""
    # Lake on S3-compatible storage (lake = s3://bucket/prefix): endpoint override such as
    # http://minio:9000, and region; credentials come from the standard AWS environment variables.
    s3_endpoint: str = ""
    s3_region: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        """No Kafka configured: the verbs start (or find) the embedded broker."""
        return not self.bootstrap_servers

    @property
    def on_embedded_broker(self) -> bool:
        return self.embedded or self.broker_kind == "embedded"

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings shared by every confluent-kafka client."""
        conf = {"bootstrap.servers": self.bootstrap_servers, "security.protocol": self.security_protocol,
                "log.connection.close": "false"}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf

    def with_overrides(self, **overrides: Any) -> Settings:
        clean = {k: v for k, v in overrides.items() if v is not None}
        return _coerce(dataclasses.replace(self, **clean))


def _coerce(settings: Settings) -> Settings:
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.type in ("int", "float") and isinstance(value, str):
            try:
                setattr(settings, f.name, int(value) if f.type == "int" else float(value))
            except ValueError:
                raise ConfigError(f"setting {f.name} must be a number, got {value!r}") from None
    if settings.partitions < 1:
        raise ConfigError("partitions must be at least 1")
    if settings.window_seconds < 1:
        raise ConfigError("window_seconds must be at least 1")
    return settings


def load_settings(config_file: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the configuration file (if any) and the FLOWCTL_* environment."""
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    path = Path(config_file or env.get(ENV_PREFIX + "CONFIG", DEFAULT_CONFIG_FILE))
    if path.exists():
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        # Sections ([kafka], [lake] …) only group settings; names are unique across them.
        for key, value in doc.items():
            if isinstance(value, dict):
                values.update(value)
            else:
                values[key] = value
    elif config_file:
        raise ConfigError(f"config file {path} does not exist")
    known = {f.name for f in fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    for name in known:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    return _coerce(Settings(**values))
