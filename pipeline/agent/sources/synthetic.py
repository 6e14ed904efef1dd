"""Seeded synthetic Kubernetes cluster: pod inventory and Calico-style flow logs.

:class:`SyntheticCluster` models a small cluster running a web shop, GenAI
inference and agent services, notebooks and distributed training. It gives

* :meth:`SyntheticCluster.inventory` -- the pods, shaped like the output of
  ``kubectl get pods -A -o json``;
* :meth:`SyntheticCluster.generate` -- aggregated flow logs as Arrow tables
  with the ``flowlog.v1`` schema, in event-time order;
* :meth:`SyntheticCluster.ground_truth_anomalies` -- the incidents that
  ``generate(..., anomalies=True)`` injects.

Traffic model
-------------
Every workload has a fixed set of edges (source pod, destination pod or
outside address, port, protocol), each with a relative weight and a byte
profile. Records arrive as a Poisson process whose intensity follows a daily
curve (peak 15:00 UTC, trough 03:00 UTC, +/-60 % around ``rate``). Each record
picks an edge by weight; byte counts are lognormal per edge type and scaled by
``num_flows``; ``packets = max(num_flows, ceil(bytes / 1200))``.

* A flow between two pods is reported by both ends: a ``reporter="src"``
  record (``host`` = source node) immediately followed by a
  ``reporter="dst"`` record (``host`` = destination node) with the same times,
  names and ``num_flows``, and mirrored counters (``dst.bytes_in ==
  src.bytes_out``, ``dst.bytes_out == src.bytes_in``, same for packets).
  Exception: a flow denied by an egress policy at the source only has the
  ``src`` record (the packets never left the node).
* Flows with one end outside the cluster (``*_type == "net"``, name_aggr
  ``"pub"`` or ``"pvt"``, namespace ``"-"``, name null) are reported by the
  pod end only.
* ``end_time`` is the event time; ``start_time`` lies in the same aligned
  60 s aggregation interval, so ``1 <= end_time - start_time <= 60``.

Randomness is keyed by (seed, cluster, absolute time chunk), so a given
second of event time always holds the same records whatever ``start``,
``end`` or ``batch_rows`` are; ``anomalies=True`` only adds rows.

Throughput
----------
Fully vectorised: the static columns of every record come from one
``RecordBatch.take`` over a per-edge template batch, the counters are numpy
arrays. Measured pinned to one core (Python 3.11, pyarrow 26, numpy 2.4)::

    taskset -c 0 python -m pipeline.agent.sources.synthetic --seconds 3600 --rate 2000

    3782186 rows in 76 tables, 1.71 s, 2,213,243 rows/s

i.e. about 2 million rows/s (one hour of event time from midnight UTC,
50,000-row tables; ``--anomalies`` costs nothing measurable).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.schema import FLOWLOG, arrow_schema

SCHEMA: pa.Schema = arrow_schema(FLOWLOG)

AGGREGATION_INTERVAL = 60
"""Seconds per aligned aggregation interval (``start_time`` never crosses one)."""

POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
NODE_SUBNET = "10.0.0.0/24"
KUBE_APISERVER_IP = "10.0.0.10"
VPC_RESOLVER_IP = "10.0.0.2"

MAX_NUM_FLOWS = 50
GENAI_CLASSES = ("inference", "training", "notebook", "agent/app", "none")

# Columns filled per record; every other column comes from the edge template.
_DYNAMIC = (
    "start_time",
    "end_time",
    "bytes_in",
    "bytes_out",
    "packets_in",
    "packets_out",
    "num_flows",
    "num_flows_started",
    "num_flows_completed",
)
_STATIC = tuple(name for name in SCHEMA.names if name not in _DYNAMIC)

_HASH_ALPHABET = np.array(list("bcdfghjklmnpqrstvwxz2456789"))
_EPOCH_INVENTORY = int(_dt.datetime(2024, 1, 8, 8, 0, tzinfo=_dt.UTC).timestamp())


# --------------------------------------------------------------------------
# Workload catalogue
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One Deployment, StatefulSet, DaemonSet or Job of the synthetic cluster.

    ``labels`` are the pod-template labels (without generated ones such as
    ``pod-template-hash``); ``image`` is the main container's image;
    ``gpus`` is the number of ``nvidia.com/gpu`` each pod requests; ``genai``
    is the ground-truth class of the workload (one of :data:`GENAI_CLASSES`);
    ``ports`` are all container ports of its pods. For DaemonSets
    ``replicas`` is the number of nodes they run on.
    """

    namespace: str
    name: str
    kind: str
    replicas: int
    labels: dict[str, str]
    image: str
    gpus: int
    genai: str
    ports: tuple[int, ...]

    def __hash__(self) -> int:  # labels is a dict; (namespace, name) identifies a workload
        return hash((self.namespace, self.name, self.kind))


@dataclass(frozen=True)
class _Container:
    name: str
    image: str
    ports: tuple[tuple[str, int, str], ...]  # (port name, containerPort, protocol)
    cpu: str = "250m"
    memory: str = "256Mi"
    gpus: int = 0


@dataclass(frozen=True)
class _Service:
    name: str
    ports: tuple[tuple[str, int, int, str], ...]  # (port name, port, targetPort, protocol)
    cluster_ip: str | None = None  # fixed address, or allocated from SERVICE_CIDR


@dataclass(frozen=True)
class _Spec:
    workload: Workload
    containers: tuple[_Container, ...]
    pool: str  # "any" or "gpu" (DaemonSets: every node of the pool)
    services: tuple[_Service, ...]
    metrics_port: int | None
    service_account: str


def _spec(
    namespace: str,
    name: str,
    kind: str,
    replicas: int,
    labels: dict[str, str],
    containers: list[_Container],
    genai: str = "none",
    pool: str = "any",
    services: tuple[_Service, ...] = (),
    metrics_port: int | None = None,
    service_account: str = "default",
) -> _Spec:
    ports = tuple(sorted({p for c in containers for _, p, _ in c.ports}))
    gpus = sum(c.gpus for c in containers)
    workload = Workload(
        namespace=namespace,
        name=name,
        kind=kind,
        replicas=replicas,
        labels=dict(labels),
        image=containers[0].image,
        gpus=gpus,
        genai=genai,
        ports=ports,
    )
    return _Spec(workload, tuple(containers), pool, services, metrics_port, service_account)


def _shop_app(name: str, component: str, version: str, replicas: int) -> _Spec:
    return _spec(
        "shop",
        name,
        "Deployment",
        replicas,
        {
            "app": name,
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "shop",
            "version": f"v{version}",
        },
        [
            _Container(
                name,
                f"ghcr.io/acme-shop/{name}:{version}",
                (("http", 8080, "TCP"), ("metrics", 9090, "TCP")),
                "200m",
                "256Mi",
            )
        ],
        services=(_Service(name, (("http", 80, 8080, "TCP"),)),),
        metrics_port=9090,
        service_account=name,
    )


