"""Kubernetes, Calico and AdminNetworkPolicy objects from a recommendation, and their YAML.

Objects are plain dicts; YAML comes only from ``yaml.safe_dump``, which quotes any
string that could be read back as something else, so a hostile value stays inert data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import yaml

from jobs.policy.model import KUBE_DNS, Options, Peer, Recommendation, Rule, WorkloadPolicy

NS_LABEL = "kubernetes.io/metadata.name"
MANAGED = {"app.kubernetes.io/managed-by": "flowctl"}
METADATA_NETWORKS = ("169.254.169.254/32", "fd00:ec2::254/128")
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
CALICO_API = "projectcalico.org/v3"
ANP_API = "policy.networking.k8s.io/v1alpha1"
DOMAIN_SET_LABEL = "flowctl.io/domain-set"


# ---- Kubernetes NetworkPolicy -------------------------------------------------------------

def _k8s_peer(peer: Peer, namespace: str) -> dict:
    if peer.kind == "pods":
        selector = {"podSelector": {"matchLabels": dict(peer.selector)}}
        if peer.namespace != namespace:  # both selectors in ONE peer: those pods in that namespace
            return {"namespaceSelector": {"matchLabels": {NS_LABEL: peer.namespace}}, **selector}
        return selector
    if peer.kind == "dns":
        return {"namespaceSelector": {"matchLabels": {NS_LABEL: KUBE_DNS[0]}}, "podSelector": {"matchLabels": dict(KUBE_DNS[1])}}
    if peer.kind == "all-pods":
        return {"namespaceSelector": {}}
    block: dict = {"cidr": peer.cidr}
    if peer.except_cidrs:
        block["except"] = list(peer.except_cidrs)
    return {"ipBlock": block}


def _k8s_ports(rule: Rule) -> list[dict]:
    out = []
    for p in rule.ports:
        port = {"protocol": p.protocol, "port": p.port}
        if p.end_port is not None:
            port["endPort"] = p.end_port
        out.append(port)
    return out


def network_policy(policy: WorkloadPolicy, rec: Recommendation) -> dict:
    """One NetworkPolicy for a workload; both policy types are always explicit."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy.policy_name,
            "namespace": policy.namespace,
            "labels": dict(MANAGED),
            "annotations": {"flowctl.io/workload": policy.workload, "flowctl.io/learned-from": f"{rec.since}-{rec.until}"},
        },
        "spec": {
            "podSelector": {"matchLabels": dict(policy.selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [_k8s_peer(r.peer, policy.namespace)], "ports": _k8s_ports(r)} for r in policy.ingress],
            "egress": [{"to": [_k8s_peer(r.peer, policy.namespace)], "ports": _k8s_ports(r)} for r in policy.egress],
        },
    }


# ---- Calico --------------------------------------------------------------------------------

def calico_selector(labels: Iterable[tuple[str, str]]) -> str:
    """Calico selector expression; keys and values were validated as Kubernetes labels, so they hold no quotes."""
    return " && ".join(f"{k} == '{v}'" for k, v in labels) or "all()"


def domain_set_id(domains: Iterable[str]) -> str:
    """A short stable id for a set of domains: the GlobalNetworkSet that holds them is named and labelled by it."""
    return hashlib.sha256("\n".join(sorted(domains)).encode()).hexdigest()[:12]


def _calico_entity(peer: Peer, namespace: str, rule: Rule, domain_mode: str) -> dict:
    if peer.kind == "pods":
        entity = {"selector": calico_selector(peer.selector)}
        if peer.namespace != namespace:
            entity["namespaceSelector"] = f"projectcalico.org/name == '{peer.namespace}'"
        return entity
    if peer.kind == "dns":
        return {"selector": calico_selector(KUBE_DNS[1]), "namespaceSelector": f"projectcalico.org/name == '{KUBE_DNS[0]}'"}
    if peer.kind == "all-pods":
        return {"namespaceSelector": "all()"}
    if rule.domains and rule.direction == "egress":
        if domain_mode == "inline":
            return {"domains": list(rule.domains)}
        if domain_mode == "networkset":  # global() lets a namespaced policy's rule select a GlobalNetworkSet
            return {"selector": f"{DOMAIN_SET_LABEL} == '{domain_set_id(rule.domains)}'", "namespaceSelector": "global()"}
    entity = {"nets": [peer.cidr]}
    if peer.except_cidrs:
        entity["notNets"] = list(peer.except_cidrs)
    return entity


def _calico_rules(policy: WorkloadPolicy, rules: list[Rule], domain_mode: str) -> list[dict]:
    out = []
    for rule in rules:
        for proto in sorted({p.protocol for p in rule.ports}):
            ports = [p.port if p.end_port is None else f"{p.port}:{p.end_port}" for p in rule.ports if p.protocol == proto]
            peer = _calico_entity(rule.peer, policy.namespace, rule, domain_mode)
            if rule.direction == "ingress":
                out.append({"action": "Allow", "protocol": proto, "source": peer, "destination": {"ports": ports}})
            else:
                out.append({"action": "Allow", "protocol": proto, "destination": {**peer, "ports": ports}})
    return out


