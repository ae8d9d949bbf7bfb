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
