"""Unit tests of jobs.policy: names, selectors, CIDR merging, port ranges, rendering, validation, replay semantics, stability."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from jobs.policy import render
from jobs.policy.learn import Evidence, normalise_alerts
from jobs.policy.model import Options, Peer, PortRange, Recommendation, Rule, WorkloadPolicy, build, choose_selector, covering_cidrs, port_ranges
from jobs.policy.names import is_domain, is_label_key, is_label_value, stable_labels
from jobs.policy.replay import evaluate
from jobs.policy.stability import advance
from jobs.policy.validate import PolicyValidationError, validate_object

T = 1_717_200_000


def test_label_and_name_validation() -> None:
    assert is_label_key("app.kubernetes.io/name") and is_label_key("app")
    assert not is_label_key("bad key") and not is_label_key("UPPER.example/x") and not is_label_key("a/" + "x" * 64)
    assert is_label_value("") and is_label_value("v1.2_3-x")
    assert not is_label_value("a'b") and not is_label_value("x\ny") and not is_label_value("-a") and not is_label_value("x" * 64)
    # a trailing newline must not slip through a '$' anchor
    assert not is_label_value("web\n") and not is_label_key("app\n") and not is_label_key("x.io\n/app")
    assert is_domain("api.openai.com") and is_domain("*.example.com", wildcard=True)
    assert not is_domain("*.example.com")  # a name seen in traffic is never a wildcard
    assert not is_domain("evil.com\nkind: Secret") and not is_domain("localhost") and not is_domain("a b.com")
    assert not is_domain("api.openai.com\n") and not is_domain("API.openai.com") and not is_domain("a..com")
    # Calico and AdminNetworkPolicy take '*.' only as the first label here
    assert not is_domain("www.*.com", wildcard=True) and not is_domain("*.*.com", wildcard=True) and not is_domain("*", wildcard=True)
    assert not is_domain("x" * 64 + ".com") and not is_domain(("a" * 60 + ".") * 5 + "com")


def test_stable_labels_drop_volatile_and_invalid() -> None:
    labels = {"app": "web", "pod-template-hash": "6b7c9d8f5b", "controller-revision-hash": "web-7d9", "pod-template-generation": "1",
              "statefulset.kubernetes.io/pod-name": "web-0", "apps.kubernetes.io/pod-index": "0", "controller-uid": "u",
              "job-name": "j", "batch.kubernetes.io/controller-uid": "u", "batch.kubernetes.io/job-name": "j",
              "evil": "x'; drop", "bad key": "v"}
    assert stable_labels(labels) == {"app": "web"}


def test_choose_selector_smallest_unique() -> None:
    head = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/component": "ray-head", "ray.io/node-type": "head"}
    worker = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/component": "ray-worker", "ray.io/node-type": "worker"}
    assert choose_selector([head], [worker]) == ({"app.kubernetes.io/component": "ray-head"}, None)
    # a label that differs between pods (a rollout in progress) is not common, so it is not used
    web1, web2 = {"app": "web", "version": "v1"}, {"app": "web", "version": "v2"}
    assert choose_selector([web1, web2], [{"app": "db"}]) == ({"app": "web"}, None)
    # preferred key wins over others when both are unique
    sel, _ = choose_selector([{"app": "x", "app.kubernetes.io/name": "x-name", "tier": "t"}], [])
    assert sel == {"app.kubernetes.io/name": "x-name"}
    sel, note = choose_selector([{"app": "x"}], [{"app": "x", "extra": "y"}])
    assert sel == {"app": "x"} and note and "also select" in note
    assert choose_selector([{"a": "1"}, {"b": "2"}], [])[0] == {}


def test_covering_cidrs_merge_only_with_enough_evidence() -> None:
    assert set(covering_cidrs({"10.0.0.11", "10.0.0.12", "10.0.0.13"}, 4)) == {"10.0.0.11/32", "10.0.0.12/32", "10.0.0.13/32"}
    merged = covering_cidrs({"10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14", "8.8.8.8"}, 4)
    assert merged == {"10.0.0.8/29": {"10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"}, "8.8.8.8/32": {"8.8.8.8"}}
    # addresses in different /24s never merge, however many there are
    assert len(covering_cidrs({f"10.0.{i}.1" for i in range(10)}, 4)) == 10
    assert covering_cidrs({"2001:db8::1"}, 4) == {"2001:db8::1/128": {"2001:db8::1"}}


def test_port_ranges_only_for_many_adjacent_ports() -> None:
    assert port_ranges({("TCP", 80), ("TCP", 443)}, 8) == (PortRange("TCP", 80), PortRange("TCP", 443))
    run = {("TCP", p) for p in range(8000, 8010)} | {("TCP", 22), ("UDP", 8001)}
    assert port_ranges(run, 8) == (PortRange("TCP", 22), PortRange("TCP", 8000, 8009), PortRange("UDP", 8001))
    assert len(port_ranges({("TCP", p) for p in range(1, 8)}, 8)) == 7


def _policy(ns: str, name: str, selector: dict, ingress=(), egress=(), genai: str = "none") -> WorkloadPolicy:
    p = WorkloadPolicy(f"{ns}/{name}", ns, name, selector, genai, list(ingress), list(egress))
    p.egress.insert(0, Rule("egress", Peer("dns"), (PortRange("UDP", 53), PortRange("TCP", 53)), builtin=True))
    return p


def _tcp(*ports: int) -> tuple[PortRange, ...]:
    return tuple(PortRange("TCP", p) for p in ports)


def _sample() -> Recommendation:
    api = _policy("shop", "api", {"app": "api"},
                  ingress=[Rule("ingress", Peer("pods", "web", (("app", "frontend"),), "web/frontend"), _tcp(8080), 10, 1000, T, T + 5)],
                  egress=[Rule("egress", Peer("pods", "shop", (("app", "db"),), "shop/db"), _tcp(5432), 5, 500, T, T + 5),
                          Rule("egress", Peer("cidr", cidr="52.0.0.0/24", except_cidrs=("52.0.0.128/25",)), (PortRange("TCP", 9000, 9010),),
                               3, 300, T, T + 5, domains=("api.example.com",))])
    db = _policy("shop", "db", {"app": "db"}, ingress=[Rule("ingress", Peer("pods", "shop", (("app", "api"),), "shop/api"), _tcp(5432), 5, 500)])
    llm = _policy("genai", "vllm", {"app.kubernetes.io/name": "vllm"}, genai="inference")
    return Recommendation(T, T + 3600, [api, db, llm])


def test_rendered_objects_validate_and_use_one_peer_for_other_namespaces() -> None:
    rec, options = _sample(), Options(approved_domains=("api.openai.com",))
    k8s = [render.network_policy(p, rec) for p in rec.policies]
    objects = k8s + [render.calico_tier(options)] + [render.calico_policy(p, options, staged=s) for p in rec.policies for s in (False, True)]
    objects += render.guardrails(rec, options)
    for obj in objects:
        validate_object(obj)
    api = k8s[0]["spec"]
    assert api["policyTypes"] == ["Ingress", "Egress"]
    assert api["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}},
                                          "podSelector": {"matchLabels": {"app": "frontend"}}}]
    assert api["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert {"protocol": "UDP", "port": 53} in api["egress"][0]["ports"] and {"protocol": "TCP", "port": 53} in api["egress"][0]["ports"]
    assert api["egress"][1]["to"] == [{"podSelector": {"matchLabels": {"app": "db"}}}]  # same namespace: no namespaceSelector
    assert api["egress"][2]["ports"] == [{"protocol": "TCP", "port": 9000, "endPort": 9010}]
    calico = render.calico_policy(rec.policies[0], options, staged=False)
    assert calico["metadata"]["name"] == "flowctl.flowctl-api" and calico["spec"]["tier"] == "flowctl"
    assert {"action": "Allow", "protocol": "TCP", "destination": {"domains": ["api.example.com"], "ports": ["9000:9010"]}} in calico["spec"]["egress"]
    guard = render.guardrails(rec, options)
    assert guard[0]["spec"]["subject"]["namespaces"]["matchExpressions"][0]["values"] == ["genai"]
    assert guard[0]["spec"]["egress"][0] == {"name": "deny-cloud-metadata", "action": "Deny",
                                             "to": [{"networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}]}
    assert [g["kind"] for g in guard] == ["AdminNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy"]


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o["spec"]["egress"][0]["ports"][0].update(bogus=1), "bogus"),
    (lambda o: o["spec"]["egress"][2]["to"][0]["ipBlock"].update(cidr="52.0.0.1/24"), "CIDR"),
    (lambda o: o["spec"]["egress"][2]["to"][0]["ipBlock"].update({"except": ["10.0.0.0/8"]}), "outside"),
    (lambda o: o["spec"]["egress"][2]["ports"][0].update(endPort=1), "endPort"),
    (lambda o: o["metadata"].update(name="Bad_Name"), "Bad_Name"),
    # deep in the definitions the schema refers to (inlined once for speed): still strict
    (lambda o: o["spec"]["podSelector"]["matchLabels"].update(app=1), "not of type"),
    (lambda o: o["spec"]["podSelector"].update(matchExpressions=[{"key": "app"}]), "operator"),
    (lambda o: o["metadata"].update(bogus=1), "bogus"),
    (lambda o: o["spec"]["ingress"][0]["from"][0]["podSelector"].update(extra={}), "extra"),
])
def test_kubernetes_validation_rejects_broken_objects(mutate, message) -> None:
    obj = render.network_policy(_sample().policies[0], _sample())
    mutate(obj)
    with pytest.raises(PolicyValidationError, match=message):
        validate_object(obj)


@pytest.mark.parametrize("kind_index, mutate", [
    (0, lambda o: o["spec"].update(priority=5000)),
    (0, lambda o: o["spec"]["egress"][0].update(action="Reject")),
    (0, lambda o: o["spec"]["egress"][0]["to"][0].update(pods={"podSelector": {}})),  # a peer has exactly one field
    (2, lambda o: o["metadata"].update(name="not-default")),
    (2, lambda o: o["spec"]["egress"][0].update(action="Pass")),  # baseline policies cannot pass
])
def test_guardrail_validation_rejects_broken_objects(kind_index, mutate) -> None:
    obj = render.guardrails(_sample(), Options(approved_domains=("api.openai.com",)))[kind_index]
    mutate(obj)
    with pytest.raises(PolicyValidationError):
        validate_object(obj)


def test_calico_validation_rejects_domains_in_ingress_and_bad_nets() -> None:
    options = Options()
    obj = render.calico_policy(_sample().policies[0], options, staged=True)
    obj["spec"]["ingress"][0]["source"]["domains"] = ["x.example.com"]
    with pytest.raises(PolicyValidationError):
        validate_object(obj)
    obj = render.calico_policy(_sample().policies[0], options, staged=False)
    obj["spec"]["egress"][-1]["destination"] = {"nets": ["300.1.1.1/32"]}
    with pytest.raises(PolicyValidationError, match="CIDR"):
        validate_object(obj)


def _edges(rows: list[dict]) -> pa.Table:
    base = {"source_type": "wep", "source_namespace": "ns", "source_workload": "ns/a", "source_ip": None, "dest_type": "wep",
            "dest_namespace": "ns", "dest_workload": "ns/b", "dest_ip": None, "dest_domain": None, "dest_kind": "in_cluster", "proto": "tcp",
            "dest_port": 80, "alert_id": None, "counted_flows": 1, "dst_flows": 1, "counted_bytes": 10, "dst_bytes": 10, "denied_records": 0,
            "records": 2, "first_seen": T, "last_seen": T + 1}
    return pa.Table.from_pylist([{**base, **r} for r in rows])


def _labels(rows: list[tuple[str, str, dict]]) -> pa.Table:
    return pa.Table.from_pylist([{"workload": w, "namespace": ns, "labels": list(lab.items()), "genai": "none"} for w, ns, lab in rows],
                                schema=pa.schema([("workload", pa.string()), ("namespace", pa.string()), ("labels", pa.map_(pa.string(), pa.string())),
                                                  ("genai", pa.string())]))


def test_hostile_names_are_rejected_and_hostile_values_stay_inert_in_yaml() -> None:
    hostile_value = "true"  # a valid label value YAML would read as a boolean if unquoted
    labels = _labels([
        ("ns/a", "ns", {"app": "a", "evil": "x\n---\nkind: Secret", "flag": hostile_value}),
        ("ns/b", "ns", {"app": "b"}),
        ("Bad_NS/x", "Bad_NS", {"app": "x"}),
        ("ns/Evil..name", "ns", {"app": "evil"}),
    ])
    edges = _edges([
        {},
        {"dest_type": "net", "dest_workload": "-/pub", "dest_ip": "93.184.216.34", "dest_domain": "evil.com\n- kind: Secret", "dest_port": 443},
        {"source_workload": "ns/a", "dest_workload": "Bad_NS/x", "dest_namespace": "Bad_NS"},
    ])
    rec = build(Evidence(edges, labels), T, T + 60, Options())
    assert {r["workload"] for r in rec.rejected} == {"Bad_NS/x", "ns/Evil..name"}
    assert all("not a valid" in r["reason"] for r in rec.rejected)
    assert any("Bad_NS/x" in u["reason"] for u in rec.unsupported)
    a = rec.by_workload()["ns/a"]
    assert a.selector == {"app": "a"} and "evil" not in str(a.selector)
    external = [r for r in a.egress if r.peer.kind == "cidr"]
    assert external[0].peer.cidr == "93.184.216.34/32" and external[0].domains == ()  # invalid domain not used
    # a workload whose only distinguishing label is hostile-looking but valid keeps it as a string
    p = WorkloadPolicy("ns/c", "ns", "c", {"flag": hostile_value, "n": "0x10"}, "none")
    objects = [render.network_policy(p, rec), render.calico_policy(p, Options(), staged=False)]
    text = render.dump_yaml(objects)
    assert "'true'" in text and "'0x10'" in text
    assert list(yaml.safe_load_all(text)) == objects
    assert "kind: Secret" not in render.dump_yaml([render.network_policy(a, rec)])


def test_build_learns_both_ends_skips_denied_and_alerted_edges() -> None:
    labels = _labels([("ns/a", "ns", {"app": "a"}), ("ns/b", "ns", {"app": "b"}), ("other/c", "other", {"app": "c"}),
                      ("kube-system/coredns", "kube-system", {"k8s-app": "kube-dns"})])
    edges = _edges([
        {"counted_flows": 7, "counted_bytes": 700},
        {"dest_workload": "other/c", "dest_namespace": "other", "dest_port": 9000, "denied_records": 1},
        {"dest_workload": "other/c", "dest_namespace": "other", "dest_port": 9001, "alert_id": "alert-1"},
        {"dest_workload": "kube-system/coredns", "dest_namespace": "kube-system", "dest_port": 53, "proto": "udp", "counted_flows": 3},
        # reported only by the destination (no agent at the source): still evidence
        {"source_workload": "other/c", "source_namespace": "other", "dest_port": 81, "counted_flows": 0, "dst_flows": 4},
    ])
    rec = build(Evidence(edges, labels), T, T + 60, Options())
    by = rec.by_workload()
    a_egress = {r.key: r for r in by["ns/a"].egress}
    assert "egress|pods:ns:app=b|TCP/80" in a_egress and a_egress["egress|pods:ns:app=b|TCP/80"].flows == 7
    assert a_egress["egress|dns|UDP/53 TCP/53"].flows == 3
    assert not any("9000" in k or "9001" in k for k in a_egress)
    assert [r.key for r in by["ns/b"].ingress] == ["ingress|pods:ns:app=a|TCP/80", "ingress|pods:other:app=c|TCP/81"]
    assert by["ns/b"].ingress[1].flows == 4
    assert [e["alert_id"] for e in rec.excluded] == ["alert-1"] and len(rec.denied_observed) == 1
    assert [r.key for r in by["kube-system/coredns"].ingress] == ["ingress|all-pods|UDP/53"]


def _row(src=("ns", {"app": "a"}), dst=("ns", {"app": "b"}), port=80, proto="tcp", src_ip=None, dst_ip=None) -> dict:
    return {"src_pod": src is not None, "source_namespace": src[0] if src else "-", "source_workload": f"{src[0]}/x" if src else "-/pub",
            "source_labels": list(src[1].items()) if src else None, "source_ip": src_ip,
            "dst_pod": dst is not None, "dest_namespace": dst[0] if dst else "-", "dest_workload": f"{dst[0]}/y" if dst else "-/pub",
            "dest_labels": list(dst[1].items()) if dst else None, "dest_ip": dst_ip, "dest_domain": None, "proto": proto, "dest_port": port,
            "alert_id": None, "flows": 2, "bytes": 20, "observed_denied": False, "first_seen": T, "last_seen": T}


def test_replay_semantics() -> None:
    rec = _sample()
    api, frontend, db = ("shop", {"app": "api", "pod-template-hash": "abc"}), ("web", {"app": "frontend"}), ("shop", {"app": "db"})
    cases = [
        (_row(frontend, api, 8080), True),  # frontend not isolated; api ingress allows it
        (_row(frontend, api, 8081), False),  # wrong port
        (_row(("other", {"app": "frontend"}), api, 8080), False),  # same labels, other namespace
        (_row(api, db, 5432), True),  # both ends allow
        (_row(api, db, 5432, proto="udp"), False),  # protocol
        (_row(db, api, 5432), False),  # db egress isolated (only DNS); and api ingress does not allow db
        (_row(api, ("kube-system", {"k8s-app": "kube-dns"}), 53, "udp"), True),
        (_row(api, None, 9005, dst_ip="52.0.0.7"), True),  # inside cidr and port range
        (_row(api, None, 9011, dst_ip="52.0.0.7"), False),  # outside endPort
        (_row(api, None, 9005, dst_ip="52.0.0.200"), False),  # in except
        (_row(api, ("x", {"app": "anything"}), 9005, dst_ip="52.0.0.7"), False),  # ipBlock never matches pods
        (_row(("free", {"app": "z"}), ("free", {"app": "q"}), 1), True),  # neither end selected: not isolated
        (_row(None, api, 8080, src_ip="1.2.3.4"), False),  # outside source not allowed into api
        (_row(("genai", {"app.kubernetes.io/name": "vllm"}), None, 80, dst_ip="169.254.169.254"), False),
    ]
    result = evaluate([r for r, _ in cases], rec, T, T + 1)
    assert [c["allowed"] for c in result.conversations] == [want for _, want in cases]
    assert result.total.flows_allowed == 2 * sum(want for _, want in cases)
    assert result.conversations[5]["denied_at"] == ["egress", "ingress"]
    assert result.per_rule[("shop/api", "ingress|pods:web:app=frontend|TCP/8080")].flows_allowed == 2


def test_stability_status_and_diff() -> None:
    rec = _sample()
    state = {"version": 1, "runs": 0, "workloads": {}}
    seen = []
    for _ in range(4):
        state, statuses, gone = advance(state, rec, 3, "r")
        seen.append(statuses["shop/api"].status)
    assert seen == ["learning", "stabilizing", "stable", "stable"]
    rec.policies[0].ingress.pop()
    rec.policies.pop()  # genai/vllm disappears
    state, statuses, gone = advance(state, rec, 3, "r")
    assert statuses["shop/api"].status == "learning" and statuses["shop/api"].removed == ["ingress|pods:web:app=frontend|TCP/8080"]
    assert statuses["shop/db"].status == "stable" and gone == ["genai/vllm"]


def test_alert_records_are_normalised() -> None:
    alerts = normalise_alerts([
        {"id": "x", "detector": "egress", "source_namespace": "genai", "source_name_aggr": "vllm-6b7c9d8f5b-*", "start_time": 1, "end_time": 2,
         "dest_ip": "1.2.3.4", "dest_port": 443},
        {"detector": "no source"},
    ])
    assert len(alerts) == 1 and alerts[0].source_workload == "genai/vllm" and alerts[0].dest_port == 443
