"""Per-workload allow rules built from edge evidence: the recommendation, independent of any output format."""

from __future__ import annotations

import ipaddress
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from jobs.policy.learn import Evidence
from jobs.policy.names import InvalidName, check_domain, check_namespace, check_object_name, is_domain, stable_labels

PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "6": "TCP", "17": "UDP", "132": "SCTP"}
# Selector keys tried first, smallest and most conventional first.
PREFERRED_KEYS = ("app.kubernetes.io/name", "app", "k8s-app", "name", "app.kubernetes.io/instance",
                  "app.kubernetes.io/component", "component")
KUBE_DNS = ("kube-system", (("k8s-app", "kube-dns"),))
DNS_PORTS = (("UDP", 53), ("TCP", 53))
POLICY_PREFIX = "flowctl-"
# How Calico egress rules name outside destinations that have a DNS name: inline `destination.domains`,
# a GlobalNetworkSet with `allowedEgressDomains` selected by the rule, or addresses only (`nets`).
DOMAIN_MODES = ("inline", "networkset", "nets")


@dataclass(frozen=True)
class Options:
    """How far evidence may be generalised, and which objects are written."""

    merge_cidrs: bool = True  # merge outside addresses into covering prefixes where the evidence supports it
    merge_min_addresses: int = 4  # addresses in one merge block before they merge to their covering prefix
    merge_prefix: int = 24  # the merge block, and the widest prefix a merge may produce (IPv6: the same host bits, /120)
    min_port_range: int = 8  # adjacent ports seen before a rule uses port..endPort
    open_ingress_sources: int = 16  # distinct outside source addresses before ingress opens to any address
    tier: str = "flowctl"
    domain_mode: str = "inline"  # one of DOMAIN_MODES
    guardrails: bool = True  # write the AdminNetworkPolicy guardrails
    stable_runs: int = 3  # unchanged runs before a recommendation is 'stable'
    approved_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.merge_min_addresses < 2:
            raise ValueError("merge_min_addresses must be at least 2")
        if not 8 <= self.merge_prefix <= 32:
            raise ValueError("merge_prefix must be between 8 and 32")
        if self.min_port_range < 2:
            raise ValueError("min_port_range must be at least 2")
        if self.open_ingress_sources < 1:
            raise ValueError("open_ingress_sources must be at least 1")
        if self.stable_runs < 2:
            raise ValueError("stable_runs must be at least 2")
        if self.domain_mode not in DOMAIN_MODES:
            raise ValueError(f"domain_mode must be one of {', '.join(DOMAIN_MODES)}, got {self.domain_mode!r}")
        check_object_name(self.tier, "tier", 63)
        if "." in self.tier:
            raise ValueError(f"tier {self.tier!r} must not contain '.' (Calico policy names are <tier>.<name>)")
        for d in self.approved_domains:
            check_domain(d, "approved domain")

    @classmethod
    def from_settings(cls, settings: Any, **flags: Any) -> Options:
        """Options from the recommend_* settings; flags that are not None override them."""
        approved = flags.pop("approved_domains", None) or settings.recommend_approved_domains
        if isinstance(approved, str):
            approved = [d.strip() for d in approved.split(",")]
        values = {
            "merge_cidrs": settings.recommend_merge_cidrs, "merge_min_addresses": settings.recommend_merge_min_addresses,
            "merge_prefix": settings.recommend_merge_prefix, "min_port_range": settings.recommend_min_port_range,
            "open_ingress_sources": settings.recommend_open_ingress_sources, "tier": settings.recommend_tier,
            "domain_mode": settings.recommend_domain_mode, "guardrails": settings.recommend_guardrails,
            "stable_runs": settings.recommend_stable_runs,
        }
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**values, approved_domains=tuple(d for d in approved if d))


@dataclass(frozen=True)
class Peer:
    """The other end of a rule: pods of a workload, an address block, or every pod (kube-dns)."""

    kind: str  # "pods", "cidr", "dns" (kube-dns), "all-pods"
    namespace: str | None = None
    selector: tuple[tuple[str, str], ...] = ()
    workload: str | None = None
    cidr: str | None = None
    except_cidrs: tuple[str, ...] = ()

    def key(self) -> str:
        if self.kind == "pods":
            return f"pods:{self.namespace}:" + ",".join(f"{k}={v}" for k, v in self.selector)
        if self.kind == "cidr":
            return f"cidr:{self.cidr}" + (f" except {','.join(self.except_cidrs)}" if self.except_cidrs else "")
        return self.kind

    def describe(self) -> str:
        if self.kind == "pods":
            return self.workload or self.key()
        if self.kind == "cidr":
            return self.cidr or ""
        return {"dns": "kube-dns (kube-system)", "all-pods": "every pod in the cluster"}[self.kind]


