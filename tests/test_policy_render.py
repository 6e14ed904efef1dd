"""Calico domain-based egress (inline domains, GlobalNetworkSet, nets only), guardrails on/off, and hostile domains."""

from __future__ import annotations

import pytest
import yaml

from jobs.policy import render
from jobs.policy.model import Options, Peer, PortRange, Recommendation, Rule, WorkloadPolicy
from jobs.policy.run import policy_objects
from jobs.policy.validate import PolicyValidationError, validate_all, validate_object

T = 1_717_200_000


def _rec() -> Recommendation:
    """Two workloads reach api.openai.com (one set shared), one reaches another name, one address has no name."""
    def egress(cidr: str, *domains: str) -> Rule:
        return Rule("egress", Peer("cidr", cidr=cidr), (PortRange("TCP", 443),), 3, 300, T, T + 5, domains=domains)

    a = WorkloadPolicy("genai/agent", "genai", "agent", {"app": "agent"}, "agent",
                       egress=[egress("104.18.6.192/32", "api.openai.com"), egress("34.1.2.3/32", "hub.example.org", "models.example.org"),
                               egress("52.9.9.9/32")])
    b = WorkloadPolicy("genai/rag", "genai", "rag", {"app": "rag"}, "inference", egress=[egress("104.18.6.192/32", "api.openai.com")])
    return Recommendation(T, T + 3600, [a, b])


def _egress_destinations(obj: dict) -> list[dict]:
    return [{k: v for k, v in r["destination"].items() if k != "ports"} for r in obj["spec"]["egress"]]


def test_inline_mode_puts_domains_in_the_rule() -> None:
    rec, options = _rec(), Options()
    objects = policy_objects(rec, options)
    assert objects["calico-globalnetworksets.yaml"] == []
    assert _egress_destinations(objects["calico-networkpolicies.yaml"][1]) == [
        {"domains": ["api.openai.com"]}, {"domains": ["hub.example.org", "models.example.org"]}, {"nets": ["52.9.9.9/32"]}]
    validate_all([o for objs in objects.values() for o in objs])


def test_networkset_mode_writes_shared_global_network_sets_selected_by_the_rules() -> None:
    rec, options = _rec(), Options(domain_mode="networkset", tier="ai")
    objects = policy_objects(rec, options)
    sets = objects["calico-globalnetworksets.yaml"]
    assert [s["spec"]["allowedEgressDomains"] for s in sets] == [["api.openai.com"], ["hub.example.org", "models.example.org"]]
    ids = [s["metadata"]["labels"][render.DOMAIN_SET_LABEL] for s in sets]
    assert [s["metadata"]["name"] for s in sets] == [f"ai-domains-{i}" for i in ids] and len(set(ids)) == 2
    assert all(s["kind"] == "GlobalNetworkSet" and "namespace" not in s["metadata"] for s in sets)
    for obj in objects["calico-networkpolicies.yaml"][1:] + objects["calico-staged.yaml"]:
        for dest in _egress_destinations(obj):
            assert "domains" not in dest
            if "selector" in dest and "flowctl.io/domain-set" in dest["selector"]:
                # a namespaced policy reaches a GlobalNetworkSet only through namespaceSelector global()
                assert dest["namespaceSelector"] == "global()" and dest["selector"].split("'")[1] in ids
    agent, rag = objects["calico-networkpolicies.yaml"][1:]
    assert _egress_destinations(agent)[0] == _egress_destinations(rag)[0] == {
        "selector": f"flowctl.io/domain-set == '{ids[0]}'", "namespaceSelector": "global()"}
    assert _egress_destinations(agent)[2] == {"nets": ["52.9.9.9/32"]}  # no name: the address
    validate_all([o for objs in objects.values() for o in objs])
    # the same domains give the same set, run after run (stable names for kubectl apply)
    assert [s["metadata"]["name"] for s in policy_objects(_rec(), options)["calico-globalnetworksets.yaml"]] == [s["metadata"]["name"] for s in sets]
    text = render.dump_yaml(sets)
    assert list(yaml.safe_load_all(text)) == sets


def test_nets_mode_keeps_addresses_only() -> None:
    objects = policy_objects(_rec(), Options(domain_mode="nets"))
    assert objects["calico-globalnetworksets.yaml"] == []
    assert _egress_destinations(objects["calico-networkpolicies.yaml"][1]) == [
        {"nets": ["104.18.6.192/32"]}, {"nets": ["34.1.2.3/32"]}, {"nets": ["52.9.9.9/32"]}]


def test_guardrails_can_be_turned_off() -> None:
    rec = _rec()
    assert [g["kind"] for g in render.guardrails(rec, Options(approved_domains=("api.openai.com",)))] == [
        "AdminNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy"]
    assert render.guardrails(rec, Options(guardrails=False, approved_domains=("api.openai.com",))) == []


@pytest.mark.parametrize("domain", [
    "evil.com\nkind: Secret", "api.openai.com\n", "a.com: {x: 1}", "!!python/object:os.system", "*", "www.*.com", "UPPER.example.com",
    "bad_label.example.com", "-lead.example.com", "x" * 64 + ".com", "a b.com", "", "localhost",
])
def test_hostile_domains_are_rejected_by_validation(domain: str) -> None:
    good = render.calico_domain_sets(_rec(), Options(domain_mode="networkset"))[0]
    bad_set = {**good, "spec": {"allowedEgressDomains": [domain]}}
    with pytest.raises(PolicyValidationError):
        validate_object(bad_set)
    policy = render.calico_policy(_rec().policies[0], Options(), staged=False)
    policy["spec"]["egress"][0]["destination"]["domains"] = [domain]
    with pytest.raises(PolicyValidationError):
        validate_object(policy)


def test_network_set_validation_follows_the_published_structure() -> None:
    good = render.calico_domain_sets(_rec(), Options(domain_mode="networkset"))[0]
    validate_object(good)
    for broken in ({**good, "spec": {}}, {**good, "spec": {"allowedEgressDomains": []}},
                   {**good, "spec": {"allowedEgressDomains": ["a.example.com"], "domains": ["b.example.com"]}},
                   {**good, "metadata": {**good["metadata"], "namespace": "genai"}},
                   {**good, "spec": {"nets": ["10.0.0.1/8"]}}):
        with pytest.raises(PolicyValidationError):
            validate_object(broken)
    # a wildcard in front is Calico's documented form and is accepted
    validate_object({**good, "spec": {"allowedEgressDomains": ["*.openai.com"]}})


@pytest.mark.parametrize("kwargs, message", [
    ({"domain_mode": "dns"}, "domain_mode"),
    ({"tier": "Bad Tier"}, "tier"),
    ({"tier": "a.b"}, "must not contain"),
    ({"merge_prefix": 4}, "merge_prefix"),
    ({"approved_domains": ("api.openai.com\n- kind: Secret",)}, "approved domain"),
    ({"approved_domains": ("www.*.com",)}, "approved domain"),
])
def test_options_reject_bad_values_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Options(**kwargs)
