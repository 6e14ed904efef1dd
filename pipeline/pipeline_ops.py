"""Bounded end-to-end runs: `flowctl ingest` and `flowctl demo`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from pipeline.agent.agent import FlowAgent
from pipeline.config import Settings
from pipeline.conform import ConformResult
from pipeline.query.output import render
from pipeline.query.views import connect, query_table
from pipeline.runner import LocalStack, StackError


@dataclass
class IngestReport:
    records: int
    published: int
    rejected_by_agent: int
    in_lake: int
    rejected_by_worker: int
    windows: int
    seconds: float
    lake: str

    @property
    def lost(self) -> int:
        return self.published - self.in_lake - self.rejected_by_worker

    def summary(self) -> str:
        rate = self.records / self.seconds if self.seconds else 0.0
        return (f"{self.records:,} records read: {self.in_lake:,} in the lake, "
                f"{self.rejected_by_agent + self.rejected_by_worker:,} in the DLQ, "
                f"{self.windows:,} window rows; {self.seconds:.1f}s ({rate:,.0f} records/s); lake: {self.lake}")


def push(stack: LocalStack, batches: Iterable[ConformResult], origin: str, progress: Progress | None = None,
         task=None) -> FlowAgent:
    """Publish batches through a running stack, then wait until the lake has all of it."""
    agent = FlowAgent(stack.settings)
    try:
        for result in batches:
            agent.dead_letter(result.rejects, origin=origin)
            agent.publish(result.table)
            stack.check_alive()
            if progress is not None:
                progress.update(task, advance=result.table.num_rows + len(result.rejects))
        agent.finish(flush_windows=True)
    finally:
        agent.close()
    stack.wait_until_processed()
    return agent


def account(stack: LocalStack, agent: FlowAgent) -> tuple[int, int, int]:
    """Rows of this run's batches in the lake: (flows, worker dead letters, window rows)."""
    con = connect(stack.settings.lake)
    con.register("run_batches", pa.table({"batch_id": agent.publisher.batch_ids}))
    in_lake = con.execute("SELECT count(*) FROM flows JOIN run_batches USING (batch_id)").fetchone()[0]
    dlq = con.execute("SELECT count(*) FROM dlq JOIN run_batches USING (batch_id)").fetchone()[0]
    windows = con.execute("SELECT count(*) FROM flow_windows").fetchone()[0]
    return in_lake, dlq, windows


