"""Detection on a lake built by the real pipeline (agent → embedded Kafka → worker → sink)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from jobs.anomaly.detect import DetectOptions, detect_lake
from pipeline.stream.enrich import stable_workload

pytestmark = pytest.mark.integration


def test_injected_incidents_are_found_in_a_pipeline_built_lake(incident_lake, tmp_path: Path) -> None:
    since, until = incident_lake.since, incident_lake.until
    options = DetectOptions(since=since, until=until, lookback=2 * 3600, min_history=12)
    # Detection only reads the shared lake; its models go to a state directory of this test.
    alerts = detect_lake(incident_lake.settings.lake, options, str(tmp_path / "state")).alerts
    found = {(a["source_workload"], a["detector"]) for a in alerts}
    truth = {t["kind"]: stable_workload(pa.array([t["namespace"]]), pa.array([t["name_aggr"]]))[0].as_py()
             for t in incident_lake.cluster.ground_truth_anomalies(since, until)}
    assert (truth["cloud_metadata_access"], "cloud_metadata") in found
    assert (truth["exfiltration"], "large_transfer_new_destination") in found
    assert (truth["beaconing"], "beaconing") in found
    assert (truth["port_scan"], "port_scan") in found
    assert len(alerts) <= 6, [a["reason"] for a in alerts]
