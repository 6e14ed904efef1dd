"""Impact replay: what the proposed NetworkPolicies would allow and deny on historical flows.

NetworkPolicy semantics: a pod is isolated for a direction iff some policy selecting it has
that policy type; an isolated pod allows what the union of the selecting policies' rules
allows; a connection between two pods needs egress allowed at the source AND ingress allowed
at the destination. A peer matches by namespace and labels (pods) or by address
(``ipBlock`` with ``except``, for endpoints outside the pod network); ports match by
protocol and ``port..endPort``.

Flows are aggregated in DuckDB to one row per (source endpoint, destination endpoint, port,
protocol); the policy decision is computed once per distinct endpoint pair and port, so the
cost follows the number of distinct conversations, not the number of flows.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

import duckdb

from jobs.policy.learn import Alert, flows_relation
from jobs.policy.model import KUBE_DNS, Peer, PortRange, Recommendation, WorkloadPolicy
from pipeline.query.views import query_table

_REPLAY_SQL = """
WITH f AS ({flows})
SELECT source_type = 'wep' AS src_pod, source_namespace, source_workload, source_labels,
       CASE WHEN source_type = 'wep' THEN NULL ELSE source_ip END AS source_ip,
       dest_type = 'wep' AS dst_pod, dest_namespace, dest_workload, dest_labels,
       CASE WHEN dest_type = 'wep' THEN NULL ELSE dest_ip END AS dest_ip,
       CASE WHEN dest_type = 'wep' THEN NULL ELSE dest_domains[1] END AS dest_domain,
       lower(proto) AS proto, dest_port, alert_id,
       coalesce(sum(num_flows) FILTER (WHERE counted), 0) AS flows,
       coalesce(sum(bytes_in + bytes_out) FILTER (WHERE counted), 0) AS bytes,
       count(*) FILTER (WHERE counted) AS records,
       bool_or(action = 'deny') AS observed_denied,
       min(start_time) AS first_seen, max(end_time) AS last_seen