def _catalogue() -> list[_Spec]:
    tcp, udp = "TCP", "UDP"
    platform = [
        _spec(
            "kube-system",
            "coredns",
            "Deployment",
            2,
            {"k8s-app": "kube-dns"},
            [
                _Container(
                    "coredns",
                    "registry.k8s.io/coredns/coredns:v1.11.1",
                    (("dns", 53, udp), ("dns-tcp", 53, tcp), ("metrics", 9153, tcp)),
                    "100m",
                    "70Mi",
                )
            ],
            services=(
                _Service(
                    "kube-dns",
                    (("dns", 53, 53, udp), ("dns-tcp", 53, 53, tcp), ("metrics", 9153, 9153, tcp)),
                    "10.96.0.10",
                ),
            ),
            metrics_port=9153,
            service_account="coredns",
        ),
        _spec(
            "kube-system",
            "metrics-server",
            "Deployment",
            1,
            {"k8s-app": "metrics-server"},
            [
                _Container(
                    "metrics-server",
                    "registry.k8s.io/metrics-server/metrics-server:v0.7.1",
                    (("https", 10250, tcp),),
                    "100m",
                    "200Mi",
                )
            ],
            services=(_Service("metrics-server", (("https", 443, 10250, tcp),)),),
            service_account="metrics-server",
        ),
        _spec(
            "ingress-nginx",
            "ingress-nginx-controller",
            "Deployment",
            2,
            {
                "app.kubernetes.io/name": "ingress-nginx",
                "app.kubernetes.io/instance": "ingress-nginx",
                "app.kubernetes.io/component": "controller",
                "app.kubernetes.io/part-of": "ingress-nginx",
                "app.kubernetes.io/version": "1.10.1",
            },
            [
                _Container(
                    "controller",
                    "registry.k8s.io/ingress-nginx/controller:v1.10.1",
                    (("http", 80, tcp), ("https", 443, tcp), ("metrics", 10254, tcp)),
                    "100m",
                    "90Mi",
                )
            ],
            services=(_Service("ingress-nginx-controller", (("http", 80, 80, tcp), ("https", 443, 443, tcp))),),
            metrics_port=10254,
            service_account="ingress-nginx",
        ),
        _spec(
            "monitoring",
            "prometheus",
            "StatefulSet",
            1,
            {
                "app.kubernetes.io/name": "prometheus",
                "app.kubernetes.io/instance": "k8s",
                "app.kubernetes.io/component": "prometheus",
                "app.kubernetes.io/part-of": "kube-prometheus",
                "app.kubernetes.io/version": "2.53.0",
            },
            [_Container("prometheus", "quay.io/prometheus/prometheus:v2.53.0", (("web", 9090, tcp),), "500m", "2Gi")],
            services=(_Service("prometheus-k8s", (("web", 9090, 9090, tcp),)),),
            metrics_port=9090,
            service_account="prometheus-k8s",
        ),
        _spec(
            "monitoring",
            "node-exporter",
            "DaemonSet",
            0,
            {
                "app.kubernetes.io/name": "node-exporter",
                "app.kubernetes.io/component": "exporter",
                "app.kubernetes.io/part-of": "kube-prometheus",
                "app.kubernetes.io/version": "1.8.1",
            },
            [
                _Container(
                    "node-exporter", "quay.io/prometheus/node-exporter:v1.8.1", (("https", 9100, tcp),), "100m", "180Mi"
                )
            ],
            metrics_port=9100,
            service_account="node-exporter",
        ),
        _spec(
            "gpu-operator",
            "nvidia-dcgm-exporter",
            "DaemonSet",
            0,
            {
                "app": "nvidia-dcgm-exporter",
                "app.kubernetes.io/managed-by": "gpu-operator",
                "app.kubernetes.io/part-of": "nvidia-gpu",
            },
            [
                _Container(
                    "nvidia-dcgm-exporter",
                    "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.6-3.4.2-ubuntu22.04",
                    (("metrics", 9400, tcp),),
                    "100m",
                    "128Mi",
                )
            ],
            pool="gpu",
            metrics_port=9400,
            service_account="nvidia-dcgm-exporter",
        ),
    ]
    shop = [
        _shop_app("frontend", "web", "1.8.2", 3),
        _shop_app("cart", "api", "2.3.0", 2),
        _shop_app("checkout", "api", "1.4.1", 2),
        _shop_app("payments", "api", "3.0.4", 2),
        _spec(
            "shop",
            "redis",
            "Deployment",
            1,
            {
                "app": "redis",
                "app.kubernetes.io/name": "redis",
                "app.kubernetes.io/component": "cache",
                "app.kubernetes.io/part-of": "shop",
                "version": "7.2",
            },
            [
                _Container("redis", "redis:7.2-alpine", (("redis", 6379, tcp),), "200m", "512Mi"),
                _Container("exporter", "oliver006/redis_exporter:v1.58.0", (("metrics", 9121, tcp),), "50m", "64Mi"),
            ],
            services=(_Service("redis", (("redis", 6379, 6379, tcp),)),),
            metrics_port=9121,
        ),
        _spec(
            "shop",
            "postgres",
            "StatefulSet",
            2,
            {
                "app": "postgres",
                "app.kubernetes.io/name": "postgresql",
                "app.kubernetes.io/component": "primary",
                "app.kubernetes.io/part-of": "shop",
                "version": "16.3",
            },
            [
                _Container("postgres", "postgres:16.3", (("postgres", 5432, tcp),), "1", "2Gi"),
                _Container(
                    "exporter",
                    "quay.io/prometheuscommunity/postgres-exporter:v0.15.0",
                    (("metrics", 9187, tcp),),
                    "50m",
                    "64Mi",
                ),
            ],
            services=(_Service("postgres", (("postgres", 5432, 5432, tcp),)),),
            metrics_port=9187,
            service_account="postgres",
        ),
    ]
    genai = [
        _spec(
            "genai-prod",
            "vllm",
            "Deployment",
            2,
            {
                "app": "vllm",
                "app.kubernetes.io/name": "vllm",
                "app.kubernetes.io/component": "inference-server",
                "app.kubernetes.io/part-of": "llm-platform",
                "model": "meta-llama-3.1-8b-instruct",
                "version": "v0.5.3",
            },
            [_Container("vllm", "vllm/vllm-openai:v0.5.3", (("http", 8000, tcp),), "4", "32Gi", gpus=1)],
            genai="inference",
            pool="gpu",
            services=(_Service("vllm", (("http", 8000, 8000, tcp),)),),
            metrics_port=8000,
        ),
        _spec(
            "genai-prod",
            "tgi",
            "Deployment",
            1,
            {
                "app": "tgi",
                "app.kubernetes.io/name": "text-generation-inference",
                "app.kubernetes.io/component": "inference-server",
                "app.kubernetes.io/part-of": "llm-platform",
                "model": "mistral-7b-instruct-v0.3",
                "version": "2.2.0",
            },
            [
                _Container(
                    "tgi",
                    "ghcr.io/huggingface/text-generation-inference:2.2.0",
                    (("http", 8080, tcp),),
                    "4",
                    "32Gi",
                    gpus=1,
                )
            ],
            genai="inference",
            pool="gpu",
            services=(_Service("tgi", (("http", 80, 8080, tcp),)),),
            metrics_port=8080,
        ),
        _spec(
            "genai-prod",
            "triton",
            "Deployment",
            1,
            {
                "app": "triton",
                "app.kubernetes.io/name": "triton-inference-server",
                "app.kubernetes.io/component": "inference-server",
                "app.kubernetes.io/part-of": "llm-platform",
                "model": "bge-large-en-v1.5",
                "version": "24.06",
            },
            [
                _Container(
                    "triton",
                    "nvcr.io/nvidia/tritonserver:24.06-py3",
                    (("http", 8000, tcp), ("grpc", 8001, tcp), ("metrics", 8002, tcp)),
                    "2",
                    "16Gi",
                    gpus=1,
                )
            ],
            genai="inference",
            pool="gpu",
            services=(
                _Service(
                    "triton", (("http", 8000, 8000, tcp), ("grpc", 8001, 8001, tcp), ("metrics", 8002, 8002, tcp))
                ),
            ),
            metrics_port=8002,
        ),
        _spec(
            "genai-prod",
            "llama3-8b-predictor",
            "Deployment",
            1,
            {
                "app": "isvc.llama3-8b-predictor",
                "component": "predictor",
                "serving.kserve.io/inferenceservice": "llama3-8b",
                "app.kubernetes.io/name": "llama3-8b-predictor",
                "app.kubernetes.io/part-of": "llm-platform",
            },
            [
                _Container(
                    "kserve-container", "kserve/huggingfaceserver:v0.13.0", (("h2c", 8080, tcp),), "4", "24Gi", gpus=1
                )
            ],
            genai="inference",
            pool="gpu",
            services=(_Service("llama3-8b-predictor", (("http", 80, 8080, tcp),)),),
            metrics_port=8080,
        ),
        _spec(
            "genai-prod",
            "rag-api",
            "Deployment",
            3,
            {
                "app": "rag-api",
                "app.kubernetes.io/name": "rag-api",
                "app.kubernetes.io/component": "llm-gateway",
                "app.kubernetes.io/part-of": "llm-platform",
                "version": "v0.9.1",
            },
            [_Container("rag-api", "ghcr.io/acme-ai/rag-api:0.9.1", (("http", 8080, tcp),), "500m", "1Gi")],
            genai="agent/app",
            services=(_Service("rag-api", (("http", 80, 8080, tcp),)),),
            metrics_port=8080,
            service_account="rag-api",
        ),
        _spec(
            "genai-prod",
            "qdrant",
            "StatefulSet",
            1,
            {
                "app": "qdrant",
                "app.kubernetes.io/name": "qdrant",
                "app.kubernetes.io/instance": "qdrant",
                "app.kubernetes.io/component": "vector-db",
                "app.kubernetes.io/part-of": "llm-platform",
                "version": "v1.10.1",
            },
            [_Container("qdrant", "qdrant/qdrant:v1.10.1", (("http", 6333, tcp), ("grpc", 6334, tcp)), "1", "8Gi")],
            services=(_Service("qdrant", (("http", 6333, 6333, tcp), ("grpc", 6334, 6334, tcp))),),
            metrics_port=6333,
        ),
        _spec(
            "genai-dev",
            "ollama",
            "Deployment",
            1,
            {
                "app": "ollama",
                "app.kubernetes.io/name": "ollama",
                "app.kubernetes.io/component": "inference-server",
                "version": "0.3.6",
            },
            [_Container("ollama", "ollama/ollama:0.3.6", (("http", 11434, tcp),), "2", "16Gi", gpus=1)],
            genai="inference",
            pool="gpu",
            services=(_Service("ollama", (("http", 11434, 11434, tcp),)),),
        ),
        _spec(
            "genai-dev",
            "jupyter",
            "StatefulSet",
            1,
            {
                "app": "jupyter",
                "app.kubernetes.io/name": "jupyter",
                "app.kubernetes.io/component": "notebook",
                "notebook-name": "jupyter",
                "owner": "alice",
            },
            [
                _Container(
                    "notebook",
                    "quay.io/jupyter/pytorch-notebook:cuda12-2024-07-29",
                    (("notebook-port", 8888, tcp),),
                    "2",
                    "16Gi",
                    gpus=1,
                )
            ],
            genai="notebook",
            pool="gpu",
            services=(_Service("jupyter", (("http-notebook", 80, 8888, tcp),)),),
            service_account="default-editor",
        ),
        _spec(
            "ml-train",
            "ray-head",
            "Deployment",
            1,
            {
                "ray.io/node-type": "head",
                "ray.io/cluster": "raycluster-llm",
                "ray.io/group": "headgroup",
                "app.kubernetes.io/name": "kuberay",
                "app.kubernetes.io/created-by": "kuberay-operator",
                "app.kubernetes.io/component": "ray-head",
            },
            [
                _Container(
                    "ray-head",
                    "rayproject/ray-ml:2.32.0-gpu",
                    (
                        ("gcs-server", 6379, tcp),
                        ("dashboard", 8265, tcp),
                        ("client", 10001, tcp),
                        ("metrics", 8080, tcp),
                    ),
                    "4",
                    "16Gi",
                )
            ],
            genai="training",
            services=(
                _Service(
                    "raycluster-llm-head-svc",
                    (("gcs-server", 6379, 6379, tcp), ("dashboard", 8265, 8265, tcp), ("client", 10001, 10001, tcp)),
                ),
            ),
            metrics_port=8080,
            service_account="raycluster-llm",
        ),
        _spec(
            "ml-train",
            "ray-worker",
            "Deployment",
            2,
            {
                "ray.io/node-type": "worker",
                "ray.io/cluster": "raycluster-llm",
                "ray.io/group": "gpu-workers",
                "app.kubernetes.io/name": "kuberay",
                "app.kubernetes.io/created-by": "kuberay-operator",
                "app.kubernetes.io/component": "ray-worker",
            },
            [
                _Container(
                    "ray-worker",
                    "rayproject/ray-ml:2.32.0-gpu",
                    (("object-manager", 8076, tcp), ("metrics", 8080, tcp)),
                    "8",
                    "64Gi",
                    gpus=1,
                )
            ],
            genai="training",
            pool="gpu",
            metrics_port=8080,
            service_account="raycluster-llm",
        ),
        _spec(
            "ml-train",
            "finetune-llama3",
            "Job",
            2,
            {
                "app": "finetune-llama3",
                "app.kubernetes.io/name": "finetune",
                "app.kubernetes.io/component": "trainer",
                "training.kubeflow.org/job-name": "finetune-llama3",
            },
            [_Container("pytorch", "nvcr.io/nvidia/pytorch:24.05-py3", (("c10d", 29500, tcp),), "16", "128Gi", gpus=2)],
            genai="training",
            pool="gpu",
            service_account="trainer",
        ),
    ]
    return platform + shop + genai


