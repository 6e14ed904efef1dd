"""The correctness list of the recommender, checked through `build` and the renderers on evidence tables."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from jobs.policy import render
from jobs.policy.learn import Evidence
from jobs.policy.model import Options, Peer, PortRange, Rule, WorkloadPolicy, build
from jobs.policy.names import VOLATILE_LABELS
from jobs.policy.run import policy_objects
from jobs.policy.validate import validate_all

T = 1_717_200_000
HOSTILE = [
    "x\n---\nkind: Secret", "a: b", "{x: 1}", "[1, 2]", "!!python/object/apply:os.system ['id']", "&anchor *alias", "# comment",
    "'quoted'", '"dq"', "| block", "> folded", "%TAG ! tag:x", "@at", "`tick`", "x\r\ny", "tab\tvalue", "null", "~", "", " lead",
    "trail ", "true", "no", "0x10", "1e3", "2001-01-01", "\u2028sep", "x" * 300,
]


def _labels(rows: list[tuple[str, str, dict]]) -> pa.Table:
    return pa.Table.from_pylist([{"workload": w, "namespace": ns, "labels": list(lab.items()), "genai": "none"} for w, ns, lab in rows],
                                schema=pa.schema([("workload", pa.string()), ("namespace", pa.string()),
                                                  ("labels", pa.map_(pa.string(), pa.string())), ("genai", pa.string())]))


def _edges(rows: list[dict]) -> pa.Table:
    base = {"source_type": "wep", "source_namespace": "shop", "source_workload": "shop/api", "source_ip": None, "dest_type": "wep",
            "dest_namespace": "shop", "dest_workload": "shop/db", "dest_ip": None, "dest_domain": None, "dest_kind": "in_cluster",
            "proto": "tcp", "dest_port": 5432, "alert_id": None, "counted_flows": 1, "dst_flows": 1, "counted_bytes": 10, "dst_bytes": 10,
            "denied_records": 0, "records": 2, "first_seen": T, "last_seen": T + 1}
    return pa.Table.from_pylist([{**base, **r} for r in rows])


def _out(ip: str, port: int = 443, **kw) -> dict:
    return {"dest_type": "net", "dest_namespace": "-", "dest_workload": "-/pub", "dest_ip": ip, "dest_port": port, **kw}


@pytest.fixture()
def rec():
    labels = _labels([
        # two pods of one Deployment across a rollout: volatile labels differ, and are never used
        ("shop/api", "shop", {"app": "api", "pod-template-hash": "6b7c9d8f5b", "controller-revision-hash": "r1", "pod-template-generation": "1"}),
        ("shop/api", "shop", {"app": "api", "pod-template-hash": "59f7d4c8b6", "controller-revision-hash": "r2", "pod-template-generation": "2"}),
        ("shop/db", "shop", {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0", "apps.kubernetes.io/pod-index": "0"}),
        ("web/frontend", "web", {"app": "frontend", "batch.kubernetes.io/job-name": "x", "job-name": "x", "controller-uid": "u"}),
        ("kube-system/coredns", "kube-system", {"k8s-app": "kube-dns"}),
        ("ml/trainer", "ml", {"app": "trainer"}),
    ])
    edges = _edges([
        {},
        {"source_namespace": "web", "source_workload": "web/frontend", "dest_workload": "shop/api", "dest_port": 8080},
        {"dest_namespace": "kube-system", "dest_workload": "kube-system/coredns", "proto": "udp", "dest_port": 53},
        # four addresses in one /24 (merge), two in another (no merge)
        *[_out(f"52.1.2.{i}") for i in (10, 11, 12, 13)], _out("34.5.6.1"), _out("34.5.6.200"),
        # ten adjacent ports (a range) and two apart (single ports)
        *[{"source_namespace": "ml", "source_workload": "ml/trainer", "dest_namespace": "ml", "dest_workload": "ml/trainer", "dest_port": p}
          for p in [*range(29500, 29510), 22, 8888]],
    ])
    return build(Evidence(edges, labels), T, T + 60, Options())


def test_volatile_labels_never_reach_a_selector(rec) -> None:
    by = rec.by_workload()
    assert by["shop/api"].selector == {"app": "api"} and by["shop/db"].selector == {"app": "db"}
    assert by["web/frontend"].selector == {"app": "frontend"}
    text = render.dump_yaml(policy_objects(rec, Options())["networkpolicies.yaml"])
    assert not [k for k in VOLATILE_LABELS if k in text]


def test_policy_types_explicit_and_dns_egress_whenever_egress_is_restricted(rec) -> None:
    objects = policy_objects(rec, Options())
    validate_all([o for objs in objects.values() for o in objs])
    for np in objects["networkpolicies.yaml"]:
        spec = np["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" in spec and "egress" in spec  # an empty list denies that direction, it never means "not restricted"
        assert spec["egress"][0] == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                             "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    db = next(o for o in objects["networkpolicies.yaml"] if o["metadata"]["name"] == "flowctl-db")
    assert len(db["spec"]["egress"]) == 1  # only DNS: db never connected anywhere
    for cp in objects["calico-networkpolicies.yaml"][1:]:
        assert cp["spec"]["types"] == ["Ingress", "Egress"]
        assert {"selector": "k8s-app == 'kube-dns'", "namespaceSelector": "projectcalico.org/name == 'kube-system'", "ports": [53]} in [
            r["destination"] for r in cp["spec"]["egress"]]


def test_cross_namespace_peer_is_one_peer_with_both_selectors(rec) -> None:
    api = render.network_policy(rec.by_workload()["shop/api"], rec)
    frontend = render.network_policy(rec.by_workload()["web/frontend"], rec)
    both = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}}, "podSelector": {"matchLabels": {"app": "frontend"}}}
    assert {"from": [both], "ports": [{"protocol": "TCP", "port": 8080}]} in api["spec"]["ingress"]
    # two peers (namespace OR pods) would be a different, wider rule
    assert all(len(r["from"]) == 1 for r in api["spec"]["ingress"])
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}, "podSelector": {"matchLabels": {"app": "api"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}]} in frontend["spec"]["egress"]
    assert {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"protocol": "TCP", "port": 5432}]} in api["spec"]["egress"]


def test_ip_blocks_merge_only_with_evidence_and_port_ranges_only_for_many_adjacent_ports(rec) -> None:
    api = rec.by_workload()["shop/api"]
    assert sorted(r.peer.cidr for r in api.egress if r.peer.kind == "cidr") == ["34.5.6.1/32", "34.5.6.200/32", "52.1.2.8/29"]
    trainer = render.network_policy(rec.by_workload()["ml/trainer"], rec)
    assert trainer["spec"]["egress"][1]["ports"] == [
        {"protocol": "TCP", "port": 22}, {"protocol": "TCP", "port": 8888}, {"protocol": "TCP", "port": 29500, "endPort": 29509}]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_label_values_never_reach_an_object(value: str) -> None:
    labels = _labels([("shop/api", "shop", {"app": "api", "role": value, value[:60] or "k": "v"}), ("shop/db", "shop", {"app": "db"})])
    rec = build(Evidence(_edges([{}]), labels), T, T + 60, Options())
    assert rec.by_workload()["shop/api"].selector == {"app": "api"}
    text = render.dump_yaml([o for objs in policy_objects(rec, Options()).values() for o in objs])
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["NetworkPolicy", "NetworkPolicy", "Tier", "NetworkPolicy", "NetworkPolicy", "StagedNetworkPolicy",
                                         "StagedNetworkPolicy"]
    if value not in ("", "true", "no", "null", "0x10", "1e3", "2001-01-01"):  # valid label values that merely look like other types
        assert value not in text


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_come_out_quoted_and_inert(value: str) -> None:
    """Strings that do reach YAML (annotations, valid but ambiguous label values) read back as the same string, and nothing else."""
    policy = WorkloadPolicy("shop/api", "shop", "api", {"app": "api"}, "none",
                            egress=[Rule("egress", Peer("dns"), (PortRange("UDP", 53),), builtin=True)])
    obj = render.network_policy(policy, build(Evidence(_edges([]), _labels([])), T, T + 60, Options()))
    obj["metadata"]["annotations"]["flowctl.io/workload"] = value
    obj["metadata"]["annotations"][value or "empty"] = value
    text = render.dump_yaml([obj, obj])
    assert list(yaml.safe_load_all(text)) == [obj, obj]
    assert "!!python" not in text.replace("'!!python", "").replace('"!!python', "")
    assert text.count("\n---") == 1 and text.count("kind: NetworkPolicy") == 2


@pytest.mark.parametrize("namespace, name, message", [
    ("Shop", "api", "namespace 'Shop' is not a valid RFC 1123 label"),
    ("shop\n", "api", "namespace 'shop\\n' is not a valid"),
    ("shop", "api\n", "workload name 'flowctl-api\\n' is not a valid Kubernetes object name"),
    ("shop", "api: {x}", "is not a valid Kubernetes object name"),
    ("shop", "a" * 250, "at most"),
    ("x" * 64, "api", "is not a valid RFC 1123 label"),
])
def test_invalid_names_are_rejected_with_a_clear_message(namespace: str, name: str, message: str) -> None:
    labels = _labels([(f"{namespace}/{name}", namespace, {"app": "x"}), ("shop/db", "shop", {"app": "db"})])
    rec = build(Evidence(_edges([{"source_namespace": namespace, "source_workload": f"{namespace}/{name}"}]), labels), T, T + 60, Options())
    assert [r["workload"] for r in rec.rejected] == [f"{namespace}/{name}"]
    assert message in rec.rejected[0]["reason"]
    assert f"{namespace}/{name}" not in rec.by_workload()
