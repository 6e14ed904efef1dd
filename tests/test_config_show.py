"""`flowctl config` prints the effective settings as a reusable flowctl.toml, never the secrets."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

from pipeline.config import Settings, load_settings, render_settings

PASSWORD = "correct-horse-battery"


def test_rendered_settings_load_back_to_the_same_settings(tmp_path: Path) -> None:
    original = load_settings(env={"FLOWCTL_CLUSTER": 'prod "eu"\\1', "FLOWCTL_PARTITIONS": "12",
                                  "FLOWCTL_SINK_FLUSH_SECONDS": "2.5", "FLOWCTL_SASL_PASSWORD": PASSWORD})
    text = render_settings(original)
    assert PASSWORD not in text
    doc = tomllib.loads(text)
    assert doc["sasl_password"] == "***"
    path = tmp_path / "flowctl.toml"
    path.write_text(text)
    reloaded = load_settings(path, env={})
    assert dataclasses.replace(reloaded, sasl_password=PASSWORD) == original


def test_unset_secret_is_shown_empty() -> None:
    assert tomllib.loads(render_settings(Settings()))["sasl_password"] == ""


def test_config_verb_masks_secrets_from_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "flowctl.toml").write_text(f'[kafka]\nsasl_mechanism = "PLAIN"\nsasl_password = "{PASSWORD}"\n')
    env = {"PATH": "", "FLOWCTL_SSL_KEY_PASSWORD": "key-" + PASSWORD}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "config"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert PASSWORD not in out.stdout + out.stderr
    doc = tomllib.loads(out.stdout)
    assert doc["sasl_mechanism"] == "PLAIN" and doc["sasl_password"] == doc["ssl_key_password"] == "***"


def test_cli_error_lines_mask_secrets(tmp_path: Path) -> None:
    # A lake path that holds the password: the one-line error must not echo it.
    env = {"PATH": "", "FLOWCTL_SASL_PASSWORD": PASSWORD}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--lake", str(tmp_path / "missing" / PASSWORD), "sql",
                          "SELECT 1 FROM flows"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.startswith("flowctl: error:")
    assert PASSWORD not in out.stderr and "***" in out.stderr


def test_kafka_extra_renders_as_a_table_with_secret_looking_keys_masked(tmp_path: Path) -> None:
    settings = load_settings(env={"FLOWCTL_KAFKA_EXTRA_CLIENT_RACK": "az1",
                                  "FLOWCTL_KAFKA_EXTRA_SASL_OAUTHBEARER_CLIENT_SECRET": PASSWORD})
    text = render_settings(settings)
    assert PASSWORD not in text
    extra = tomllib.loads(text)["kafka_extra"]
    assert extra["client.rack"] == "az1" and extra["sasl.oauthbearer.client.secret"] == "***"
    assert PASSWORD in settings.secrets()


def test_child_processes_get_the_same_settings() -> None:
    """LocalStack and `flowctl up` start roles with settings_env: every setting, kafka_extra too, survives."""
    from pipeline.runner import settings_env

    original = load_settings(env={"FLOWCTL_KAFKA_EXTRA_CLIENT_RACK": "az1", "FLOWCTL_RECOMMEND_GUARDRAILS": "false",
                                  "FLOWCTL_SINK_FLUSH_SECONDS": "2.5", "FLOWCTL_SASL_PASSWORD": PASSWORD})
    assert load_settings(env=settings_env(original)) == original
