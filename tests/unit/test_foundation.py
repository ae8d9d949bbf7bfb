"""The ground everything stands on, without a server: settings, configuration files, URLs shown to people,
and a clear error for an unusable data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sanitel.errors import SanitelError
from sanitel.servers import MosquittoServer, free_port


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SanitelError, match="not writable"):
        MosquittoServer(blocker / "sub", free_port()).start()


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    """A port the kernel gives outgoing connections may be held by one when a test's server binds it (the suspected
    cause of one CI failure: a collector worker never served its metrics port)."""
    import socket

    from sanitel.servers import _ephemeral_ports_start

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < _ephemeral_ports_start() - 1 for p in ports)
    with socket.socket() as kernel_chosen:  # what an outgoing connection's local port is drawn from
        kernel_chosen.bind(("127.0.0.1", 0))
        assert kernel_chosen.getsockname()[1] >= _ephemeral_ports_start()


def test_readme_configuration_table_is_current() -> None:
    from sanitel.settings import markdown_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert markdown_table() in readme, "README's settings table is stale: run 'python -m sanitel.settings'"


def test_malformed_urls_are_one_clear_message() -> None:
    from sanitel.errors import ConfigError
    from sanitel.settings import load_settings

    with pytest.raises(ConfigError, match=r"SANITEL_DATABASE_URL.*not a PostgreSQL URL"):
        load_settings(database_url="mysql://x@y/z")
    with pytest.raises(ConfigError, match=r"SANITEL_MQTT_URL.*malformed port"):
        load_settings(mqtt_url="mqtt://host:99999")


def test_sample_config_names_every_setting_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from sanitel.settings import Settings, load_settings

    sample = Path(__file__).resolve().parents[2] / "sanitel.sample.yaml"
    assert set(yaml.safe_load(sample.read_text())) == set(Settings.model_fields)
    monkeypatch.setenv("SANITEL_CONFIG", str(sample))
    assert load_settings().pg_port == 55432


def test_config_file_errors_name_the_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sanitel.errors import ConfigError
    from sanitel.settings import load_settings

    bad = tmp_path / "sanitel.yaml"
    bad.write_text("pg_port: not-a-number\n")
    monkeypatch.setenv("SANITEL_CONFIG", str(bad))
    with pytest.raises(ConfigError, match=r"sanitel.yaml(.|\n)*pg_port"):
        load_settings()
    bad.write_text("pg_prot: 1\n")
    with pytest.raises(ConfigError, match="pg_prot"):
        load_settings()


def test_urls_shown_to_people_never_carry_the_password() -> None:
    from sanitel.urls import redact_url

    assert redact_url("postgresql://u:s3cret@db:5432/x?sslmode=require") == "postgresql://u:***@db:5432/x?sslmode=require"
    assert redact_url("mqtts://dev:p%40ss@[::1]:8883") == "mqtts://dev:***@[::1]:8883"
    assert redact_url("postgresql://postgres@127.0.0.1:55432/sanitel") == "postgresql://postgres@127.0.0.1:55432/sanitel"
