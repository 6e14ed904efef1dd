"""Enrichment of conformed flow batches: stable workload identity, destination kind,
GenAI class, reporter de-duplication. Vectorised: per-value Python work runs once
per distinct value of a batch (workloads, addresses), never once per flow.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import arrow_schema

# ReplicaSet hashes use Kubernetes' SafeEncodeString alphabet; CronJob jobs end in a minute count.
_RS_HASH = r"-[bcdfghjklmnpqrstvwxz2456789]{5,10}-\*$"
_CRONJOB_SUFFIX = r"-\d{8,}-\*$"

METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2"})
METADATA_DOMAINS = frozenset({"metadata.google.internal", "metadata", "instance-data.ec2.internal"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class GenAIRule:
    name: str
    genai_class: str
    pattern: str  # searched in "workload-name app-label app.kubernetes.io/name-label label-keys"


# First match wins. Without an inventory only names and labels are known; images and
# GPU requests are used when the inventory enrichment is configured.
DEFAULT_GENAI_RULES: tuple[GenAIRule, ...] = (
    GenAIRule("label serving.kserve.io/inferenceservice", "inference", r"\bserving\.kserve\.io/inferenceservice\b"),
    GenAIRule("label ray.io/node-type", "training", r"\bray\.io/node-type\b"),
    GenAIRule("name inference server", "inference",
              r"vllm|text-generation|\btgi\b|triton|ollama|llama-?cpp|kserve|predictor|\btei\b|sglang|lmdeploy"),
    GenAIRule("name notebook", "notebook", r"jupyter|notebook"),
    GenAIRule("name training", "training", r"\btrain|finetun|fine-tun|pytorchjob|\bray-|deepspeed"),
    GenAIRule("name LLM application", "agent/app", r"\brag\b|rag-|llm|agent|langchain|litellm|embedd"),
)


def stable_workload(namespace: pa.ChunkedArray | pa.Array, name_aggr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """'namespace/workload' with the ReplicaSet hash (or CronJob suffix) and trailing '-*' removed."""
    name = pc.replace_substring_regex(name_aggr, _RS_HASH, "")
    name = pc.replace_substring_regex(name, _CRONJOB_SUFFIX, "")
    name = pc.replace_substring_regex(name, r"-\*$", "")
    return pc.binary_join_element_wise(namespace, name, "/")


@functools.lru_cache(maxsize=65536)
def address_kind(ip: str) -> str:
    if ip in METADATA_ADDRESSES:
        return "cloud_metadata"
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if str(addr) in METADATA_ADDRESSES:  # the same address written another way (FD00:EC2:0::254)
        return "cloud_metadata"
    if addr.is_link_local:
        return "link_local"
    if addr.is_private or addr in _CGNAT or addr.is_loopback:
        return "private"
    if addr.is_global:
        return "public"
    return "unknown"


def _map_unique(values: pa.ChunkedArray | pa.Array, fn, null_value: str) -> pa.Array:
    """Apply ``fn`` once per distinct value and spread the results back to every row."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks() if encoded.num_chunks != 1 else encoded.chunk(0)
        encoded = encoded if isinstance(encoded, pa.DictionaryArray) else encoded
    dictionary = encoded.dictionary.to_pylist()
    mapped = np.array([fn(v) for v in dictionary] + [null_value], dtype=object)
    idx = pc.fill_null(encoded.indices, len(dictionary)).to_numpy(zero_copy_only=False)
    return pa.array(mapped[idx], type=pa.string())