FROM f GROUP BY ALL HAVING count(*) FILTER (WHERE counted) > 0
"""
_PROTO = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "6": "TCP", "17": "UDP", "132": "SCTP"}


@dataclass
class Counts:
    flows_allowed: int = 0
    flows_denied: int = 0
    bytes_allowed: int = 0
    bytes_denied: int = 0

    def add(self, allowed: bool, flows: int, nbytes: int) -> None:
        if allowed:
            self.flows_allowed += flows
            self.bytes_allowed += nbytes
        else:
            self.flows_denied += flows
            self.bytes_denied += nbytes


@dataclass
class ReplayResult:
    since: int
    until: int
    total: Counts = field(default_factory=Counts)
    per_workload: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    per_rule: dict[tuple[str, str], Counts] = field(default_factory=lambda: defaultdict(Counts))  # (workload, rule key)
    conversations: list[dict] = field(default_factory=list)  # one per aggregated row, with the decision

    @property
    def denied(self) -> list[dict]:
        return [c for c in self.conversations if not c["allowed"]]


def _in_port(ports: tuple[PortRange, ...], proto: str | None, port: int | None) -> bool:
    if proto is None or port is None:
        return False
    return any(p.protocol == proto and p.port <= port <= (p.end_port or p.port) for p in ports)


class PolicySet:
    """The proposed policies, indexed for evaluation."""

    def __init__(self, policies: list[WorkloadPolicy]) -> None:
        self.policies = policies
        self.by_namespace: dict[str, list[WorkloadPolicy]] = defaultdict(list)
        for p in policies:
            self.by_namespace[p.namespace].append(p)
        self._networks: dict[str, tuple] = {}
        self._selecting: dict[tuple, list[WorkloadPolicy]] = {}

    def selecting(self, namespace: str, labels: tuple[tuple[str, str], ...]) -> list[WorkloadPolicy]:
        key = (namespace, labels)
        hit = self._selecting.get(key)
        if hit is None:
            lab = dict(labels)
            hit = [p for p in self.by_namespace.get(namespace, []) if all(lab.get(k) == v for k, v in p.selector.items())]
            self._selecting[key] = hit
        return hit

    def _net(self, peer: Peer) -> tuple:
        hit = self._networks.get(peer.cidr or "")
        if hit is None:
            hit = (ipaddress.ip_network(peer.cidr), [ipaddress.ip_network(e) for e in peer.except_cidrs])
            self._networks[peer.cidr or ""] = hit
        return hit

    def peer_matches(self, peer: Peer, pod: bool, namespace: str, labels: dict[str, str], ip) -> bool:
        if peer.kind == "all-pods":
            return pod
        if peer.kind == "dns":
            return pod and namespace == KUBE_DNS[0] and all(labels.get(k) == v for k, v in KUBE_DNS[1])
        if peer.kind == "pods":
            return pod and namespace == peer.namespace and all(labels.get(k) == v for k, v in peer.selector)
        if pod:  # ipBlock stands for endpoints outside the pod network
            return False
        if ip is None:  # address aggregated away: only an any-address block covers it
            return peer.cidr in ("0.0.0.0/0", "::/0") and not peer.except_cidrs
        net, excepts = self._net(peer)
        return ip.version == net.version and ip in net and not any(ip.version == e.version and ip in e for e in excepts)


def _labels(m) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(dict(m).items())) if m else ()


def _address(text: str | None):
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def evaluate(rows: list[dict], rec: Recommendation, since: int, until: int) -> ReplayResult:
    """Decide every aggregated conversation in ``rows`` (the shape of the replay query)."""
    ps = PolicySet(rec.policies)
    result = ReplayResult(since, until)
    cache: dict[tuple, tuple] = {}
    for row in rows:
        src_labels, dst_labels = _labels(row["source_labels"]), _labels(row["dest_labels"])
        proto, port = _PROTO.get(str(row["proto"])), row["dest_port"]
        key = (row["src_pod"], row["source_namespace"], src_labels, row["source_ip"], row["dst_pod"], row["dest_namespace"], dst_labels,
               row["dest_ip"], proto, port)
        decision = cache.get(key)
        if decision is None:
            decision = _decide(ps, row, src_labels, dst_labels, proto, port)
            cache[key] = decision
        egress_ok, egress_rule, src_policy, ingress_ok, ingress_rule, dst_policy = decision
        allowed = egress_ok and ingress_ok
        flows, nbytes = int(row["flows"]), int(row["bytes"])
        result.total.add(allowed, flows, nbytes)
        if row["src_pod"]:
            result.per_workload[row["source_workload"]].add(egress_ok and ingress_ok, flows, nbytes)
        if row["dst_pod"] and row["dest_workload"] != row["source_workload"]:
            result.per_workload[row["dest_workload"]].add(allowed, flows, nbytes)
        if egress_rule:
            result.per_rule[(src_policy, egress_rule)].add(allowed, flows, nbytes)
        if ingress_rule:
            result.per_rule[(dst_policy, ingress_rule)].add(allowed, flows, nbytes)
        denied_at = [] if allowed else [s for s, ok in (("egress", egress_ok), ("ingress", ingress_ok)) if not ok]
        result.conversations.append({
            "source": row["source_workload"] if row["src_pod"] else (row["source_ip"] or row["source_workload"]),
            "destination": row["dest_workload"] if row["dst_pod"] else (row["dest_domain"] or row["dest_ip"] or row["dest_workload"]),
            "source_workload": row["source_workload"], "dest_workload": row["dest_workload"], "dest_ip": row["dest_ip"],
            "proto": row["proto"], "dest_port": port, "flows": flows, "bytes": nbytes, "first_seen": row["first_seen"], "last_seen": row["last_seen"],
            "allowed": allowed, "denied_at": denied_at, "allowed_by": [r for r in (egress_rule, ingress_rule) if r],
            "alert_id": row["alert_id"], "observed_denied": bool(row["observed_denied"]),
        })
    return result


def _decide(ps: PolicySet, row: dict, src_labels, dst_labels, proto, port) -> tuple:
    src_ip, dst_ip = _address(row["source_ip"]), _address(row["dest_ip"])
    egress_ok, egress_rule, src_policy = True, None, None
    if row["src_pod"]:
        selecting = ps.selecting(row["source_namespace"], src_labels)
        if selecting:  # every proposed policy has both policy types: selected means isolated
            egress_ok = False
            dst = dict(dst_labels)
            for p in selecting:
                for rule in p.egress:
                    if _in_port(rule.ports, proto, port) and ps.peer_matches(rule.peer, row["dst_pod"], row["dest_namespace"], dst, dst_ip):
                        egress_ok, egress_rule, src_policy = True, rule.key, p.workload
                        break
                if egress_ok:
                    break
    ingress_ok, ingress_rule, dst_policy = True, None, None
    if row["dst_pod"]:
        selecting = ps.selecting(row["dest_namespace"], dst_labels)
        if selecting:
            ingress_ok = False
            src = dict(src_labels)
            for p in selecting:
                for rule in p.ingress:
                    if _in_port(rule.ports, proto, port) and ps.peer_matches(rule.peer, row["src_pod"], row["source_namespace"], src, src_ip):
                        ingress_ok, ingress_rule, dst_policy = True, rule.key, p.workload
                        break
                if ingress_ok:
                    break
    return egress_ok, egress_rule, src_policy, ingress_ok, ingress_rule, dst_policy


def replay(con: duckdb.DuckDBPyConnection, rec: Recommendation, since: int, until: int, alerts: list[Alert] | None = None) -> ReplayResult:
    """Evaluate ``rec`` against the flows with ``since <= end_time < until``."""
    table = query_table(con, _REPLAY_SQL.format(flows=flows_relation(con, alerts or [])), [since, until])
    return evaluate(table.to_pylist(), rec, since, until)
