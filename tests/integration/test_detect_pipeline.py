"""Detection on a lake built by the real pipeline (agent → embedded Kafka → worker → sink)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from jobs.anomaly.detect import DetectOptions, detect_lake
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import Settings
from pipeline.conform import ConformResult
from pipeline.pipeline_ops import push
from pipeline.runner import LocalStack
from pipeline.stream.enrich import stable_workload

pytestmark = pytest.mark.integration

T0 = 1_795_000_000 // 3600 * 3600


def test_injected_incidents_are_found_in_a_pipeline_built_lake(tmp_path: Path) -> None:
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=2,
                        idle_flush_seconds=1.0, sink_flush_seconds=0.5)
    gen = SyntheticCluster(seed=5, cluster="it")
    since, until = T0 + 2 * 3600, T0 + 3 * 3600
    tables = [*gen.generate(T0, since, rate=10), *gen.generate(since, until, rate=10, anomalies=True)]
    with LocalStack(settings) as stack:
        push(stack, (ConformResult(t) for t in tables), origin="test")
    options = DetectOptions(since=since, until=until, lookback=2 * 3600, min_history=12)
    alerts = detect_lake(settings.lake, options, settings.state_dir).alerts
    found = {(a["source_workload"], a["detector"]) for a in alerts}
    truth = {t["kind"]: stable_workload(pa.array([t["namespace"]]), pa.array([t["name_aggr"]]))[0].as_py()
             for t in gen.ground_truth_anomalies(since, until)}
    assert (truth["cloud_metadata_access"], "cloud_metadata") in found
    assert (truth["exfiltration"], "large_transfer_new_destination") in found
    assert (truth["beaconing"], "beaconing") in found
    assert (truth["port_scan"], "port_scan") in found
    assert len(alerts) <= 6, [a["reason"] for a in alerts]