class GenAIClassifier:
    """Classifies workloads into inference / training / notebook / agent/app / none."""

    def __init__(self, rules: tuple[GenAIRule, ...] = DEFAULT_GENAI_RULES) -> None:
        self.rules = [(r, re.compile(r.pattern, re.IGNORECASE)) for r in rules]
        self._cache: dict[str, tuple[str, str | None]] = {}

    def classify_text(self, text: str) -> tuple[str, str | None]:
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        result: tuple[str, str | None] = ("none", None)
        for rule, regex in self.rules:
            if regex.search(text):
                result = (rule.genai_class, rule.name)
                break
        if len(self._cache) > 65536:
            self._cache.clear()
        self._cache[text] = result
        return result

    def classify(self, workload: pa.ChunkedArray, labels: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
        text = pc.binary_join_element_wise(
            pc.fill_null(workload, ""),
            pc.fill_null(pc.map_lookup(labels, "app", "first"), ""),
            pc.fill_null(pc.map_lookup(labels, "app.kubernetes.io/name", "first"), ""),
            _label_keys(labels),
            " ",
        )
        classes = _map_unique(text, lambda t: self.classify_text(t)[0], "none")
        rules = _map_unique(text, lambda t: self.classify_text(t)[1] or "", "")
        return classes, pc.if_else(pc.equal(rules, ""), pa.scalar(None, pa.string()), rules)


_GENAI_LABEL_KEYS = ("serving.kserve.io/inferenceservice", "ray.io/node-type")


def _label_keys(labels: pa.ChunkedArray) -> pa.Array:
    """The GenAI-relevant label keys present on each row, space separated."""
    parts = []
    for key in _GENAI_LABEL_KEYS:
        present = pc.is_valid(pc.map_lookup(labels, key, "first"))
        parts.append(pc.if_else(present, key, ""))
    return pc.binary_join_element_wise(*parts, " ")


def first_element(lists: pa.ChunkedArray | pa.Array) -> pa.Array:
    """First item of each list; null for null or empty lists."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    heads = pc.list_slice(lists, 0, 1)
    flat = pc.list_flatten(heads)
    parents = pc.list_parent_indices(heads).to_numpy(zero_copy_only=False)
    idx = np.full(len(lists), -1, dtype=np.int64)
    idx[parents] = np.arange(len(parents))
    return flat.take(pa.array(idx, mask=idx < 0))


class FlowEnricher:
    """Adds the flow_enriched.v1 columns to a conformed flowlog.v1 table."""

    def __init__(self, classifier: GenAIClassifier | None = None) -> None:
        self.classifier = classifier or GenAIClassifier()
        self.schema = arrow_schema("flow_enriched.v1")

    def enrich(self, table: pa.Table, batch_id: str, now: int | None = None) -> pa.Table:
        n = table.num_rows
        now = int(time.time()) if now is None else now
        source_workload = stable_workload(table["source_namespace"], table["source_name_aggr"])
        dest_workload = stable_workload(table["dest_namespace"], table["dest_name_aggr"])
        src_class, src_rule = self.classifier.classify(source_workload, table["source_labels"])
        dst_class, _ = self.classifier.classify(dest_workload, table["dest_labels"])
        in_cluster = pc.is_in(table["dest_type"], value_set=pa.array(["wep", "hep"]))
        first_domain = first_element(table["dest_domains"])
        ip_kind = _map_unique(table["dest_ip"], address_kind, "")
        aggr_kind = pc.if_else(pc.equal(table["dest_name_aggr"], "pub"), "public",
                               pc.if_else(pc.equal(table["dest_name_aggr"], "pvt"), "private", "unknown"))
        domain_is_metadata = pc.fill_null(pc.is_in(first_domain, value_set=pa.array(sorted(METADATA_DOMAINS))), False)
        outside_kind = pc.if_else(pc.equal(ip_kind, ""), aggr_kind, ip_kind)
        outside_kind = pc.if_else(domain_is_metadata, "cloud_metadata", outside_kind)
        # Addresses decide even for endpoints in the cluster: a metadata hit is never 'in_cluster'.
        dest_kind = pc.if_else(pc.equal(ip_kind, "cloud_metadata"), "cloud_metadata",
                               pc.if_else(in_cluster, "in_cluster", outside_kind))
        destination = pc.if_else(
            in_cluster, dest_workload,
            pc.coalesce(first_domain, table["dest_ip"], table["dest_name_aggr"]),
        )
        # Both ends report a flow between two workloads; count the source's report, and the
        # destination's only when the source is outside the cluster and cannot report.
        counted = pc.or_(pc.equal(table["reporter"], "src"),
                         pc.invert(pc.is_in(table["source_type"], value_set=pa.array(["wep", "hep"]))))
        extra = {
            "source_workload": source_workload,
            "dest_workload": dest_workload,
            "destination": destination,
            "dest_kind": dest_kind,
            "source_genai_class": src_class,
            "source_genai_rule": src_rule,
            "dest_genai_class": dst_class,
            "counted": counted,
            "batch_id": pa.array([batch_id] * n, pa.string()) if n else pa.array([], pa.string()),
            "ingest_time": pa.array(np.full(n, now, dtype=np.int64)),
        }
        columns = [table[f.name] if f.name in table.column_names else extra[f.name] for f in self.schema]
        return pa.Table.from_arrays(columns, schema=self.schema)
