"""The multivariate detector: a changed destination mix at normal volume, persistence, one-sided amounts, merging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from jobs.anomaly.alerts import build_alerts
from jobs.anomaly.findings import Finding
from jobs.anomaly.model import _persistent
from jobs.anomaly.scenarios import evaluate
from pipeline.sink.lake import ParquetLakeWriter
from tests.test_anomaly import SINCE, T0, UNTIL, benign, run

DIVERTED = (SINCE + 3600, SINCE + 3 * 3600)


def lake_with(tmp_path: Path, change) -> str:
    """The benign lake of test_anomaly with ``change`` applied to its rows."""
    table = change(pa.concat_tables(benign(T0, UNTIL)))
    ParquetLakeWriter(str(tmp_path / "lake")).write("flow_windows", "test", 0, 0, table.num_rows - 1, table)
    return str(tmp_path / "lake")


def _rag_api(table: pa.Table) -> pa.Array:
    return pc.and_(pc.equal(table["source_workload"], "genai-prod/rag-api"),
                   pc.and_(pc.greater_equal(table["window_start"], DIVERTED[0]), pc.less(table["window_start"], DIVERTED[1])))


def _rag_api_db(table: pa.Table) -> pa.Array:
    return pc.and_(_rag_api(table), pc.equal(table["destination"], "x/db"))


def divert(table: pa.Table) -> pa.Table:
    """rag-api's in-cluster traffic goes, byte for byte, to the LLM API it already uses."""
    moved = _rag_api_db(table)
    rows = table.filter(moved)
    for name, value in (("destination", "api.openai.com"), ("dest_kind", "public"), ("dest_category", "llm_api"),
                        ("dest_namespace", "-"), ("dest_port", 443)):
        i = rows.schema.get_field_index(name)
        rows = rows.set_column(i, rows.schema.field(i), pa.array([value] * rows.num_rows, rows.schema.field(i).type))
    return pa.concat_tables([table.filter(pc.invert(moved)), rows])


def quiet(table: pa.Table) -> pa.Table:
    """For two hours rag-api makes one small database call per 5 minutes and nothing else: less egress, no alert."""
    rag = _rag_api(table)
    keep = pc.and_(_rag_api_db(table), pc.equal(pc.subtract(table["window_start"],
                                                            pc.multiply(pc.divide(table["window_start"], 300), 300)), 0))
    calls = table.filter(keep)
    for name in ("bytes_out", "bytes_in", "packets_out", "packets_in", "num_flows", "flow_records"):
        i = calls.schema.get_field_index(name)
        column = pc.max_element_wise(pc.divide(calls[name], 5), pa.scalar(1, calls.schema.field(i).type))
        calls = calls.set_column(i, calls.schema.field(i), column.cast(calls.schema.field(i).type))
    return pa.concat_tables([table.filter(pc.invert(rag)), calls])


def test_a_changed_destination_mix_at_normal_volume_is_caught_by_the_multivariate_model_alone(tmp_path: Path) -> None:
    alerts = run(lake_with(tmp_path, divert))
    assert [(a["detector"], a["source_workload"]) for a in alerts] == [("multivariate", "genai-prod/rag-api")], \
        [a["reason"] for a in alerts]
    a = alerts[0]
    assert DIVERTED[0] <= a["start_time"] < a["end_time"] <= DIVERTED[1] + 300
    assert a["buckets"] >= 12
    assert "share that stays in the cluster" in a["reason"] and "as any baseline bucket at this hour" in a["reason"]
    evidence = orjson.loads(a["evidence"])["detectors"]["multivariate"]
    base = evidence["baseline"]
    assert all(score < base["low_score"] for score in evidence["isolation_scores"])
    usual = max(base["max_distance_by_hour"][(b % 86_400) // 3600] for b in range(*DIVERTED, 300))
    assert min(evidence["distances"]) > usual


def test_less_traffic_than_usual_is_not_an_alert(tmp_path: Path) -> None:
    assert run(lake_with(tmp_path, quiet)) == []


def test_isolated_odd_buckets_do_not_fire_but_a_persistent_change_does() -> None:
    below = np.zeros((3, 20), dtype=bool)
    below[0, [2, 9, 16]] = True  # one odd bucket every 35 minutes
    below[1, [4, 6, 8, 15]] = True  # three within six buckets, and a stray one later
    below[2, [5, 7]] = True
    fired, detected = _persistent(below, k=3, span=6)
    assert not fired[0].any() and not fired[2].any()
    assert np.flatnonzero(fired[1]).tolist() == [4, 6, 8]
    assert detected.tolist() == [-1, 8, -1]


def test_overlapping_volume_and_multivariate_findings_are_one_incident() -> None:
    start = SINCE
    common = {"workload": "genai-dev/jupyter", "dest_key": "*", "reason": "r", "next_step": "n"}
    volume = Finding("volume_sustained", buckets=[start + i * 300 for i in range(10, 20)], score=4.0, severity="medium",
                     detected_bucket=start + 10 * 300, **common)
    mv = Finding("multivariate", buckets=[start + i * 300 for i in range(3, 20)], score=0.7, severity="low",
                 detected_bucket=start + 5 * 300, **common)
    (alert,) = build_alerts([volume, mv], bucket=300, merge_gap=1800, until=start + 6000, classes={}, history={},
                            min_history=0, cluster={})
    evidence = orjson.loads(alert["evidence"])
    assert alert["detector"] == "volume_sustained" and alert["start_time"] == start + 3 * 300
    assert sorted(evidence["detectors"]) == ["multivariate", "volume_sustained"]
    assert evidence["first_detected_by"] == "multivariate"
    assert evidence["first_detection_bucket_end"] == start + 6 * 300


def test_the_evaluation_scenario_only_the_multivariate_model_catches(tmp_path: Path) -> None:
    figures = evaluate(tmp_path / "eval", kinds=("diverted_inference",)).as_dict()
    benign, diverted = figures["scenarios"]
    assert benign["alerts"] == 0
    assert diverted["detected"] and diverted["false_positives"] == 0
    assert diverted["contributors"] == ["multivariate"] and diverted["first_detector"] == "multivariate"
    (mv,) = [d for d in figures["detectors"] if d["detector"] == "multivariate"]
    assert mv["incidents_only"] == 1


def test_amounts_are_judged_one_sided_and_the_mix_two_sided() -> None:
    from jobs.anomaly.frames import MODEL_FEATURES, WorkloadNorm

    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, (1, 100, len(MODEL_FEATURES)))
    norm = WorkloadNorm.fit(base, np.ones((1, 100), dtype=bool))
    z = norm.apply(np.full((1, 1, len(MODEL_FEATURES)), -20.0))[0, 0]
    by_name = dict(zip(MODEL_FEATURES, z, strict=True))
    assert by_name["log_bytes_out_per_pod"] == by_name["log_destinations"] == 0.0, "less traffic is not odd"
    assert by_name["share_in_cluster"] < -5 and by_name["log_bytes_per_flow"] < -5, "a changed mix is, either way"
