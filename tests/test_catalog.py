"""Domain catalog and address classification."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.stream.catalog import CatalogError, DomainCatalog
from pipeline.stream.enrich import NetworkMap

CATALOG = DomainCatalog.load()


@pytest.mark.parametrize("domain, category, provider", [
    ("api.openai.com", "llm_api", "openai"),
    ("API.OpenAI.com.", "llm_api", "openai"),
    ("contoso-east.openai.azure.com", "llm_api", "azure-openai"),
    ("bedrock-runtime.eu-central-1.amazonaws.com", "llm_api", "aws-bedrock"),
    ("us-central1-aiplatform.googleapis.com", "llm_api", "google-vertex"),
    ("generativelanguage.googleapis.com", "llm_api", "google-gemini"),
    ("api.anthropic.com", "llm_api", "anthropic"),
    ("huggingface.co", "model_hub", "huggingface"),
    ("cdn-lfs-us-1.hf.co", "model_hub", "huggingface"),
    ("hf-mirror.com", "model_hub", "hf-mirror"),
    ("files.pythonhosted.org", "package_registry", "pypi"),
    ("my-bucket.s3.us-west-2.amazonaws.com", "object_storage", "aws-s3"),
    ("metadata.google.internal", "cloud_metadata", "gcp"),
    ("huggingface.co.attacker.example", "unknown", None),
    ("openai.com.evil.io", "unknown", None),
    ("", "unknown", None),
])
def test_packaged_catalog(domain, category, provider) -> None:
    assert CATALOG.category(domain) == category
    assert CATALOG.provider(domain) == provider


def test_user_catalog_extends_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "domains.yaml"
    path.write_text("version: 7\ncategories:\n  llm_api:\n    - {pattern: llm.internal.acme.io, provider: acme-gateway}\n"
                    "  object_storage:\n    - {pattern: huggingface.co, provider: mirror}\n")
    catalog = DomainCatalog.load(path)
    assert catalog.category("llm.internal.acme.io") == "llm_api"
    assert (catalog.category("huggingface.co"), catalog.provider("huggingface.co")) == ("object_storage", "mirror")
    assert catalog.category("api.openai.com") == "llm_api"
    assert catalog.version.endswith(":7")


def test_bad_catalog_file(tmp_path: Path) -> None:
    path = tmp_path / "domains.yaml"
    path.write_text("categories:\n  llm_api:\n    - {provider: x}\n")
    with pytest.raises(CatalogError, match="pattern"):
        DomainCatalog.load(path)


@pytest.mark.parametrize("ip, expected", [
    ("10.244.3.4", "pod"), ("10.96.0.10", "service"), ("10.0.0.11", "node"), ("10.1.2.3", "private"),
    ("169.254.169.254", "cloud_metadata"), ("fd00:ec2::254", "cloud_metadata"), ("169.254.10.1", "link_local"),
    ("8.8.8.8", "public"), ("2001:4860:4860::8888", "public"), ("not-an-ip", "unknown"),
])
def test_network_map(ip: str, expected: str) -> None:
    networks = NetworkMap("10.244.0.0/16", "10.96.0.0/12", "10.0.0.0/24")
    assert networks.network(ip) == expected


def test_bad_cidr() -> None:
    with pytest.raises(ValueError, match="invalid CIDR"):
        NetworkMap("10.244.0.0/33")


@pytest.mark.parametrize("ip, expected", [
    ("172.20.1.1", "private"), ("192.168.1.1", "private"), ("100.64.3.3", "private"), ("fd12::1", "private"),
    ("203.0.113.77", "public"), ("198.51.100.23", "public"), ("172.32.0.1", "public"), ("224.0.0.251", "unknown"),
])
def test_private_means_rfc1918_cgnat_and_ula(ip: str, expected: str) -> None:
    assert NetworkMap().network(ip) == expected
