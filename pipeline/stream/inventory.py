"""Workload inventory: who is behind a pod IP or an aggregated name.

Built from a ``kubectl get pods -A -o json`` snapshot (what ``flowctl demo``
writes for its synthetic cluster, and what an operator can export in one
command). Pods are folded into their owning workload — a Deployment through
its ReplicaSet, a CronJob through its Job — so rollouts, which rename pods and
ReplicaSets, keep one identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915", "gpu.intel.com/xe", "habana.ai/gaudi")
# Labels that differ between pods of one workload or between its revisions.
VOLATILE_LABELS = frozenset({
    "pod-template-hash", "controller-revision-hash", "pod-template-generation",
    "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index", "controller-uid",
    "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name",
})
_CRONJOB_JOB = re.compile(r"-\d{8,}$")


class InventoryError(ValueError):
    pass


@dataclass
class WorkloadInfo:
    namespace: str
    name: str
    kind: str
    labels: dict[str, str] = field(default_factory=dict)
    images: set[str] = field(default_factory=set)
    gpus: int = 0
    nodes: set[str] = field(default_factory=set)
    pods: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    ip: str
    node: str
    workload: str  # namespace/name of the owning workload


def _owner(pod: dict) -> tuple[str, str]:
    """(kind, name) of the workload that owns a pod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    refs = [r for r in meta.get("ownerReferences") or [] if r.get("controller", True)]
    if not refs:
        return "Pod", str(meta.get("name", ""))
    kind, name = str(refs[0].get("kind", "")), str(refs[0].get("name", ""))
    if kind == "ReplicaSet":
        template_hash = labels.get("pod-template-hash")
        if template_hash and name.endswith("-" + template_hash):
            return "Deployment", name[: -len(template_hash) - 1]
        return "ReplicaSet", name
    if kind == "Job":
        stripped = _CRONJOB_JOB.sub("", name)
        return ("CronJob", stripped) if stripped != name else ("Job", name)
    return kind, name


def _gpus(pod: dict) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        for section in ("limits", "requests"):
            values = resources.get(section) or {}
            found = sum(int(str(values.get(r, 0)) or 0) for r in GPU_RESOURCES if str(values.get(r, 0)).isdigit())
            if found:
                total += found
                break
    return total


class WorkloadInventory:
    def __init__(self) -> None:
        self.workloads: dict[str, WorkloadInfo] = {}
        self.pods_by_ip: dict[str, PodInfo] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> WorkloadInventory:
        path = Path(path)
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise InventoryError(f"inventory file {path} does not exist") from None
        except orjson.JSONDecodeError as exc:
            raise InventoryError(f"inventory file {path} is not JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
            raise InventoryError(f"inventory file {path}: expected `kubectl get pods -A -o json` output (a List with items)")
        inv = cls()
        inv.add_pods(doc["items"])
        return inv

    def add_pods(self, pods: Iterable[dict]) -> None:
        for pod in pods:
            if not isinstance(pod, dict):
                continue
            meta = pod.get("metadata") or {}
            namespace = str(meta.get("namespace") or "default")
            kind, name = _owner(pod)
            key = f"{namespace}/{name}"
            info = self.workloads.get(key)
            if info is None:
                labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items() if k not in VOLATILE_LABELS}
                info = self.workloads[key] = WorkloadInfo(namespace, name, kind, labels)
            info.pods += 1
            info.gpus = max(info.gpus, _gpus(pod))
            spec, status = pod.get("spec") or {}, pod.get("status") or {}
            info.images.update(str(c.get("image", "")) for c in spec.get("containers") or [] if c.get("image"))
            node = str(spec.get("nodeName") or "")
            if node:
                info.nodes.add(node)
            # Host-network pods share the node's IP: the IP does not identify them.
            if spec.get("hostNetwork"):
                continue
            ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or \
                ([status["podIP"]] if status.get("podIP") else [])
            for ip in ips:
                self.pods_by_ip[str(ip)] = PodInfo(namespace, str(meta.get("name", "")), str(ip), node, key)

    def remove_pod(self, pod: dict) -> None:
        """Forget a deleted pod's addresses (its workload stays known: a new pod usually replaces it)."""
        meta = pod.get("metadata") or {}
        name, namespace = str(meta.get("name", "")), str(meta.get("namespace") or "default")
        for ip in [ip for ip, info in self.pods_by_ip.items() if info.name == name and info.namespace == namespace]:
            del self.pods_by_ip[ip]

    def workload(self, key: str) -> WorkloadInfo | None:
        return self.workloads.get(key)

    def pod_for_ip(self, ip: str | None) -> PodInfo | None:
        return self.pods_by_ip.get(ip) if ip else None

    def __len__(self) -> int:
        return len(self.workloads)
