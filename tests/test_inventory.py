"""Workload inventory from `kubectl get pods -A -o json`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.stream.inventory import InventoryError, WorkloadInventory


def pod(name: str, ns: str = "genai", owner: tuple[str, str] | None = None, labels: dict | None = None,
        ip: str | None = "10.244.1.5", image: str = "nginx:1", gpus: int = 0, host_network: bool = False) -> dict:
    meta: dict = {"name": name, "namespace": ns, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {"metadata": meta, "spec": {"nodeName": "node-1", "hostNetwork": host_network,
                                       "containers": [{"image": image, "resources": resources}]},
            "status": {"podIP": ip} if ip else {}}


def inventory(*pods: dict) -> WorkloadInventory:
    inv = WorkloadInventory()
    inv.add_pods(pods)
    return inv


def test_deployment_pods_of_two_rollouts_fold_into_one_workload() -> None:
    inv = inventory(
        pod("vllm-7d9f8c6b5-x2k4p", owner=("ReplicaSet", "vllm-7d9f8c6b5"), labels={"pod-template-hash": "7d9f8c6b5", "app": "vllm"},
            image="vllm/vllm-openai:v0.6", gpus=2),
        pod("vllm-5c8d9f7b6-q8w2z", owner=("ReplicaSet", "vllm-5c8d9f7b6"), labels={"pod-template-hash": "5c8d9f7b6", "app": "vllm"},
            ip="10.244.2.9", image="vllm/vllm-openai:v0.7", gpus=2),
    )
    w = inv.workload("genai/vllm")
    assert w is not None and w.kind == "Deployment" and w.pods == 2 and w.gpus == 2
    assert w.images == {"vllm/vllm-openai:v0.6", "vllm/vllm-openai:v0.7"}
    assert "pod-template-hash" not in w.labels and w.labels["app"] == "vllm"
    assert inv.pod_for_ip("10.244.2.9").workload == "genai/vllm"


@pytest.mark.parametrize("owner, expected", [
    (("StatefulSet", "postgres"), ("StatefulSet", "shop/postgres")),
    (("DaemonSet", "node-exporter"), ("DaemonSet", "shop/node-exporter")),
    (("Job", "finetune"), ("Job", "shop/finetune")),
    (("Job", "backup-28312345"), ("CronJob", "shop/backup")),
    (None, ("Pod", "shop/debug-shell")),
])
def test_owner_kinds(owner, expected) -> None:
    name = "debug-shell" if owner is None else f"{owner[1]}-0"
    inv = inventory(pod(name, ns="shop", owner=owner))
    kind, key = expected
    assert inv.workload(key) is not None and inv.workload(key).kind == kind


def test_host_network_pods_are_not_mapped_by_ip() -> None:
    inv = inventory(pod("kube-proxy-abc12", ns="kube-system", owner=("DaemonSet", "kube-proxy"), ip="10.0.0.11", host_network=True))
    assert inv.pod_for_ip("10.0.0.11") is None
    assert inv.workload("kube-system/kube-proxy") is not None


def test_synthetic_inventory_file_round_trip(tmp_path: Path) -> None:
    cluster = SyntheticCluster(seed=7, cluster="t")
    path = tmp_path / "pods.json"
    path.write_bytes(orjson.dumps(cluster.inventory()))
    inv = WorkloadInventory.from_file(path)
    for w in cluster.workloads:
        info = inv.workload(f"{w.namespace}/{w.name}")
        assert info is not None, w
        assert info.gpus == w.gpus
        assert w.image in info.images


@pytest.mark.parametrize("content, message", [(b"not json", "not JSON"), (b'{"kind": "Pod"}', "kubectl get pods")])
def test_bad_inventory_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "inv.json"
    path.write_bytes(content)
    with pytest.raises(InventoryError, match=message):
        WorkloadInventory.from_file(path)
    with pytest.raises(InventoryError, match="does not exist"):
        WorkloadInventory.from_file(tmp_path / "missing.json")
