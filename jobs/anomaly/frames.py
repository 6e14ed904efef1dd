"""Dense (workload x bucket) matrices of the bucket features, so detectors work on whole arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from jobs.anomaly.features import CATEGORIES, COUNTS, as_numpy


@dataclass
class FeatureFrame:
    """Bucket features of ``workloads`` over ``[lo, hi)``; buckets without traffic hold zeros."""

    workloads: list[str]
    lo: int
    hi: int
    bucket: int
    values: dict[str, np.ndarray]  # column -> (workloads, buckets)
    active: np.ndarray  # bool (workloads, buckets): the workload had traffic in the bucket

    @property
    def starts(self) -> np.ndarray:
        return np.arange(self.lo, self.hi, self.bucket, dtype=np.int64)

    @property
    def hours(self) -> np.ndarray:
        return (self.starts % 86_400) // 3600

    def __getitem__(self, column: str) -> np.ndarray:
        return self.values[column]

    def external_per_pod(self) -> np.ndarray:
        """log1p of bytes leaving the cluster per source pod: the volume signal, immune to scale-ups."""
        return np.log1p(self["ext_bytes_out"] / np.maximum(self["pods"], 1.0))


def dense(features: pa.Table, pods: pa.Table | None, workloads: list[str], lo: int, hi: int, bucket: int) -> FeatureFrame:
    """Scatter the sparse (workload, bucket) rows into matrices over ``workloads`` x buckets of [lo, hi)."""
    n_buckets = max(0, (hi - lo) // bucket)
    index = {w: i for i, w in enumerate(workloads)}
    shape = (len(workloads), n_buckets)
    values = {c: np.zeros(shape) for c in (*COUNTS, "pods")}
    active = np.zeros(shape, dtype=bool)
    if features.num_rows and n_buckets:
        cols = as_numpy(features)
        rows, cells, keep = _cells(cols["workload"], cols["bucket"], index, lo, bucket, n_buckets)
        for c in COUNTS:
            values[c][rows, cells] = cols[c][keep]
        active[rows, cells] = True
    if pods is not None and pods.num_rows and n_buckets:
        cols = as_numpy(pods)
        rows, cells, keep = _cells(cols["workload"], cols["bucket"], index, lo, bucket, n_buckets)
        values["pods"][rows, cells] = cols["pods"][keep]
    values["pods"] = np.where(active, np.maximum(values["pods"], 1.0), 0.0)
    return FeatureFrame(workloads, lo, lo + n_buckets * bucket, bucket, values, active)


def _cells(names: np.ndarray, starts: np.ndarray, index: dict[str, int], lo: int, bucket: int, n: int):
    rows = np.fromiter((index.get(w, -1) for w in names), dtype=np.int64, count=len(names))
    cells = (starts.astype(np.int64) - lo) // bucket
    keep = (rows >= 0) & (cells >= 0) & (cells < n)
    return rows[keep], cells[keep], keep


# Features of the multivariate model, in model order.
MODEL_FEATURES = (
    "log_bytes_out_per_pod", "log_packets_out_per_pod", "log_flows_per_pod", "log_ext_bytes_out_per_pod",
    "log_bytes_per_flow", "log_destinations", "log_dest_ports", "share_public",
    *(f"share_{c}" for c in CATEGORIES if c != "cloud_metadata"), "share_in_cluster", "hour_sin", "hour_cos",
)
_UNNORMALISED = ("hour_sin", "hour_cos")
# Amounts judged one-sided: less traffic than usual is not an egress anomaly (shares and bytes per
# connection move both ways when the mix changes, so they stay two-sided).
ONE_SIDED = np.array([f.startswith("log_") and f != "log_bytes_per_flow" for f in MODEL_FEATURES])


def model_matrix(frame: FeatureFrame) -> np.ndarray:
    """(workloads, buckets, features) raw model features; meaningful only where ``frame.active``."""
    pods = np.maximum(frame["pods"], 1.0)
    out = np.maximum(frame["bytes_out"], 1.0)
    cols = {
        "log_bytes_out_per_pod": np.log1p(frame["bytes_out"] / pods),
        "log_packets_out_per_pod": np.log1p(frame["packets_out"] / pods),
        "log_flows_per_pod": np.log1p(frame["flows"] / pods),
        "log_ext_bytes_out_per_pod": np.log1p(frame["ext_bytes_out"] / pods),
        "log_bytes_per_flow": np.log1p(frame["bytes_out"] / np.maximum(frame["flows"], 1.0)),
        "log_destinations": np.log1p(frame["destinations"]),
        "log_dest_ports": np.log1p(frame["dest_ports"]),
        "share_public": frame["public_bytes_out"] / out,
    }
    external = np.zeros_like(out)
    for c in CATEGORIES:
        external += frame[f"cat_{c}"]
        if c != "cloud_metadata":
            cols[f"share_{c}"] = frame[f"cat_{c}"] / out
    cols["share_in_cluster"] = np.clip(1.0 - external / out, 0.0, 1.0)
    angle = 2 * np.pi * frame.hours / 24.0
    cols["hour_sin"] = np.broadcast_to(np.sin(angle), out.shape)
    cols["hour_cos"] = np.broadcast_to(np.cos(angle), out.shape)
    return np.stack([cols[f] for f in MODEL_FEATURES], axis=-1)


@dataclass
class WorkloadNorm:
    """Per-workload robust centre and scale of each model feature, from its baseline buckets."""

    center: np.ndarray  # (workloads, features)
    scale: np.ndarray

    @classmethod
    def fit(cls, matrix: np.ndarray, active: np.ndarray) -> WorkloadNorm:
        n_w, _, n_f = matrix.shape
        center = np.zeros((n_w, n_f))
        scale = np.ones((n_w, n_f))
        floor = np.array([0.05 if f.startswith("share_") else 0.25 for f in MODEL_FEATURES])
        for i in range(n_w):
            rows = matrix[i, active[i]]
            if len(rows) == 0:
                continue
            med = np.median(rows, axis=0)
            mad = np.median(np.abs(rows - med), axis=0) * 1.4826
            center[i] = med
            scale[i] = np.maximum(mad, floor)
        for j, name in enumerate(MODEL_FEATURES):
            if name in _UNNORMALISED:
                center[:, j], scale[:, j] = 0.0, 1.0
        return cls(center, scale)

    def apply(self, matrix: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Robust z-scores of ``matrix`` (workloads, buckets, features); ``rows`` maps its workloads to ours."""
        center = self.center if rows is None else self.center[rows]
        scale = self.scale if rows is None else self.scale[rows]
        z = np.clip((matrix - center[:, None, :]) / scale[:, None, :], -50.0, 50.0)
        z[..., ONE_SIDED] = np.maximum(z[..., ONE_SIDED], 0.0)
        return z
