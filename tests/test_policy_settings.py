"""Recommender settings: flowctl.toml and FLOWCTL_* give Options, flags override them, and each setting changes the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.policy.learn import read_evidence
from jobs.policy.model import Options, build
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import ConfigError, Settings, load_settings
from pipeline.query.views import connect
from pipeline.sink.lake import ParquetLakeWriter
from pipeline.stream.enrich import FlowEnricher

T0 = 1_717_200_000 // 3600 * 3600
SPAN = 900
# Four kubelet addresses of the synthetic cluster share a /24: merged into one prefix unless merging is off.
KUBELETS = {"10.0.0.11/32", "10.0.0.12/32", "10.0.0.13/32", "10.0.0.14/32"}


def test_settings_from_file_and_environment_become_options(tmp_path: Path) -> None:
    toml = tmp_path / "flowctl.toml"
    toml.write_text('[recommend]\nrecommend_tier = "platform"\nrecommend_domain_mode = "networkset"\n'
                    'recommend_approved_domains = ["api.openai.com", "*.anthropic.com"]\nrecommend_min_port_range = 4\n')
    env = {"FLOWCTL_RECOMMEND_MERGE_CIDRS": "false", "FLOWCTL_RECOMMEND_GUARDRAILS": "off", "FLOWCTL_RECOMMEND_MERGE_PREFIX": "28",
           "FLOWCTL_RECOMMEND_STABLE_RUNS": "5", "FLOWCTL_RECOMMEND_LOOKBACK_HOURS": "24"}
    settings = load_settings(toml, env)
    assert settings.recommend_lookback_hours == 24.0
    options = Options.from_settings(settings)
    assert options == Options(merge_cidrs=False, merge_prefix=28, min_port_range=4, tier="platform", domain_mode="networkset",
                              guardrails=False, stable_runs=5, approved_domains=("api.openai.com", "*.anthropic.com"))
    # flags win over settings; approved domains from the environment are comma-separated
    settings = load_settings(toml, {**env, "FLOWCTL_RECOMMEND_APPROVED_DOMAINS": "api.mistral.ai, api.cohere.com"})
    flagged = Options.from_settings(settings, merge_cidrs=True, tier="ai", min_port_range=None)
    assert (flagged.merge_cidrs, flagged.tier, flagged.min_port_range) == (True, "ai", 4)
    assert flagged.approved_domains == ("api.mistral.ai", "api.cohere.com")
    assert Options.from_settings(Settings()) == Options()


@pytest.mark.parametrize("env, message", [
    ({"FLOWCTL_RECOMMEND_GUARDRAILS": "maybe"}, "recommend_guardrails must be true or false"),
    ({"FLOWCTL_RECOMMEND_MERGE_PREFIX": "wide"}, "recommend_merge_prefix must be a number"),
])
def test_bad_setting_values_are_config_errors(tmp_path: Path, env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, {**env, "FLOWCTL_CONFIG": str(tmp_path / "absent.toml")})


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("policy-settings") / "lake")
    writer, enricher = ParquetLakeWriter(root), FlowEnricher()
    offset = 0
    for table in SyntheticCluster(seed=5).generate(T0, T0 + SPAN, rate=30):
        writer.write("flows", "flows.enriched.v1", 0, offset, offset + table.num_rows - 1, enricher.enrich(table, "b", now=T0))
        offset += table.num_rows
    return root


def _external_cidrs(rec) -> set[str]:
    return {r.peer.cidr for p in rec.policies for r in p.rules if r.peer.kind == "cidr"}


def test_merge_settings_change_the_rules(lake: str) -> None:
    evidence = read_evidence(connect(lake), T0, T0 + SPAN, [])
    merged = _external_cidrs(build(evidence, T0, T0 + SPAN, Options()))
    assert "10.0.0.8/29" in merged and not KUBELETS & merged
    assert KUBELETS <= _external_cidrs(build(evidence, T0, T0 + SPAN, Options(merge_cidrs=False)))
    assert KUBELETS <= _external_cidrs(build(evidence, T0, T0 + SPAN, Options(merge_min_addresses=50)))
    # a /30 block splits the four addresses into two pairs, too few to merge
    assert KUBELETS <= _external_cidrs(build(evidence, T0, T0 + SPAN, Options(merge_prefix=30)))


def _cli(lake: str, out: Path, *args: str, env: dict | None = None, config: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli", *(["--config", str(config)] if config else []), "--state-dir", str(out / "state"),
           "recommend", "--lake", lake, "--until", str(T0 + SPAN), "--output", str(out), "--no-lake-rows", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc


def _yaml(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text())) if path.exists() else []


def test_recommend_verb_reads_settings_and_flags_override_them(lake: str, tmp_path: Path) -> None:
    toml = tmp_path / "flowctl.toml"
    toml.write_text('recommend_domain_mode = "networkset"\nrecommend_tier = "platform"\nrecommend_guardrails = false\n'
                    'recommend_lookback_hours = 0.25\n')
    env = {"FLOWCTL_RECOMMEND_MERGE_CIDRS": "false"}
    out = tmp_path / "settings"
    proc = _cli(lake, out, env=env, config=toml)
    assert f"learning from flows {T0}..{T0 + SPAN}" in proc.stderr  # --since defaults to --until minus recommend_lookback_hours
    sets = _yaml(out / "calico-globalnetworksets.yaml")
    assert sets and {"api.openai.com"} in [set(s["spec"]["allowedEgressDomains"]) for s in sets]
    calico = _yaml(out / "calico-networkpolicies.yaml")
    assert calico[0] == {**calico[0], "kind": "Tier"} and calico[0]["metadata"]["name"] == "platform"
    assert all(p["metadata"]["name"].startswith("platform.") for p in calico[1:])
    assert "domains" not in (out / "calico-networkpolicies.yaml").read_text().replace("domain-set", "")
    assert not (out / "guardrails.yaml").exists()
    k8s = (out / "networkpolicies.yaml").read_text()
    assert all(c in k8s for c in KUBELETS) and "10.0.0.8/29" not in k8s

    out = tmp_path / "flags"
    _cli(lake, out, "--domain-mode", "inline", "--merge-cidrs", "--guardrails", "--tier", "ai", "--since", str(T0), env=env, config=toml)
    assert not (out / "calico-globalnetworksets.yaml").exists()
    assert "domains:" in (out / "calico-networkpolicies.yaml").read_text()
    assert [g["kind"] for g in _yaml(out / "guardrails.yaml")] == ["AdminNetworkPolicy"]
    assert "10.0.0.8/29" in (out / "networkpolicies.yaml").read_text()