def calico_tier(options: Options) -> dict:
    return {"apiVersion": CALICO_API, "kind": "Tier", "metadata": {"name": options.tier, "labels": dict(MANAGED)}, "spec": {"order": 500}}


def calico_policy(policy: WorkloadPolicy, options: Options, staged: bool) -> dict:
    """Calico NetworkPolicy (or StagedNetworkPolicy, to preview) in the options' tier.

    Egress to outside addresses with known DNS names follows ``options.domain_mode``: ``inline``
    puts them in ``destination.domains``, ``networkset`` selects the GlobalNetworkSet of
    :func:`calico_domain_sets` (both need Calico's DNS policy support, Calico Enterprise / Calico
    Cloud), ``nets`` keeps the addresses.
    """
    spec: dict = {
        "tier": options.tier,
        "order": 100,
        "selector": calico_selector(sorted(policy.selector.items())),
        "types": ["Ingress", "Egress"],
        "ingress": _calico_rules(policy, policy.ingress, options.domain_mode),
        "egress": _calico_rules(policy, policy.egress, options.domain_mode),
    }
    if staged:
        spec = {"stagedAction": "Set", **spec}
    return {
        "apiVersion": CALICO_API,
        "kind": "StagedNetworkPolicy" if staged else "NetworkPolicy",
        "metadata": {"name": f"{options.tier}.{policy.policy_name}", "namespace": policy.namespace, "labels": dict(MANAGED)},
        "spec": spec,
    }


def calico_domain_sets(rec: Recommendation, options: Options) -> list[dict]:
    """One GlobalNetworkSet per distinct set of egress domains (``domain_mode`` ``networkset``; none otherwise).

    Rules that reach the same domains share one set, named ``<tier>-domains-<id>`` and labelled
    ``flowctl.io/domain-set: <id>``; the domains go to ``allowedEgressDomains``.
    """
    if options.domain_mode != "networkset":
        return []
    sets = {tuple(r.domains) for p in rec.policies for r in p.egress if r.domains}
    out = []
    for domains in sorted(sets):
        set_id = domain_set_id(domains)
        out.append({
            "apiVersion": CALICO_API, "kind": "GlobalNetworkSet",
            "metadata": {"name": f"{options.tier}-domains-{set_id}", "labels": {**MANAGED, DOMAIN_SET_LABEL: set_id}},
            "spec": {"allowedEgressDomains": list(domains)},
        })
    return out


# ---- AdminNetworkPolicy guardrails ---------------------------------------------------------

def genai_namespaces(rec: Recommendation) -> list[str]:
    return sorted({p.namespace for p in rec.policies if p.genai != "none"})


def guardrails(rec: Recommendation, options: Options, priority: int = 10) -> list[dict]:
    """Cluster guardrails for the namespaces that run GenAI workloads.

    Always: an AdminNetworkPolicy denying the cloud metadata endpoint (it overrides any
    NetworkPolicy). With approved domains: an AdminNetworkPolicy allowing them (TCP 443) and a
    BaselineAdminNetworkPolicy denying other internet egress where no NetworkPolicy decides.
    """
    namespaces = genai_namespaces(rec)
    if not namespaces or not options.guardrails:
        return []
    subject = {"namespaces": {"matchExpressions": [{"key": NS_LABEL, "operator": "In", "values": namespaces}]}}
    out = [{
        "apiVersion": ANP_API, "kind": "AdminNetworkPolicy",
        "metadata": {"name": "flowctl-genai-deny-cloud-metadata", "labels": dict(MANAGED)},
        "spec": {"priority": priority, "subject": subject,
                 "egress": [{"name": "deny-cloud-metadata", "action": "Deny", "to": [{"networks": list(METADATA_NETWORKS)}]}]},
    }]
    if options.approved_domains:
        out.append({
            "apiVersion": ANP_API, "kind": "AdminNetworkPolicy",
            "metadata": {"name": "flowctl-genai-approved-apis", "labels": dict(MANAGED)},
            "spec": {"priority": priority + 1, "subject": subject,
                     "egress": [{"name": "allow-approved-apis", "action": "Allow", "to": [{"domainNames": list(options.approved_domains)}],
                                 "ports": [{"portNumber": {"protocol": "TCP", "port": 443}}]}]},
        })
        out.append({
            "apiVersion": ANP_API, "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default", "labels": dict(MANAGED)},
            "spec": {"subject": subject, "egress": [
                {"name": "allow-cluster-pods", "action": "Allow", "to": [{"namespaces": {}}]},
                {"name": "allow-private-networks", "action": "Allow", "to": [{"networks": list(PRIVATE_NETWORKS)}]},
                {"name": "deny-other-internet", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
            ]},
        })
    return out


# libyaml's emitter with the same safe representer as yaml.safe_dump, when PyYAML was built with it (much faster).
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(objects: list[dict]) -> str:
    """A multi-document YAML stream; every string goes through the safe representer, which quotes ambiguous values."""
    return yaml.dump_all(objects, Dumper=_SAFE_DUMPER, sort_keys=False, default_flow_style=False, allow_unicode=False, width=4096)
