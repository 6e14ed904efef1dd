"""Saved analyst queries: answers on a lake with known rows, time ranges, safe parameters, the CLI verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from pipeline import topics
from pipeline.query.saved import SavedQueryError, get, run_saved, saved_queries
from pipeline.query.views import connect
from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter

DAY = 86400
T0 = 1_795_737_600  # 2026-11-27T00:00:00Z
NAMES = {"top-talkers", "internet-egress", "genai-destinations", "new-destinations", "denied-by-policy", "namespace-matrix"}


def window(ws: int, src: str, dst: str, kind: str = "in_cluster", bytes_out: int = 0, flows: int = 1,
           action: str = "allow", genai: str = "none", category: str | None = None, port: int = 443) -> dict:
    src_ns = src.split("/")[0]
    dst_ns = dst.split("/")[0] if kind == "in_cluster" else "-"
    return {"window_start": ws, "window_end": ws + 60, "revision": 0, "cluster": "t", "source_namespace": src_ns,
            "source_workload": src, "source_genai_class": genai, "dest_namespace": dst_ns, "destination": dst,
            "dest_kind": kind, "dest_category": category or ("in_cluster" if kind == "in_cluster" else "other"),
            "dest_genai_class": "none", "dest_port": port, "proto": "tcp", "action": action,
            "bytes_in": bytes_out // 10, "bytes_out": bytes_out, "packets_in": 1, "packets_out": 1, "num_flows": flows,
            "flow_records": flows, "first_seen": ws + 1, "last_seen": ws + 59, "emitted_at": ws + 200}


def write(writer: ParquetLakeWriter, table: str, rows: list[dict], offset: int) -> None:
    # The contract's column types, for the columns these rows have (later schema additions read as null).
    full = arrow_schema("flow_window.v1" if table == "flow_windows" else "flow_enriched.v1")
    schema = pa.schema([f for f in full if f.name in rows[0]])
    writer.write(table, topics.WINDOWED if table == "flow_windows" else topics.ENRICHED, 0, offset, offset,
                 pa.Table.from_pylist(rows, schema=schema))


ROWS = [
    # day -3 (history): vllm already talked to huggingface.co
    window(T0 - 3 * DAY, "genai-prod/vllm", "huggingface.co", "public", 500, genai="inference", category="model_hub"),
    # the day under test
    window(T0 + 60, "genai-prod/vllm", "huggingface.co", "public", 1_000, genai="inference", category="model_hub"),
    window(T0 + 120, "genai-prod/vllm", "api.openai.com", "public", 4_000, 2, genai="inference", category="llm_api"),
    window(T0 + 180, "genai-prod/rag-api", "api.anthropic.com", "public", 7_000, 3, genai="agent/app", category="llm_api"),
    window(T0 + 180, "genai-prod/rag-api", "genai-prod/vllm", "in_cluster", 9_000, 5),
    window(T0 + 240, "shop/frontend", "shop/cart", "in_cluster", 20_000, 7),
    window(T0 + 240, "shop/frontend", "api.stripe.com", "public", 300, 1),
    window(T0 + 300, "shop/frontend", "evil.example", "public", 50, 1, action="deny"),
    window(T0 + 360, "shop/cart", "10.0.0.5", "private", 600, 1),
    # later revision of a window: additive, must be summed
    {**window(T0 + 60, "genai-prod/vllm", "huggingface.co", "public", 10, genai="inference", category="model_hub"), "revision": 1},
    # outside the range under test (next day)
    window(T0 + DAY + 10, "shop/frontend", "api.stripe.com", "public", 99_999, 1),
]


def flow(end: int, src: str, dst: str, policies: list[str] | None, action: str = "deny", reporter: str = "src",
         num_flows: int = 1) -> dict:
    ns, name = src.split("/")
    return {"start_time": end - 10, "end_time": end, "source_name_aggr": name + "-*", "source_namespace": ns,
            "source_type": "wep", "dest_name_aggr": "x", "dest_namespace": dst.split("/")[0], "dest_type": "wep",
            "dest_port": 5432, "proto": "tcp", "action": action, "reporter": reporter, "policies": policies,
            "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0, "num_flows": num_flows, "cluster": "t",
            "source_workload": src, "dest_workload": dst, "destination": dst, "dest_kind": "in_cluster",
            "source_genai_class": "none", "dest_genai_class": "none", "counted": reporter == "src", "batch_id": "b",
            "ingest_time": end}


FLOWS = [
    flow(T0 + 100, "genai-dev/jupyter", "shop/postgres", ["0|default|default.deny-notebooks|deny|0"], num_flows=3),
    flow(T0 + 200, "genai-dev/jupyter", "shop/postgres", ["0|default|default.deny-notebooks|deny|0"], num_flows=2),
    flow(T0 + 200, "genai-dev/jupyter", "shop/postgres", ["0|default|shop/default.pg-ingress|deny|-1"], reporter="dst"),
    flow(T0 + 300, "shop/cart", "shop/postgres", ["0|default|default.allow-x|allow|0", "1|sec|sec.block|deny|2"]),
    flow(T0 + 400, "shop/cart", "shop/redis", None),
    flow(T0 + 500, "shop/cart", "shop/redis", ["0|default|default.allow-x|allow|0"], action="allow"),
]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved") / "lake"
    writer = ParquetLakeWriter(str(root))
    for i, row in enumerate(ROWS):
        write(writer, "flow_windows", [row], i)
    write(writer, "flows", FLOWS, 0)
    return root


@pytest.fixture(scope="module")
def con(lake):
    return connect(str(lake), read_only=True)


def run(con, name: str, **values) -> list[dict]:
    return run_saved(con, name, T0, T0 + DAY, values).to_pylist()


def test_every_saved_query_is_there() -> None:
    assert set(saved_queries()) == NAMES
    for q in saved_queries().values():
        assert q.summary


def test_top_talkers(con) -> None:
    rows = run(con, "top-talkers")
    assert [r["source_workload"] for r in rows] == ["shop/frontend", "genai-prod/rag-api", "genai-prod/vllm", "shop/cart"]
    assert rows[0]["bytes_out"] == 20_350 and rows[0]["flows"] == 9 and rows[0]["peers"] == 3
    assert rows[2]["bytes_out"] == 5_010  # revision 1 is added to revision 0
    assert [r["source_workload"] for r in run(con, "top-talkers", limit=1)] == ["shop/frontend"]
    assert {r["source_workload"] for r in run(con, "top-talkers", namespace="genai-prod")} == {"genai-prod/vllm", "genai-prod/rag-api"}


def test_internet_egress_counts_allowed_public_traffic_only(con) -> None:
    rows = {r["source_workload"]: r for r in run(con, "internet-egress")}
    assert set(rows) == {"genai-prod/rag-api", "genai-prod/vllm", "shop/frontend"}
    assert rows["genai-prod/vllm"]["bytes_out"] == 5_010
    assert rows["genai-prod/vllm"]["top_destination"] == "api.openai.com"
    assert rows["genai-prod/vllm"]["destinations"] == 2
    assert rows["shop/frontend"]["bytes_out"] == 300  # the denied 50 bytes and the next day's traffic are left out


def test_genai_destinations_uses_categories_when_the_lake_has_them(con) -> None:
    rows = run(con, "genai-destinations")
    got = {(r["namespace"], r["source_workload"], r["category"], r["destination"]): r["bytes_out"] for r in rows}
    assert got == {
        ("genai-prod", "genai-prod/vllm", "model_hub", "huggingface.co"): 1_010,
        ("genai-prod", "genai-prod/vllm", "llm_api", "api.openai.com"): 4_000,
        ("genai-prod", "genai-prod/rag-api", "llm_api", "api.anthropic.com"): 7_000,
    }


def test_genai_destinations_over_files_written_before_the_category_column(tmp_path) -> None:
    writer = ParquetLakeWriter(str(tmp_path / "lake"))
    row = {k: v for k, v in window(T0, "genai-prod/vllm", "huggingface.co", "public", 5, genai="inference").items()
           if k != "dest_category"}
    write(writer, "flow_windows", [row], 0)
    rows = run(connect(str(tmp_path / "lake"), read_only=True), "genai-destinations")
    assert [(r["destination"], r["bytes_out"], r["category"]) for r in rows] == [("huggingface.co", 5, None)]


def test_new_destinations_ignores_what_was_seen_in_the_history(con) -> None:
    new = {(r["source_workload"], r["destination"]) for r in run(con, "new-destinations")}
    assert ("genai-prod/vllm", "huggingface.co") not in new  # seen 3 days before
    assert ("genai-prod/vllm", "api.openai.com") in new
    assert len(new) == 7
    # with only 2 days of history the day -3 sighting no longer counts
    assert ("genai-prod/vllm", "huggingface.co") in {(r["source_workload"], r["destination"])
                                                     for r in run(con, "new-destinations", days=2)}


def test_denied_by_policy(con) -> None:
    rows = {(r["policy"], r["reporter"], r["source_workload"], r["destination"]): r["flows"] for r in run(con, "denied-by-policy")}
    assert rows == {
        ("default.deny-notebooks", "src", "genai-dev/jupyter", "shop/postgres"): 5,
        ("shop/default.pg-ingress", "dst", "genai-dev/jupyter", "shop/postgres"): 1,
        ("sec.block", "src", "shop/cart", "shop/postgres"): 1,  # the deny entry, not the allow before it
        ("(no policy recorded)", "src", "shop/cart", "shop/redis"): 1,
    }


def test_namespace_matrix(con) -> None:
    rows = {r["source_namespace"]: r for r in run(con, "namespace-matrix")}
    assert set(rows) == {"genai-prod", "shop"}
    assert rows["shop"]["shop"] == 20_000
    assert rows["shop"]["(public)"] == 350 and rows["shop"]["(private)"] == 600
    assert rows["genai-prod"]["genai-prod"] == 9_000 and rows["genai-prod"]["shop"] == 0


def test_time_range_is_half_open(con) -> None:
    rows = run_saved(con, "top-talkers", T0 + 240, T0 + 300).to_pylist()
    assert [r["source_workload"] for r in rows] == ["shop/frontend"]
    assert rows[0]["bytes_out"] == 20_300


def test_parameters_are_bound_not_interpolated(con) -> None:
    hostile = "x' OR '1'='1"
    assert run(con, "top-talkers", namespace=hostile) == []
    assert run(con, "denied-by-policy", namespace="shop'); DROP VIEW flows; --") == []
    assert len(run(con, "denied-by-policy")) == 4


@pytest.mark.parametrize("values, message", [
    ({"days": 3}, "does not take --days"),
    ({"limit": -1}, "must not be negative"),
    ({"limit": "ten"}, "must be a number"),
])
def test_bad_parameters(values, message) -> None:
    with pytest.raises(SavedQueryError, match=message):
        get("top-talkers").bind(T0, T0 + 1, values)


def test_unknown_query_names_the_choices() -> None:
    with pytest.raises(SavedQueryError, match="top-talkers"):
        get("top-talker")


def test_query_cli(lake, tmp_path) -> None:
    def flowctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "--lake", str(lake), "query", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)

    out = flowctl("internet-egress", "--since", "2026-11-27T00:00:00Z", "--until", "2026-11-28T00:00:00Z", "-f", "json")
    assert out.returncode == 0, out.stderr
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert rows[0]["source_workload"] == "genai-prod/rag-api" and rows[0]["bytes_out"] == 7_000
    out = flowctl("top-talkers", "--since", "1h", "--until", "2026-11-27T00:05:00Z", "-f", "csv", "--limit", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith('"shop/frontend"')
    out = flowctl("top-talkers", "--days", "3")
    assert out.returncode == 1 and out.stderr.startswith("flowctl: error: query top-talkers does not take --days")
    out = flowctl("nope")
    assert out.returncode == 1 and "choose one of" in out.stderr
    listing = flowctl("--list")
    assert listing.returncode == 0 and all(name in listing.stdout for name in NAMES)