# Outside endpoints: name -> (name_aggr, addresses, dest_domains)
_EXTERNAL: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "api.openai.com": ("pub", ("162.159.140.245", "172.66.0.243"), True),
    "api.anthropic.com": ("pub", ("160.79.104.10",), True),
    "huggingface.co": ("pub", ("18.164.174.23", "18.164.174.55"), True),
    "cdn-lfs.huggingface.co": ("pub", ("18.239.50.16", "18.239.50.80", "18.239.50.103"), True),
    "registry.ollama.ai": ("pub", ("104.21.75.227", "172.67.182.229"), True),
    "pypi.org": ("pub", ("151.101.0.223", "151.101.64.223"), True),
    "files.pythonhosted.org": ("pub", ("151.101.1.63", "151.101.65.63"), True),
    "github.com": ("pub", ("140.82.112.3", "140.82.114.4"), True),
    "acme-ml-artifacts.s3.us-east-1.amazonaws.com": ("pub", ("52.216.184.13", "52.217.134.201", "3.5.29.112"), True),
    "api.stripe.com": ("pub", ("54.187.216.72", "54.241.31.99"), True),
    "kube-apiserver": ("pvt", (KUBE_APISERVER_IP,), False),
    "vpc-resolver": ("pvt", (VPC_RESOLVER_IP,), False),
}
_CLIENT_PREFIXES = ((73, 162), (24, 5), (86, 14), (81, 2), (92, 184), (101, 53), (49, 36), (189, 6))

# Byte profiles: (request median, request sigma, response median, response sigma,
#                 mean num_flows, P(flow started in interval), P(flow completed in interval))
_PROFILES: dict[str, tuple[float, float, float, float, float, float, float]] = {
    "dns": (75, 0.25, 160, 0.35, 6, 1.0, 1.0),
    "web_ingress": (1800, 1.0, 24_000, 1.4, 8, 0.9, 0.85),
    "redirect": (450, 0.3, 350, 0.3, 3, 1.0, 1.0),
    "web": (1500, 1.0, 28_000, 1.3, 6, 0.8, 0.8),
    "api": (900, 0.9, 3_500, 1.1, 5, 0.7, 0.7),
    "ext_api": (2_200, 0.6, 3_000, 0.8, 2, 0.9, 0.9),
    "redis": (160, 0.8, 420, 1.2, 12, 0.05, 0.05),
    "sql": (450, 1.0, 3_200, 1.5, 6, 0.1, 0.1),
    "replication": (1_500, 0.5, 1_500_000, 1.2, 1, 0.0, 0.0),
    "scrape": (350, 0.3, 28_000, 0.8, 1.5, 0.3, 0.3),
    "kubelet": (400, 0.3, 60_000, 0.7, 2, 0.3, 0.3),
    "k8s_api": (1_200, 0.8, 9_000, 1.6, 2, 0.1, 0.1),
    "inference": (4_000, 0.9, 16_000, 1.1, 2.5, 0.6, 0.6),
    "embedding": (2_500, 0.7, 9_000, 0.6, 3, 0.2, 0.2),
    "vector": (5_000, 0.6, 20_000, 0.9, 3, 0.2, 0.2),
    "llm_ext": (6_000, 1.0, 12_000, 1.1, 2, 0.9, 0.9),
    "hub_meta": (1_800, 0.4, 60_000, 1.0, 2, 1.0, 1.0),
    "model_download": (3_000, 0.3, 400_000_000, 0.7, 1, 1.0, 1.0),
    "pip": (1_200, 0.4, 150_000, 1.0, 3, 1.0, 1.0),
    "pip_download": (1_500, 0.4, 8_000_000, 1.1, 2, 1.0, 1.0),
    "git": (2_000, 0.5, 1_500_000, 1.5, 1, 1.0, 1.0),
    "ray_ctrl": (1_200, 0.7, 1_500, 0.9, 4, 0.05, 0.05),
    "ray_object": (4_000_000, 1.4, 4_000_000, 1.4, 2, 0.3, 0.3),
    "s3": (2_000_000, 1.5, 5_000_000, 1.5, 3, 1.0, 1.0),
    "nccl": (80_000_000, 0.8, 80_000_000, 0.8, 2, 0.0, 0.0),
    "syn": (60, 0.0, 0, 0.0, 2, 1.0, 1.0),
}


