"""The multivariate detector: one IsolationForest per workload class over per-workload normalised features.

Models are saved under ``<state_dir>/anomaly/models/`` with their training range and
feature list, and reused until retrained (``flowctl detect --retrain``, a feature change,
or a scored period the model would have seen or is too far from).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jobs.anomaly.detectors import Context, Detector
from jobs.anomaly.findings import Finding, workload_name
from jobs.anomaly.frames import MODEL_FEATURES, WorkloadNorm, model_matrix

log = logging.getLogger(__name__)

FORMAT = 1
MAX_TRAINING_ROWS = 50_000
_DESCRIBE = {
    "log_bytes_out_per_pod": "bytes sent per pod", "log_packets_out_per_pod": "packets sent per pod",
    "log_flows_per_pod": "connections per pod", "log_ext_bytes_out_per_pod": "bytes leaving the cluster per pod",
    "log_bytes_per_flow": "bytes per connection", "log_destinations": "distinct destinations",
    "log_dest_ports": "distinct destination ports", "share_public": "share sent to public addresses",
}


@dataclass
class ClassModel:
    genai_class: str
    features: tuple[str, ...]
    bucket_seconds: int
    trained_from: int
    trained_until: int
    trained_rows: int
    threshold: float
    model: Any

    def usable_for(self, since: int, lookback: int, bucket: int) -> bool:
        """Same features and buckets, trained before the scored period and not too long before it."""
        return (tuple(self.features) == MODEL_FEATURES and self.bucket_seconds == bucket
                and self.trained_until <= since and since - self.trained_until <= lookback)


class ModelStore:
    """joblib files, one per workload class."""

    def __init__(self, state_dir: str) -> None:
        self.root = Path(state_dir) / "anomaly" / "models"

    def path(self, genai_class: str) -> Path:
        return self.root / (re.sub(r"[^a-z0-9]+", "_", genai_class.lower()) + ".joblib")

    def load(self, genai_class: str) -> ClassModel | None:
        import joblib

        path = self.path(genai_class)
        if not path.exists():
            return None
        try:
            doc = joblib.load(path)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError("unknown model file format")
            return ClassModel(**{k: v for k, v in doc.items() if k != "format"})
        except Exception as exc:  # any unreadable file: retrain rather than crash
            log.warning("model file %s is unreadable (%s); retraining", path, exc)
            return None

    def save(self, model: ClassModel) -> Path:
        import joblib

        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(model.genai_class)
        tmp = path.with_suffix(".tmp")
        joblib.dump({"format": FORMAT, **model.__dict__}, tmp)
        tmp.replace(path)
        return path


class MultivariateDetector(Detector):
    """IsolationForest per workload class; alerts only beyond everything seen in training."""

    name = "multivariate"

    def __init__(self, store: ModelStore | None, lookback: int, retrain: bool = False, seed: int = 0) -> None:
        self.store = store
        self.lookback = lookback
        self.retrain = retrain
        self.seed = seed
        self.models: dict[str, ClassModel] = {}
        self.trained: list[str] = []

    def _model(self, ctx: Context, genai_class: str, rows: np.ndarray) -> ClassModel | None:
        cached = None if self.retrain or self.store is None else self.store.load(genai_class)
        if cached is not None and cached.usable_for(ctx.since, self.lookback, ctx.bucket):
            return cached
        if len(rows) < 50:
            return None
        from sklearn.ensemble import IsolationForest

        rng = np.random.default_rng(self.seed)
        if len(rows) > MAX_TRAINING_ROWS:
            rows = rows[rng.choice(len(rows), MAX_TRAINING_ROWS, replace=False)]
        forest = IsolationForest(n_estimators=100, max_samples=min(256, len(rows)), random_state=self.seed, n_jobs=1)
        forest.fit(rows)
        scores = forest.score_samples(rows)
        model = ClassModel(genai_class, MODEL_FEATURES, ctx.bucket, ctx.base.lo, ctx.base.hi, len(rows),
                           float(scores.min()), forest)
        if self.store is not None:
            self.store.save(model)
        self.trained.append(genai_class)
        return model

    def detect(self, ctx: Context) -> list[Finding]:
        t = ctx.thresholds
        base, s = ctx.base, ctx.score
        norm = WorkloadNorm.fit(model_matrix(base), base.active)
        base_z = norm.apply(model_matrix(base))
        index = {w: i for i, w in enumerate(base.workloads)}
        rows = np.array([index.get(w, -1) for w in s.workloads])
        raw = model_matrix(s)
        safe = np.maximum(rows, 0)
        score_z = np.clip((raw - norm.center[safe][:, None, :]) / norm.scale[safe][:, None, :], -50.0, 50.0)
        first = (ctx.since - s.lo) // s.bucket
        judged = np.array([r >= 0 and ctx.enough_history(w) for w, r in zip(s.workloads, rows, strict=True)])
        out: list[Finding] = []
        for genai_class in sorted({ctx.classes.get(w, "none") for w in s.workloads}):
            members = np.array([ctx.classes.get(w, "none") == genai_class for w in base.workloads])
            eligible = members & np.array([ctx.enough_history(w) for w in base.workloads])
            training = base_z[eligible][base.active[eligible]]
            model = self._model(ctx, genai_class, training)
            if model is None:
                continue
            self.models[genai_class] = model
            pick = judged & np.array([ctx.classes.get(w, "none") == genai_class for w in s.workloads])
            cells = np.argwhere(pick[:, None] & s.active[:, first:])
            if len(cells) == 0:
                continue
            cells[:, 1] += first
            vectors = score_z[cells[:, 0], cells[:, 1]]
            scores = model.model.score_samples(vectors)
            strongest = np.abs(vectors[:, :-2]).max(axis=1)
            hit = (scores < model.threshold - t.multivariate_margin) & (strongest >= t.multivariate_min_z)
            for i in np.unique(cells[hit, 0]):
                mine = hit & (cells[:, 0] == i)
                out.append(self._finding(ctx, s.workloads[i], cells[mine, 1], vectors[mine], scores[mine], model))
        return out

    def _finding(self, ctx: Context, workload: str, cells: np.ndarray, vectors: np.ndarray, scores: np.ndarray,
                 model: ClassModel) -> Finding:
        ns, name = workload_name(workload)
        worst = int(np.argmin(scores))
        v = vectors[worst, :-2]
        top = np.argsort(-np.abs(v))[:3]
        parts = [f"{_DESCRIBE.get(MODEL_FEATURES[j], MODEL_FEATURES[j].replace('_', ' '))} {v[j]:+.1f}σ" for j in top]
        buckets = [int(ctx.score.starts[c]) for c in cells]
        return Finding(
            "multivariate", workload, "*", buckets, score=float(-scores[worst]), severity=ctx.adjust(workload, "low"),
            detected_bucket=buckets[0],
            reason=(f"{name} in {ns} behaved unlike its own baseline in {len(buckets)} bucket(s): "
                    f"{', '.join(parts)} (isolation score {scores[worst]:.2f}, lowest in training {model.threshold:.2f})."),
            next_step=(f"Compare {name}'s traffic in flow_windows for these buckets with the same hours on previous days; "
                       "the listed features say where it differs."),
            evidence={"isolation_scores": [round(float(x), 3) for x in scores],
                      "features": {MODEL_FEATURES[j]: round(float(v[j]), 2) for j in top},
                      "model": {"class": model.genai_class, "trained_from": model.trained_from,
                                "trained_until": model.trained_until, "rows": model.trained_rows}})