def ingest_files(settings: Settings, files: list[Path], timeout: float = 600.0,
                 console: Console | None = None, fmt: str = "ndjson") -> IngestReport:
    """Push files in format ``fmt`` (an adapter of pipeline.agent.sources) through a local stack."""
    from pipeline.agent.sources import adapter_for

    adapter = adapter_for(fmt, settings.cluster, settings.node or None)
    started = time.monotonic()
    with LocalStack(settings) as stack:
        def batches():
            for path in files:
                with path.open("rb") as fh:
                    lines: list[bytes] = []
                    first = 1
                    for number, line in enumerate(fh, start=1):
                        lines.append(line.rstrip(b"\r\n"))
                        if len(lines) >= 20_000:
                            yield adapter.parse(lines, first)
                            first, lines = number + 1, []
                    if lines:
                        yield adapter.parse(lines, first)

        with Progress(TextColumn("{task.description}"), TextColumn("{task.completed:,} records"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task("ingesting", total=None)
            agent = push(stack, batches(), origin="file:" + ",".join(str(f) for f in files),
                         progress=progress, task=task)
        in_lake, dlq, windows = account(stack, agent)
    s = agent.stats
    return IngestReport(s.records, s.published, s.rejected, in_lake, dlq, windows,
                        time.monotonic() - started, settings.lake)


DEMO_QUERIES = {
    "Top egress talkers in the last hour (bytes sent out of the cluster)": """
        SELECT source_workload, source_genai_class AS class,
               round(sum(bytes_out) / 1e6, 1) AS mb_out, sum(num_flows) AS flows,
               count(DISTINCT destination) AS destinations
        FROM flow_windows WHERE dest_kind <> 'in_cluster' AND window_start >= ?
        GROUP BY ALL ORDER BY mb_out DESC LIMIT 10""",
    "GenAI workloads' external destinations in the last hour": """
        SELECT source_workload, source_genai_class AS class, destination, dest_category AS category,
               dest_port AS port, round(sum(bytes_out) / 1e6, 2) AS mb_out, sum(num_flows) AS flows
        FROM flow_windows
        WHERE source_genai_class <> 'none' AND dest_kind <> 'in_cluster' AND window_start >= ?
        GROUP BY ALL ORDER BY mb_out DESC LIMIT 15""",
}
ALERTS_QUERY = """
    SELECT severity, detector, source_workload, reason
    FROM alerts QUALIFY row_number() OVER (PARTITION BY id ORDER BY detected_at DESC) = 1
    ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END, detector"""
POLICY_QUERY = """
    SELECT namespace, count(DISTINCT workload) AS workloads, count(*) AS rules,
           sum(CASE WHEN direction = 'egress' THEN 1 ELSE 0 END) AS egress_rules
    FROM policy_recommendations GROUP BY ALL ORDER BY namespace"""


def _flowctl(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli", "--lake", settings.lake, "--state-dir", settings.state_dir, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StackError(f"flowctl {args[0]} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return result


def run_demo(settings: Settings, hours: float, rate: float, seed: int, keep: bool, console: Console,
             history_hours: float = 26.0) -> None:
    """History, a live hour with incidents through the pipeline, detection, recommendation, and what to look at."""
    from jobs.anomaly.scenarios import LakeBuilder
    from pipeline.agent.sources.synthetic import SyntheticCluster

    lake = Path(settings.lake)
    if lake.exists() and not keep:
        shutil.rmtree(lake)
    for stale in ("anomaly", "policy"):
        shutil.rmtree(Path(settings.state_dir) / stale, ignore_errors=True)
    end = int(time.time()) // 60 * 60
    start = end - int(hours * 3600)
    history_start = start - int(history_hours * 3600)
    cluster = SyntheticCluster(seed=seed, cluster="demo")
    inventory = Path(settings.state_dir) / "demo-inventory.json"
    inventory.parent.mkdir(parents=True, exist_ok=True)
    inventory.write_bytes(orjson.dumps(cluster.inventory(), option=orjson.OPT_INDENT_2))
    # The worker enriches from the inventory and the synthetic cluster's address ranges.
    settings = settings.with_overrides(inventory=str(inventory.resolve()), pod_cidrs="10.244.0.0/16",
                                       service_cidrs="10.96.0.0/12", node_cidrs="10.0.0.0/24")
    started = time.monotonic()
    console.print(f"[bold]flowctl demo[/]: a synthetic {len(cluster.workloads)}-workload cluster "
                  f"(~{rate:g} flow records/s, following the time of day)")

    console.print(f"[bold]1/4[/] {history_hours:g}h of normal history written straight into the lake "
                  "(the baseline detection learns from) …")
    builder = LakeBuilder(lake, "history")
    history_flows = 0
    for table in cluster.generate(history_start, start, rate=rate, batch_rows=200_000):
        builder.add(table)
        history_flows += table.num_rows
    builder.close()
    console.print(f"    {history_flows:,} flows of history")

    console.print(f"[bold]2/4[/] the last {hours:g}h, with four incidents injected, through agent → embedded Kafka → "
                  "Faust worker → Parquet sink …")
    with LocalStack(settings) as stack:
        with Progress(TextColumn("    {task.description}"), TextColumn("{task.completed:,} flows published"),
                      TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task("streaming", total=None)
            agent = push(stack, (ConformResult(t) for t in cluster.generate(start, end, rate=rate, anomalies=True)),
                         origin="synthetic", progress=progress, task=task)
        in_lake, dlq, _ = account(stack, agent)
    lost = agent.stats.published - in_lake - dlq
    if lost:
        raise StackError(f"{lost:,} of {agent.stats.published:,} flows reached neither the lake nor the DLQ")
    console.print(f"    {agent.stats.published:,} flows → {in_lake:,} rows in [bold]flows[/], {dlq:,} dead letters")

    console.print("[bold]3/4[/] anomaly detection over the last hour (flowctl detect) …")
    alerts_file = Path(settings.state_dir) / "demo-alerts.jsonl"
    if not keep:
        alerts_file.unlink(missing_ok=True)  # the file keeps every alert id it has seen: start with this run's
    _flowctl(settings, "detect", "--since", str(start), "--until", str(end), "--output", str(alerts_file))
    console.print("[bold]4/4[/] policy recommendation from all of it, alerts excluded (flowctl recommend) …")
    policies = Path(settings.state_dir) / "demo-policies"
    shutil.rmtree(policies, ignore_errors=True)
    _flowctl(settings, "recommend", "--since", str(history_start), "--until", str(end), "--output", str(policies))
    seconds = time.monotonic() - started

    con = connect(settings.lake)
    for title, query in DEMO_QUERIES.items():
        render(query_table(con, query, [start]), "table", out=console.file, title=title)
    render(query_table(con, ALERTS_QUERY), "table", out=console.file, title="Alerts (flowctl detect)")
    render(query_table(con, POLICY_QUERY), "table", out=console.file, title="Recommended policies (flowctl recommend)")
    console.print(f"Done in {seconds:.0f}s.")
    console.print(f"Lake: [bold]{lake.resolve()}[/]  (tables flows, flow_windows, dlq, alerts, policy_recommendations)")
    console.print(f"Alerts as JSON Lines: {alerts_file.resolve()}")
    console.print(f"Policies, YAML and report: {policies.resolve()}")
    console.print(f"Inventory of the synthetic pods: {inventory.resolve()}")
    console.print(f"Try: flowctl --lake {settings.lake} query top-talkers --since 2h")