@dataclass(frozen=True)
class _Edge:
    src: str  # "ns/workload" or "net:<external>" (or "net:clients")
    dst: str  # "ns/workload", "net:<external>" or "net:kubelet"
    weight: float  # relative share of all flow records
    profile: str
    port: int | None = None  # destination port; taken from the service when svc is set
    proto: str = "tcp"
    svc: tuple[str, str] | None = None  # (service name, port name) of the destination workload
    deny: str | None = None  # None, "src" (egress deny) or "dst" (ingress deny)
    src_pods: slice | None = None
    dst_pods: slice | None = None
    per_src_pod: bool = False  # weight is per source pod


_KUBERNETES_SVC = ("default", "kubernetes", "https", 443)
_DENY_NOTEBOOKS = "0|default|default.deny-notebooks|deny|0"
_POLICY_NAMESPACES = frozenset({"shop", "genai-prod"})


def _edges(specs: list[_Spec]) -> list[_Edge]:
    E = _Edge
    edges = [
        # Internet -> ingress -> apps
        E(
            "net:clients",
            "ingress-nginx/ingress-nginx-controller",
            10,
            "web_ingress",
            svc=("ingress-nginx-controller", "https"),
        ),
        E(
            "net:clients",
            "ingress-nginx/ingress-nginx-controller",
            1,
            "redirect",
            svc=("ingress-nginx-controller", "http"),
        ),
        E("ingress-nginx/ingress-nginx-controller", "shop/frontend", 8, "web", svc=("frontend", "http")),
        E("ingress-nginx/ingress-nginx-controller", "genai-prod/rag-api", 3, "inference", svc=("rag-api", "http")),
        E("ingress-nginx/ingress-nginx-controller", "net:kube-apiserver", 0.2, "k8s_api", port=6443),
        # shop
        E("shop/frontend", "shop/cart", 5, "api", svc=("cart", "http")),
        E("shop/frontend", "shop/checkout", 2.5, "api", svc=("checkout", "http")),
        E("shop/checkout", "shop/cart", 1, "api", svc=("cart", "http")),
        E("shop/checkout", "shop/payments", 1.5, "api", svc=("payments", "http")),
        E("shop/payments", "net:api.stripe.com", 1, "ext_api", port=443),
        E("shop/cart", "shop/redis", 5, "redis", svc=("redis", "redis")),
        E("shop/frontend", "shop/redis", 2, "redis", svc=("redis", "redis")),
        E("shop/cart", "shop/postgres", 1.5, "sql", svc=("postgres", "postgres")),
        E("shop/checkout", "shop/postgres", 2, "sql", svc=("postgres", "postgres")),
        E("shop/payments", "shop/postgres", 1.5, "sql", svc=("postgres", "postgres")),
        E(
            "shop/postgres",
            "shop/postgres",
            0.4,
            "replication",
            port=5432,
            src_pods=slice(1, None),
            dst_pods=slice(0, 1),
        ),
        # GenAI serving
        E("genai-prod/rag-api", "genai-prod/vllm", 4, "inference", svc=("vllm", "http")),
        E("genai-prod/rag-api", "genai-prod/tgi", 1.5, "inference", svc=("tgi", "http")),
        E("genai-prod/rag-api", "genai-prod/triton", 2, "embedding", svc=("triton", "grpc")),
        E("genai-prod/rag-api", "genai-prod/llama3-8b-predictor", 1, "inference", svc=("llama3-8b-predictor", "http")),
        E("genai-prod/rag-api", "genai-prod/qdrant", 3, "vector", svc=("qdrant", "http")),
        E("genai-prod/rag-api", "net:api.openai.com", 1.5, "llm_ext", port=443),
        E("genai-prod/rag-api", "net:api.anthropic.com", 1, "llm_ext", port=443),
        E("genai-prod/vllm", "net:huggingface.co", 0.03, "hub_meta", port=443),
        E("genai-prod/vllm", "net:cdn-lfs.huggingface.co", 0.001, "model_download", port=443),
        E("genai-prod/tgi", "net:huggingface.co", 0.02, "hub_meta", port=443),
        E("genai-prod/tgi", "net:cdn-lfs.huggingface.co", 0.0005, "model_download", port=443),
        E("genai-prod/llama3-8b-predictor", "net:huggingface.co", 0.02, "hub_meta", port=443),
        E("genai-prod/llama3-8b-predictor", "net:cdn-lfs.huggingface.co", 0.0005, "model_download", port=443),
        E("genai-prod/triton", "net:acme-ml-artifacts.s3.us-east-1.amazonaws.com", 0.001, "model_download", port=443),
        E("genai-dev/ollama", "net:registry.ollama.ai", 0.02, "hub_meta", port=443),
        E("genai-dev/ollama", "net:huggingface.co", 0.01, "hub_meta", port=443),
        E("genai-dev/ollama", "net:cdn-lfs.huggingface.co", 0.0004, "model_download", port=443),
        # notebook
        E("genai-dev/jupyter", "genai-dev/ollama", 0.4, "inference", svc=("ollama", "http")),
        E("genai-dev/jupyter", "net:pypi.org", 0.15, "pip", port=443),
        E("genai-dev/jupyter", "net:files.pythonhosted.org", 0.2, "pip_download", port=443),
        E("genai-dev/jupyter", "net:github.com", 0.1, "git", port=443),
        E("genai-dev/jupyter", "net:huggingface.co", 0.05, "hub_meta", port=443),
        E("genai-dev/jupyter", "net:cdn-lfs.huggingface.co", 0.001, "model_download", port=443),
        E("genai-dev/jupyter", "ml-train/ray-head", 0.2, "ray_ctrl", svc=("raycluster-llm-head-svc", "client")),
        E("genai-dev/jupyter", "shop/postgres", 0.15, "syn", svc=("postgres", "postgres"), deny="src"),
        E("genai-dev/jupyter", "genai-prod/vllm", 0.1, "syn", svc=("vllm", "http"), deny="dst"),
        # training
        E("ml-train/ray-worker", "ml-train/ray-head", 2, "ray_ctrl", svc=("raycluster-llm-head-svc", "gcs-server")),
        E("ml-train/ray-worker", "ml-train/ray-head", 0.3, "ray_ctrl", svc=("raycluster-llm-head-svc", "dashboard")),
        E("ml-train/ray-worker", "ml-train/ray-head", 0.5, "ray_ctrl", svc=("raycluster-llm-head-svc", "client")),
        E("ml-train/ray-worker", "ml-train/ray-worker", 1.5, "ray_object", port=8076),
        E("ml-train/ray-head", "ml-train/ray-worker", 0.5, "ray_object", port=8076),
        E("ml-train/ray-head", "net:kube-apiserver", 0.1, "k8s_api", port=6443),
        E("ml-train/ray-head", "net:acme-ml-artifacts.s3.us-east-1.amazonaws.com", 0.2, "s3", port=443),
        E("ml-train/ray-worker", "net:acme-ml-artifacts.s3.us-east-1.amazonaws.com", 0.4, "s3", port=443),
        E("ml-train/finetune-llama3", "ml-train/finetune-llama3", 0.3, "nccl", port=29500),
        E("ml-train/finetune-llama3", "net:acme-ml-artifacts.s3.us-east-1.amazonaws.com", 0.3, "s3", port=443),
        E("ml-train/finetune-llama3", "net:cdn-lfs.huggingface.co", 0.0005, "model_download", port=443),
        # platform
        E("kube-system/coredns", "net:vpc-resolver", 2, "dns", port=53, proto="udp"),
        E("kube-system/metrics-server", "net:kubelet", 0.3, "kubelet", port=10250),
        E("kube-system/metrics-server", "net:kube-apiserver", 0.1, "k8s_api", port=6443),
        E("monitoring/prometheus", "net:kubelet", 0.3, "kubelet", port=10250),
        E("monitoring/prometheus", "net:kube-apiserver", 0.3, "k8s_api", port=6443),
    ]
    for spec in specs:
        key = f"{spec.workload.namespace}/{spec.workload.name}"
        if key != "kube-system/coredns":
            edges.append(
                E(key, "kube-system/coredns", 0.4, "dns", svc=("kube-dns", "dns"), proto="udp", per_src_pod=True)
            )
            edges.append(E(key, "kube-system/coredns", 0.02, "dns", svc=("kube-dns", "dns-tcp"), per_src_pod=True))
        if spec.metrics_port is not None:
            edges.append(E("monitoring/prometheus", key, 0.15, "scrape", port=spec.metrics_port, per_src_pod=False))
    return edges


