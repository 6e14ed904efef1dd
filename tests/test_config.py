"""Configuration: defaults < flowctl.toml < FLOWCTL_* environment < flags."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path, monkeypatch):
    """Run every test where no flowctl.toml exists unless the test writes one."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path, text: str):
    path.write_text(text)
    return path


CONFIG = """
cluster = "prod-eu-1"

[kafka]
bootstrap_servers = "kafka-0:9092,kafka-1:9092"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "flowctl"
sasl_password = "s3cret"
partitions = 12

[worker]
window_seconds = 30
grace_seconds = 90
idle_flush_seconds = 2.5

[lake]
lake = "s3://flows/lake"
"""


def test_defaults_without_file_or_environment():
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.embedded
    assert settings.partitions >= 1 and settings.window_seconds >= 1


def test_file_with_sections(empty_cwd):
    settings = load_settings(write(empty_cwd / "custom.toml", CONFIG), env={})
    assert settings.cluster == "prod-eu-1"
    assert settings.bootstrap_servers == "kafka-0:9092,kafka-1:9092"
    assert settings.partitions == 12
    assert (settings.window_seconds, settings.grace_seconds, settings.idle_flush_seconds) == (30, 90, 2.5)
    assert settings.lake == "s3://flows/lake"
    assert not settings.embedded
    assert settings.sink_group == Settings().sink_group  # untouched settings keep their defaults
    conf = settings.kafka_client_config()
    assert conf["bootstrap.servers"] == "kafka-0:9092,kafka-1:9092"
    assert (conf["security.protocol"], conf["sasl.mechanism"], conf["sasl.username"], conf["sasl.password"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "flowctl", "s3cret")


def test_flowctl_toml_in_the_working_directory_is_read(empty_cwd):
    write(empty_cwd / "flowctl.toml", 'cluster = "from-cwd"\n')
    assert load_settings(env={}).cluster == "from-cwd"


def test_flowctl_config_variable_names_the_file(empty_cwd):
    path = write(empty_cwd / "elsewhere.toml", 'cluster = "from-env-file"\n')
    assert load_settings(env={"FLOWCTL_CONFIG": str(path)}).cluster == "from-env-file"


def test_environment_overrides_the_file(empty_cwd):
    path = write(empty_cwd / "c.toml", CONFIG)
    env = {"FLOWCTL_PARTITIONS": "16", "FLOWCTL_CLUSTER": "from-env", "FLOWCTL_IDLE_FLUSH_SECONDS": "0.5",
           "FLOWCTL_UNRELATED_THING": "ignored", "PARTITIONS": "99"}
    settings = load_settings(path, env=env)
    assert settings.partitions == 16 and isinstance(settings.partitions, int)
    assert settings.idle_flush_seconds == 0.5 and isinstance(settings.idle_flush_seconds, float)
    assert settings.cluster == "from-env"
    assert settings.window_seconds == 30  # from the file, not overridden


def test_flags_override_the_environment(empty_cwd):
    settings = load_settings(write(empty_cwd / "c.toml", CONFIG), env={"FLOWCTL_PARTITIONS": "16",
                                                                        "FLOWCTL_LAKE": "env-lake"})
    flagged = settings.with_overrides(partitions=4, lake=None, cluster="from-flag")
    assert flagged.partitions == 4
    assert flagged.lake == "env-lake", "a flag that was not given (None) leaves the value alone"
    assert flagged.cluster == "from-flag"
    assert settings.partitions == 16, "with_overrides returns a new object"
    assert settings.with_overrides(window_seconds="45").window_seconds == 45


def test_unknown_key_in_the_file_is_an_error(empty_cwd):
    path = write(empty_cwd / "c.toml", '[kafka]\nbootstrap_servers = "k:9092"\npartitons = 3\n')
    with pytest.raises(ConfigError, match="partitons"):
        load_settings(path, env={})


def test_unknown_top_level_key_is_an_error(empty_cwd):
    with pytest.raises(ConfigError, match="colour"):
        load_settings(write(empty_cwd / "c.toml", 'colour = "blue"\n'), env={})


@pytest.mark.parametrize("where", ["file", "env", "flag"])
def test_non_numeric_partitions_is_an_error(empty_cwd, where):
    with pytest.raises(ConfigError, match="partitions"):
        if where == "file":
            load_settings(write(empty_cwd / "c.toml", 'partitions = "eight"\n'), env={})
        elif where == "env":
            load_settings(env={"FLOWCTL_PARTITIONS": "eight"})
        else:
            Settings().with_overrides(partitions="eight")


@pytest.mark.parametrize("env", [{"FLOWCTL_PARTITIONS": "0"}, {"FLOWCTL_WINDOW_SECONDS": "0"},
                                 {"FLOWCTL_GRACE_SECONDS": "two minutes"}])
def test_out_of_range_or_malformed_numbers_are_errors(env):
    with pytest.raises(ConfigError):
        load_settings(env=env)


def test_missing_explicit_file_is_an_error(empty_cwd):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(empty_cwd / "nope.toml", env={})


def test_invalid_toml_is_an_error(empty_cwd):
    with pytest.raises(ConfigError):
        load_settings(write(empty_cwd / "c.toml", "partitions = = 3\n"), env={})


def test_every_setting_can_come_from_the_environment():
    """Each scalar setting has a FLOWCTL_ variable: a new setting cannot be left out."""
    env = {}
    expected = {}
    for f in dataclasses.fields(Settings):
        default = getattr(Settings(), f.name)
        if isinstance(default, bool) or not isinstance(default, (str, int, float)):
            continue
        value = {str: "v-" + f.name, int: 7, float: 1.25}[type(default)]
        if f.name in Settings.CHOICES:
            value = next(c for c in Settings.CHOICES[f.name] if c != default)
        env["FLOWCTL_" + f.name.upper()] = str(value)
        expected[f.name] = value
    settings = load_settings(env=env)
    for name, value in expected.items():
        assert getattr(settings, name) == value, name


def test_no_sasl_keys_without_a_mechanism():
    conf = Settings(bootstrap_servers="k:9092").kafka_client_config()
    assert "sasl.mechanism" not in conf and "sasl.password" not in conf
    assert conf["bootstrap.servers"] == "k:9092"
