"""The lake on S3-compatible storage, against a local S3 server (moto's server mode) started here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from jobs.lake.maintenance import compact, retain
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import Settings
from pipeline.conform import ConformResult
from pipeline.pipeline_ops import push
from pipeline.query.saved import run_saved
from pipeline.query.views import connect
from pipeline.runner import LocalStack
from pipeline.sink.lake import FileRange, ParquetLakeWriter
from tests.conftest import free_port
from tests.integration.test_sink_faults import enriched_batches, lake_rows, run_through_fault, truth

pytestmark = pytest.mark.integration

TOPIC = "flows.enriched.v1"
T0 = 1_795_737_600  # 2026-11-27T00:00:00Z
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the local S3 server did not start")
            time.sleep(0.1)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def bucket(s3_endpoint, request) -> str:
    name = "lake-" + request.node.name.replace("_", "-")[:40].lower().strip("-")
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint.split("://")[1], scheme="http", region="us-east-1",
                           allow_bucket_creation=True)
    fs.create_dir(name)
    return f"s3://{name}/lake"


def flows(first_id: int, n: int, start: int = T0) -> pa.Table:
    return pa.table({"end_time": pa.array([start + i for i in range(n)], pa.int64()),
                     "id": pa.array(range(first_id, first_id + n), pa.int64()),
                     "source_workload": pa.array(["genai-prod/vllm"] * n)})


def test_writer_views_compaction_and_retention_on_s3(s3_endpoint, bucket) -> None:
    writer = ParquetLakeWriter(bucket, s3_endpoint=s3_endpoint, s3_region="us-east-1")
    for b in range(4):
        writer.write("flows", TOPIC, 0, b * 10, b * 10 + 9, flows(b * 100, 100))
    # a file written before a column was added, then one after
    writer.write("flows", TOPIC, 1, 0, 0, flows(1000, 5).append_column("dest_category", pa.array(["llm_api"] * 5)))
    assert writer.last_range("flows", TOPIC, 0) == FileRange(30, 39)
    names = sorted(f.path.rsplit("/", 1)[1] for f in writer.lake_files("flows"))
    assert names == sorted([f"{TOPIC}+0+{b * 10}+{b * 10 + 9}.parquet" for b in range(4)] + [f"{TOPIC}+1+0+0.parquet"])

    con = connect(bucket, s3_endpoint=s3_endpoint, s3_region="us-east-1", read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT id), count(dest_category) FROM flows").fetchone() == (405, 405, 5)
    assert con.execute("SELECT DISTINCT date, hour FROM flows").fetchall() == [("2026-11-27", 0)]
    with pytest.raises(Exception, match="disabled by configuration"):
        con.execute("SELECT * FROM read_csv('/etc/passwd')")

    report = compact(writer, ["flows"], now=T0 + 86400)
    assert report.merged_files == 3
    assert writer.last_range("flows", TOPIC, 0) == FileRange(30, 39)
    con = connect(bucket, s3_endpoint=s3_endpoint, s3_region="us-east-1", read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM flows").fetchone() == (405, 405)

    assert retain(writer, days=1, now=T0 + 86400) == []
    assert len(retain(writer, days=0, now=T0 + 2 * 86400)) == 1
    assert writer.lake_files("flows") == []


def test_sql_and_saved_query_cli_on_an_s3_lake(s3_endpoint, bucket, tmp_path: Path) -> None:
    writer = ParquetLakeWriter(bucket, s3_endpoint=s3_endpoint)
    writer.write("flows", TOPIC, 0, 0, 9, flows(0, 50))
    env = {**os.environ, "FLOWCTL_LAKE": bucket, "FLOWCTL_S3_ENDPOINT": s3_endpoint, "FLOWCTL_S3_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "sql", "SELECT count(*) AS n FROM flows", "-f", "csv"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['"n"', "50"]


def test_sink_writes_to_s3_exactly_once(s3_endpoint, bucket, tmp_path: Path) -> None:
    """Agent → embedded broker → worker → sink into S3, then saved queries over it."""
    settings = Settings(lake=bucket, state_dir=str(tmp_path / "state"), partitions=2, idle_flush_seconds=1.0,
                        sink_flush_seconds=0.5, s3_endpoint=s3_endpoint, s3_region="us-east-1")
    gen = SyntheticCluster(seed=4, cluster="s3")
    with LocalStack(settings) as stack:
        agent = push(stack, (ConformResult(t) for t in gen.generate(T0, T0 + 600, rate=20)), origin="test")
        published = agent.stats.published
    con = connect(bucket, s3_endpoint=s3_endpoint, s3_region="us-east-1", read_only=True)
    assert con.execute("SELECT count(*) FROM flows").fetchall() == [(published,)]
    talkers = run_saved(con, "top-talkers", T0, T0 + 3600).to_pylist()
    assert talkers and sum(r["flows"] for r in talkers) > 0


class FlakyS3Proxy:
    """A TCP proxy in front of the S3 server; while failing it answers every request with HTTP 500
    and cuts the connections it carries (the store is not ours, so the fault goes at its boundary)."""

    def __init__(self, endpoint: str) -> None:
        self.target = ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.failing = False
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.failing:
            with client:
                client.recv(65536)
                client.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        upstream = socket.create_connection(self.target)
        self.open += [client, upstream]
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def fail(self) -> None:
        self.failing = True
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.open.clear()

    def heal(self) -> None:
        self.failing = False

    def close(self) -> None:
        self.fail()
        self.listener.close()


def test_s3_errors_stop_commits_and_lose_nothing_once_the_store_answers(s3_endpoint, bucket, tmp_path: Path) -> None:
    proxy = FlakyS3Proxy(s3_endpoint)
    tables = enriched_batches(rows=20_000, batch_rows=500, seed=7)
    settings = Settings(lake=bucket, state_dir=str(tmp_path / "state"), partitions=3, sink_flush_seconds=0.2,
                        s3_endpoint=proxy.endpoint, s3_region="us-east-1")
    direct = ParquetLakeWriter(bucket, s3_endpoint=s3_endpoint, s3_region="us-east-1")
    try:
        with LocalStack(settings, worker=False, sink=False) as stack:
            writer = ParquetLakeWriter.from_settings(stack.settings)
            problems = list(run_through_fault(stack.settings, writer, proxy.fail, proxy.heal,
                                              lambda: [f.path for f in direct.lake_files("flows")], tables))
    finally:
        proxy.close()
    assert problems == []
    assert lake_rows(bucket, s3_endpoint=s3_endpoint, s3_region="us-east-1") == truth(tables)
