"""The multivariate detector: one IsolationForest per workload class over per-workload normalised features.

Thresholds are each workload's own, from the scores of its baseline buckets under the class
model and from their distance (Euclidean length of the robust z-scores) to its usual behaviour:

* a bucket is *odd* when the forest isolates it more easily than every baseline bucket (score
  below the lowest, minus a margin) or -- because isolation scores saturate beyond the range
  the forest was trained on -- when it scores among the workload's oddest 1 % and lies more
  than twice as far out as any baseline bucket within an hour of its time of day; a finding
  needs 3 odd buckets within 30 minutes, since single odd buckets happen in every baseline;
* a milder change counts when it lasts: among the oddest 1 % and further out (1.25x) than any
  baseline bucket at that time of day, in 10 of 12 buckets (an hour).

Amounts are judged one-sided (see ``frames.ONE_SIDED``), so a quiet hour is not an alert.

Models are saved under ``<state_dir>/anomaly/models/`` with their training range and
feature list, and reused until retrained (``flowctl detect --retrain``, a feature change,
or a scored period the model would have seen or is too far from).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from jobs.anomaly.detectors import Context, Detector
from jobs.anomaly.findings import Finding, workload_name
from jobs.anomaly.frames import MODEL_FEATURES, WorkloadNorm, model_matrix

log = logging.getLogger(__name__)

FORMAT = 2  # 2: amounts one-sided, per-workload thresholds
MAX_TRAINING_ROWS = 50_000
_DESCRIBE = {
    "log_bytes_out_per_pod": "bytes sent per pod", "log_packets_out_per_pod": "packets sent per pod",
    "log_flows_per_pod": "connections per pod", "log_ext_bytes_out_per_pod": "bytes leaving the cluster per pod",
    "log_bytes_per_flow": "bytes per connection", "log_destinations": "distinct destinations",
    "log_dest_ports": "distinct destination:port pairs", "share_public": "share sent to public addresses",
    "share_llm_api": "share sent to LLM APIs", "share_model_hub": "share sent to model hubs",
    "share_package_registry": "share sent to package registries", "share_object_storage": "share sent to object storage",
    "share_unknown": "share sent to unclassified outside destinations", "share_in_cluster": "share that stays in the cluster",
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
    """IsolationForest per workload class; a workload alerts only beyond everything it did in its baseline."""

    name = "multivariate"

    def __init__(self, store: ModelStore | None, lookback: int, retrain: bool = False, seed: int = 0) -> None:
        self.store = store
        self.lookback = lookback
        self.retrain = retrain
        self.seed = seed
        self.models: dict[str, ClassModel] = {}
        self.trained: list[str] = []

    def _model(self, ctx: Context, genai_class: str, rows: np.ndarray) -> tuple[ClassModel | None, np.ndarray | None]:
        """The class model, and the scores of ``rows`` when it was just trained on all of them."""
        cached = None if self.retrain or self.store is None else self.store.load(genai_class)
        if cached is not None and cached.usable_for(ctx.since, self.lookback, ctx.bucket):
            return cached, None
        if len(rows) < 50:
            return None, None
        from sklearn.ensemble import IsolationForest

        rng = np.random.default_rng(self.seed)
        sampled = len(rows) > MAX_TRAINING_ROWS
        if sampled:
            rows = rows[rng.choice(len(rows), MAX_TRAINING_ROWS, replace=False)]
        forest = IsolationForest(n_estimators=100, max_samples=min(256, len(rows)), random_state=self.seed, n_jobs=1)
        forest.fit(rows)
        scores = forest.score_samples(rows)
        model = ClassModel(genai_class, MODEL_FEATURES, ctx.bucket, ctx.base.lo, ctx.base.hi, len(rows),
                           float(scores.min()), forest)
        if self.store is not None:
            self.store.save(model)
        self.trained.append(genai_class)
        return model, None if sampled else scores

    def detect(self, ctx: Context) -> list[Finding]:
        t = ctx.thresholds
        base, s = ctx.base, ctx.score
        norm = WorkloadNorm.fit(model_matrix(base), base.active)
        base_z = norm.apply(model_matrix(base))
        index = {w: i for i, w in enumerate(base.workloads)}
        rows = np.array([index.get(w, -1) for w in s.workloads], dtype=np.int64)
        score_z = norm.apply(model_matrix(s), np.maximum(rows, 0))
        base_distance = _seasonal_max(np.where(base.active, _distance(base_z), 0.0), base.hours)
        score_distance = _distance(score_z)
        first = (ctx.since - s.lo) // s.bucket
        classes = np.array([ctx.classes.get(w, "none") for w in s.workloads], dtype=object)
        # its own thresholds come from the workload's oddest baseline buckets: they need half a day of them at least
        def enough(w: str) -> bool:
            return ctx.enough_history(w) and ctx.history.get(w, 0) >= t.multivariate_min_history

        judged = np.array([r >= 0 and enough(w) for w, r in zip(s.workloads, rows, strict=True)], dtype=bool)
        base_classes = np.array([ctx.classes.get(w, "none") for w in base.workloads], dtype=object)
        base_ok = np.array([enough(w) for w in base.workloads], dtype=bool)
        out: list[Finding] = []
        for genai_class in sorted(set(classes[judged].tolist())):
            members = (base_classes == genai_class) & base_ok
            model, trained = self._model(ctx, genai_class, base_z[members][base.active[members]])
            if model is None:
                continue
            self.models[genai_class] = model
            pick = np.flatnonzero(judged & (classes == genai_class))
            # the scores of each workload's baseline buckets under this model (inf where it was idle)
            history = np.full(base.active.shape, np.inf)
            if trained is not None:  # just trained on exactly these buckets: reuse their scores
                member = np.flatnonzero(members)
                cells = np.argwhere(base.active[member])
                history[member[cells[:, 0]], cells[:, 1]] = trained
            else:
                cells = np.argwhere(base.active[rows[pick]])
                history[rows[pick][cells[:, 0]], cells[:, 1]] = model.model.score_samples(
                    base_z[rows[pick][cells[:, 0]], cells[:, 1]])
            own = np.min(history[rows[pick]], axis=1)
            low = np.array([np.quantile(h[np.isfinite(h)], t.multivariate_quantile) for h in history[rows[pick]]])
            seasonal = base_distance[rows[pick]][:, s.hours]  # the oddest baseline bucket at each hour
            cells = np.argwhere(s.active[pick])
            scores = np.zeros(s.active[pick].shape)
            if len(cells):
                scores[cells[:, 0], cells[:, 1]] = model.model.score_samples(score_z[pick[cells[:, 0]], cells[:, 1]])
            # isolation scores saturate beyond the training range, so "among its oddest 1 % and twice as far out as
            # any baseline bucket at that hour" counts like "odder than every baseline bucket"
            active = s.active[pick]
            odd = active & ((scores < own[:, None] - t.multivariate_margin)
                            | ((scores < low[:, None]) & (score_distance[pick] > seasonal * t.multivariate_distance_factor)))
            fired, detected = _persistent(odd, t.multivariate_min_buckets, t.multivariate_span_buckets)
            # a milder change counts when it lasts: among the workload's oddest 1 % and further out than any
            # baseline bucket at that hour, in most buckets of an hour
            lasting = (active & (scores < low[:, None])
                       & (score_distance[pick] > seasonal * t.multivariate_sustained_factor))
            held, since_when = _persistent(lasting, t.multivariate_sustained_min_buckets, t.multivariate_sustained_span_buckets)
            fired |= held
            detected = np.where((detected < 0) | ((since_when >= 0) & (since_when < detected)), since_when, detected)
            for k in np.flatnonzero(fired[:, first:].any(axis=1)):
                i = pick[k]
                buckets = np.flatnonzero(fired[k, first:]) + first
                baseline = {"lowest_score": round(float(own[k]), 3), "low_score": round(float(low[k]), 3),
                            "max_distance_by_hour": [round(float(x), 2) for x in base_distance[rows[i]]]}
                out.append(self._finding(ctx, s.workloads[i], buckets, int(detected[k]), score_z[i], scores[k],
                                         score_distance[i], baseline, model))
        return out

    def _finding(self, ctx: Context, workload: str, cells: np.ndarray, detected: int, z: np.ndarray,
                 scores: np.ndarray, distance: np.ndarray, baseline: dict[str, float], model: ClassModel) -> Finding:
        ns, name = workload_name(workload)
        s = ctx.score
        worst = int(cells[np.argmin(scores[cells])])
        v = z[worst, :-2]
        top = np.argsort(-np.abs(v))[:3]
        parts = [f"{_DESCRIBE.get(MODEL_FEATURES[j], MODEL_FEATURES[j].replace('_', ' '))} {v[j]:+.1f}σ" for j in top]
        buckets = [int(s.starts[c]) for c in cells]
        span = f"{_hhmm(buckets[0])}–{_hhmm(buckets[-1] + ctx.bucket)} UTC"
        return Finding(
            "multivariate", workload, "*", buckets, score=float(-scores[worst]), severity=ctx.adjust(workload, "low"),
            detected_bucket=int(s.starts[max(detected, (ctx.since - s.lo) // s.bucket)]),
            reason=(f"{name} in {ns} behaved unlike its own baseline in {len(buckets)} buckets ({span}): "
                    f"{', '.join(parts)} (isolation score {scores[worst]:.2f}; its baseline's lowest "
                    f"{baseline['lowest_score']:.2f}, 1st percentile {baseline['low_score']:.2f}; "
                    f"{distance[worst] / max(baseline['max_distance_by_hour'][int(s.hours[worst])], 0.1):.1f}x as far from its "
                    "usual behaviour as any baseline bucket at this hour of day)."),
            next_step=(f"Compare {name}'s destinations in flow_windows for these buckets with the same hours on previous "
                       "days; the listed features say where it differs."),
            evidence={"isolation_scores": [round(float(scores[c]), 3) for c in cells],
                      "distances": [round(float(distance[c]), 2) for c in cells],
                      "baseline": baseline,
                      "features": {MODEL_FEATURES[j]: round(float(v[j]), 2) for j in top},
                      "model": {"class": model.genai_class, "trained_from": model.trained_from,
                                "trained_until": model.trained_until, "rows": model.trained_rows}})


def _persistent(below: np.ndarray, k: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """Buckets of runs with at least ``k`` anomalous buckets within ``span``, and per row the first bucket
    at whose end that held (-1: never)."""
    c = np.cumsum(below, axis=1)
    count = c.copy()
    count[:, span:] = c[:, span:] - c[:, :-span]
    ends = count >= k  # windows (ending at each bucket) that qualify
    # a bucket is reported when it is anomalous and some qualifying window ending within span-1 after it holds it
    reach = np.zeros_like(ends)
    for d in range(span):
        reach[:, : ends.shape[1] - d] |= ends[:, d:]
    detected = np.where(ends.any(axis=1), ends.argmax(axis=1), -1)
    return below & reach, detected


def _seasonal_max(values: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """(rows, 24): per hour of day, the largest value of the buckets within one hour of it."""
    out = np.zeros((values.shape[0], 24))
    for h in range(24):
        near = np.minimum((hours - h) % 24, (h - hours) % 24) <= 1
        out[:, h] = values[:, near].max(axis=1, initial=0.0)
    return out


def _distance(z: np.ndarray) -> np.ndarray:
    """Euclidean length of the robust z-scores, time of day left out."""
    return np.sqrt(np.square(z[..., :-2]).sum(axis=-1))


def _hhmm(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%H:%M")