@dataclass(frozen=True)
class PortRange:
    protocol: str
    port: int
    end_port: int | None = None

    def text(self) -> str:
        return f"{self.protocol}/{self.port}" + (f"-{self.end_port}" if self.end_port else "")


@dataclass
class Rule:
    direction: str  # "ingress" or "egress"
    peer: Peer
    ports: tuple[PortRange, ...]
    flows: int = 0
    bytes: int = 0
    first_seen: int | None = None
    last_seen: int | None = None
    domains: tuple[str, ...] = ()
    builtin: bool = False  # added by design (DNS), not learned

    @property
    def key(self) -> str:
        return f"{self.direction}|{self.peer.key()}|{' '.join(p.text() for p in self.ports)}"


@dataclass
class WorkloadPolicy:
    workload: str  # "namespace/name"
    namespace: str
    name: str
    selector: dict[str, str]
    genai: str
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def policy_name(self) -> str:
        return POLICY_PREFIX + self.name

    @property
    def rules(self) -> list[Rule]:
        return self.ingress + self.egress


@dataclass
class Recommendation:
    since: int
    until: int
    policies: list[WorkloadPolicy]
    rejected: list[dict] = field(default_factory=list)  # {"workload", "reason"}
    excluded: list[dict] = field(default_factory=list)  # edges of flows that belong to alerts
    denied_observed: list[dict] = field(default_factory=list)  # edges the current policy already denied
    unsupported: list[dict] = field(default_factory=list)  # edges NetworkPolicy cannot express

    def by_workload(self) -> dict[str, WorkloadPolicy]:
        return {p.workload: p for p in self.policies}


def choose_selector(own: list[dict[str, str]], others: list[dict[str, str]]) -> tuple[dict[str, str], str | None]:
    """The smallest set of labels common to every pod of a workload that selects no pod of another workload.

    Returns the selector and a note when no unique selector exists (the common labels are used then).
    """
    if not own:
        return {}, "no pods seen"
    common = dict(set.intersection(*(set(d.items()) for d in own)))
    if not common:
        return {}, "its pods share no stable label"
    keys = [k for k in PREFERRED_KEYS if k in common] + sorted(k for k in common if k not in PREFERRED_KEYS)

    def unique(sel: dict[str, str]) -> bool:
        return not any(all(o.get(k) == v for k, v in sel.items()) for o in others)

    for size in (1, 2, 3):
        for combo in itertools.combinations(keys, size):
            sel = {k: common[k] for k in combo}
            if unique(sel):
                return sel, None
    return common, "its stable labels also select pods of another workload in the namespace"


def covering_cidrs(addresses: set[str], min_addresses: int, max_prefix: int = 24) -> dict[str, set[str]]:
    """CIDR → addresses it stands for: one host prefix per address, except where at least ``min_addresses``
    addresses share a ``/max_prefix`` block (IPv6: a block of the same host bits, /120 for /24); those merge
    into the smallest prefix covering them, never wider than the block."""
    host_bits = 32 - max_prefix
    groups: dict[tuple[int, int], list[ipaddress.IPv4Address | ipaddress.IPv6Address]] = defaultdict(list)
    for text in addresses:
        ip = ipaddress.ip_address(text)
        groups[(ip.version, int(ip) >> host_bits)].append(ip)
    out: dict[str, set[str]] = {}
    for (version, _), ips in groups.items():
        bits = 32 if version == 4 else 128
        network = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
        if len(ips) >= min_addresses and host_bits:
            lo, hi = int(min(ips)), int(max(ips))
            prefix = bits - (lo ^ hi).bit_length()
            out[str(network((lo >> (bits - prefix) << (bits - prefix), prefix)))] = {str(i) for i in ips}
        else:
            for ip in ips:
                out[f"{ip}/{bits}"] = {str(ip)}
    return out