# --------------------------------------------------------------------------
# Internal structures
# --------------------------------------------------------------------------


@dataclass
class _Pod:
    spec: _Spec
    name: str
    generate_name: str | None
    aggr: str
    index: int
    node: int
    ip: str
    uid: str
    labels: dict[str, str]
    owner: dict[str, Any]
    created: int


@dataclass(frozen=True)
class _Endpoint:
    type: str
    namespace: str
    aggr: str
    name: str | None
    ip: str | None
    labels: tuple[tuple[str, str], ...] | None
    node: str | None
    workload: str | None = None
    domains: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Flow:
    src: _Endpoint
    dst: _Endpoint
    port: int
    proto: str
    weight: float
    profile: str
    deny: str | None
    service: tuple[str, str, str, int] | None  # namespace, name, port name, port


class _Flows:
    """Flows as parallel arrays plus the Arrow batch of their record templates."""

    def __init__(self, flows: list[_Flow], cluster: str):
        columns: dict[str, list[Any]] = {name: [] for name in _STATIC}
        first: list[int] = []
        second: list[int] = []
        is_dst: list[bool] = []
        for flow in flows:
            rows = []
            if flow.src.type == "wep":
                rows.append(self._row(columns, flow, "src", cluster))
                is_dst.append(False)
            if flow.dst.type == "wep" and flow.deny != "src":
                rows.append(self._row(columns, flow, "dst", cluster))
                is_dst.append(True)
            if not rows:
                raise ValueError("a flow needs a workload endpoint on at least one side")
            first.append(rows[0])
            second.append(rows[1] if len(rows) > 1 else -1)
        arrays = [pa.array(columns[name], type=SCHEMA.field(name).type) for name in _STATIC]
        self.templates = pa.RecordBatch.from_arrays(arrays, names=list(_STATIC))
        self.first = np.asarray(first, dtype=np.int64)
        self.second = np.asarray(second, dtype=np.int64)
        self.is_dst = np.asarray(is_dst, dtype=bool)
        params = np.array([_PROFILES[f.profile] for f in flows], dtype=np.float64).reshape(-1, 7)
        self.mu_req = np.log(np.maximum(params[:, 0], 1.0))
        self.sig_req = params[:, 1]
        self.mu_resp = np.log(np.maximum(params[:, 2], 1.0))
        self.sig_resp = params[:, 3]
        self.p_nf = 1.0 / np.maximum(params[:, 4], 1.0)
        self.p_started = params[:, 5]
        self.p_completed = params[:, 6]
        self.syn_only = np.array([f.deny is not None for f in flows], dtype=bool)
        self.weight = np.array([f.weight for f in flows], dtype=np.float64)
        self.rows = 1 + (self.second >= 0)

    @staticmethod
    def _row(columns: dict[str, list[Any]], flow: _Flow, reporter: str, cluster: str) -> int:
        src, dst = flow.src, flow.dst
        reporter_ep = src if reporter == "src" else dst
        if reporter == "src" and flow.deny == "src":
            action, policies = "deny", [_DENY_NOTEBOOKS]
        else:
            action = "deny" if (reporter == "dst" and flow.deny == "dst") else "allow"
            policies = [_policy_hit(flow, reporter, action)]
        svc = flow.service
        values = {
            "source_ip": src.ip,
            "source_name": src.name,
            "source_name_aggr": src.aggr,
            "source_namespace": src.namespace,
            "source_type": src.type,
            "source_labels": list(src.labels) if src.labels is not None else None,
            "source_port": None,
            "dest_ip": dst.ip,
            "dest_name": dst.name,
            "dest_name_aggr": dst.aggr,
            "dest_namespace": dst.namespace,
            "dest_type": dst.type,
            "dest_labels": list(dst.labels) if dst.labels is not None else None,
            "dest_port": flow.port,
            "dest_service_namespace": svc[0] if svc else None,
            "dest_service_name": svc[1] if svc else None,
            "dest_service_port": svc[2] if svc else None,
            "dest_service_port_num": svc[3] if svc else None,
            "dest_domains": list(dst.domains) if dst.domains else None,
            "proto": flow.proto,
            "action": action,
            "reporter": reporter,
            "policies": policies,
            "pending_policies": None,
            "host": reporter_ep.node,
            "cluster": cluster,
        }
        for name in _STATIC:
            columns[name].append(values[name])
        return len(columns["cluster"]) - 1


def _policy_hit(flow: _Flow, reporter: str, action: str) -> str:
    """Calico policy hit 'index|tier|name|action|rule' for the reporting side."""
    ep = flow.src if reporter == "src" else flow.dst
    if reporter == "dst" and ep.namespace in _POLICY_NAMESPACES and ep.workload:
        name = f"{ep.namespace}/default.{ep.workload.split('/', 1)[1]}-ingress"
        if action == "deny":
            return f"0|default|{name}|deny|-1"
        rule = 1 if flow.src.workload == "monitoring/prometheus" else 0
        return f"0|default|{name}|allow|{rule}"
    return f"0|__PROFILE__|__PROFILE__.kns.{ep.namespace}|allow|0"


def _diurnal(t: np.ndarray) -> np.ndarray:
    """Daily volume factor: 1.6 at 15:00 UTC, 0.4 at 03:00 UTC, mean 1."""
    day = (t % 86_400) / 86_400.0
    return 1.0 + 0.6 * np.cos(2.0 * np.pi * (day - 15.0 / 24.0))


