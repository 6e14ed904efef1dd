"""Cilium Hubble flows: ``hubble observe -o json`` output and Hubble exporter files.

Each line is ``{"flow": {...}, "node_name": …, "time": …}``. A Hubble flow is one
observed packet event, not an aggregated flow log, so the mapping is:

* ``verdict`` → ``action``: FORWARDED, REDIRECTED, TRACED, TRANSLATED and AUDIT
  (policy audit mode: the packet went through) are ``allow``; DROPPED and ERROR
  are ``deny``; anything else is rejected.
* ``traffic_direction`` → ``reporter``: EGRESS was seen at the source (``src``),
  INGRESS at the destination (``dst``); unknown directions count as ``src``.
* Replies (``is_reply``) are skipped and counted: the request direction already
  carries the connection, and counting both would double it. Non-L3/L4 events
  (``Type`` L7 or SOCK) are skipped the same way.
* Endpoints with a pod are workload endpoints (``wep``); ``*_name_aggr`` is the pod's
  generate-name with ``*`` (``web-7d9f8c6b5-x2x9p`` → ``web-7d9f8c6b5-*``, as Calico
  writes it), else the first workload's name. Endpoints with a ``reserved:host``,
  ``remote-node``, ``health``, ``kube-apiserver`` or ``ingress`` label are host
  endpoints (``hep``) named after it; the rest are networks (``net``), ``pvt`` or
  ``pub`` by address.
* Labels lose their ``k8s:`` source prefix; ``reserved:``, ``cidr:`` and Cilium's own
  bookkeeping labels are dropped.
* ``destination_names`` (DNS names the source resolved) → ``dest_domains``.
* Hubble carries no byte counts: bytes are 0, one packet is counted in the
  direction of the report, ``num_flows`` counts connection starts (a TCP SYN
  without ACK; every non-TCP event).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.agent.sources.base import (
    LineAdapter,
    Mapped,
    concat_lists,
    empty_list_to_null,
    field,
    labels_map,
    lookup,
    network_scope,
    reasons_where,
    rfc3339_seconds,
    to_numpy_bool,
)

_S, _I, _B = pa.string(), pa.int64(), pa.bool_()
_PORTS = pa.struct([("source_port", _I), ("destination_port", _I)])
_TCP = pa.struct([("source_port", _I), ("destination_port", _I),
                  ("flags", pa.struct([("SYN", _B), ("ACK", _B), ("FIN", _B), ("RST", _B)]))])
_ICMP = pa.struct([("type", _I), ("code", _I)])
_ENDPOINT = pa.struct([
    ("ID", _I), ("identity", _I), ("namespace", _S), ("labels", pa.list_(_S)), ("pod_name", _S),
    ("workloads", pa.list_(pa.struct([("name", _S), ("kind", _S)]))), ("cluster_name", _S),
])
_POLICY = pa.list_(pa.struct([("name", _S), ("namespace", _S), ("kind", _S)]))
_FLOW = pa.struct([
    ("time", _S), ("verdict", _S), ("Type", _S), ("node_name", _S),
    ("IP", pa.struct([("source", _S), ("destination", _S)])),
    ("l4", pa.struct([("TCP", _TCP), ("UDP", _PORTS), ("SCTP", _PORTS), ("ICMPv4", _ICMP), ("ICMPv6", _ICMP)])),
    ("source", _ENDPOINT), ("destination", _ENDPOINT),
    ("destination_names", pa.list_(_S)),
    ("destination_service", pa.struct([("name", _S), ("namespace", _S)])),
    ("is_reply", _B), ("traffic_direction", _S),
    ("egress_allowed_by", _POLICY), ("ingress_allowed_by", _POLICY),
    ("egress_denied_by", _POLICY), ("ingress_denied_by", _POLICY),
])
RAW_SCHEMA = pa.schema([("flow", _FLOW), ("node_name", _S), ("time", _S)])

VERDICTS = {"FORWARDED": "allow", "REDIRECTED": "allow", "TRACED": "allow", "TRANSLATED": "allow", "AUDIT": "allow",
            "DROPPED": "deny", "ERROR": "deny"}
DIRECTIONS = {"EGRESS": "src", "INGRESS": "dst"}
HOST_IDENTITIES = ("host", "remote-node", "health", "kube-apiserver", "ingress")
DROPPED_LABELS = ("reserved:", "cidr:", "io.cilium.k8s.", "io.kubernetes.pod.namespace", "io.cilium.")


class HubbleAdapter(LineAdapter):
    """Hubble flow JSON → flowlog.v1 (see the module docstring for the mapping)."""

    name = "hubble"
    raw_schemas = (RAW_SCHEMA,)

    def map(self, raw: pa.Table, dialect: int) -> Mapped:
        n = raw.num_rows
        flow = field(raw, "flow")
        when = pc.coalesce(field(flow, "time"), field(raw, "time"))
        seconds = rfc3339_seconds(when)
        verdict = field(flow, "verdict")
        action = lookup(verdict, VERDICTS)
        reporter = pc.fill_null(lookup(field(flow, "traffic_direction"), DIRECTIONS), "src")
        l4 = field(flow, "l4")
        tcp, udp, sctp = field(l4, "TCP"), field(l4, "UDP"), field(l4, "SCTP")
        is_tcp, is_udp, is_sctp = pc.is_valid(tcp), pc.is_valid(udp), pc.is_valid(sctp)
        is_icmp4, is_icmp6 = pc.is_valid(field(l4, "ICMPv4")), pc.is_valid(field(l4, "ICMPv6"))
        proto = pc.case_when(pc.make_struct(is_tcp, is_udp, is_sctp, is_icmp4, is_icmp6),
                             "tcp", "udp", "sctp", "icmp", "icmp6")
        dest_port = pc.coalesce(field(tcp, "destination_port"), field(udp, "destination_port"),
                                field(sctp, "destination_port"))
        source_port = pc.coalesce(field(tcp, "source_port"), field(udp, "source_port"), field(sctp, "source_port"))
        flags = field(tcp, "flags")
        syn_only = pc.and_(to_bool(field(flags, "SYN")), pc.invert(to_bool(field(flags, "ACK"))))
        started = pc.if_else(is_tcp, pc.cast(syn_only, _I), 1)
        completed = pc.if_else(is_tcp, pc.cast(pc.or_(to_bool(field(flags, "FIN")), to_bool(field(flags, "RST"))), _I),
                               pa.scalar(None, _I))
        one_packet = pa.array(np.ones(n, np.int64))
        zero = pa.array(np.zeros(n, np.int64))
        src_ip, dst_ip = field(flow, "IP", "source"), field(flow, "IP", "destination")
        src, src_bad = self._endpoint(field(flow, "source"), src_ip)
        dst, dst_bad = self._endpoint(field(flow, "destination"), dst_ip)
        allowed = concat_lists(_render(field(flow, "egress_allowed_by"), "allow"),
                               _render(field(flow, "ingress_allowed_by"), "allow"),
                               _render(field(flow, "egress_denied_by"), "deny"),
                               _render(field(flow, "ingress_denied_by"), "deny"))
        host = pc.coalesce(field(flow, "node_name"), field(raw, "node_name"))
        if self.host is not None:
            host = pc.coalesce(host, pa.scalar(self.host))
        cols = {
            "start_time": seconds, "end_time": seconds,
            "source_ip": src_ip, "dest_ip": dst_ip,
            **{f"source_{k}": v for k, v in src.items()},
            **{f"dest_{k}": v for k, v in dst.items()},
            "source_port": source_port, "dest_port": dest_port,
            "dest_service_name": field(flow, "destination_service", "name"),
            "dest_service_namespace": field(flow, "destination_service", "namespace"),
            "dest_domains": empty_list_to_null(field(flow, "destination_names")),
            "proto": proto, "action": action, "reporter": reporter,
            "policies": empty_list_to_null(allowed),
            "bytes_in": zero, "bytes_out": zero,
            "packets_out": pc.if_else(pc.equal(reporter, "src"), one_packet, zero),
            "packets_in": pc.if_else(pc.equal(reporter, "dst"), one_packet, zero),
            "num_flows": started, "num_flows_started": started, "num_flows_completed": completed,
            "host": host,
        }
        event_type = field(flow, "Type")
        skip = np.logical_or(to_numpy_bool(field(flow, "is_reply")),
                             to_numpy_bool(pc.and_(pc.is_valid(event_type), pc.not_equal(event_type, "L3_L4"))))
        reasons = reasons_where(
            n,
            (pc.is_null(flow), "no flow object"),
            (pc.is_null(seconds), "field time: not an RFC 3339 timestamp"),
            (pc.is_null(action), "field verdict: not a traffic verdict (FORWARDED, DROPPED, …)"),
            (pc.is_null(proto), "no layer-4 header (TCP, UDP, SCTP or ICMP)"),
            (src_bad, "field source.labels: a label is null"),
            (dst_bad, "field destination.labels: a label is null"),
        )
        return Mapped(cols, reasons=reasons, skip=skip)

    def _endpoint(self, ep: pa.Array, ip: pa.Array) -> tuple[dict[str, pa.Array], np.ndarray]:
        namespace = field(ep, "namespace")
        pod = field(ep, "pod_name")
        has_pod = pc.fill_null(pc.greater(pc.utf8_length(pod), 0), False)
        workloads = field(ep, "workloads")
        first_workload = pc.struct_field(first_item(workloads), "name")
        labels = field(ep, "labels")
        identity = _host_identity(labels)
        generated = pc.if_else(pc.match_substring(pod, "-"), pc.replace_substring_regex(pod, r"-[^-]*$", "-*"), pod)
        kind = pc.if_else(has_pod, "wep", pc.if_else(pc.is_valid(identity), "hep", "net"))
        name_aggr = pc.if_else(has_pod, pc.coalesce(generated, first_workload),
                               pc.coalesce(identity, network_scope(ip), pa.scalar("pub")))
        label_map, bad = labels_map(labels, strip_prefix="k8s:", drop_prefixes=DROPPED_LABELS, empty_as_null=True)
        return {
            "name": pc.if_else(has_pod, pod, pa.scalar(None, _S)),
            "name_aggr": name_aggr,
            "namespace": pc.if_else(pc.and_(has_pod, pc.fill_null(pc.greater(pc.utf8_length(namespace), 0), False)),
                                    namespace, "-"),
            "type": kind,
            "labels": pc.if_else(pc.equal(kind, "wep"), label_map, pa.scalar(None, label_map.type)),
        }, bad


def to_bool(arr: pa.Array) -> pa.Array:
    return pc.fill_null(arr, False)


def _host_identity(labels: pa.Array) -> pa.Array:
    """The reserved identity that makes an endpoint a host endpoint (``host``, ``kube-apiserver`` …), else null."""
    n = len(labels)
    out = pa.nulls(n, _S)
    for name in reversed(HOST_IDENTITIES):
        out = pc.if_else(_contains(labels, f"reserved:{name}"), name, out)
    return out


def first_item(lists: pa.Array) -> pa.Array:
    """The first element of every list (null for null or empty lists)."""
    flat = lists.flatten()
    n = len(lists)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, np.int64)
    take = pa.array(starts, pa.int64(), mask=lengths == 0)
    return flat.take(take) if len(flat) else pa.nulls(n, flat.type)


def _contains(labels: pa.Array, value: str) -> pa.Array:
    flat = labels.flatten()
    n = len(labels)
    hit = np.zeros(n, dtype=bool)
    if len(flat):
        parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
        match = pc.fill_null(pc.equal(flat, value), False).to_numpy(zero_copy_only=False)
        hit[parents[match]] = True
    return pa.array(hit)


def _render(policies: pa.Array, action: str) -> pa.Array:
    """Cilium policies → Calico-style hits ``index|tier|namespace/name|action|rule`` (no tiers: ``cilium``; rule unknown: ``-``)."""
    flat = policies.flatten()
    ns = pc.fill_null(pc.struct_field(flat, "namespace"), "")
    name = pc.fill_null(pc.struct_field(flat, "name"), "")
    qualified = pc.if_else(pc.greater(pc.utf8_length(ns), 0), pc.binary_join_element_wise(ns, name, "/"), name)
    n = len(policies)
    lengths = pc.fill_null(pc.list_value_length(policies), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    position = np.arange(len(flat)) - np.repeat(offsets[:-1], lengths)
    index = pa.array(position.astype(str).tolist(), _S)
    text = pc.binary_join_element_wise(index, "cilium", qualified, action, "-", "|")
    return pa.ListArray.from_arrays(pa.array(offsets), text, mask=pc.is_null(policies))
