"""Kafka client security settings: librdkafka accepts what flowctl generates, and secrets never show."""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.agent.agent import FlowAgent
from pipeline.agent.publisher import PublishError, producer_config
from pipeline.config import Settings, load_settings
from tests.conftest import free_port

SASL_PASSWORD = "sasl-Secret-4711"
KEY_PASSWORD = "key-Secret-0815"


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed client certificate and its private key, encrypted with KEY_PASSWORD."""
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowctl-agent")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = d / "client.pem", d / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(KEY_PASSWORD.encode())))
    return cert_path, key_path


def _secure_env(cert: Path, key: Path, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
    return {"FLOWCTL_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "FLOWCTL_SECURITY_PROTOCOL": "SASL_SSL",
            "FLOWCTL_SASL_MECHANISM": mechanism, "FLOWCTL_SASL_USERNAME": "flowctl-agent",
            "FLOWCTL_SASL_PASSWORD": SASL_PASSWORD, "FLOWCTL_SSL_CA_LOCATION": str(cert),
            "FLOWCTL_SSL_CERTIFICATE_LOCATION": str(cert), "FLOWCTL_SSL_KEY_LOCATION": str(key),
            "FLOWCTL_SSL_KEY_PASSWORD": KEY_PASSWORD, "FLOWCTL_KAFKA_EXTRA_CLIENT_ID": "node-7",
            "FLOWCTL_KAFKA_EXTRA_SOCKET_KEEPALIVE_ENABLE": "true"}


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_librdkafka_accepts_the_generated_tls_and_sasl_config(client_cert, mechanism) -> None:
    settings = load_settings(env=_secure_env(*client_cert, mechanism=mechanism))
    conf = producer_config(settings)
    assert conf["ssl.certificate.location"] == str(client_cert[0])
    assert (conf["sasl.mechanism"], conf["client.id"], conf["socket.keepalive.enable"]) == (mechanism, "node-7", "true")
    Producer(conf).flush(0)  # loads the certificate and decrypts the key, or raises


def test_a_wrong_key_password_is_refused_without_echoing_it(client_cert) -> None:
    settings = load_settings(env={**_secure_env(*client_cert), "FLOWCTL_SSL_KEY_PASSWORD": "wrong-Secret-999"})
    with pytest.raises(KafkaException) as info:
        Producer(producer_config(settings))
    assert "ssl.key" in str(info.value) and "wrong-Secret-999" not in str(info.value)


def test_kafka_extra_from_a_toml_table(tmp_path: Path) -> None:
    path = tmp_path / "flowctl.toml"
    path.write_text('[kafka]\nbootstrap_servers = "k:9093"\n\n[kafka_extra]\n"client.rack" = "az-1"\n'
                    '"socket.keepalive.enable" = true\n"message.send.max.retries" = 5\n')
    conf = load_settings(path, env={}).kafka_client_config()
    assert (conf["client.rack"], conf["socket.keepalive.enable"], conf["message.send.max.retries"]) == ("az-1", "true", "5")


def test_secrets_stay_out_of_repr_logs_and_errors(client_cert, caplog, capsys) -> None:
    settings = load_settings(env={**_secure_env(*client_cert),
                                  "FLOWCTL_KAFKA_EXTRA_SASL_OAUTHBEARER_CLIENT_SECRET": "oauth-Secret-42"})
    text = repr(settings) + str(settings)
    assert "flowctl-agent" in text and "node-7" in text
    for secret in (SASL_PASSWORD, KEY_PASSWORD, "oauth-Secret-42"):
        assert secret not in text
    caplog.set_level(logging.DEBUG)
    with pytest.raises((KafkaException, PublishError)) as info:
        FlowAgent(settings.with_overrides(kafka_extra={}), spool_dir=None)
    out = capsys.readouterr()
    seen = caplog.text + out.out + out.err + str(info.value) + repr(info.value)
    for secret in (SASL_PASSWORD, KEY_PASSWORD):
        assert secret not in seen


def test_the_agent_verb_never_prints_the_secrets(client_cert, tmp_path: Path) -> None:
    """The whole CLI against an unreachable SASL_SSL bootstrap, at debug level with librdkafka's own
    configuration and security debug output on: it fails with one line and shows no secret."""
    logdir = tmp_path / "calico"
    logdir.mkdir()
    (logdir / "flows.log").write_bytes(b"{}\n")
    env = {**os.environ, **_secure_env(*client_cert), "FLOWCTL_LOG_LEVEL": "debug",
           "FLOWCTL_STATE_DIR": str(tmp_path / "state"), "FLOWCTL_KAFKA_EXTRA_DEBUG": "conf,security"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "agent", "--source", f"calico:{logdir}", "--no-follow"],
                          env=env, capture_output=True, timeout=120, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert b"flowctl: error:" in proc.stderr
    assert b"sasl.password" in output, "librdkafka did dump its configuration (so the check below means something)"
    for secret in (SASL_PASSWORD, KEY_PASSWORD):
        assert secret.encode() not in output


def test_settings_without_secrets_print_them_as_empty() -> None:
    assert "sasl_password=''" in repr(Settings())


def test_flowctl_config_masks_every_secret(client_cert, tmp_path: Path) -> None:
    env = {**os.environ, **_secure_env(*client_cert), "FLOWCTL_KAFKA_EXTRA_SASL_OAUTHBEARER_CLIENT_SECRET": "oauth-Secret-42"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "config"], env=env, capture_output=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"ssl_key_location" in proc.stdout and b"client.id" in proc.stdout
    for secret in (SASL_PASSWORD, KEY_PASSWORD, "oauth-Secret-42"):
        assert secret.encode() not in proc.stdout + proc.stderr


def test_the_faust_worker_presents_the_same_client_certificate(client_cert) -> None:
    """The worker talks Kafka through aiokafka, not librdkafka: its SSL context must carry the client certificate."""
    from pipeline.stream.app import _faust_broker_settings

    settings = load_settings(env=_secure_env(*client_cert))
    credentials = _faust_broker_settings(settings)["broker_credentials"]
    assert credentials.mechanism.name == "SCRAM_SHA_512" or "SCRAM-SHA-512" in str(credentials.mechanism)
    assert credentials.ssl_context.verify_mode.name == "CERT_REQUIRED"
    wrong = load_settings(env={**_secure_env(*client_cert), "FLOWCTL_SSL_KEY_PASSWORD": "wrong-Secret-999"})
    with pytest.raises(ssl.SSLError):
        _faust_broker_settings(wrong)  # the key is really loaded (and decrypted) into the context