def _rand_token(rng: np.random.Generator, n: int) -> str:
    return "".join(_HASH_ALPHABET[rng.integers(0, len(_HASH_ALPHABET), n)])


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _iso(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_EVENT_KEYS = ("t", "st", "f", "nf", "req", "resp", "pk_req", "pk_resp", "started", "completed")


def _packets(nbytes: np.ndarray, nf: np.ndarray) -> np.ndarray:
    pk = np.maximum(nf, -(-nbytes // 1200))
    return np.where(nbytes > 0, pk, 0)


# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------


class SyntheticCluster:
    """A reproducible synthetic cluster: inventory, flow logs and injected incidents."""

    def __init__(self, seed: int = 7, cluster: str = "demo", nodes: int = 4):
        if not 1 <= nodes <= 200:
            raise ValueError("nodes must be between 1 and 200")
        if not cluster:
            raise ValueError("cluster must be a non-empty name")
        self.seed = int(seed)
        self.cluster = cluster
        self.nodes = nodes
        self._key = [self.seed % (1 << 64), zlib.crc32(cluster.encode())]
        rng = np.random.default_rng(self._key + [1])

        n_gpu = max(1, nodes // 2)
        self._gpu_nodes = list(range(nodes - n_gpu, nodes))
        self._all_nodes = list(range(nodes))
        # GPU nodes are tainted: only GPU pods and DaemonSets run there (unless there is nothing else).
        self._cpu_nodes = [i for i in self._all_nodes if i not in self._gpu_nodes] or list(self._all_nodes)
        self.node_names = [
            f"{cluster}-gpu-{i - (nodes - n_gpu)}" if i in self._gpu_nodes else f"{cluster}-cpu-{i}"
            for i in range(nodes)
        ]
        self.node_ips = [f"10.0.0.{11 + i}" for i in range(nodes)]

        self._specs = _catalogue()
        self.workloads: list[Workload] = []
        self._pods: dict[str, list[_Pod]] = {}
        self._services: dict[tuple[str, str], tuple[str, _Service]] = {}  # (ns, svc) -> (ip, service)
        self._build_pods(rng)
        self._build_services(rng)
        self._clients = self._client_ips(np.random.default_rng(self._key + [2]), 48)
        flows = self._expand(_edges(self._specs), np.random.default_rng(self._key + [2, 1]))
        self._base_flows = flows
        self._flows = _Flows(flows, cluster)
        w = self._flows.weight
        self._cdf = np.cumsum(w) / w.sum()
        self._rows_per_flow = float((w * self._flows.rows).sum() / w.sum())

    # ---- inventory -------------------------------------------------------

    def _build_pods(self, rng: np.random.Generator) -> None:
        host_pool = {
            i: iter(sorted(rng.choice(np.arange(2, 200), size=150, replace=False).tolist())) for i in self._all_nodes
        }
        rr = {"any": int(rng.integers(0, len(self._cpu_nodes))), "gpu": 0}
        for spec in self._specs:
            wl = spec.workload
            if wl.kind == "DaemonSet":
                placement = list(self._gpu_nodes if spec.pool == "gpu" else self._all_nodes)
                wl = Workload(
                    wl.namespace, wl.name, wl.kind, len(placement), wl.labels, wl.image, wl.gpus, wl.genai, wl.ports
                )
                spec = _Spec(wl, spec.containers, spec.pool, spec.services, spec.metrics_port, spec.service_account)
            else:
                pool = self._gpu_nodes if spec.pool == "gpu" else self._cpu_nodes
                placement = []
                for _ in range(wl.replicas):
                    placement.append(pool[rr[spec.pool] % len(pool)])
                    rr[spec.pool] += 1
            self.workloads.append(wl)
            created = _EPOCH_INVENTORY - int(rng.integers(3_600, 30 * 86_400))
            revision = _rand_token(rng, int(rng.integers(9, 11)))
            owner_uid = _uid(rng)
            pods: list[_Pod] = []
            for i, node in enumerate(placement):
                labels = dict(wl.labels)
                if wl.kind == "Deployment":
                    labels["pod-template-hash"] = revision
                    prefix = f"{wl.name}-{revision}-"
                    name, gen, aggr = prefix + _rand_token(rng, 5), prefix, prefix + "*"
                    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{wl.name}-{revision}"}
                elif wl.kind == "StatefulSet":
                    name, gen, aggr = f"{wl.name}-{i}", None, f"{wl.name}-*"
                    labels["controller-revision-hash"] = f"{wl.name}-{revision}"
                    labels["statefulset.kubernetes.io/pod-name"] = name
                    labels["apps.kubernetes.io/pod-index"] = str(i)
                    owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": wl.name}
                elif wl.kind == "DaemonSet":
                    name, gen, aggr = f"{wl.name}-{_rand_token(rng, 5)}", f"{wl.name}-", f"{wl.name}-*"
                    labels["controller-revision-hash"] = revision
                    labels["pod-template-generation"] = "1"
                    owner = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": wl.name}
                elif wl.kind == "Job":
                    name, gen, aggr = f"{wl.name}-{_rand_token(rng, 5)}", f"{wl.name}-", f"{wl.name}-*"
                    labels.update(
                        {
                            "batch.kubernetes.io/controller-uid": owner_uid,
                            "batch.kubernetes.io/job-name": wl.name,
                            "controller-uid": owner_uid,
                            "job-name": wl.name,
                        }
                    )
                    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": wl.name}
                else:  # pragma: no cover - catalogue only holds the kinds above
                    raise ValueError(wl.kind)
                owner = {**owner, "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}
                ip = f"10.244.{node}.{next(host_pool[node])}"
                pods.append(
                    _Pod(
                        spec,
                        name,
                        gen,
                        aggr,
                        i,
                        node,
                        ip,
                        _uid(rng),
                        labels,
                        owner,
                        created + int(rng.integers(0, 600)),
                    )
                )
            self._pods[f"{wl.namespace}/{wl.name}"] = pods

    def _build_services(self, rng: np.random.Generator) -> None:
        used = {"10.96.0.1", "10.96.0.10"}
        for pods in self._pods.values():
            spec = pods[0].spec if pods else None
            if spec is None:
                continue
            for svc in spec.services:
                ip = svc.cluster_ip
                while ip is None or (ip in used and svc.cluster_ip is None):
                    ip = f"10.{96 + int(rng.integers(0, 16))}.{int(rng.integers(0, 256))}.{int(rng.integers(1, 255))}"
                used.add(ip)
                self._services[(spec.workload.namespace, svc.name)] = (ip, svc)

    def inventory(self) -> dict:
        """Pods as ``kubectl get pods -A -o json`` prints them."""
        items = []
        for pods in self._pods.values():
            for pod in pods:
                items.append(self._pod_json(pod))
        return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}

    def _pod_json(self, pod: _Pod) -> dict:
        spec = pod.spec
        wl = spec.workload
        digest = zlib.crc32(pod.uid.encode())
        containers, statuses = [], []
        for c in spec.containers:
            requests: dict[str, str] = {"cpu": c.cpu, "memory": c.memory}
            limits: dict[str, str] = {"memory": c.memory}
            if c.gpus:
                requests["nvidia.com/gpu"] = str(c.gpus)
                limits["nvidia.com/gpu"] = str(c.gpus)
            containers.append(
                {
                    "name": c.name,
                    "image": c.image,
                    "imagePullPolicy": "IfNotPresent",
                    "ports": [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in c.ports],
                    "resources": {"requests": requests, "limits": limits},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                }
            )
            container_id = hashlib.sha256(f"{pod.uid}/{c.name}".encode()).hexdigest()
            statuses.append(
                {
                    "name": c.name,
                    "image": c.image,
                    "imageID": "",
                    "containerID": f"containerd://{container_id}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": _iso(pod.created + 20)}},
                }
            )
        metadata: dict[str, Any] = {
            "name": pod.name,
            "namespace": wl.namespace,
            "uid": pod.uid,
            "resourceVersion": str(100_000 + digest % 900_000),
            "creationTimestamp": _iso(pod.created),
            "labels": dict(pod.labels),
            "ownerReferences": [dict(pod.owner)],
        }
        if pod.generate_name:
            metadata["generateName"] = pod.generate_name
        if spec.metrics_port is not None:
            metadata["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": str(spec.metrics_port)}
        if wl.kind == "StatefulSet":
            hostname = {"hostname": pod.name, "subdomain": wl.name}
        else:
            hostname = {}
        pod_spec: dict[str, Any] = {
            "containers": containers,
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": True,
            "nodeName": self.node_names[pod.node],
            "priority": 0,
            "restartPolicy": "Never" if wl.kind == "Job" else "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccount": spec.service_account,
            "serviceAccountName": spec.service_account,
            "terminationGracePeriodSeconds": 30,
            **hostname,
        }
        if any(c.gpus for c in spec.containers):
            pod_spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
            pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        elif wl.kind == "DaemonSet":
            pod_spec["tolerations"] = [{"operator": "Exists"}]
            if spec.pool == "gpu":
                pod_spec["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        status = {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": _iso(pod.created + 25)}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "hostIP": self.node_ips[pod.node],
            "hostIPs": [{"ip": self.node_ips[pod.node]}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": _iso(pod.created),
            "containerStatuses": statuses,
            "qosClass": "Burstable",
        }
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec, "status": status}

    # ---- edges -> flows --------------------------------------------------

    @staticmethod
    def _client_ips(rng: np.random.Generator, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            a, b = _CLIENT_PREFIXES[int(rng.integers(0, len(_CLIENT_PREFIXES)))]
            ip = f"{a}.{b}.{int(rng.integers(0, 256))}.{int(rng.integers(1, 255))}"
            if ip not in out:
                out.append(ip)
        return out

    def _pod_endpoint(self, pod: _Pod) -> _Endpoint:
        wl = pod.spec.workload
        return _Endpoint(
            "wep",
            wl.namespace,
            pod.aggr,
            pod.name,
            pod.ip,
            tuple(pod.labels.items()),
            self.node_names[pod.node],
            f"{wl.namespace}/{wl.name}",
        )

    def _endpoints(self, key: str, sel: slice | None) -> list[_Endpoint]:
        if key == "net:clients":
            return [_Endpoint("net", "-", "pub", None, ip, None, None) for ip in self._clients]
        if key == "net:kubelet":
            return [_Endpoint("net", "-", "pvt", None, ip, None, None) for ip in self.node_ips]
        if key.startswith("net:"):
            domain = key[4:]
            aggr, ips, has_domain = _EXTERNAL[domain]
            domains = (domain,) if has_domain else None
            return [_Endpoint("net", "-", aggr, None, ip, None, None, None, domains) for ip in ips]
        pods = self._pods[key]
        if sel is not None:
            pods = pods[sel]
        return [self._pod_endpoint(p) for p in pods]

    def _expand(self, edges: list[_Edge], rng: np.random.Generator) -> list[_Flow]:
        flows: list[_Flow] = []
        for edge in edges:
            srcs = self._endpoints(edge.src, edge.src_pods)
            dsts = self._endpoints(edge.dst, edge.dst_pods)
            service = None
            port = edge.port
            if edge.svc is not None:
                ns = edge.dst.split("/", 1)[0]
                ip, svc = self._services[(ns, edge.svc[0])]
                pname, sport, target, _ = next(p for p in svc.ports if p[0] == edge.svc[1])
                service, port = (ns, svc.name, pname, sport), target
            elif edge.dst == "net:kube-apiserver":
                service = _KUBERNETES_SVC
            if port is None:
                raise ValueError(f"edge {edge} has no destination port")
            pairs = [(s, d) for s in srcs for d in dsts if s.name is None or s.name != d.name]
            if not pairs:
                continue
            total = edge.weight * (len(srcs) if edge.per_src_pod else 1)
            skew = rng.lognormal(0.0, 0.35, len(pairs))
            skew *= total / skew.sum()
            for (s, d), w in zip(pairs, skew, strict=True):
                flows.append(_Flow(s, d, port, edge.proto, float(w), edge.profile, edge.deny, service))
        return flows

    # ---- anomalies -------------------------------------------------------

    def _anomaly_plan(self, start: int, end: int) -> tuple[list[_Flow], dict[str, np.ndarray], list[dict]]:
        """Flows, flow events (flow index local to the returned list) and ground truth."""
        span = end - start
        flows: list[_Flow] = []
        events: list[tuple[int, ...]] = []
        truth: list[dict] = []
        if span <= 0:
            return flows, _empty_events(), truth
        rng = np.random.default_rng(self._key + [4, start % (1 << 63), end % (1 << 63)])

        def add_flow(src: _Pod, dst: _Endpoint, port: int, profile: str, deny: str | None = None) -> int:
            flows.append(_Flow(self._pod_endpoint(src), dst, port, "tcp", 0.0, profile, deny, None))
            return len(flows) - 1

        def event(
            t: int, st: int, f: int, nf: int, req: int, resp: int, pk_req: int | None = None, pk_resp: int | None = None
        ) -> None:
            if not start <= t < end:
                return
            st = max(min(st, t - 1), ((t - 1) // AGGREGATION_INTERVAL) * AGGREGATION_INTERVAL)
            if pk_req is None:
                pk_req = max(nf, -(-req // 1200)) if req else 0
            if pk_resp is None:
                pk_resp = max(nf, -(-resp // 1200)) if resp else 0
            events.append((t, st, f, nf, req, resp, pk_req, pk_resp, nf, nf))

        def record(kind: str, pod: _Pod, dest: str, first: int, extra: dict) -> None:
            mine = events[first:]
            if not mine:
                return
            rows = sum(2 if flows[e[2]].dst.type == "wep" and flows[e[2]].deny != "src" else 1 for e in mine)
            truth.append(
                {
                    "kind": kind,
                    "namespace": pod.spec.workload.namespace,
                    "name_aggr": pod.aggr,
                    "source_name": pod.name,
                    "start": int(min(e[1] for e in mine)),
                    "end": int(max(e[0] for e in mine)),
                    "dest": dest,
                    "rows": rows,
                    **extra,
                }
            )

        def at(fraction: float) -> int:
            return start + int(span * fraction)

        # 1. A vLLM pod reads cloud instance credentials from the metadata service.
        pod = self._pods["genai-prod/vllm"][int(rng.integers(0, len(self._pods["genai-prod/vllm"])))]
        imds = _Endpoint("net", "-", "pvt", None, "169.254.169.254", None, None)
        f = add_flow(pod, imds, 80, "api")
        first = len(events)
        t0, duration = at(0.2), min(180, max(1, span // 20))
        for t in range(t0, t0 + duration, 15):
            event(t, t - 1, f, int(rng.integers(1, 3)), int(rng.integers(300, 420)), int(rng.integers(1200, 1700)))
        record(
            "cloud_metadata_access", pod, "169.254.169.254:80", first, {"dest_ip": "169.254.169.254", "dest_port": 80}
        )

        # 2. A TGI pod uploads several GB to an address never seen before.
        pod = self._pods["genai-prod/tgi"][0]
        exfil = _Endpoint("net", "-", "pub", None, "203.0.113.77", None, None)
        f = add_flow(pod, exfil, 443, "api")
        first = len(events)
        t0 = at(0.45)
        k = max(1, min(1200, max(60, span // 10)) // AGGREGATION_INTERVAL)
        total = float(rng.uniform(5e9, 8e9))
        shares = rng.uniform(0.85, 1.15, k)
        shares *= total / shares.sum()
        for i in range(k):
            t = t0 + AGGREGATION_INTERVAL * i
            out = int(shares[i])
            event(t, t - AGGREGATION_INTERVAL if i else t - 1, f, int(rng.integers(1, 5)), out, out // 40)
        sent = int(sum(e[4] for e in events[first:]))
        record(
            "exfiltration", pod, "203.0.113.77:443", first, {"dest_ip": "203.0.113.77", "dest_port": 443, "bytes": sent}
        )

        # 3. An Ollama pod beacons to a new domain every 60 s.
        pod = self._pods["genai-dev/ollama"][0]
        domain = "sync.llm-telemetry.top"
        beacon = _Endpoint("net", "-", "pub", None, "198.51.100.23", None, None, None, (domain,))
        f = add_flow(pod, beacon, 443, "api")
        first = len(events)
        t = at(0.1)
        while t < at(0.9) or len(events) == first:
            jitter = int(rng.integers(-1, 2))
            event(
                t + jitter,
                t + jitter - int(rng.integers(1, 3)),
                f,
                1,
                int(rng.integers(880, 920)),
                int(rng.integers(330, 360)),
            )
            t += 60
            if t >= end:
                break
        record(
            "beaconing",
            pod,
            domain,
            first,
            {"dest_ip": "198.51.100.23", "dest_port": 443, "dest_domain": domain, "period_s": 60},
        )

        # 4. The notebook scans many ports of pod-network addresses.
        pod = self._pods["genai-dev/jupyter"][0]
        vllm_pods = self._pods["genai-prod/vllm"]
        targets: list[tuple[_Endpoint, str | None, bool]] = [
            (self._pod_endpoint(vllm_pods[-1]), "dst", False),
            (self._pod_endpoint(self._pods["ml-train/ray-head"][0]), None, True),
        ]
        used = {p.ip for pods in self._pods.values() for p in pods}
        for i in range(3):
            node = self._all_nodes[i % len(self._all_nodes)]
            ip = f"10.244.{node}.{200 + int(rng.integers(0, 55))}"
            while ip in used:
                ip = f"10.244.{node}.{200 + int(rng.integers(0, 55))}"
            used.add(ip)
            targets.append((_Endpoint("net", "-", "pvt", None, ip, None, None), None, False))
        common = [
            21,
            22,
            23,
            25,
            53,
            80,
            110,
            143,
            443,
            445,
            993,
            1433,
            2375,
            2379,
            3000,
            3306,
            5000,
            5432,
            6379,
            6443,
            8000,
            8080,
            8443,
            8888,
            9000,
            9090,
            9200,
            10250,
            11434,
            27017,
        ]
        ports = sorted(set(common) | set(rng.choice(np.arange(1, 1025), size=150, replace=False).tolist()))
        first = len(events)
        t0, duration = at(0.7), min(300, max(1, span // 20))
        for dst, deny, responds in targets:
            for port in ports:
                f = add_flow(pod, dst, port, "syn", deny)
                t = t0 + int(rng.integers(0, duration))
                event(t, t - 1, f, 1, 60, 54 if responds else 0, 1, 1 if responds else 0)
        record("port_scan", pod, POD_CIDR, first, {"targets": [d.ip for d, _, _ in targets], "ports": len(ports)})

        if not events:
            return flows, _empty_events(), truth
        arr = np.array(sorted(events, key=lambda e: e[0]), dtype=np.int64)
        return flows, {k: arr[:, i].copy() for i, k in enumerate(_EVENT_KEYS)}, truth

    def ground_truth_anomalies(self, start: int, end: int) -> list[dict]:
        """Incidents injected by ``generate(start, end, anomalies=True)``.

        Each dict has ``kind`` (``cloud_metadata_access``, ``exfiltration``,
        ``beaconing``, ``port_scan``), the source ``namespace``, ``name_aggr``
        and pod ``source_name``, ``start`` (earliest start_time) and ``end``
        (latest end_time) of its records, ``dest`` and kind-specific details.
        """
        return self._anomaly_plan(int(start), int(end))[2]

    # ---- flow records ----------------------------------------------------

    def _chunk_events(
        self, c: int, clen: int, flow_rate: float, flows: _Flows, lo: int, hi: int
    ) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self._key + [3, clen, c])
        secs = np.arange(c * clen, (c + 1) * clen, dtype=np.int64)
        counts = rng.poisson(flow_rate * _diurnal(secs))
        t = np.repeat(secs, counts)
        n = t.size
        f = np.minimum(np.searchsorted(self._cdf, rng.random(n), side="right"), len(self._cdf) - 1)
        nf = np.minimum(rng.geometric(flows.p_nf[f]), MAX_NUM_FLOWS).astype(np.int64)
        z = np.clip(rng.standard_normal((2, n)), -4.0, 4.0)
        req = np.exp(flows.mu_req[f] + flows.sig_req[f] * z[0]) * nf
        resp = np.exp(flows.mu_resp[f] + flows.sig_resp[f] * z[1]) * nf
        req = np.maximum(req, 60.0 * nf).astype(np.int64)
        resp = np.maximum(resp, 60.0 * nf).astype(np.int64)
        retries = rng.integers(1, 4, n)
        syn = flows.syn_only[f]
        pk_req = np.where(syn, nf * retries, _packets(req, nf))
        req = np.where(syn, pk_req * 60, req)
        resp = np.where(syn, 0, resp)
        pk_resp = _packets(resp, nf)
        started = rng.binomial(nf, flows.p_started[f]).astype(np.int64)
        completed = rng.binomial(nf, flows.p_completed[f]).astype(np.int64)
        interval = ((t - 1) // AGGREGATION_INTERVAL) * AGGREGATION_INTERVAL
        offset = (rng.random(n) * (t - interval)).astype(np.int64)
        offset[rng.random(n) < 0.7] = 0
        ev = {
            "t": t,
            "st": interval + offset,
            "f": f,
            "nf": nf,
            "req": req,
            "resp": resp,
            "pk_req": pk_req,
            "pk_resp": pk_resp,
            "started": started,
            "completed": completed,
        }
        if lo > secs[0] or hi <= secs[-1]:
            keep = (t >= lo) & (t < hi)
            ev = {k: v[keep] for k, v in ev.items()}
        return ev

    @staticmethod
    def _expand_rows(ev: dict[str, np.ndarray], flows: _Flows) -> dict[str, np.ndarray]:
        f = ev["f"]
        rows = flows.rows[f]
        n = f.size
        if n and rows.max() > 1:
            rep = np.repeat(np.arange(n), rows)
            is_second = np.zeros(rep.size, dtype=bool)
            is_second[np.cumsum(rows)[rows > 1] - 1] = True
            fr = f[rep]
            tmpl = np.where(is_second, flows.second[fr], flows.first[fr])
        else:
            rep = np.arange(n)
            is_second = np.zeros(n, dtype=bool)
            tmpl = flows.first[f]
        swap = flows.is_dst[tmpl]
        req, resp = ev["req"][rep], ev["resp"][rep]
        pk_req, pk_resp = ev["pk_req"][rep], ev["pk_resp"][rep]
        return {
            "tmpl": tmpl,
            "second": is_second,
            "start_time": ev["st"][rep],
            "end_time": ev["t"][rep],
            "bytes_out": np.where(swap, resp, req),
            "bytes_in": np.where(swap, req, resp),
            "packets_out": np.where(swap, pk_resp, pk_req),
            "packets_in": np.where(swap, pk_req, pk_resp),
            "num_flows": ev["nf"][rep],
            "num_flows_started": ev["started"][rep],
            "num_flows_completed": ev["completed"][rep],
        }

    @staticmethod
    def _table(rows: dict[str, np.ndarray], templates: pa.RecordBatch) -> pa.Table:
        static = templates.take(pa.array(rows["tmpl"]))
        arrays = [pa.array(rows[name]) if name in rows else static.column(name) for name in SCHEMA.names]
        return pa.Table.from_arrays(arrays, schema=SCHEMA)

    def generate(
        self,
        start: int,
        end: int,
        rate: float = 2000.0,
        batch_rows: int = 50_000,
        anomalies: bool = False,
    ) -> Iterator[pa.Table]:
        """Flow records with ``start <= end_time < end`` in event-time order.

        ``rate`` is the mean number of records per second of event time over
        a day (the daily curve moves it between 0.4x and 1.6x). Tables have
        the ``flowlog.v1`` schema and at most ``batch_rows`` rows; a table
        is one row short when that keeps the ``src`` and ``dst`` reports of a
        pod-to-pod flow together. With ``anomalies=True`` the incidents listed
        by :meth:`ground_truth_anomalies` for the same range are added.
        """
        start, end = int(start), int(end)
        if start < 0:
            raise ValueError("start must be a non-negative epoch second")
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        if rate < 0:
            raise ValueError("rate must not be negative")
        if end <= start:
            return
        flows = self._flows
        injected = _empty_events()
        if anomalies:
            extra, injected, _ = self._anomaly_plan(start, end)
            if extra:
                flows = _Flows(self._base_flows + extra, self.cluster)
                injected["f"] = injected["f"] + len(self._base_flows)
        flow_rate = rate / self._rows_per_flow
        clen = AGGREGATION_INTERVAL
        for candidate in (60, 30, 20, 10, 5, 2, 1):
            clen = candidate
            if rate * 1.6 * candidate <= 2_000_000:
                break

        pending: list[dict[str, np.ndarray]] = []
        buffered = 0
        for c in range(start // clen, (end - 1) // clen + 1):
            ev = self._chunk_events(c, clen, flow_rate, flows, start, end) if rate > 0 else None
            lo_i = np.searchsorted(injected["t"], c * clen, side="left")
            hi_i = np.searchsorted(injected["t"], (c + 1) * clen, side="left")
            if hi_i > lo_i:
                extra_ev = {k: v[lo_i:hi_i] for k, v in injected.items()}
                if ev is None:
                    ev = extra_ev
                else:
                    ev = {k: np.concatenate([ev[k], extra_ev[k]]) for k in _EVENT_KEYS}
                    order = np.argsort(ev["t"], kind="stable")
                    ev = {k: v[order] for k, v in ev.items()}
            if ev is None or ev["t"].size == 0:
                continue
            rows = self._expand_rows(ev, flows)
            pending.append(rows)
            buffered += rows["tmpl"].size
            if buffered >= batch_rows:
                merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
                pos = 0
                while buffered - pos >= batch_rows:
                    cut = pos + batch_rows
                    # keep the two reports of a pod-to-pod flow in the same table
                    if batch_rows > 1 and cut < buffered and merged["second"][cut]:
                        cut -= 1
                    yield self._table({k: v[pos:cut] for k, v in merged.items()}, flows.templates)
                    pos = cut
                pending = [{k: v[pos:] for k, v in merged.items()}] if buffered > pos else []
                buffered -= pos
        if buffered:
            merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            yield self._table(merged, flows.templates)


def _empty_events() -> dict[str, np.ndarray]:
    return {k: np.empty(0, dtype=np.int64) for k in _EVENT_KEYS}


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure synthetic flow-log generation throughput.")
    parser.add_argument("--seconds", type=int, default=3600, help="event time to generate")
    parser.add_argument("--rate", type=float, default=2000.0, help="mean records per second of event time")
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--anomalies", action="store_true")
    args = parser.parse_args(argv)
    cluster = SyntheticCluster(seed=args.seed)
    start = 1_717_200_000
    began = time.perf_counter()
    rows = tables = 0
    for table in cluster.generate(
        start, start + args.seconds, rate=args.rate, batch_rows=args.batch_rows, anomalies=args.anomalies
    ):
        rows += table.num_rows
        tables += 1
    took = time.perf_counter() - began
    print(f"{rows} rows in {tables} tables, {took:.2f} s, {rows / took:,.0f} rows/s")


if __name__ == "__main__":
    _main()
