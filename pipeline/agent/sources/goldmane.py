"""Calico OSS flow records from Goldmane (the flow-logs API) and Whisker.

Two shapes are read, line by line (a file may mix them):

* the Goldmane emitter's NDJSON (what it POSTs as ``application/x-ndjson``): the
  ``Flow`` message marshalled with Go's encoding/json, so the identifying fields
  sit under ``Key``, enums are numbers (``source_type`` 1–4 =
  WorkloadEndpoint/HostEndpoint/NetworkSet/Network, ``reporter`` 1=Src 2=Dst,
  ``action`` 1=Allow 2=Deny 3=Pass), times are epoch seconds and labels are
  ``["k=v", …]``;
* Whisker's flat JSON: ``start_time``/``end_time`` as RFC 3339, enums as words
  (``"Allow"``, ``"Src"``), ``protocol``, labels as one ``"k=v | k=v"`` string and
  ``policies: {enforced: […], pending: […]}``; it has no endpoint types, so ``pub``/``pvt``
  names are networks, other namespaced endpoints workloads and the rest host endpoints.

Goldmane names are aggregated already (``nginx-5d8f7c6b9d-*``), so they go to
``*_name_aggr`` and ``*_name`` stays null. Policy hits become Calico's
``index|tier|namespace/name|action|rule`` strings. ``Pass`` is not a final
verdict and is rejected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.agent.sources.base import (
    LineAdapter,
    Mapped,
    empty_list_to_null,
    field,
    labels_map,
    lookup,
    proto_names,
    reasons_where,
    rfc3339_seconds,
)

_S, _I = pa.string(), pa.int64()


def _hit(enum: pa.DataType) -> pa.DataType:
    return pa.struct([("kind", enum), ("namespace", _S), ("name", _S), ("tier", _S), ("action", enum),
                      ("policy_index", _I), ("rule_index", _I)])


EMITTER_SCHEMA = pa.schema([
    ("Key", pa.struct([
        ("source_name", _S), ("source_namespace", _S), ("source_type", _I),
        ("dest_name", _S), ("dest_namespace", _S), ("dest_type", _I), ("dest_port", _I),
        ("dest_service_name", _S), ("dest_service_namespace", _S), ("dest_service_port_name", _S),
        ("dest_service_port", _I), ("proto", _S), ("reporter", _I), ("action", _I),
        ("policies", pa.struct([("enforced_policies", pa.list_(_hit(_I))), ("pending_policies", pa.list_(_hit(_I)))])),
    ])),
    ("start_time", _I), ("end_time", _I),
    ("source_labels", pa.list_(_S)), ("dest_labels", pa.list_(_S)),
    ("packets_in", _I), ("packets_out", _I), ("bytes_in", _I), ("bytes_out", _I),
    ("num_connections_started", _I), ("num_connections_completed", _I), ("num_connections_live", _I),
])

WHISKER_SCHEMA = pa.schema([
    ("start_time", _S), ("end_time", _S), ("action", _S),
    ("source_name", _S), ("source_namespace", _S), ("source_labels", _S),
    ("dest_name", _S), ("dest_namespace", _S), ("dest_labels", _S),
    ("protocol", _S), ("dest_port", _I), ("reporter", _S),
    ("policies", pa.struct([("enforced", pa.list_(_hit(_S))), ("pending", pa.list_(_hit(_S)))])),
    ("packets_in", _I), ("packets_out", _I), ("bytes_in", _I), ("bytes_out", _I),
])

ENDPOINT_TYPES = {1: "wep", 2: "hep", 3: "ns", 4: "net"}
REPORTERS = {1: "src", 2: "dst"}
ACTIONS = {1: "allow", 2: "deny", 3: "pass"}
WORDS = {"allow": "allow", "deny": "deny", "pass": "pass", "src": "src", "dst": "dst"}
_PORTLESS = ("icmp", "icmp6")


class GoldmaneAdapter(LineAdapter):
    """Goldmane emitter and Whisker flow JSON → flowlog.v1."""

    name = "goldmane"
    raw_schemas = (EMITTER_SCHEMA, WHISKER_SCHEMA)

    def dialect(self, line: bytes) -> int:
        return 0 if b'"Key"' in line else 1

    def repair(self, record: dict[str, Any]) -> dict[str, Any] | None:
        fixed = dict(record)
        for key in ("source_labels", "dest_labels"):
            value = fixed.get(key)
            if "Key" in record and isinstance(value, str):
                fixed[key] = [s.strip() for s in value.split("|") if s.strip()]
            elif "Key" not in record and isinstance(value, list):
                fixed[key] = " | ".join(str(v) for v in value)
        return fixed if fixed != record else None

    def map(self, raw: pa.Table, dialect: int) -> Mapped:
        return self._emitter(raw) if dialect == 0 else self._whisker(raw)

    def _emitter(self, raw: pa.Table) -> Mapped:
        key = field(raw, "Key")
        src_labels, bad_src = labels_map(field(raw, "source_labels"), empty_as_null=True)
        dst_labels, bad_dst = labels_map(field(raw, "dest_labels"), empty_as_null=True)
        policies = field(key, "policies")
        cols = _common(self, raw, key_of=lambda name: field(key, name), proto=field(key, "proto"))
        cols.update({
            "start_time": field(raw, "start_time"), "end_time": field(raw, "end_time"),
            "source_type": lookup(field(key, "source_type"), ENDPOINT_TYPES),
            "dest_type": lookup(field(key, "dest_type"), ENDPOINT_TYPES),
            "source_labels": src_labels, "dest_labels": dst_labels,
            "dest_service_name": _blank_null(field(key, "dest_service_name")),
            "dest_service_namespace": _blank_null(field(key, "dest_service_namespace")),
            "dest_service_port": _blank_null(field(key, "dest_service_port_name")),
            "dest_service_port_num": _zero_null(field(key, "dest_service_port")),
            "action": lookup(field(key, "action"), ACTIONS), "reporter": lookup(field(key, "reporter"), REPORTERS),
            "policies": empty_list_to_null(render_hits(field(policies, "enforced_policies"), ACTIONS)),
            "pending_policies": empty_list_to_null(render_hits(field(policies, "pending_policies"), ACTIONS)),
            "num_flows_started": field(raw, "num_connections_started"),
            "num_flows_completed": field(raw, "num_connections_completed"),
            "num_flows": pc.add(pc.fill_null(field(raw, "num_connections_started"), 0),
                                pc.fill_null(field(raw, "num_connections_live"), 0)),
        })
        return _verdicts(raw.num_rows, cols, bad_src, bad_dst, pc.is_null(key))

    def _whisker(self, raw: pa.Table) -> Mapped:
        src_labels, bad_src = labels_map(_split_labels(field(raw, "source_labels")), empty_as_null=True)
        dst_labels, bad_dst = labels_map(_split_labels(field(raw, "dest_labels")), empty_as_null=True)
        policies = field(raw, "policies")
        cols = _common(self, raw, key_of=lambda name: field(raw, name), proto=field(raw, "protocol"))
        start, end = rfc3339_seconds(field(raw, "start_time")), rfc3339_seconds(field(raw, "end_time"))
        cols.update({
            "start_time": start, "end_time": end,
            "source_type": _infer_type(field(raw, "source_name"), field(raw, "source_namespace")),
            "dest_type": _infer_type(field(raw, "dest_name"), field(raw, "dest_namespace")),
            "source_labels": src_labels, "dest_labels": dst_labels,
            "action": lookup(pc.utf8_lower(field(raw, "action")), WORDS),
            "reporter": lookup(pc.utf8_lower(field(raw, "reporter")), WORDS),
            "policies": empty_list_to_null(render_hits(field(policies, "enforced"), None)),
            "pending_policies": empty_list_to_null(render_hits(field(policies, "pending"), None)),
            "num_flows": pa.array(np.ones(raw.num_rows, np.int64)),
        })
        mapped = _verdicts(raw.num_rows, cols, bad_src, bad_dst,
                           pa.array(np.zeros(raw.num_rows, bool)))
        times = reasons_where(raw.num_rows, (pc.is_null(start), "field start_time: not an RFC 3339 timestamp"),
                              (pc.is_null(end), "field end_time: not an RFC 3339 timestamp"))
        if times is not None:
            mapped.reasons = times if mapped.reasons is None else np.where(mapped.reasons == None, times, mapped.reasons)  # noqa: E711
        return mapped


def _common(adapter: GoldmaneAdapter, raw: pa.Table, key_of, proto: pa.Array) -> dict[str, pa.Array]:
    proto = proto_names(proto)
    port = key_of("dest_port")
    portless = pc.fill_null(pc.is_in(proto, value_set=pa.array(_PORTLESS)), False)
    host = pa.nulls(raw.num_rows, _S) if adapter.host is None else pa.array([adapter.host] * raw.num_rows, _S)
    cols = {
        "source_name_aggr": key_of("source_name"), "source_namespace": _dash(key_of("source_namespace")),
        "dest_name_aggr": key_of("dest_name"), "dest_namespace": _dash(key_of("dest_namespace")),
        "dest_port": pc.if_else(portless, pa.scalar(None, _I), port),
        "proto": proto,
        "bytes_in": pc.fill_null(field(raw, "bytes_in"), 0), "bytes_out": pc.fill_null(field(raw, "bytes_out"), 0),
        "packets_in": pc.fill_null(field(raw, "packets_in"), 0),
        "packets_out": pc.fill_null(field(raw, "packets_out"), 0),
        "host": host,
    }
    return cols


def _verdicts(n: int, cols: dict[str, pa.Array], bad_src: np.ndarray, bad_dst: np.ndarray,
              no_key: pa.Array) -> Mapped:
    action = cols["action"]
    reasons = reasons_where(
        n,
        (no_key, "no Key object"),
        (pc.equal(action, "pass"), "field action: Pass is not a final verdict"),
        (pc.is_null(action), "field action: not Allow or Deny"),
        (pc.is_null(cols["reporter"]), "field reporter: not Src or Dst"),
        (pc.is_null(cols["source_type"]), "field source_type: unknown endpoint type"),
        (pc.is_null(cols["dest_type"]), "field dest_type: unknown endpoint type"),
        (bad_src, "field source_labels: a label is null"),
        (bad_dst, "field dest_labels: a label is null"),
    )
    return Mapped(cols, reasons=reasons)


def render_hits(hits: pa.Array, actions: dict[int, str] | None) -> pa.Array:
    """Policy hits → ``index|tier|namespace/name|action|rule`` strings, list per row."""
    flat = hits.flatten()
    n = len(hits)
    lengths = pc.fill_null(pc.list_value_length(hits), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ns = pc.fill_null(pc.struct_field(flat, "namespace"), "")
    name = pc.fill_null(pc.struct_field(flat, "name"), "")
    qualified = pc.if_else(pc.greater(pc.utf8_length(ns), 0), pc.binary_join_element_wise(ns, name, "/"), name)
    raw_action = pc.struct_field(flat, "action")
    action = lookup(raw_action, actions) if actions is not None else pc.utf8_lower(raw_action)
    text = pc.binary_join_element_wise(
        pc.cast(pc.fill_null(pc.struct_field(flat, "policy_index"), 0), _S),
        pc.fill_null(pc.struct_field(flat, "tier"), "default"), qualified, pc.fill_null(action, "unknown"),
        pc.cast(pc.fill_null(pc.struct_field(flat, "rule_index"), 0), _S), "|")
    return pa.ListArray.from_arrays(pa.array(offsets), text, mask=pc.is_null(hits))


def _split_labels(text: pa.Array) -> pa.Array:
    parts = pc.split_pattern(text, " | ")
    flat = pc.utf8_trim_whitespace(parts.flatten())
    n = len(parts)
    lengths = pc.fill_null(pc.list_value_length(parts), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    lists = pa.ListArray.from_arrays(pa.array(offsets), flat, mask=pc.is_null(parts))
    # "" (no labels) splits into one empty label
    return pc.if_else(pc.fill_null(pc.equal(text, ""), False), pa.scalar([], lists.type), lists)


def _infer_type(name: pa.Array, namespace: pa.Array) -> pa.Array:
    outside = pc.is_in(name, value_set=pa.array(["pub", "pvt"]))
    namespaced = pc.and_(pc.is_valid(namespace), pc.not_equal(pc.fill_null(namespace, ""), ""))
    namespaced = pc.and_(namespaced, pc.not_equal(pc.fill_null(namespace, ""), "-"))
    return pc.if_else(pc.fill_null(outside, False), "net", pc.if_else(namespaced, "wep", "hep"))


def _dash(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(pc.equal(arr, ""), True), "-", arr)


def _blank_null(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)


def _zero_null(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(arr, 0), pa.scalar(None, arr.type), arr)
