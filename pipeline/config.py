"""One typed configuration object, read once: defaults < flowctl.toml < FLOWCTL_* environment < flags."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

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
    # Client certificate (mutual TLS) and its private key, PEM files; the key may be encrypted.
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: str = ""
    # Any other librdkafka property for every Kafka client ([kafka_extra] table, FLOWCTL_KAFKA_EXTRA_<NAME>).
    kafka_extra: dict[str, str] = field(default_factory=dict)
    partitions: int = 8
    replication_factor: int = 1
    # Kafka-level compression. Arrow batch bodies are already compressed inside the IPC
    # stream, so "none" is right for them; lz4/zstd/snappy/gzip for other producers.
    compression: str = "none"
    # Codec of the Arrow batch bodies the agent and worker write: zstd (fewest bytes; the embedded
    # broker keeps only ~5 MiB per partition), lz4 (decodes ~3x faster for ~1.7x the bytes) or none.
    # Readers accept every codec whatever this says (Arrow records it in each message).
    body_compression: str = "zstd"
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
    # On-disk spool for batches Kafka could not take (docs/agent.md), <dir>/<source>; empty dir: STATE_DIR/spool;
    # max bytes 0: no spool (an outage longer than the delivery timeout stops the agent).
    agent_spool_dir: str = ""
    agent_spool_max_bytes: int = 1 << 30
    # Unconfirmed this long, a batch goes to the spool instead (the producer's delivery timeout).
    agent_spool_after_seconds: float = 30.0
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
    # "text" for people, "json" for log shippers: one JSON object per line (docs/operations.md).
    log_format: str = "text"
    # Port for Prometheus /metrics of long-running verbs (0: off).
    metrics_port: int = 0
    # Anomaly detection (`flowctl detect`, docs/detection.md)
    detect_bucket_seconds: int = 300
    detect_lookback_hours: float = 168.0
    detect_min_history_buckets: int = 288
    detect_merge_gap_seconds: int = 1800
    detect_webhook_url: str = ""
    # Policy recommendation (`flowctl recommend`, docs/policy.md); flags of the verb override these.
    recommend_lookback_hours: float = 168.0
    recommend_merge_cidrs: bool = True
    recommend_merge_min_addresses: int = 4
    recommend_merge_prefix: int = 24
    recommend_min_port_range: int = 8
    recommend_open_ingress_sources: int = 16
    recommend_tier: str = "flowctl"
    recommend_domain_mode: str = "inline"
    recommend_guardrails: bool = True
    recommend_approved_domains: str = ""  # comma-separated (a TOML array works too)
    recommend_stable_runs: int = 3
    # Lake on S3-compatible storage (lake = s3://bucket/prefix): endpoint override such as
    # http://minio:9000, and region; credentials come from the standard AWS environment variables.
    s3_endpoint: str = ""
    s3_region: str = ""

    # Settings whose values are masked in logs and never printed (and kafka_extra keys naming a secret).
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("sasl_password", "ssl_key_password")
    # Settings that take one of a few words; anything else is a ConfigError at load time.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "log_format": ("text", "json"),
        "log_level": ("debug", "info", "warning", "error", "critical"),
        "recommend_domain_mode": ("inline", "networkset", "nets"),
        "security_protocol": ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "compression": ("none", "gzip", "snappy", "lz4", "zstd"),
        "body_compression": ("zstd", "lz4", "none"),
    }

    def secrets(self) -> list[str]:
        """Every configured secret value, for masking."""
        values = [str(getattr(self, name)) for name in self.SECRET_FIELDS if getattr(self, name)]
        values += [str(v) for k, v in self.kafka_extra.items() if _is_secret_key(k) and v]
        return values

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
        for prop, value in (("ssl.ca.location", self.ssl_ca_location),
                            ("ssl.certificate.location", self.ssl_certificate_location),
                            ("ssl.key.location", self.ssl_key_location),
                            ("ssl.key.password", self.ssl_key_password)):
            if value:
                conf[prop] = value
        conf.update(self.kafka_extra)
        return conf

    def masked_values(self) -> dict[str, Any]:
        """Every setting by name, secret values replaced by ``***``."""
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.SECRET_FIELDS and value:
                value = "***"
            elif f.name == "kafka_extra":
                value = {k: "***" if _is_secret_key(k) and v else v for k, v in value.items()}
            values[f.name] = value
        return values

    def __repr__(self) -> str:
        # Secrets stay out of tracebacks, debug output and error messages.
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self.masked_values().items())})"

    def with_overrides(self, **overrides: Any) -> Settings:
        clean = {k: v for k, v in overrides.items() if v is not None}
        return _coerce(dataclasses.replace(self, **clean))


def _kafka_extra(value: Any) -> dict[str, str]:
    """librdkafka properties as strings (TOML booleans and numbers are written the way librdkafka reads them)."""
    if not isinstance(value, dict):
        raise ConfigError("kafka_extra must be a table of librdkafka properties, e.g. [kafka_extra] \"client.rack\" = \"az1\"")
    out = {}
    for key, v in value.items():
        if isinstance(v, dict | list):
            raise ConfigError(f"kafka_extra.{key} must be a string, number or boolean")
        out[str(key)] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _coerce(settings: Settings) -> Settings:
    settings.kafka_extra = _kafka_extra(settings.kafka_extra)
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.type in ("int", "float") and isinstance(value, str):
            try:
                setattr(settings, f.name, int(value) if f.type == "int" else float(value))
            except ValueError:
                raise ConfigError(f"setting {f.name} must be a number, got {value!r}") from None
        elif f.type == "bool" and isinstance(value, str):
            if value.strip().lower() not in _BOOLS:
                raise ConfigError(f"setting {f.name} must be true or false, got {value!r}")
            setattr(settings, f.name, _BOOLS[value.strip().lower()])
    if settings.partitions < 1:
        raise ConfigError("partitions must be at least 1")
    if settings.window_seconds < 1:
        raise ConfigError("window_seconds must be at least 1")
    if settings.agent_spool_max_bytes < 0 or settings.agent_spool_after_seconds <= 0:
        raise ConfigError("agent_spool_max_bytes must be >= 0 and agent_spool_after_seconds > 0")
    settings.log_level = str(settings.log_level).lower()
    for name, allowed in Settings.CHOICES.items():
        if getattr(settings, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(settings, name)!r}")
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
            if isinstance(value, dict) and key != "kafka_extra":
                values.update(value)
            else:
                values[key] = value
    elif config_file:
        raise ConfigError(f"config file {path} does not exist")
    known = {f.name for f in fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(sorted(unknown))}")
    for name in known - {"kafka_extra"}:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    # FLOWCTL_KAFKA_EXTRA_SOCKET_KEEPALIVE_ENABLE=true → socket.keepalive.enable (librdkafka names use dots only).
    extra_prefix = ENV_PREFIX + "KAFKA_EXTRA_"
    from_env = {k[len(extra_prefix):].lower().replace("_", "."): v for k, v in env.items() if k.startswith(extra_prefix)}
    if from_env:
        values["kafka_extra"] = {**_kafka_extra(values.get("kafka_extra", {})), **from_env}
    return _coerce(Settings(**values))


def _is_secret_key(key: str) -> bool:
    return any(word in key.lower() for word in ("password", "secret", "token", "credential"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes


def render_settings(settings: Settings) -> str:
    """The settings as a flowctl.toml document, secrets replaced by ``***``."""
    values = settings.masked_values()
    lines = [f"{name} = {_toml_value(value)}" for name, value in values.items() if not isinstance(value, dict)]
    if values["kafka_extra"]:
        lines.append("\n[kafka_extra]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in sorted(values["kafka_extra"].items())]
    return "\n".join(lines) + "\n"
