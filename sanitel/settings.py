"""Settings: environment variables (``SANITEL_*``) over an optional config file over defaults.

The config file is YAML, named by ``SANITEL_CONFIG`` or ``./sanitel.yaml`` when present; its keys are
the field names below (``sanitel.sample.yaml`` documents every one next to its default).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sanitel.errors import ConfigError, SanitelError
from sanitel.local_secrets import BROKER_ACCOUNTS, SUPERUSER, LocalSecrets, TlsFiles, load_local_secrets, role_name
from sanitel.mqtt_wire import BrokerTarget
from sanitel.urls import redact_url

DatabaseRole = Literal["owner", "ingest", "api", "evaluator", "processor"]
BrokerAccountName = Literal["collector", "hj212", "evaluator", "api_probe", "simulator"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANITEL_", extra="forbid")

    # --- where things run -----------------------------------------------------------------
    data_dir: Path = Field(Path("var"), description="local stack data (PostgreSQL, Mosquitto, spool)")
    database_url: str | None = Field(None, description="existing PostgreSQL+TimescaleDB; unset = local stack")
    mqtt_url: str | None = Field(None, description="existing MQTT broker (mqtt:// or mqtts://); unset = local")
    pg_port: int = Field(55432, ge=1, le=65535, description="port of the local stack's PostgreSQL")
    mqtt_port: int = Field(11883, ge=1, le=65535, description="port of the local stack's Mosquitto")
    city: str = Field("shenzhen", pattern=r"^[a-z0-9_-]+$", description="{city} segment of the topics")
    # Each component may connect as its own database role / broker account (docs/security.md); unset, an
    # external deployment's component uses database_url / mqtt_url, and the local stack the generated ones.
    ingest_database_url: str | None = Field(None, description="role of the collector (insert readings)")
    api_database_url: str | None = Field(None, description="role of the API")
    evaluator_database_url: str | None = Field(None, description="role of the alert evaluator")
    processor_database_url: str | None = Field(None, description="role of the scheduled processor")
    collector_mqtt_url: str | None = Field(None, description="broker account of the collector")
    hj212_mqtt_url: str | None = Field(None, description="broker account of the HJ 212 listener")
    evaluator_mqtt_url: str | None = Field(None, description="broker account of the alert publisher")
    api_probe_mqtt_url: str | None = Field(None, description="broker account of the API's health probe")
    simulator_mqtt_url: str | None = Field(None, description="broker account of `sanitel simulate` without "
                                           "--credentials (load runs: may publish as any device)")
    broker_tls: bool = Field(False, description="the local broker also listens with TLS (mqtts://) on "
                             "mqtt_tls_port, with a CA the stack generates under data_dir")
    mqtt_tls_port: int = Field(18883, ge=1, le=65535, description="TLS port of the local stack's Mosquitto")

    # --- collector ------------------------------------------------------------------------
    collector_client_id: str = Field("sanitel-collector-1", description="fixed MQTT client id (session)")
    collector_share_group: str | None = Field(None, description="MQTT 5 shared-subscription group")
    collector_batch_size: int = Field(5000, ge=1, le=100_000, description="readings per write transaction, at most")
    # 50 ms, not 200: publish→commit p50 60 ms instead of 173 at 2,500 readings/s (issue 16, docs/benchmarks.md);
    # a backlog is drained in full batches either way
    collector_flush_ms: int = Field(50, ge=1, le=60_000, description="a partial batch is written after this")
    collector_queue_max: int = Field(20_000, ge=100, description="messages buffered before backpressure")
    # 2: a batch is COPYed while the one before it commits, and commits after it (processors.writer.Turn), so
    # readings become visible in arrival order and the alert evaluator's data clock never runs ahead of a batch still
    # in the other lane; +16-27 % backlog drain against 1 (docs/benchmarks.md, 2026-11-30)
    collector_commit_lanes: int = Field(2, ge=1, le=2, description="batches written to the database at once, each on a "
                                        "connection of its own; committed and acknowledged in the order they came "
                                        "either way")
    collector_metrics_port: int = Field(9108, ge=0, le=65535, description="0 = no metrics endpoint")
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, description="broker keeps messages while the collector is away")
    auto_register_devices: bool = Field(True, description="unknown device ids are registered on first sight "
                                        "(never through a gateway batch)")
    auto_register_per_minute: int = Field(60, ge=0, description="auto-registrations per collector and minute, "
                                          "at most; readings of further unknown ids are dead-lettered")
    registry_refresh_s: float = Field(300.0, gt=0, description="registry caches are reloaded in full this often "
                                      "(changes arrive within seconds anyway, by LISTEN/NOTIFY)")
    max_payload_bytes: int = Field(256 * 1024, ge=1024, description="larger messages are dead-lettered; the "
                                   "local broker refuses those over this plus 16 KiB")
    dead_letter_payload_bytes: int = Field(64 * 1024, ge=1024, description="a dead letter keeps this much of "
                                           "the raw payload (with its full size and sha256), once per message")
    dead_letters_per_message: int = Field(100, ge=1, description="rejected readings of one message stored one "
                                          "row each; the rest are counted in one summary row")
    max_future_skew_s: int = Field(300, ge=0, description="readings further ahead than this are rejected")
    spool_dir: Path | None = Field(None, description="on-disk spool for database outages; default data_dir/spool")
    spool_max_bytes: int = Field(1024**3, ge=64 * 1024, description="cap of each collector's spool; when it is "
                                 "reached the collector stops acknowledging and the broker keeps the messages")

    # --- HJ 212 TCP listener --------------------------------------------------------------
    hj212_max_connections: int = Field(256, ge=1, description="DAU connections at once; more are refused")
    hj212_idle_timeout_s: float = Field(900.0, gt=0, description="a DAU silent this long is disconnected")
    hj212_write_timeout_s: float = Field(30.0, gt=0, description="a DAU that does not read its replies for "
                                         "this long is disconnected")
    hj212_frames_per_minute: int = Field(600, ge=1, description="frames per connection and minute, at most; "
                                         "the connection is closed when a DAU sends faster")
    hj212_require_password: bool = Field(True, description="frames for an MN without a registered HJ 212 "
                                         "password are refused (dead letter hj212_no_password)")

    # --- maintenance (rollups, retention, CEMS averages) ------------------------------------
    maintain_interval_s: float = Field(60.0, gt=0, description="how often the scheduled processor runs")
    collector_heartbeat_s: float = Field(30.0, gt=0, description="how often a collector reports that it is alive")
    stage_overdue_factor: float = Field(3.0, gt=1, description="a background stage (collector, scheduled "
                                        "processor, evaluator) whose last pass is older than this many of its "
                                        "intervals is overdue: /health degraded, alert stage_overdue")
    raw_retention_days: int = Field(400, ge=1, description="readings older than this are dropped (whole chunks)")
    rollup_retention_days: int = Field(3650, ge=1, description="rollups and CEMS averages kept this long")
    dead_letter_retention_days: int = Field(90, ge=1, description="rejected messages kept this long")

    # --- api ------------------------------------------------------------------------------
    api_host: str = Field("127.0.0.1", description="address the API listens on")
    api_port: int = Field(8000, ge=1, le=65535, description="port of the API")
    api_max_body_bytes: int = Field(1024 * 1024, ge=1024, description="larger request bodies are refused (413) "
                                    "before they are read")
    api_metrics_port: int = Field(0, ge=0, le=65535, description="serve /metrics on this port of api_host "
                                  "without a key; 0 = only at the API's /metrics, with a key")
    api_key_cache_s: float = Field(60.0, ge=0, description="a verified API key is not re-hashed for this long "
                                   "(revocation still applies at once)")
    api_stream_recheck_s: float = Field(5.0, gt=0, description="an open alert stream re-checks its key this "
                                        "often and is closed once the key is revoked")

    # --- alerts ---------------------------------------------------------------------------
    rules_dir: Path | None = Field(None, description="extra YAML rule files (defaults ship in alerts/rules)")
    evaluator_interval_s: float = Field(5.0, gt=0, description="alert evaluation period")
    evaluator_metrics_port: int = Field(9109, ge=0, le=65535, description="Prometheus port of the evaluator (0 = none)")
    webhook_connect_timeout_s: float = Field(5.0, gt=0, description="a webhook receiver must accept within this")
    webhook_read_timeout_s: float = Field(10.0, gt=0, description="… and answer within this")
    webhook_max_response_bytes: int = Field(64 * 1024, ge=1024, description="read at most this much of a "
                                            "receiver's answer")

    @field_validator("database_url", "ingest_database_url", "api_database_url", "evaluator_database_url",
                     "processor_database_url")
    @classmethod
    def _check_database_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or "host=" in v):
            raise ValueError(
                f"{redact_url(v)!r} is not a PostgreSQL URL; use postgresql://user:password@host:port/dbname"
            )
        return v

    @field_validator("mqtt_url", "collector_mqtt_url", "hj212_mqtt_url", "evaluator_mqtt_url", "api_probe_mqtt_url",
                     "simulator_mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                BrokerTarget.parse(v)
            except SanitelError as exc:
                raise ValueError(str(exc)) from None
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))

    # --- derived --------------------------------------------------------------------------
    @property
    def uses_local_database(self) -> bool:
        return self.database_url is None

    @property
    def uses_local_broker(self) -> bool:
        return self.mqtt_url is None

    @property
    def local_secrets(self) -> LocalSecrets | None:
        """The local stack's generated credentials (sanitel/local_secrets.py); None before its first start."""
        return load_local_secrets(self.data_dir)

    @property
    def effective_database_url(self) -> str:
        """The owner's URL (it migrates): database_url, or the local stack's superuser with its generated password."""
        if self.database_url:
            return self.database_url
        stored = self.local_secrets
        return self._local_database_url(SUPERUSER, stored.superuser_password if stored else None)

    @property
    def effective_mqtt_url(self) -> str:
        """The broker's address: mqtt_url, or the local broker's — without credentials (see mqtt_url_for)."""
        return self.mqtt_url or f"mqtt://127.0.0.1:{self.mqtt_port}"

    def database_url_for(self, role: DatabaseRole) -> str:
        """The URL a component connects with: its own role's (``owner`` migrates). An explicit
        ``<role>_database_url`` wins; the local stack gives each role the password it generated (role
        ``sanitel_<role>``, migration 0070); otherwise an external deployment's database_url."""
        if role == "owner":
            return self.effective_database_url
        explicit: str | None = getattr(self, f"{role}_database_url")
        if explicit:
            return explicit
        stored = self.local_secrets if self.uses_local_database else None
        if stored is not None and role in stored.role_passwords:
            return self._local_database_url(role_name(role), stored.role_passwords[role])
        return self.effective_database_url

    def mqtt_url_for(self, account: BrokerAccountName) -> str:
        """The broker URL a service connects with: its own account's. An explicit ``<account>_mqtt_url`` wins; the
        local broker gets the account's generated password (and, with broker_tls, its TLS port and the CA)."""
        explicit: str | None = getattr(self, f"{account}_mqtt_url")
        if explicit:
            return explicit
        stored = self.local_secrets if self.uses_local_broker else None
        if stored is None or account not in stored.broker_passwords:
            return self.effective_mqtt_url
        username = BROKER_ACCOUNTS[account][0]
        return self.local_broker_url(username, stored.broker_passwords[account])

    def local_broker_url(self, username: str | None = None, password: str | None = None) -> str:
        """The local broker's URL for these credentials: mqtts on mqtt_tls_port trusting the stack's CA when
        broker_tls is on, plain mqtt otherwise."""
        userinfo = f"{quote(username, safe='')}:{quote(password or '', safe='')}@" if username else ""
        if self.broker_tls:
            ca = quote(str(TlsFiles.for_data_dir(self.data_dir).ca_cert), safe="/")
            return f"mqtts://{userinfo}127.0.0.1:{self.mqtt_tls_port}?ca={ca}"
        return f"mqtt://{userinfo}127.0.0.1:{self.mqtt_port}"

    def _local_database_url(self, user: str, password: str | None) -> str:
        userinfo = f"{user}:{quote(password, safe='')}" if password else user
        return f"postgresql://{userinfo}@127.0.0.1:{self.pg_port}/sanitel"

    @property
    def effective_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads ``SANITEL_CONFIG`` (or ./sanitel.yaml) — errors name the file."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.path = Path(os.environ.get("SANITEL_CONFIG", "sanitel.yaml"))
        self.data: dict[str, Any] = {}
        explicit = "SANITEL_CONFIG" in os.environ
        if not self.path.exists():
            if explicit:
                raise ConfigError(f"{self.path}: config file named by SANITEL_CONFIG does not exist")
            return
        try:
            loaded = yaml.safe_load(self.path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{self.path}: must be a mapping of setting: value")
        self.data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def load_settings(**overrides: Any) -> Settings:
    """Settings from env and config file; a bad value raises ConfigError naming the key and the fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "?"
            where = f"SANITEL_{key.upper()} / {key}"
            problems.append(f"{where}: {err['msg']}")
        config = Path(os.environ.get("SANITEL_CONFIG", "sanitel.yaml"))
        source = f"environment and {config}" if config.exists() else "environment"
        raise ConfigError(f"invalid settings (from {source}):\n  " + "\n  ".join(problems)) from None


def markdown_table() -> str:
    """The README's configuration table (``python -m sanitel.settings``), generated so it never drifts."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, spec in Settings.model_fields.items():
        default = "—" if spec.default is None else spec.default
        lines.append(f"| `SANITEL_{name.upper()}` | `{default}` | {spec.description or ''} |")
    return "\n".join(lines)


def sample_yaml() -> str:
    """``sanitel.sample.yaml`` (``python -m sanitel.settings --sample``): every key with its default."""
    out = ["# sanitel settings — copy to sanitel.yaml (or point SANITEL_CONFIG at it). Environment variables",
           "# SANITEL_<KEY> override this file. Every key is shown with its default.", ""]
    for name, spec in Settings.model_fields.items():
        default = spec.default.as_posix() if isinstance(spec.default, Path) else spec.default
        out += [f"# {spec.description or name}", yaml.safe_dump({name: default}, allow_unicode=True).strip(), ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(sample_yaml() if "--sample" in sys.argv else markdown_table())