def port_ranges(ports: set[tuple[str, int]], min_run: int) -> tuple[PortRange, ...]:
    """Single ports, except runs of at least ``min_run`` adjacent ports of one protocol, which become port..endPort."""
    out: list[PortRange] = []
    by_proto: dict[str, list[int]] = defaultdict(list)
    for proto, port in ports:
        by_proto[proto].append(port)
    for proto in sorted(by_proto):
        nums = sorted(set(by_proto[proto]))
        run = [nums[0]]
        for n in nums[1:] + [None]:
            if n is not None and n == run[-1] + 1:
                run.append(n)
                continue
            if len(run) >= min_run:
                out.append(PortRange(proto, run[0], run[-1]))
            else:
                out.extend(PortRange(proto, p) for p in run)
            if n is not None:
                run = [n]
    return tuple(out)


@dataclass
class _Acc:
    ports: set = field(default_factory=set)
    flows: int = 0
    bytes: int = 0
    first: int | None = None
    last: int | None = None
    domains: set = field(default_factory=set)

    def add(self, proto: str, port: int, flows: int, nbytes: int, first: int, last: int, domain: str | None = None) -> None:
        self.ports.add((proto, port))
        self.flows += flows
        self.bytes += nbytes
        self.first = first if self.first is None else min(self.first, first)
        self.last = last if self.last is None else max(self.last, last)
        if domain:
            self.domains.add(domain)


def _traffic_domain(name: str | None) -> str | None:
    """An observed DNS name usable in a domain rule, or None: lower-cased, no root dot, never a wildcard."""
    if not name:
        return None
    name = name.lower()
    name = name[:-1] if name.endswith(".") else name
    return name if is_domain(name) else None


def _edge_summary(row: dict, flows: int, nbytes: int, reason: str | None = None) -> dict:
    dest = row["dest_workload"] if row["dest_type"] == "wep" else (row["dest_domain"] or row["dest_ip"] or row["dest_workload"])
    source = row["source_workload"] if row["source_type"] == "wep" else (row["source_ip"] or row["source_workload"])
    out = {"source": source, "destination": dest, "dest_ip": row["dest_ip"], "dest_port": row["dest_port"], "proto": row["proto"],
           "flows": flows, "bytes": nbytes, "first_seen": row["first_seen"], "last_seen": row["last_seen"]}
    if row.get("alert_id"):
        out["alert_id"] = row["alert_id"]
    if reason:
        out["reason"] = reason
    return out


