"""Enrichment of conformed flow batches: stable workload identity, destination kind,
GenAI class, reporter de-duplication. Vectorised: per-value Python work runs once
per distinct value of a batch (workloads, addresses), never once per flow.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import arrow_schema
from pipeline.stream.catalog import DomainCatalog
from pipeline.stream.genai import GenAIClassifier, WorkloadFacts
from pipeline.stream.inventory import WorkloadInventory

log = logging.getLogger(__name__)

# ReplicaSet hashes use Kubernetes' SafeEncodeString alphabet; CronJob jobs end in a minute count.
_RS_HASH = r"-[bcdfghjklmnpqrstvwxz2456789]{5,10}-\*$"
_CRONJOB_SUFFIX = r"-\d{8,}-\*$"

METADATA_ADDRESSES = frozenset({"169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2"})
METADATA_DOMAINS = frozenset({"metadata.google.internal", "metadata", "instance-data.ec2.internal"})
# Private address space: RFC 1918, shared address space (RFC 6598, CGNAT), unique local IPv6.
_PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                         "100.64.0.0/10", "fc00::/7"))


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
    if any(addr in net for net in _PRIVATE_NETS) or addr.is_loopback:
        return "private"
    if addr.is_multicast or addr.is_unspecified:
        return "unknown"
    # Everything else is reachable outside the cluster's networks, documentation ranges included
    # (they stand for public addresses in examples and test traffic).
    return "public"


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


class NetworkMap:
    """Pod, service and node CIDRs of the cluster, and address classification."""

    def __init__(self, pod_cidrs: str = "", service_cidrs: str = "", node_cidrs: str = "") -> None:
        def nets(text: str) -> list:
            try:
                return [ipaddress.ip_network(c.strip(), strict=False) for c in text.split(",") if c.strip()]
            except ValueError as exc:
                raise ValueError(f"invalid CIDR list {text!r}: {exc}") from None

        self.ranges = [("pod", n) for n in nets(pod_cidrs)] + [("service", n) for n in nets(service_cidrs)] + \
            [("node", n) for n in nets(node_cidrs)]
        self._cache: dict[str, str] = {}

    def network(self, ip: str) -> str:
        """pod, service, node, private, link_local, cloud_metadata, public or unknown."""
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        kind = address_kind(ip)
        if kind not in ("cloud_metadata", "unknown"):
            addr = ipaddress.ip_address(ip)
            for name, net in self.ranges:
                if addr.version == net.version and addr in net:
                    kind = name
                    break
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[ip] = kind
        return kind


def _first_rows(keys: pa.Array) -> tuple[list, np.ndarray, np.ndarray]:
    """Distinct values of ``keys``, the row of each one's first occurrence, and each row's value index."""
    encoded = pc.dictionary_encode(keys)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    dictionary = encoded.dictionary.to_pylist()
    first = np.full(len(dictionary), -1, dtype=np.int64)
    order = np.arange(len(indices))[::-1]
    valid = indices[order] >= 0
    first[indices[order][valid]] = order[valid]  # last write wins: the first occurrence
    return dictionary, first, indices


class FlowEnricher:
    """Adds the flow_enriched.v1 columns to a conformed flowlog.v1 table.

    Per-value work (inventory lookups, classification, domain matching) runs once per
    distinct workload, address or name in the batch, never once per flow.
    """

    def __init__(self, classifier: GenAIClassifier | None = None, catalog: DomainCatalog | None = None,
                 inventory: WorkloadInventory | None = None, networks: NetworkMap | None = None) -> None:
        self.classifier = classifier or GenAIClassifier.load()
        self.catalog = catalog or DomainCatalog.load()
        self.inventory = inventory
        self.networks = networks or NetworkMap()
        self.schema = arrow_schema("flow_enriched.v1")

    @classmethod
    def from_settings(cls, settings) -> FlowEnricher:
        inventory = None
        if settings.inventory.startswith("kubernetes"):
            # "kubernetes" (in-cluster or kubeconfig) or "kubernetes:https://api.example:6443"
            from pipeline.stream.kube import KubernetesInventoryWatcher

            inventory = WorkloadInventory()
            host = settings.inventory.split(":", 1)[1] if ":" in settings.inventory else ""
            watcher = KubernetesInventoryWatcher(inventory, host=host).start()
            if not watcher.synced.wait(30):
                log.warning("the Kubernetes API did not answer within 30s; enriching without an inventory until it does")
        elif settings.inventory:
            inventory = WorkloadInventory.from_file(settings.inventory)
        return cls(GenAIClassifier.load(settings.genai_rules or None), DomainCatalog.load(settings.domain_catalog or None),
                   inventory, NetworkMap(settings.pod_cidrs, settings.service_cidrs, settings.node_cidrs))

    def _workload_facts(self, workload: pa.Array, labels: pa.ChunkedArray, endpoint_type: pa.ChunkedArray):
        """Per row: GenAI class, matching rule, owner kind and GPU count of a workload."""
        names, first, indices = _first_rows(workload)
        label_rows = labels.take(pa.array(first)).to_pylist() if len(first) else []
        types = endpoint_type.take(pa.array(first)).to_pylist() if len(first) else []
        classes, rules, kinds, gpus = [], [], [], []
        for name, row_labels, etype in zip(names, label_rows, types, strict=True):
            info = self.inventory.workload(name) if self.inventory is not None else None
            flow_labels = dict(row_labels) if row_labels else {}
            if etype not in ("wep", "hep") and info is None:
                cls_, rule = "none", None
            else:
                facts = WorkloadFacts(name, {**(info.labels if info else {}), **flow_labels},
                                      tuple(sorted(info.images)) if info else (), info.gpus if info else 0)
                cls_, rule = self.classifier.classify(facts)
            classes.append(cls_)
            rules.append(rule)
            kinds.append(info.kind if info else None)
            gpus.append(info.gpus if info else None)
        take = pa.array(indices, mask=indices < 0)

        def spread(values: list, type_: pa.DataType) -> pa.Array:
            return pa.array(values, type_).take(take) if values else pa.nulls(len(indices), type_)

        return (pc.fill_null(spread(classes, pa.string()), "none"), spread(rules, pa.string()),
                spread(kinds, pa.string()), spread(gpus, pa.int64()))

    def enrich(self, table: pa.Table, batch_id: str, now: int | None = None) -> pa.Table:
        n = table.num_rows
        now = int(time.time()) if now is None else now
        source_workload = stable_workload(table["source_namespace"], table["source_name_aggr"]).combine_chunks()
        dest_workload = stable_workload(table["dest_namespace"], table["dest_name_aggr"]).combine_chunks()
        in_cluster = pc.is_in(table["dest_type"], value_set=pa.array(["wep", "hep"]))
        dest_ip = table["dest_ip"]
        if self.inventory is not None and self.inventory.pods_by_ip:
            # Destinations only known by address (Calico 'pvt', Hubble without identity) that are pods we know.
            pod_workload = _map_unique(dest_ip, lambda ip: (p.workload if (p := self.inventory.pod_for_ip(ip)) else ""), "")
            known_pod = pc.and_(pc.invert(in_cluster), pc.not_equal(pod_workload, ""))
            dest_workload = pc.if_else(known_pod, pod_workload, dest_workload)
            in_cluster = pc.or_(in_cluster, known_pod)
        src_class, src_rule, src_kind, src_gpus = self._workload_facts(source_workload, table["source_labels"],
                                                                        table["source_type"])
        dst_class, _, _, _ = self._workload_facts(dest_workload, table["dest_labels"],
                                                  pc.if_else(in_cluster, "wep", table["dest_type"]))
        first_domain = first_element(table["dest_domains"])
        ip_kind = _map_unique(dest_ip, self.networks.network, "")
        aggr_kind = pc.if_else(pc.equal(table["dest_name_aggr"], "pub"), "public",
                               pc.if_else(pc.equal(table["dest_name_aggr"], "pvt"), "private", "unknown"))
        category = _map_unique(first_domain, self.catalog.category, "unknown")
        provider = _map_unique(first_domain, lambda d: self.catalog.provider(d) or "", "")
        provider = pc.if_else(pc.equal(provider, ""), pa.scalar(None, pa.string()), provider)
        network = pc.if_else(pc.equal(ip_kind, ""), aggr_kind, ip_kind)
        network = pc.if_else(pc.equal(category, "cloud_metadata"), "cloud_metadata", network)
        in_cluster_network = pc.is_in(network, value_set=pa.array(["pod", "service", "node"]))
        category = pc.if_else(pc.equal(network, "cloud_metadata"), "cloud_metadata", category)
        outside_kind = pc.if_else(in_cluster_network, "private", network)
        # Addresses decide even for endpoints in the cluster: a metadata hit is never 'in_cluster'.
        dest_kind = pc.if_else(pc.equal(network, "cloud_metadata"), "cloud_metadata",
                               pc.if_else(in_cluster, "in_cluster", outside_kind))
        network = pc.if_else(pc.and_(in_cluster, pc.is_in(network, value_set=pa.array(["private", "unknown"]))),
                             pc.if_else(pc.equal(table["dest_type"], "hep"), "node", "pod"), network)
        destination = pc.if_else(
            in_cluster, dest_workload,
            pc.coalesce(first_domain, dest_ip, table["dest_name_aggr"]),
        )
        # Both ends report a flow between two workloads; count the source's report, and the
        # destination's only when the source is outside the cluster and cannot report.
        counted = pc.or_(pc.equal(table["reporter"], "src"),
                         pc.invert(pc.is_in(table["source_type"], value_set=pa.array(["wep", "hep"]))))
        extra = {
            "source_workload": source_workload,
            "source_workload_kind": src_kind,
            "source_gpus": src_gpus,
            "dest_workload": dest_workload,
            "destination": destination,
            "dest_kind": dest_kind,
            "dest_network": network,
            "dest_category": category,
            "dest_provider": provider,
            "source_genai_class": src_class,
            "source_genai_rule": src_rule,
            "dest_genai_class": dst_class,
            "counted": counted,
            "batch_id": pa.repeat(pa.scalar(batch_id, pa.string()), n),
            "ingest_time": pa.array(np.full(n, now, dtype=np.int64)),
        }
        present = set(table.column_names)
        columns = [table[f.name] if f.name in present else extra[f.name] for f in self.schema]
        return pa.Table.from_arrays(columns, schema=self.schema)
