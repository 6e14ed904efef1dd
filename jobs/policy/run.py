"""One recommend run: evidence → rules → objects (validated) → replay → stability → files, report, lake rows."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from jobs.policy import render
from jobs.policy.learn import Alert, read_alert_file, read_evidence, read_lake_alerts
from jobs.policy.model import Options, Recommendation, build
from jobs.policy.replay import ReplayResult, replay
from jobs.policy.report import RunSummary, html_report, markdown
from jobs.policy.stability import WorkloadStatus, advance, load_state, save_state
from jobs.policy.validate import validate_all
from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter, write_parquet

TABLE = "policy_recommendations"


@dataclass
class RunResult:
    summary: RunSummary
    objects: int
    output: Path
    lake_file: str | None


def policy_objects(rec: Recommendation, options: Options) -> dict[str, list[dict]]:
    """Output file name → objects."""
    k8s = [render.network_policy(p, rec) for p in rec.policies]
    calico = [render.calico_tier(options)] + [render.calico_policy(p, options, staged=False) for p in rec.policies]
    staged = [render.calico_policy(p, options, staged=True) for p in rec.policies]
    # GlobalNetworkSets first: the Calico policies' domain rules select them.
    return {"networkpolicies.yaml": k8s, "calico-globalnetworksets.yaml": render.calico_domain_sets(rec, options),
            "calico-networkpolicies.yaml": calico, "calico-staged.yaml": staged, "guardrails.yaml": render.guardrails(rec, options)}


def recommendation_rows(summary: RunSummary, generated_at: int) -> pa.Table:
    """The run as policy_recommendation.v1 rows, one per rule."""
    rows = []
    rp = summary.replay
    for p in summary.rec.policies:
        st = summary.statuses[p.workload]
        for r in p.rules:
            c = rp.per_rule.get((p.workload, r.key)) if rp else None
            rows.append({
                "run_id": summary.run_id, "generated_at": generated_at, "since": summary.rec.since, "until": summary.rec.until,
                "namespace": p.namespace, "workload": p.workload, "policy_name": p.policy_name, "selector": list(p.selector.items()),
                "genai_class": p.genai, "status": st.status, "unchanged_runs": st.unchanged_runs, "direction": r.direction,
                "rule_key": r.key, "peer_kind": r.peer.kind, "peer": r.peer.describe(), "peer_namespace": r.peer.namespace,
                "peer_selector": list(r.peer.selector) if r.peer.kind == "pods" else None, "domains": list(r.domains) or None,
                "ports": [x.text() for x in r.ports], "flows": r.flows, "bytes": r.bytes, "first_seen": r.first_seen, "last_seen": r.last_seen,
                "builtin": r.builtin, "change": "added" if r.key in st.added else "unchanged",
                "replay_flows_allowed": c.flows_allowed if c else (0 if rp else None), "replay_bytes_allowed": c.bytes_allowed if c else (0 if rp else None),
            })
    return pa.Table.from_pylist(rows, schema=arrow_schema("policy_recommendation.v1"))


def write_lake_rows(lake: str, table: pa.Table, since: int, until: int) -> str | None:
    """Write the rows under policy_recommendations/date=/hour= of ``until``; a rerun of the same period replaces its file."""
    if table.num_rows == 0:
        return None
    writer = ParquetLakeWriter(lake)
    ts = datetime.fromtimestamp(max(until - 1, 0), UTC)
    directory = f"{writer.table_dir(TABLE)}/date={ts:%Y-%m-%d}/hour={ts:%H}"
    writer.fs.create_dir(directory, recursive=True)
    final = f"{directory}/recommend+0+{since}+{until}.parquet"
    tmp = f"{directory}/.recommend+0+{since}+{until}.{uuid.uuid4().hex[:8]}.tmp"
    with writer.fs.open_output_stream(tmp) as out:
        write_parquet(table, out)
    writer.fs.move(tmp, final)
    return final


def recommend(con, lake: str | None, since: int, until: int, output: Path, state_dir: Path, options: Options,
              exclude_file: Path | None = None, replay_since: int | None = None, replay_until: int | None = None,
              write_lake: bool = True, progress=None) -> RunResult:
    """Learn from flows in [since, until), write YAML, reports and lake rows; returns what was done."""
    say = progress or (lambda _msg: None)
    if until <= since:
        raise ValueError("--until must be after --since")
    alerts: list[Alert] = read_lake_alerts(con, since, until)
    if exclude_file is not None:
        if not exclude_file.is_file():
            raise ValueError(f"no such alerts file: {exclude_file}")
        alerts += read_alert_file(exclude_file)
    say(f"learning from flows {since}..{until} ({len(alerts)} alerts to exclude)")
    evidence = read_evidence(con, since, until, alerts)
    rec = build(evidence, since, until, options)
    objects = policy_objects(rec, options)
    count = validate_all([o for objs in objects.values() for o in objs])
    say(f"{len(rec.policies)} workloads, {count} objects validated")
    rs, ru = replay_since if replay_since is not None else since, replay_until if replay_until is not None else until
    result: ReplayResult = replay(con, rec, rs, ru, alerts)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    state_path = state_dir / "policy" / "state.json"
    state, statuses, gone = advance(load_state(state_path), rec, options.stable_runs, run_id)
    output.mkdir(parents=True, exist_ok=True)
    files = []
    for name, objs in objects.items():
        if objs:
            (output / name).write_text(render.dump_yaml(objs))
            files.append(name)
    summary = RunSummary(run_id, rec, statuses, gone, result, files + ["report.md", "report.html"])
    (output / "report.md").write_text(markdown(summary))
    (output / "report.html").write_text(html_report(summary))
    lake_file = write_lake_rows(lake, recommendation_rows(summary, int(time.time())), since, until) if (write_lake and lake) else None
    save_state(state_path, state)
    return RunResult(summary, count, output, lake_file)


__all__ = ["recommend", "policy_objects", "recommendation_rows", "RunResult", "WorkloadStatus"]