def build(evidence: Evidence, since: int, until: int, options: Options) -> Recommendation:
    """Rules for every workload seen in the evidence."""
    pod_labels: dict[str, list[dict[str, str]]] = defaultdict(list)
    namespace_of: dict[str, str] = {}
    for w, ns, labels in zip(evidence.labels["workload"].to_pylist(), evidence.labels["namespace"].to_pylist(),
                             evidence.labels["labels"].to_pylist(), strict=True):
        stable = stable_labels(dict(labels) if labels else {})
        if stable not in pod_labels[w]:
            pod_labels[w].append(stable)
        namespace_of[w] = ns
    rec = Recommendation(since, until, [])
    by_ns: dict[str, list[str]] = defaultdict(list)
    for w in sorted(pod_labels):
        by_ns[namespace_of[w]].append(w)
    policies: dict[str, WorkloadPolicy] = {}
    for w in sorted(pod_labels):
        ns = namespace_of[w]
        name = w.split("/", 1)[1] if "/" in w else w
        try:
            check_namespace(ns)
            check_object_name(POLICY_PREFIX + name, "workload name", 253 - len(options.tier) - 1)
        except InvalidName as exc:
            rec.rejected.append({"workload": w, "reason": str(exc)})
            continue
        others = [d for o in by_ns[ns] if o != w for d in pod_labels[o]]
        selector, problem = choose_selector(pod_labels[w], others)
        if not selector:
            rec.rejected.append({"workload": w, "reason": f"cannot select its pods: {problem}"})
            continue
        policy = WorkloadPolicy(w, ns, name, selector, evidence.genai.get(w, "none"))
        if problem:
            policy.notes.append(f"selector {selector} is not unique: {problem}")
        policies[w] = policy

    def is_kube_dns(w: str) -> bool:
        p = policies.get(w)
        return p is not None and p.namespace == KUBE_DNS[0] and all(p.selector.get(k) == v for k, v in KUBE_DNS[1])

    def pods_peer(w: str) -> Peer | None:
        p = policies.get(w)
        return None if p is None else Peer("pods", p.namespace, tuple(sorted(p.selector.items())), w)

    acc: dict[tuple[str, str, Peer], _Acc] = defaultdict(_Acc)
    external: dict[tuple[str, str], dict[str, _Acc]] = defaultdict(lambda: defaultdict(_Acc))
    unknown_sources: set[str] = set()
    dns_evidence: dict[str, _Acc] = defaultdict(_Acc)
    for row in evidence.edges.to_pylist():
        flows = int(row["counted_flows"] or row["dst_flows"])
        nbytes = int(row["counted_bytes"] or row["dst_bytes"])
        if row["alert_id"] is not None:
            rec.excluded.append(_edge_summary(row, flows, nbytes))
            continue
        if row["denied_records"]:
            rec.denied_observed.append(_edge_summary(row, flows, nbytes))
            continue
        proto = PROTOCOLS.get(str(row["proto"]))
        if proto is None or row["dest_port"] is None:
            rec.unsupported.append(_edge_summary(row, flows, nbytes, "protocol without ports cannot be expressed in a NetworkPolicy"))
            continue
        port, first, last = int(row["dest_port"]), row["first_seen"], row["last_seen"]
        src_w, dst_w = row["source_workload"], row["dest_workload"]
        src_pod, dst_pod = row["source_type"] == "wep", row["dest_type"] == "wep"
        problem = None
        if src_pod and src_w in policies:
            if dst_pod and is_kube_dns(dst_w) and (proto, port) in DNS_PORTS:
                dns_evidence[src_w].add(proto, port, flows, nbytes, first, last)
            elif dst_pod:
                peer = pods_peer(dst_w)
                if peer is None:
                    problem = f"destination workload {dst_w} has no usable selector"
                else:
                    acc[(src_w, "egress", peer)].add(proto, port, flows, nbytes, first, last)
            elif row["dest_ip"]:
                domain = _traffic_domain(row["dest_domain"])
                external[(src_w, "egress")][row["dest_ip"]].add(proto, port, flows, nbytes, first, last, domain)
            else:
                problem = "destination address unknown (aggregated away in the flow log)"
        if dst_pod and dst_w in policies:
            if is_kube_dns(dst_w) and (proto, port) in DNS_PORTS:
                acc[(dst_w, "ingress", Peer("all-pods"))].add(proto, port, flows, nbytes, first, last)
            elif src_pod:
                peer = pods_peer(src_w)
                if peer is None:
                    problem = f"source workload {src_w} has no usable selector"
                else:
                    acc[(dst_w, "ingress", peer)].add(proto, port, flows, nbytes, first, last)
            elif row["source_ip"]:
                external[(dst_w, "ingress")][row["source_ip"]].add(proto, port, flows, nbytes, first, last)
            else:
                unknown_sources.add(dst_w)
                external[(dst_w, "ingress")]["0.0.0.0"].add(proto, port, flows, nbytes, first, last)
        if problem:
            rec.unsupported.append(_edge_summary(row, flows, nbytes, problem))

    for (w, direction), per_ip in external.items():
        if direction == "ingress" and (w in unknown_sources or len(per_ip) >= options.open_ingress_sources):
            merged = {"0.0.0.0/0": {ip for ip in per_ip if ":" not in ip}, "::/0": {ip for ip in per_ip if ":" in ip}}
            merged = {c: ips for c, ips in merged.items() if ips}
            policies[w].notes.append(f"ingress from {len(per_ip)} outside addresses: open to any address on the observed ports")
        else:
            merged = covering_cidrs(set(per_ip), options.merge_min_addresses if options.merge_cidrs else len(per_ip) + 1,
                                    options.merge_prefix)
        for cidr, ips in merged.items():
            total = _Acc()
            for ip in ips:
                a = per_ip[ip]
                total.ports |= a.ports
                total.flows += a.flows
                total.bytes += a.bytes
                total.first = a.first if total.first is None else min(total.first, a.first)
                total.last = a.last if total.last is None else max(total.last, a.last)
                total.domains |= a.domains
            acc[(w, direction, Peer("cidr", cidr=cidr))] = total

    for (w, direction, peer), a in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2].key())):
        rule = Rule(direction, peer, port_ranges(a.ports, options.min_port_range), a.flows, a.bytes, a.first, a.last, tuple(sorted(a.domains)))
        getattr(policies[w], direction).append(rule)
    for w, policy in policies.items():
        d = dns_evidence.get(w, _Acc())
        policy.egress.insert(0, Rule("egress", Peer("dns"), tuple(PortRange(p, n) for p, n in DNS_PORTS), d.flows, d.bytes, d.first, d.last,
                                     builtin=True))
    rec.policies = [policies[w] for w in sorted(policies)]
    return rec
