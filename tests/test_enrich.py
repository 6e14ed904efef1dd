"""Enrichment: stable workload names, destination kind, GenAI class, reporter de-duplication."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from pipeline.conform import parse_ndjson
from pipeline.schema import arrow_schema
from pipeline.stream.enrich import FlowEnricher, first_element, stable_workload
from pipeline.stream.genai import GenAIClassifier, parse_rules

EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "examples" / "flowlog.v1.ndjson"
T0 = 1_780_315_200
# Kubernetes builds pod-template hashes from this alphabet (no vowels, no 0/1/3).
K8S_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def flow(**overrides) -> dict:
    record = {
        "start_time": T0, "end_time": T0 + 60,
        "source_namespace": "apps", "source_name_aggr": "frontend-6c8d7f9b54-*", "source_type": "wep",
        "dest_namespace": "genai", "dest_name_aggr": "vllm-7d9f8c6b5-*", "dest_type": "wep",
        "dest_port": 8000, "proto": "tcp", "action": "allow", "reporter": "src",
        "bytes_in": 100, "bytes_out": 10, "packets_in": 2, "packets_out": 1, "num_flows": 1, "cluster": "c1",
    }
    record.update(overrides)
    return record


def outside(ip: str | None, aggr: str = "pub", **overrides) -> dict:
    return flow(dest_ip=ip, dest_name_aggr=aggr, dest_namespace="-", dest_type="net", dest_port=443, **overrides)


def table(records: list[dict]) -> pa.Table:
    result = parse_ndjson([orjson.dumps(r) for r in records])
    assert not result.rejects, result.rejects
    return result.table


def enrich(records: list[dict]) -> list[dict]:
    return FlowEnricher().enrich(table(records), "batch-1", now=T0 + 100).to_pylist()


# ---- stable workload ---------------------------------------------------------

@pytest.mark.parametrize("namespace, aggr, expected", [
    ("genai", "vllm-7d9f8c6b5-*", "genai/vllm"),
    ("genai", "vllm-llama3-8b-7d9f8c6b5-*", "genai/vllm-llama3-8b"),
    ("apps", "api-gateway-5d8c6f4b79-*", "apps/api-gateway"),
    ("ops", "backup-28930560-*", "ops/backup"),  # CronJob: job name ends in the scheduled minute
    ("ops", "db-vacuum-29012345-*", "ops/db-vacuum"),
    ("logging", "fluentd-*", "logging/fluentd"),  # DaemonSet / StatefulSet: only '-*'
    ("research", "jupyter-alice", "research/jupyter-alice"),  # a bare pod keeps its name
    ("apps", "web-frontend-*", "apps/web-frontend"),  # 'frontend' has vowels: not a hash
    ("-", "pub", "-/pub"),
    ("-", "pvt", "-/pvt"),
])
def test_stable_workload(namespace, aggr, expected):
    assert stable_workload(pa.array([namespace]), pa.array([aggr])).to_pylist() == [expected]


def test_rollouts_of_one_deployment_share_a_workload():
    rng = random.Random(11)
    hashes = {"".join(rng.choice(K8S_SAFE_ALPHABET) for _ in range(rng.choice([8, 9, 10]))) for _ in range(50)}
    names = [f"vllm-llama3-{h}-*" for h in hashes]
    out = stable_workload(pa.array(["genai"] * len(names)), pa.array(names)).to_pylist()
    assert set(out) == {"genai/vllm-llama3"}


def test_workload_names_work_on_chunked_columns():
    ns = pa.chunked_array([["a", "b"], ["c"]])
    names = pa.chunked_array([["x-7d9f8c6b5-*", "pub"], ["y-*"]])
    assert stable_workload(ns, names).to_pylist() == ["a/x", "b/pub", "c/y"]


# ---- destination kind ----------------------------------------------------------

@pytest.mark.parametrize("record, kind", [
    (flow(dest_ip="169.254.169.254"), "cloud_metadata"),  # even though dest_type says wep
    (flow(dest_ip="fd00:ec2::254"), "cloud_metadata"),
    (outside("FD00:EC2:0::254", "pvt"), "cloud_metadata"),  # the same address, not canonically written
    (outside("169.254.169.254", "pvt"), "cloud_metadata"),
    (outside(None, "pvt", dest_domains=["metadata.google.internal"]), "cloud_metadata"),
    (outside("10.12.0.7", "pvt"), "private"),
    (outside("192.168.4.20", "pvt"), "private"),
    (outside("172.20.1.1", "pvt"), "private"),
    (outside("100.64.3.2", "pvt"), "private"),  # carrier-grade NAT
    (outside("8.8.8.8"), "public"),
    (outside("2606:4700:4700::1111"), "public"),
    (outside("169.254.1.1", "pvt"), "link_local"),
    (outside("fe80::1", "pvt"), "link_local"),
    (outside(None, "pub"), "public"),
    (outside(None, "pvt"), "private"),
    (outside("not-an-ip", "-"), "unknown"),
    (flow(), "in_cluster"),
    (flow(dest_ip="10.244.1.7"), "in_cluster"),
])
def test_dest_kind(record, kind):
    assert enrich([record])[0]["dest_kind"] == kind


def test_dest_kind_is_decided_per_row_in_a_mixed_batch():
    records = [outside("8.8.8.8"), flow(dest_ip="169.254.169.254"), outside(None, "pvt"), outside("8.8.8.8"),
               flow(), outside("10.0.0.1", "pvt"), outside(None, "pub")]
    kinds = [r["dest_kind"] for r in enrich(records)]
    assert kinds == ["public", "cloud_metadata", "private", "public", "in_cluster", "private", "public"]


def test_destination_prefers_workload_then_domain_then_ip_then_name():
    rows = enrich([
        flow(),
        outside("104.18.7.1", dest_domains=["api.openai.com", "openai.com"]),
        outside("104.18.7.1"),
        outside(None, "pub"),
    ])
    assert [r["destination"] for r in rows] == ["genai/vllm", "api.openai.com", "104.18.7.1", "pub"]
    assert rows[0]["dest_workload"] == "genai/vllm"


def test_first_element():
    lists = pa.array([["a", "b"], None, [], ["c"], ["d", "e", "f"]], pa.list_(pa.string()))
    assert first_element(lists).to_pylist() == ["a", None, None, "c", "d"]
    assert first_element(lists.slice(1)).to_pylist() == [None, None, "c", "d"]
    chunked = pa.chunked_array([lists.slice(0, 2), lists.slice(2)])
    assert first_element(chunked).to_pylist() == ["a", None, None, "c", "d"]
    assert first_element(pa.array([None, None], pa.list_(pa.string()))).to_pylist() == [None, None]
    assert first_element(pa.array([], pa.list_(pa.string()))).to_pylist() == []


# ---- reporter de-duplication ------------------------------------------------

def test_pod_to_pod_flow_reported_by_both_ends_is_counted_once():
    rows = enrich([flow(reporter="src"), flow(reporter="dst", bytes_in=10, bytes_out=100)])
    assert [r["counted"] for r in rows].count(True) == 1
    assert next(r for r in rows if r["counted"])["reporter"] == "src"


def test_flow_from_outside_is_counted_on_the_destination_report():
    ingress = flow(source_name_aggr="pub", source_namespace="-", source_type="net", reporter="dst")
    from_network_set = flow(source_name_aggr="corp-vpn", source_namespace="-", source_type="ns", reporter="dst")
    egress = outside("8.8.8.8", reporter="src")
    assert [r["counted"] for r in enrich([ingress, from_network_set, egress])] == [True, True, True]


def test_every_example_flow_is_counted_exactly_once():
    lines = [line for line in EXAMPLES.read_bytes().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]
    rows = FlowEnricher().enrich(parse_ndjson(lines).table, "b").to_pylist()
    counted = Counter()
    for r, row in zip(records, rows, strict=True):
        key = (r["source_namespace"], r["source_name_aggr"], r["dest_namespace"], r["dest_name_aggr"],
               r.get("dest_ip"), r.get("dest_port"), r["proto"])
        counted[key] += row["counted"]
    assert set(counted.values()) == {1}
    assert len(counted) == len(records) - 1  # one flow is reported by both ends


# ---- GenAI class ------------------------------------------------------------

@pytest.mark.parametrize("aggr, labels, expected", [
    ("scorer-5d8c6f4b79-*", {"serving.kserve.io/inferenceservice": "scorer"}, "inference"),
    ("svc-a-5d8c6f4b79-*", {"app": "ollama"}, "inference"),
    ("svc-b-5d8c6f4b79-*", {"app.kubernetes.io/name": "triton"}, "inference"),
    ("vllm-7d9f8c6b5-*", None, "inference"),
    ("text-generation-inference-5d8c6f4b79-*", None, "inference"),
    ("jupyter-alice", None, "notebook"),
    ("llama-finetune-28930560-*", None, "training"),
    ("head-*", {"ray.io/node-type": "head"}, "training"),
    ("rag-api-5d8c6f4b79-*", None, "agent/app"),
    ("support-agent-5d8c6f4b79-*", None, "agent/app"),
    ("nginx-5d8c6f4b79-*", {"app": "nginx"}, "none"),
    ("nginx-5d8c6f4b79-*", {"serving.kserve.io/inferenceservice-x": "no"}, "none"),
])
def test_genai_class_of_source_and_destination(aggr, labels, expected):
    src = flow(source_namespace="team", source_name_aggr=aggr, source_labels=labels)
    dst = flow(dest_namespace="team", dest_name_aggr=aggr, dest_labels=labels,
               source_name_aggr="client-*", source_namespace="team")
    rows = enrich([src, dst])
    assert rows[0]["source_genai_class"] == expected
    assert rows[1]["dest_genai_class"] == expected


def test_label_rule_wins_and_is_recorded():
    rows = enrich([flow(source_namespace="ml", source_name_aggr="scorer-*",
                        source_labels={"serving.kserve.io/inferenceservice": "scorer", "team": "ml"}),
                   flow(source_namespace="web", source_name_aggr="nginx-*")])
    assert rows[0]["source_genai_rule"] == "kserve-inferenceservice"
    assert rows[1]["source_genai_class"] == "none" and rows[1]["source_genai_rule"] is None


def test_custom_rules_replace_the_defaults():
    classifier = GenAIClassifier(parse_rules({"rules": [{"name": "ours", "class": "training", "app": r"\bbatch-\w+"}]}, "test"))
    rows = FlowEnricher(classifier).enrich(table([flow(source_name_aggr="batch-sim-*"),
                                                  flow(source_name_aggr="vllm-*")]), "b").to_pylist()
    assert [r["source_genai_class"] for r in rows] == ["training", "none"]


# ---- output shape -----------------------------------------------------------

def test_enriched_table_has_the_flow_enriched_schema_and_keeps_the_input():
    records = [flow(), outside("8.8.8.8", source_labels={"a=b": "é" * 100})]
    t = table(records)
    out = FlowEnricher().enrich(t, "batch-7", now=T0 + 5)
    assert out.schema.equals(arrow_schema("flow_enriched.v1"))
    assert out.select(t.column_names).equals(t)
    assert out.column("batch_id").to_pylist() == ["batch-7", "batch-7"]
    assert out.column("ingest_time").to_pylist() == [T0 + 5, T0 + 5]


def test_multi_chunk_table_enriches_like_one_chunk():
    records = [flow(), outside("8.8.8.8"), outside(None, "pvt"), flow(reporter="dst"),
               outside("169.254.169.254", "pvt", source_name_aggr="jupyter-bob"), flow(dest_name_aggr="ollama-*")]
    whole = table(records)
    chunked = pa.concat_tables([table(records[:2]), table(records[2:3]), table(records[3:])])
    assert chunked.column("dest_ip").num_chunks == 3
    one = FlowEnricher().enrich(whole, "b", now=1).to_pylist()
    many = FlowEnricher().enrich(chunked, "b", now=1).to_pylist()
    assert many == one


def test_empty_table():
    out = FlowEnricher().enrich(arrow_schema("flowlog.v1").empty_table(), "b")
    assert out.num_rows == 0 and out.schema.equals(arrow_schema("flow_enriched.v1"))


def test_inventory_maps_private_addresses_to_pods_and_images_to_classes():
    from pipeline.stream.inventory import WorkloadInventory

    inv = WorkloadInventory()
    inv.add_pods([{
        "metadata": {"name": "tgi-6d5f8b7c9d-abcde", "namespace": "genai", "labels": {"pod-template-hash": "6d5f8b7c9d"},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "tgi-6d5f8b7c9d", "controller": True}]},
        "spec": {"containers": [{"image": "ghcr.io/huggingface/text-generation-inference:2.4"}]},
        "status": {"podIP": "10.244.7.7"},
    }])
    records = [
        flow(source_namespace="genai", source_name_aggr="tgi-6d5f8b7c9d-*"),
        outside("10.244.7.7", aggr="pvt"),
    ]
    rows = FlowEnricher(inventory=inv).enrich(table(records), "b").to_pylist()
    assert (rows[0]["source_genai_class"], rows[0]["source_genai_rule"]) == ("inference", "image-tgi")
    assert rows[0]["source_workload_kind"] == "Deployment"
    assert rows[1]["dest_workload"] == "genai/tgi" and rows[1]["dest_kind"] == "in_cluster"
    assert rows[1]["dest_genai_class"] == "inference" and rows[1]["dest_network"] == "pod"


def test_domain_category_and_provider_columns():
    rows = enrich([outside("104.18.1.1", dest_domains=["api.anthropic.com"]), outside("1.2.3.4", dest_domains=None)])
    assert (rows[0]["dest_category"], rows[0]["dest_provider"]) == ("llm_api", "anthropic")
    assert (rows[1]["dest_category"], rows[1]["dest_provider"]) == ("unknown", None)
