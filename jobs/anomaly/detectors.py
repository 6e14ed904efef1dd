"""The detectors. Each reads the scoring context and returns :class:`Finding` objects whose
reason a human can read; docs/detection.md lists every detector, its reason and its knobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from jobs.anomaly.findings import Finding, human_bytes, lower, workload_name
from jobs.anomaly.frames import FeatureFrame


@dataclass(frozen=True)
class Thresholds:
    """Detector knobs (see docs/detection.md, "Tuning")."""

    large_transfer_min_bytes: float = 100e6
    large_transfer_baseline_factor: float = 10.0
    beacon_min_events: int = 8
    beacon_max_bytes: float = 64e3
    beacon_max_cv: float = 0.2
    beacon_min_span: int = 600
    scan_min_pairs: int = 50
    scan_min_destinations: int = 30
    scan_baseline_factor: float = 3.0
    spike_z: float = 6.0
    spike_min_bytes: float = 50e6
    sustain_buckets: int = 12
    sustain_z: float = 3.0
    sustain_min_bytes: float = 20e6
    seasonal_min_days: int = 3
    multivariate_min_history: int = 144
    multivariate_margin: float = 0.01
    multivariate_quantile: float = 0.01
    multivariate_distance_factor: float = 2.0
    multivariate_min_buckets: int = 3
    multivariate_span_buckets: int = 6
    multivariate_sustained_factor: float = 1.25
    multivariate_sustained_min_buckets: int = 10
    multivariate_sustained_span_buckets: int = 12


@dataclass
class Context:
    """Everything the detectors need about one scoring run."""

    since: int
    until: int
    bucket: int
    classes: dict[str, str]  # workload -> GenAI class
    history: dict[str, int]  # workload -> active baseline buckets
    min_history: int
    base: FeatureFrame
    score: FeatureFrame  # starts early enough for rolling detectors; findings only from ``since``
    new_rows: dict[str, np.ndarray]  # external rows of the period to (workload, destination) pairs absent from the baseline
    known_providers: set[tuple[str, str]]
    thresholds: Thresholds = field(default_factory=Thresholds)

    def genai(self, workload: str) -> bool:
        return self.classes.get(workload, "none") != "none"

    def enough_history(self, workload: str) -> bool:
        return self.history.get(workload, 0) >= self.min_history

    def hourly_external_p99(self) -> np.ndarray:
        """Per workload: 99th percentile of bytes sent out of the cluster per hour in the baseline."""
        per_hour = max(1, 3600 // self.bucket)
        ext = self.base["ext_bytes_out"]
        n = ext.shape[1] // per_hour * per_hour
        if n == 0:
            return np.zeros(ext.shape[0])
        hourly = ext[:, :n].reshape(ext.shape[0], -1, per_hour).sum(axis=2)
        return np.percentile(hourly, 99, axis=1)

    def adjust(self, workload: str, severity: str) -> str:
        """Non-GenAI workloads are scored too but one severity lower, so they never drown GenAI alerts."""
        return severity if self.genai(workload) else lower(severity)


def _bucket_of(t: np.ndarray | int, bucket: int) -> np.ndarray | int:
    return (t // bucket) * bucket


def _clock(t: int) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M UTC")


class Detector:
    """A detector turns a :class:`Context` into findings."""

    name = "detector"

    def detect(self, ctx: Context) -> list[Finding]:
        raise NotImplementedError


# ---- first contacts: metadata endpoint, new destinations and their variants -------------------------


class FirstContactDetector(Detector):
    """Destinations leaving the cluster that the workload never reached in its baseline.

    One finding per (workload, destination), named after the strongest variant that applies:
    cloud metadata access, large transfer, beaconing, new LLM provider / model hub, or plain
    new public destination.
    """

    name = "first_contact"

    def detect(self, ctx: Context) -> list[Finding]:
        rows = ctx.new_rows
        if len(rows.get("workload", ())) == 0:
            return []
        p99 = dict(zip(ctx.base.workloads, ctx.hourly_external_p99(), strict=True))
        keys = np.char.add(np.char.add(rows["workload"].astype(str), "\x00"), rows["destination"].astype(str))
        order = np.lexsort((rows["window_start"], keys))
        keys = keys[order]
        cols = {k: v[order] for k, v in rows.items()}
        bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
        out = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            group = {k: v[a:b] for k, v in cols.items()}
            finding = self._judge(ctx, group, float(p99.get(str(group["workload"][0]), 0.0)))
            if finding is not None:
                out.append(finding)
        return out

    def _judge(self, ctx: Context, g: dict[str, np.ndarray], p99: float) -> Finding | None:
        t = ctx.thresholds
        workload, dest = str(g["workload"][0]), str(g["destination"][0])
        kind, category, provider = str(g["dest_kind"][0]), str(g["category"][0]), str(g["provider"][0])
        ns, name = workload_name(workload)
        ports = [int(p) for p in np.unique(g["dest_port"][~_isnull(g["dest_port"])])]
        port = ports[0] if len(ports) == 1 else None
        target = f"{dest}:{port}" if port is not None else dest
        buckets = sorted({int(b) for b in _bucket_of(g["window_start"].astype(np.int64), ctx.bucket)})
        sent = float(g["bytes_out"].sum())
        flows = int(g["flows"].sum())
        evidence = {"bytes_out": int(sent), "bytes_in": int(g["bytes_in"].sum()), "flows": flows,
                    "windows": int(len(g["window_start"])), "first_seen": int(g["first_seen"].min()),
                    "last_seen": int(g["last_seen"].max()), "ports": ports, "dest_kind": kind, "category": category,
                    "baseline_p99_bytes_per_hour": int(p99)}
        common = {"workload": workload, "dest_key": dest, "buckets": buckets, "evidence": evidence,
                  "destinations": [target], "dest_port": port}
        if kind == "cloud_metadata":
            return Finding(
                "cloud_metadata", score=float(flows), detected_bucket=buckets[0],
                severity="critical" if ctx.genai(workload) else "high",
                reason=(f"{name} in {ns} called the cloud metadata endpoint {target} {flows} times "
                        f"(first at {_clock(evidence['first_seen'])}), which it never did in its baseline; "
                        "pods can read the node's cloud credentials this way."),
                next_step=(f"Find the {name} pod and process that called {dest} (flowctl sql on flows for the period), "
                           "rotate the node role credentials if tokens were read, and block the endpoint for pods "
                           "(NetworkPolicy, IMDSv2 with hop limit 1)."),
                **common)
        threshold = max(t.large_transfer_min_bytes, t.large_transfer_baseline_factor * p99)
        if sent >= threshold:
            crossed = int(np.searchsorted(np.cumsum(g["bytes_out"]), threshold))
            detected = int(_bucket_of(int(g["window_start"][min(crossed, len(g["bytes_out"]) - 1)]), ctx.bucket))
            return Finding(
                "large_transfer_new_destination", score=sent / max(p99, 1.0), severity="critical",
                detected_bucket=detected,
                reason=(f"{name} in {ns} sent {human_bytes(sent)} to {target}, never contacted before; "
                        f"baseline p99 is {human_bytes(p99)} per hour of external egress."),
                next_step=(f"Check what the {name} pods sent to {dest} and who owns that address; isolate the pods with a "
                           "deny-egress NetworkPolicy if the transfer is not expected."),
                **common)
        if category in ("llm_api", "model_hub") and (workload, provider) not in ctx.known_providers:
            what = "the LLM API" if category == "llm_api" else "the model hub"
            severity = "high" if ctx.enough_history(workload) else "medium"
            return Finding(
                "new_llm_provider", score=sent, severity=ctx.adjust(workload, severity), detected_bucket=buckets[0],
                reason=(f"{name} in {ns} started calling {what} {provider} ({target}), a provider it never used "
                        f"before; {human_bytes(sent)} sent in {flows} flows."),
                next_step=(f"Confirm with the owners of {name} that {provider} is an approved provider (data-processing "
                           "agreement, key from the vault); if not, revoke the key and block egress to it."),
                **common)
        beacon = self._beacon(g, t)
        if beacon is not None:
            period, jitter, median_bytes, detected = beacon
            evidence.update({"period_s": period, "jitter_s": jitter, "median_bytes_per_contact": median_bytes})
            return Finding(
                "beaconing", score=period / max(jitter, 0.5), severity=ctx.adjust(workload, "high"),
                detected_bucket=int(_bucket_of(detected, ctx.bucket)),
                reason=(f"{name} in {ns} contacted {target}, never seen before, {flows} times at a "
                        f"regular {period:.0f} s interval (±{jitter:.1f} s) with small payloads "
                        f"({human_bytes(median_bytes)} each): this looks like command-and-control beaconing."),
                next_step=(f"Look for an unknown process or dependency in the {name} pods that calls {dest}; block the "
                           "destination and capture the traffic unless it is a known telemetry endpoint."),
                **common)
        if kind not in ("public", "unknown"):  # private and link-local hosts: only large transfers and beacons count
            return None
        severity = "medium" if ctx.enough_history(workload) else "low"
        return Finding(
            "new_public_destination", score=sent, severity=ctx.adjust(workload, severity), detected_bucket=buckets[0],
            reason=(f"{name} in {ns} contacted {target}, a public destination never seen before; "
                    f"{human_bytes(sent)} sent in {flows} flows."),
            next_step=(f"Confirm with the owners of {name} that {dest} is expected; add it to the workload's egress "
                       "allow-list, or block it."),
            **common)

    @staticmethod
    def _beacon(g: dict[str, np.ndarray], t: Thresholds) -> tuple[float, float, float, int] | None:
        n = len(g["last_seen"])
        if n < t.beacon_min_events or len(np.unique(g["dest_port"].astype(str))) > 2:
            return None
        if float(g["last_seen"].max() - g["last_seen"].min()) < t.beacon_min_span:
            return None
        per_window = g["bytes_out"] / np.maximum(g["flows"], 1.0)
        median_bytes = float(np.median(per_window))
        if median_bytes > t.beacon_max_bytes or float(np.median(g["flows"])) > 3:
            return None
        gaps = np.diff(np.sort(g["last_seen"].astype(np.int64))).astype(float)
        period = float(np.median(gaps))
        if period < 5:
            return None
        # Windows quantise the times: a contact may land in the next window, so gaps are judged
        # against the nearest multiple of the period, robustly.
        deviation = np.abs(gaps - np.maximum(np.round(gaps / period), 1.0) * period)
        jitter = float(np.median(deviation) * 1.4826)
        if jitter / period > t.beacon_max_cv or float(np.mean(deviation <= 2 * t.beacon_max_cv * period)) < 0.8:
            return None
        contacts = float(g["flows"].sum())
        span = float(g["last_seen"].max() - g["last_seen"].min())
        period = span / max(contacts - 1.0, 1.0)  # windows merge contacts; the count of flows does not
        return period, jitter, median_bytes, int(np.sort(g["last_seen"])[t.beacon_min_events - 1])


def _isnull(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None for v in values], dtype=bool)
    return np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), dtype=bool)


# ---- port scans and address sweeps ----------------------------------------------------------------


class ScanDetector(Detector):
    """Many distinct destination:port pairs (scan) or destinations (sweep) in one bucket."""

    name = "port_scan"

    def detect(self, ctx: Context) -> list[Finding]:
        t = ctx.thresholds
        s, base = ctx.score, ctx.base
        first = (ctx.since - s.lo) // s.bucket
        base_pairs = base["dest_ports"].max(axis=1) if base["dest_ports"].size else np.zeros(len(base.workloads))
        base_dests = base["destinations"].max(axis=1) if base["destinations"].size else np.zeros(len(base.workloads))
        pair_limit = np.maximum(t.scan_min_pairs, t.scan_baseline_factor * base_pairs)[:, None]
        dest_limit = np.maximum(t.scan_min_destinations, t.scan_baseline_factor * base_dests)[:, None]
        pairs, dests = s["dest_ports"][:, first:], s["destinations"][:, first:]
        fired = (pairs >= pair_limit) | (dests >= dest_limit)
        out = []
        for i in np.flatnonzero(fired.any(axis=1)):
            workload = s.workloads[i]
            ns, name = workload_name(workload)
            cells = np.flatnonzero(fired[i])
            peak = cells[np.argmax(pairs[i, cells])]
            sweep = dests[i, peak] >= dest_limit[i, 0] and pairs[i, peak] < pair_limit[i, 0]
            what = "an address sweep" if sweep else "a port scan"
            buckets = [int(s.starts[first + c]) for c in cells]
            out.append(Finding(
                "port_scan", workload, "*", buckets, score=float(pairs[i, peak] / max(base_pairs[i], 1.0)),
                severity=ctx.adjust(workload, "high"), detected_bucket=buckets[0],
                reason=(f"{name} in {ns} probed {int(pairs[i, peak])} destination:port pairs on "
                        f"{int(dests[i, peak])} destinations in {ctx.bucket // 60} minutes; its baseline maximum is "
                        f"{int(base_pairs[i])} pairs and {int(base_dests[i])} destinations: this looks like {what}."),
                next_step=(f"Find the process in the {name} pods that opened these connections; a notebook or agent "
                           "probing the cluster is usually compromised or misused, so quarantine it."),
                evidence={"pairs_per_bucket": [int(pairs[i, c]) for c in cells],
                          "destinations_per_bucket": [int(dests[i, c]) for c in cells],
                          "baseline_max_pairs": int(base_pairs[i]), "baseline_max_destinations": int(base_dests[i])}))
        return out


# ---- volume: robust z-score against the same hours of the baseline ---------------------------------


class VolumeDetector(Detector):
    """Bytes leaving the cluster per source pod, against a seasonal robust baseline.

    Spikes: one bucket far above the workload's usual volume at that hour. Sustained: the
    mean z-score over ``sustain_buckets`` stays high and every bucket of the run is above normal.
    """

    name = "volume"

    def baseline(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        """(centre, scale) per workload and hour of day, in log1p bytes per pod."""
        x = ctx.base.external_per_pod()
        hours = ctx.base.hours
        n_w = x.shape[0]
        days = x.shape[1] * ctx.bucket / 86_400
        center, scale = np.zeros((n_w, 24)), np.ones((n_w, 24))
        if x.shape[1] == 0:
            return center, scale
        seasonal = days >= ctx.thresholds.seasonal_min_days
        for h in range(24):
            if seasonal:
                distance = np.minimum((hours - h) % 24, (h - hours) % 24)
                ref = x[:, distance <= 1]
            else:
                ref = x
            med = np.median(ref, axis=1)
            mad = np.median(np.abs(ref - med[:, None]), axis=1) * 1.4826
            q95 = np.percentile(ref, 95, axis=1)
            center[:, h] = med
            scale[:, h] = np.maximum.reduce([mad, (q95 - med) / 1.645, np.full(n_w, 0.5)])
        return center, scale

    def detect(self, ctx: Context) -> list[Finding]:
        t = ctx.thresholds
        s = ctx.score
        index = {w: i for i, w in enumerate(ctx.base.workloads)}
        rows = np.array([index.get(w, -1) for w in s.workloads])
        center, scale = self.baseline(ctx)
        c = np.where(rows[:, None] >= 0, center[rows][:, s.hours], 0.0)
        sc = np.where(rows[:, None] >= 0, scale[rows][:, s.hours], 1.0)
        x = s.external_per_pod()
        z = (x - c) / sc
        pods = np.maximum(s["pods"], 1.0)
        usual = np.expm1(c) * pods
        excess = s["ext_bytes_out"] - usual
        judged = np.array([ctx.enough_history(w) for w in s.workloads])[:, None]
        first = (ctx.since - s.lo) // s.bucket
        spike = (z >= t.spike_z) & (excess >= t.spike_min_bytes) & judged
        k = t.sustain_buckets
        zc = np.clip(z, -5.0, 10.0)
        mean_z = _rolling_mean(zc, k)
        floor_ok = _rolling_mean((z >= 1.0).astype(float), k) >= 1.0
        excess_sum = _rolling_mean(np.maximum(excess, 0.0), k) * k
        sustained = (mean_z >= t.sustain_z) & floor_ok & (excess_sum >= t.sustain_min_bytes) & judged & ~spike
        out = []
        for detector, fired in (("volume_spike", spike), ("volume_sustained", sustained)):
            fired = fired[:, first:]
            for i in np.flatnonzero(fired.any(axis=1)):
                cells = np.flatnonzero(fired[i]) + first
                workload = s.workloads[i]
                out.append(self._finding(ctx, detector, workload, cells, z[i], s["ext_bytes_out"][i], usual[i],
                                         mean_z[i], excess_sum[i]))
        return out

    def _finding(self, ctx, detector, workload, cells, z, sent, usual, mean_z, excess_sum) -> Finding:
        s = ctx.score
        ns, name = workload_name(workload)
        peak = cells[np.argmax(z[cells])]
        buckets = [int(s.starts[c]) for c in cells]
        evidence = {"bytes_out_per_bucket": [int(sent[c]) for c in cells], "usual_per_bucket": [int(usual[c]) for c in cells],
                    "z": [round(float(z[c]), 2) for c in cells]}
        minutes = ctx.bucket // 60
        if detector == "volume_spike":
            ratio = sent[peak] / max(usual[peak], 1.0)
            return Finding(
                detector, workload, "*", buckets, score=float(z[peak]), detected_bucket=buckets[0],
                severity=ctx.adjust(workload, "high" if ratio >= 20 else "medium"),
                reason=(f"{name} in {ns} sent {human_bytes(sent[peak])} out of the cluster in {minutes} minutes, "
                        f"{ratio:.0f}x its usual {human_bytes(usual[peak])} at this hour (robust z {z[peak]:.1f})."),
                next_step=(f"Compare the destinations of {name}'s external traffic in this bucket with its baseline "
                           "(flowctl sql on flow_windows) and confirm the transfer with its owners."),
                evidence=evidence)
        k = ctx.thresholds.sustain_buckets
        window = slice(max(0, cells[0] - k + 1), cells[-1] + 1)
        total, normal = float(sent[window].sum()), float(usual[window].sum())
        hours = (window.stop - window.start) * ctx.bucket / 3600
        return Finding(
            detector, workload, "*", buckets, score=float(mean_z[peak]), detected_bucket=buckets[0],
            severity=ctx.adjust(workload, "medium"),
            reason=(f"{name} in {ns} has sent {total / max(normal, 1.0):.1f}x its usual external volume for "
                    f"{hours:.1f} h ({human_bytes(total)} against {human_bytes(normal)} usual at these hours)."),
            next_step=(f"Look for a slow transfer: list {name}'s external destinations by bytes for the period "
                       "(flowctl sql on flow_windows) and compare with the same hours on previous days."),
            evidence={**evidence, "mean_z": round(float(mean_z[peak]), 2), "excess_bytes": int(excess_sum[peak])})


def _rolling_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Trailing mean over k buckets along axis 1 (fewer at the start)."""
    c = np.cumsum(x, axis=1)
    out = c.copy()
    out[:, k:] = c[:, k:] - c[:, :-k]
    counts = np.minimum(np.arange(1, x.shape[1] + 1), k)
    return out / counts
