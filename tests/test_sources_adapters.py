"""Golden tests per adapter on records in each real format, and a property test over all of them."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.agent.sources import ADAPTERS, adapter_for
from pipeline.agent.sources.calico import CalicoAdapter, to_calico_lines
from pipeline.agent.sources.goldmane import GoldmaneAdapter
from pipeline.agent.sources.hubble import HubbleAdapter
from pipeline.agent.sources.synthetic import SyntheticCluster

CALICO = {
    "start_time": 1700000000, "end_time": 1700000300, "source_ip": "-", "source_name": "-",
    "source_name_aggr": "rag-agent-5f7b9c8d46-*", "source_namespace": "apps", "source_type": "wep",
    "source_labels": {"labels": ["app=rag-agent", "pod-template-hash=5f7b9c8d46"]}, "source_port": None,
    "dest_ip": "162.159.140.245", "dest_name": "-", "dest_name_aggr": "pub", "dest_namespace": "-", "dest_type": "net",
    "dest_labels": None, "dest_port": 443, "dest_service_namespace": "-", "dest_service_name": "-",
    "dest_service_port": "-", "dest_service_port_num": None, "dest_domains": ["api.openai.com"], "proto": "tcp",
    "action": "allow", "reporter": "src",
    "policies": {"all_policies": ["0|platform|apps/platform.allow-llm-egress|allow|2"],
                 "enforced_policies": ["0|platform|apps/platform.allow-llm-egress|allow|2"],
                 "pending_policies": ["0|staged|apps/staged:platform.deny-egress|deny|0"]},
    "bytes_in": 512330, "bytes_out": 40960, "packets_in": 420, "packets_out": 310, "num_flows": 3,
    "num_flows_started": 3, "num_flows_completed": 3, "host": "ip-10-0-12-34", "nat_outgoing_ports": None,
    "process_name": "-", "tcp_mean_send_congestion_window": 10,
}
CALICO_HEP_DENY = {**CALICO, "source_name_aggr": "ip-10-0-12-34", "source_namespace": "-", "source_type": "hep",
                   "source_labels": None, "dest_name_aggr": "pvt", "dest_ip": "10.9.8.7", "dest_port": "-", "proto": "1",
                   "action": "deny", "dest_domains": "-", "policies": {"all_policies": ["0|default|default.deny|deny|-1"]}}

HUBBLE = {"flow": {
    "time": "2024-03-01T12:00:00.123456789Z", "verdict": "FORWARDED",
    "IP": {"source": "10.244.1.5", "destination": "52.1.2.3", "ipVersion": "IPv4"},
    "l4": {"TCP": {"source_port": 40000, "destination_port": 443, "flags": {"SYN": True}}},
    "source": {"ID": 12, "identity": 4567, "namespace": "genai", "pod_name": "vllm-7d9f8c6b5-x2x9p",
               "labels": ["k8s:app=vllm", "k8s:io.kubernetes.pod.namespace=genai", "k8s:io.cilium.k8s.policy.cluster=default"],
               "workloads": [{"name": "vllm", "kind": "Deployment"}]},
    "destination": {"identity": 2, "labels": ["reserved:world"]},
    "Type": "L3_L4", "node_name": "kind-worker", "destination_names": ["api.openai.com"], "is_reply": False,
    "traffic_direction": "EGRESS", "egress_allowed_by": [{"name": "allow-llm", "namespace": "genai"}],
    "trace_observation_point": "TO_STACK", "Summary": "TCP Flags: SYN"},
    "node_name": "kind-worker", "time": "2024-03-01T12:00:00.123456789Z"}
HUBBLE_REPLY = {"flow": {**HUBBLE["flow"], "is_reply": True, "traffic_direction": "EGRESS"}}
HUBBLE_DROP = {"flow": {**HUBBLE["flow"], "verdict": "DROPPED", "traffic_direction": "INGRESS", "drop_reason_desc": "POLICY_DENIED",
                        "source": {"identity": 1, "labels": ["reserved:host"]}, "destination": HUBBLE["flow"]["source"],
                        "l4": {"UDP": {"source_port": 5353, "destination_port": 53}}, "egress_allowed_by": None,
                        "ingress_denied_by": [{"name": "deny-host", "namespace": ""}], "destination_names": None}}

GOLDMANE = {"Key": {"source_name": "nginx-5d8f7c6b9d-*", "source_namespace": "web", "source_type": 1,
                    "dest_name": "pub", "dest_type": 4, "dest_port": 443, "proto": "tcp", "reporter": 1, "action": 1,
                    "policies": {"enforced_policies": [{"kind": 1, "namespace": "web", "name": "allow-egress", "tier": "default",
                                                        "action": 1, "policy_index": 0, "rule_index": 2}]}},
            "start_time": 1700000000, "end_time": 1700000015, "source_labels": ["app=nginx"], "packets_in": 3,
            "packets_out": 4, "bytes_in": 100, "bytes_out": 200, "num_connections_started": 2, "num_connections_live": 1}
WHISKER = {"start_time": "2025-04-01T10:00:00Z", "end_time": "2025-04-01T12:00:15+02:00", "action": "Deny",
           "source_name": "client-*", "source_namespace": "web", "source_labels": "app=client | tier=fe",
           "dest_name": "db-*", "dest_namespace": "data", "dest_labels": "", "protocol": "udp", "dest_port": 53,
           "reporter": "Dst", "policies": {"enforced": [{"kind": "CalicoNetworkPolicy", "name": "deny-all", "namespace": "data",
                                                         "tier": "security", "action": "Deny", "policy_index": 1, "rule_index": -1}],
                                           "pending": []},
           "packets_in": 1, "packets_out": 0, "bytes_in": 60, "bytes_out": 0}


def _parse(adapter, *records):
    return adapter.parse([orjson.dumps(r) if isinstance(r, dict) else r for r in records])


def test_calico_golden() -> None:
    b = _parse(CalicoAdapter(cluster="prod"), CALICO, CALICO_HEP_DENY)
    assert not b.rejects
    a, h = b.table.to_pylist()
    assert a["source_ip"] is None and a["source_name"] is None and a["dest_name"] is None  # '-' → null
    assert a["dest_service_name"] is None and a["dest_namespace"] == "-"
    assert dict(a["source_labels"]) == {"app": "rag-agent", "pod-template-hash": "5f7b9c8d46"}
    assert a["dest_labels"] is None and a["dest_domains"] == ["api.openai.com"]
    assert a["policies"] == ["0|platform|apps/platform.allow-llm-egress|allow|2"]
    assert a["pending_policies"] == ["0|staged|apps/staged:platform.deny-egress|deny|0"]
    assert (a["proto"], a["cluster"], a["host"], a["bytes_in"]) == ("tcp", "prod", "ip-10-0-12-34", 512330)
    # host endpoint, deny, numeric protocol, '-' for a number and a list, all_policies only
    assert (h["source_type"], h["action"], h["proto"], h["dest_port"], h["dest_domains"]) == ("hep", "deny", "icmp", None, None)
    assert h["policies"] == ["0|default|default.deny|deny|-1"] and h["dest_name_aggr"] == "pvt"


def test_calico_rejects_absurd_values_with_original_bytes() -> None:
    lines = [orjson.dumps({**CALICO, "dest_port": 70000}), orjson.dumps({**CALICO, "bytes_out": -5}),
             orjson.dumps({**CALICO, "bytes_in": "lots"}), orjson.dumps({**CALICO, "action": "maybe"}),
             orjson.dumps({**CALICO, "end_time": 1}), b'{"start_time": 17000', b"\xff\xfe{}", b"[1]"]
    b = CalicoAdapter().parse(lines, first_line=10)
    assert b.table.num_rows == 0
    assert [r.row for r in b.rejects] == list(range(10, 18))
    assert [r.raw for r in b.rejects] == lines
    reasons = " / ".join(r.reason for r in b.rejects)
    for word in ("dest_port", "bytes_out", "bytes_in", "action", "end_time", "invalid JSON", "UTF-8", "not a JSON object"):
        assert word in reasons


def test_hubble_golden() -> None:
    b = _parse(HubbleAdapter(cluster="c"), HUBBLE, HUBBLE_REPLY, HUBBLE_DROP)
    assert not b.rejects and b.skipped == 1  # the reply is not double counted
    fwd, drop = b.table.to_pylist()
    assert (fwd["start_time"], fwd["end_time"]) == (1709294400, 1709294400)
    assert (fwd["action"], fwd["reporter"], fwd["proto"], fwd["dest_port"], fwd["source_port"]) == ("allow", "src", "tcp", 443, 40000)
    assert (fwd["source_name"], fwd["source_name_aggr"], fwd["source_namespace"]) == ("vllm-7d9f8c6b5-x2x9p", "vllm-7d9f8c6b5-*", "genai")
    assert dict(fwd["source_labels"]) == {"app": "vllm"}  # k8s: stripped, Cilium bookkeeping dropped
    assert (fwd["dest_type"], fwd["dest_name_aggr"], fwd["dest_namespace"], fwd["dest_labels"]) == ("net", "pub", "-", None)
    assert fwd["dest_domains"] == ["api.openai.com"] and fwd["host"] == "kind-worker"
    assert fwd["policies"] == ["0|cilium|genai/allow-llm|allow|-"] and fwd["num_flows_started"] == 1
    assert (drop["action"], drop["reporter"], drop["proto"], drop["dest_port"]) == ("deny", "dst", "udp", 53)
    assert (drop["source_type"], drop["source_name_aggr"], drop["dest_type"]) == ("hep", "host", "wep")
    assert drop["policies"] == ["0|cilium|deny-host|deny|-"] and (drop["packets_in"], drop["packets_out"]) == (1, 0)


def test_hubble_rejects_unknown_verdicts_and_missing_l4() -> None:
    no_l4 = {"flow": {**HUBBLE["flow"], "l4": None}}
    bad_time = {"flow": {**HUBBLE["flow"], "time": "yesterday"}, "time": None}
    b = _parse(HubbleAdapter(), {"flow": {**HUBBLE["flow"], "verdict": "VERDICT_UNKNOWN"}}, no_l4, bad_time, {"node_status": {}})
    assert b.table.num_rows == 0 and len(b.rejects) == 4
    assert "verdict" in b.rejects[0].reason and "layer-4" in b.rejects[1].reason and "RFC 3339" in b.rejects[2].reason


def test_goldmane_emitter_and_whisker_golden() -> None:
    b = _parse(GoldmaneAdapter(cluster="c", host="node-1"), GOLDMANE, WHISKER)
    assert not b.rejects
    em, wh = b.table.to_pylist()
    assert (em["source_name_aggr"], em["source_name"], em["source_type"], em["dest_type"]) == ("nginx-5d8f7c6b9d-*", None, "wep", "net")
    assert (em["action"], em["reporter"], em["num_flows"], em["host"]) == ("allow", "src", 3, "node-1")
    assert em["policies"] == ["0|default|web/allow-egress|allow|2"] and dict(em["source_labels"]) == {"app": "nginx"}
    assert (wh["start_time"], wh["end_time"]) == (1743501600, 1743501615)  # the +02:00 offset is applied
    assert (wh["action"], wh["reporter"], wh["proto"], wh["dest_labels"]) == ("deny", "dst", "udp", None)
    assert dict(wh["source_labels"]) == {"app": "client", "tier": "fe"}
    assert wh["policies"] == ["1|security|data/deny-all|deny|-1"]


def test_goldmane_pass_is_not_a_verdict() -> None:
    b = _parse(GoldmaneAdapter(), {**GOLDMANE, "Key": {**GOLDMANE["Key"], "action": 3}})
    assert b.table.num_rows == 0 and "Pass" in b.rejects[0].reason


def test_synthetic_flows_survive_the_calico_round_trip() -> None:
    table = next(SyntheticCluster(seed=2, cluster="c").generate(1_790_000_000, 1_790_000_600, rate=50))
    b = CalicoAdapter(cluster="c").parse(to_calico_lines(table))
    assert not b.rejects
    assert b.table.to_pylist() == table.select(b.table.column_names).cast(b.table.schema).to_pylist()


def test_oversized_line_is_rejected_with_a_prefix() -> None:
    adapter = CalicoAdapter(max_line_bytes=3000)
    b = adapter.parse([b'{"x": "' + b"a" * 5000 + b'"}', orjson.dumps(CALICO)])
    assert b.table.num_rows == 1 and "longer than the limit" in b.rejects[0].reason


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="calico"):
        adapter_for("netflow")


SEEDS = [orjson.dumps(r) for r in (CALICO, CALICO_HEP_DENY, HUBBLE, HUBBLE_REPLY, HUBBLE_DROP, GOLDMANE, WHISKER)]


@st.composite
def mutated_lines(draw) -> bytes:
    base = draw(st.sampled_from(SEEDS))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return base[:draw(st.integers(0, len(base)))]
    if kind == 2:
        pos = draw(st.integers(0, len(base) - 1))
        return base[:pos] + draw(st.binary(min_size=1, max_size=8)) + base[pos + 1:]
    if kind == 3:
        rec = orjson.loads(base)
        key = draw(st.sampled_from(sorted(rec)))
        rec[key] = draw(st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=5),
                                  st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
        return json.dumps(rec).encode()  # the stdlib writes integers beyond 64 bits too
    return base


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_lines(), min_size=1, max_size=25), st.sampled_from(sorted(ADAPTERS)))
def test_adapters_never_raise_and_account_for_every_line(lines: list[bytes], fmt: str) -> None:
    lines = [ln.replace(b"\n", b" ") for ln in lines]
    b = adapter_for(fmt).parse(lines)
    nonblank = sum(1 for ln in lines if ln.strip())
    assert b.lines == nonblank
    assert b.table.num_rows + len(b.rejects) + b.skipped == nonblank
    assert all(r.raw is not None and r.reason for r in b.rejects)
