"""Calico Enterprise / Calico Cloud ``flows.log``: one JSON flow-log record per line.

Felix writes the canonical vocabulary already; what differs is the shape:
labels are ``{"labels": ["k=v", …]}``, policies are
``{"all_policies" | "enforced_policies" | "pending_policies": ["idx|tier|name|action|rule", …]}``,
``-`` stands for "not applicable" in names, addresses and service fields, and
the protocol may be written as an IANA number.
"""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.agent.sources.base import LineAdapter, Mapped, field, labels_map, nullify, proto_names, reasons_where

_S, _I = pa.string(), pa.int64()
_LABELS = pa.struct([("labels", pa.list_(_S))])
_POLICIES = pa.struct([("all_policies", pa.list_(_S)), ("enforced_policies", pa.list_(_S)),
                       ("pending_policies", pa.list_(_S))])

RAW_SCHEMA = pa.schema([
    ("start_time", _I), ("end_time", _I),
    ("source_ip", _S), ("source_name", _S), ("source_name_aggr", _S), ("source_namespace", _S),
    ("source_type", _S), ("source_labels", _LABELS), ("source_port", _I),
    ("dest_ip", _S), ("dest_name", _S), ("dest_name_aggr", _S), ("dest_namespace", _S),
    ("dest_type", _S), ("dest_labels", _LABELS), ("dest_port", _I),
    ("dest_service_namespace", _S), ("dest_service_name", _S), ("dest_service_port", _S),
    ("dest_service_port_num", _I), ("dest_domains", pa.list_(_S)),
    ("proto", _S), ("action", _S), ("reporter", _S), ("policies", _POLICIES),
    ("bytes_in", _I), ("bytes_out", _I), ("packets_in", _I), ("packets_out", _I),
    ("num_flows", _I), ("num_flows_started", _I), ("num_flows_completed", _I),
    ("host", _S),
])

_NUMBERS = ("source_port", "dest_port", "dest_service_port_num", "num_flows_started", "num_flows_completed")
_NULLABLE_LISTS = ("dest_domains",)


class CalicoAdapter(LineAdapter):
    """Calico ``flows.log`` records → flowlog.v1."""

    name = "calico"
    raw_schemas = (RAW_SCHEMA,)

    def repair(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Accept the variants seen in the wild: numeric protocols, ``-`` for absent numbers and lists,
        and labels written as a bare list."""
        fixed = dict(record)
        if isinstance(fixed.get("proto"), int) and not isinstance(fixed.get("proto"), bool):
            fixed["proto"] = str(fixed["proto"])
        for key in _NUMBERS + _NULLABLE_LISTS + ("source_labels", "dest_labels", "policies"):
            if fixed.get(key) == "-":
                fixed[key] = None
        for key in ("source_labels", "dest_labels"):
            if isinstance(fixed.get(key), list):
                fixed[key] = {"labels": fixed[key]}
        return fixed if fixed != record else None

    def map(self, raw: pa.Table, dialect: int) -> Mapped:
        n = raw.num_rows
        src_labels, bad_src = labels_map(field(raw, "source_labels", "labels"))
        dst_labels, bad_dst = labels_map(field(raw, "dest_labels", "labels"))
        enforced = pc.coalesce(field(raw, "policies", "enforced_policies"), field(raw, "policies", "all_policies"))
        cols = {
            "start_time": field(raw, "start_time"),
            "end_time": field(raw, "end_time"),
            "source_ip": nullify(field(raw, "source_ip")),
            "source_name": nullify(field(raw, "source_name")),
            "source_name_aggr": field(raw, "source_name_aggr"),
            "source_namespace": _namespace(field(raw, "source_namespace")),
            "source_type": field(raw, "source_type"),
            "source_labels": src_labels,
            "source_port": field(raw, "source_port"),
            "dest_ip": nullify(field(raw, "dest_ip")),
            "dest_name": nullify(field(raw, "dest_name")),
            "dest_name_aggr": field(raw, "dest_name_aggr"),
            "dest_namespace": _namespace(field(raw, "dest_namespace")),
            "dest_type": field(raw, "dest_type"),
            "dest_labels": dst_labels,
            "dest_port": field(raw, "dest_port"),
            "dest_service_namespace": nullify(field(raw, "dest_service_namespace")),
            "dest_service_name": nullify(field(raw, "dest_service_name")),
            "dest_service_port": nullify(field(raw, "dest_service_port")),
            "dest_service_port_num": field(raw, "dest_service_port_num"),
            "dest_domains": field(raw, "dest_domains"),
            "proto": proto_names(field(raw, "proto")),
            "action": pc.utf8_lower(field(raw, "action")),
            "reporter": pc.utf8_lower(field(raw, "reporter")),
            "policies": enforced,
            "pending_policies": field(raw, "policies", "pending_policies"),
            "bytes_in": field(raw, "bytes_in"),
            "bytes_out": field(raw, "bytes_out"),
            "packets_in": field(raw, "packets_in"),
            "packets_out": field(raw, "packets_out"),
            "num_flows": field(raw, "num_flows"),
            "num_flows_started": field(raw, "num_flows_started"),
            "num_flows_completed": field(raw, "num_flows_completed"),
            "host": nullify(field(raw, "host")) if self.host is None else pc.coalesce(nullify(field(raw, "host")), self.host),
        }
        return Mapped(cols, reasons=reasons_where(n, (bad_src, "field source_labels: a label is null"),
                                                  (bad_dst, "field dest_labels: a label is null")))


def _namespace(arr: pa.Array) -> pa.Array:
    """Calico writes ``-`` for non-namespaced endpoints; an empty namespace means the same."""
    return pc.if_else(pc.equal(arr, ""), "-", arr)


def to_calico_lines(table: pa.Table) -> list[bytes]:
    """flowlog.v1 rows written as Felix writes ``flows.log`` lines (for benchmarks, tests and demos)."""
    out = []
    for rec in table.to_pylist():
        rec.pop("cluster", None)
        for key in ("source_labels", "dest_labels"):
            labels = rec.get(key)
            rec[key] = {"labels": [f"{k}={v}" for k, v in labels]} if labels else None
        policies, pending = rec.get("policies"), rec.pop("pending_policies", None)
        rec["policies"] = {"all_policies": policies, "enforced_policies": policies,
                           **({"pending_policies": pending} if pending is not None else {})}
        for key in ("source_ip", "source_name", "dest_ip", "dest_name", "dest_service_namespace", "dest_service_name",
                    "dest_service_port"):
            if rec.get(key) is None:
                rec[key] = "-"
        out.append(orjson.dumps(rec))
    return out
