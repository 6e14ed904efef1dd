"""Event-time tumbling windows: totals, closing time, additive late revisions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.schema import arrow_schema
from pipeline.stream.windows import MERGE_PARTS, WindowAggregator

ENRICHED = arrow_schema("flow_enriched.v1")
WINDOW_SCHEMA = arrow_schema("flow_window.v1")
T0 = 1_780_315_200  # a whole hour, so a multiple of every window length used here
KEY_COLUMNS = ("cluster", "source_namespace", "source_workload", "source_genai_class", "dest_namespace",
               "destination", "dest_kind", "dest_genai_class", "dest_port", "proto", "action")
SUM_COLUMNS = ("bytes_in", "bytes_out", "packets_in", "packets_out", "num_flows")

SOURCES = [("apps", "apps/chat", "agent/app"), ("genai", "genai/vllm", "inference"),
           ("research", "research/jupyter-alice", "notebook"), ("-", "-/pub", "none")]
DESTS = [("genai", "genai/vllm", "in_cluster", "inference"), ("-", "api.openai.com", "public", "none"),
         ("kube-system", "kube-system/coredns", "in_cluster", "none"),
         ("-", "169.254.169.254", "cloud_metadata", "none")]


def enriched(rows: list[dict]) -> pa.Table:
    """A flow_enriched.v1 table; columns the windows do not read get plain fillers."""
    filler = {pa.string(): "x", pa.int64(): 0, pa.bool_(): True}
    columns = []
    for f in ENRICHED:
        values = [r.get(f.name, filler.get(f.type)) for r in rows]
        columns.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(columns, schema=ENRICHED)


def row(end: int, *, start: int | None = None, counted: bool = True, bytes_in: int = 100, **keys) -> dict:
    r = {"cluster": "c1", "source_namespace": "apps", "source_workload": "apps/chat", "source_genai_class": "none",
         "dest_namespace": "genai", "destination": "genai/vllm", "dest_kind": "in_cluster",
         "dest_genai_class": "inference", "dest_port": 8000, "proto": "tcp", "action": "allow",
         "start_time": end - 30 if start is None else start, "end_time": end, "counted": counted,
         "bytes_in": bytes_in, "bytes_out": 7, "packets_in": 3, "packets_out": 2, "num_flows": 1}
    r.update(keys)
    return r


def random_rows(seed: int, n: int, span: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ns, workload, cls = SOURCES[rng.integers(len(SOURCES))]
        dns, dest, kind, dcls = DESTS[rng.integers(len(DESTS))]
        end = T0 + int(rng.integers(0, span))
        out.append({
            "cluster": ["c1", "c2"][rng.integers(2)], "source_namespace": ns, "source_workload": workload,
            "source_genai_class": cls, "dest_namespace": dns, "destination": dest, "dest_kind": kind,
            "dest_genai_class": dcls, "dest_port": [443, 8000, 53, None][rng.integers(4)],
            "proto": ["tcp", "udp", "icmp"][rng.integers(3)], "action": ["allow", "deny"][rng.integers(2)],
            "start_time": end - int(rng.integers(0, 300)), "end_time": end, "counted": bool(rng.random() < 0.7),
            "bytes_in": int(rng.integers(0, 10**9)), "bytes_out": int(rng.integers(0, 10**6)),
            "packets_in": int(rng.integers(0, 10**5)), "packets_out": int(rng.integers(0, 10**5)),
            "num_flows": int(rng.integers(0, 50)),
        })
    return out


def expected_totals(rows: list[dict], window: int) -> dict[tuple, dict]:
    """Per (window start, key) totals computed directly from the input."""
    totals: dict[tuple, dict] = {}
    for r in rows:
        if not r["counted"]:
            continue
        ws = r["end_time"] - r["end_time"] % window
        key = (ws, *(r[k] for k in KEY_COLUMNS))
        t = totals.setdefault(key, {**{c: 0 for c in SUM_COLUMNS}, "flow_records": 0,
                                    "first_seen": r["start_time"], "last_seen": r["end_time"]})
        for c in SUM_COLUMNS:
            t[c] += r[c]
        t["flow_records"] += 1
        t["first_seen"] = min(t["first_seen"], r["start_time"])
        t["last_seen"] = max(t["last_seen"], r["end_time"])
    return totals


def emitted_totals(tables: list[pa.Table]) -> dict[tuple, dict]:
    """Totals of emitted window rows, summing additive revisions."""
    totals: dict[tuple, dict] = {}
    for t in tables:
        assert t.schema.equals(WINDOW_SCHEMA)
        for r in t.to_pylist():
            key = (r["window_start"], *(r[k] for k in KEY_COLUMNS))
            acc = totals.setdefault(key, {**{c: 0 for c in SUM_COLUMNS}, "flow_records": 0,
                                          "first_seen": r["first_seen"], "last_seen": r["last_seen"]})
            for c in (*SUM_COLUMNS, "flow_records"):
                acc[c] += r[c]
            acc["first_seen"] = min(acc["first_seen"], r["first_seen"])
            acc["last_seen"] = max(acc["last_seen"], r["last_seen"])
    return totals


@pytest.mark.parametrize("seed, window, grace, delay", [(1, 60, 120, 20), (2, 60, 0, 60), (3, 300, 60, 400)])
def test_random_flows_sum_to_the_direct_totals(seed, window, grace, delay):
    rows = random_rows(seed, n=3000, span=window * 8)
    rng = np.random.default_rng(seed + 100)
    # Flows arrive in order of end_time plus a random delivery delay, in batches of random size.
    arrival = [r["end_time"] + rng.exponential(delay) for r in rows]
    rows = [rows[i] for i in np.argsort(arrival, kind="stable")]
    out: list[pa.Table] = []
    agg = WindowAggregator(window, grace)
    i = 0
    while i < len(rows):
        size = int(rng.integers(1, 200))
        out += agg.add(enriched(rows[i:i + size]))
        i += size
    out += agg.flush()
    assert agg.open_windows == 0
    got = emitted_totals(out)
    want = expected_totals(rows, window)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key], key
    revisions = [r["revision"] for t in out for r in t.to_pylist()]
    identities = [(r["window_start"], r["revision"], *(r[k] for k in KEY_COLUMNS)) for t in out for r in t.to_pylist()]
    assert len(identities) == len(set(identities)), "a window row is identified by its keys and revision"
    if grace < 2 * delay:
        assert max(revisions) > 0, "the delays should have produced late data"
    for t in out:
        for r in t.to_pylist():
            assert r["window_end"] - r["window_start"] == window
            assert r["window_start"] <= r["last_seen"] < r["window_end"]


def test_out_of_order_batches_within_grace_emit_one_revision_per_window():
    rows = random_rows(5, n=1000, span=600)
    rows.sort(key=lambda r: r["end_time"])
    agg = WindowAggregator(60, 120)
    out = []
    # Reverse batches of 50 rows: every flow is at most ~60 s behind the newest one seen.
    for i in range(0, len(rows), 50):
        out += agg.add(enriched(rows[i:i + 50][::-1]))
    out += agg.flush()
    revisions = [r["revision"] for t in out for r in t.to_pylist()]
    assert set(revisions) == {0}
    keys = [(r["window_start"], *(r[k] for k in KEY_COLUMNS)) for t in out for r in t.to_pylist()]
    assert len(keys) == len(set(keys))


def test_uncounted_reports_are_not_summed():
    agg = WindowAggregator(60, 0)
    out = agg.add(enriched([row(T0 + 10, bytes_in=5), row(T0 + 10, bytes_in=1000, counted=False)]))
    out += agg.flush()
    (t,) = out
    assert t.column("bytes_in").to_pylist() == [5]
    assert t.column("flow_records").to_pylist() == [1]


def test_only_uncounted_rows_emit_nothing():
    agg = WindowAggregator(60, 0)
    assert agg.add(enriched([row(T0 + 10, counted=False)])) == []
    assert agg.flush() == []


@pytest.mark.parametrize("window, grace", [(60, 120), (60, 0), (300, 30)])
def test_window_closes_only_when_event_time_passes_end_plus_grace(window, grace):
    agg = WindowAggregator(window, grace)
    ws = T0
    end = ws + window
    assert agg.add(enriched([row(ws + 1)])) == []
    # Event time reaching just before end + grace: a flow of this window could still arrive in time.
    before = agg.add(enriched([row(end + grace - 1, bytes_in=1)]))
    assert all(ws not in t.column("window_start").to_pylist() for t in before)
    out = agg.add(enriched([row(end + grace, bytes_in=2)]))
    closed = [r for t in out for r in t.to_pylist() if r["window_start"] == ws]
    assert len(closed) == 1
    assert closed[0]["window_end"] == end and closed[0]["revision"] == 0


def test_event_time_not_wall_clock_drives_closing():
    agg = WindowAggregator(60, 120)
    # Flows from long ago but in order: nothing closes until event time moves on.
    assert agg.add(enriched([row(1_000_000 + 5)])) == []
    assert agg.add(enriched([row(1_000_000 + 100)])) == []
    assert agg.open_windows == 2


def test_end_time_on_a_boundary_belongs_to_the_next_window():
    agg = WindowAggregator(60, 0)
    out = agg.add(enriched([row(T0 + 59, bytes_in=1), row(T0 + 60, bytes_in=2)])) + agg.flush()
    by_start = {r["window_start"]: r["bytes_in"] for t in out for r in t.to_pylist()}
    assert by_start == {T0: 1, T0 + 60: 2}


def test_late_flow_yields_an_additive_revision():
    agg = WindowAggregator(60, 120)
    first = [row(T0 + 10, bytes_in=100), row(T0 + 20, bytes_in=200)]
    out = agg.add(enriched(first))
    out += agg.add(enriched([row(T0 + 60 + 120, bytes_in=1)]))  # closes window T0
    rev0 = [r for t in out for r in t.to_pylist() if r["window_start"] == T0]
    assert len(rev0) == 1 and rev0[0]["revision"] == 0 and rev0[0]["bytes_in"] == 300

    late = agg.add(enriched([row(T0 + 30, start=T0 + 1, bytes_in=7)]))
    (t,) = [t for t in late if T0 in t.column("window_start").to_pylist()]
    (r1,) = t.to_pylist()
    assert r1["revision"] == 1
    assert (r1["bytes_in"], r1["flow_records"], r1["first_seen"], r1["last_seen"]) == (7, 1, T0 + 1, T0 + 30)

    later = agg.add(enriched([row(T0 + 40, bytes_in=11), row(T0 + 50, bytes_in=13)]))
    (r2,) = [r for t in later for r in t.to_pylist() if r["window_start"] == T0]
    assert r2["revision"] == 2 and r2["bytes_in"] == 24 and r2["flow_records"] == 2

    all_rows = out + late + later + agg.flush()
    total = sum(r["bytes_in"] for t in all_rows for r in t.to_pylist() if r["window_start"] == T0)
    assert total == 100 + 200 + 7 + 11 + 13


def test_late_flow_for_a_new_key_in_a_closed_window():
    agg = WindowAggregator(60, 0)
    agg.add(enriched([row(T0 + 10)]))
    agg.add(enriched([row(T0 + 200)]))
    late = agg.add(enriched([row(T0 + 15, destination="api.openai.com", dest_kind="public")]))
    (r,) = [r for t in late for r in t.to_pylist()]
    assert (r["window_start"], r["revision"], r["destination"]) == (T0, 1, "api.openai.com")


def test_flush_closes_every_open_window():
    agg = WindowAggregator(60, 3600)
    agg.add(enriched([row(T0 + 10), row(T0 + 70), row(T0 + 130)]))
    assert agg.open_windows == 3
    out = agg.flush()
    assert sorted(r["window_start"] for t in out for r in t.to_pylist()) == [T0, T0 + 60, T0 + 120]
    assert agg.open_windows == 0
    assert agg.flush() == []


def test_keys_split_windows_including_null_ports():
    agg = WindowAggregator(60, 0)
    rows = [row(T0 + 1, dest_port=None, proto="icmp", bytes_in=1), row(T0 + 2, dest_port=None, proto="icmp",
                                                                       bytes_in=2),
            row(T0 + 3, action="deny", bytes_in=4), row(T0 + 4, bytes_in=8)]
    out = agg.add(enriched(rows)) + agg.flush()
    got = {(r["dest_port"], r["action"]): r["bytes_in"] for t in out for r in t.to_pylist()}
    assert got == {(None, "allow"): 3, (8000, "deny"): 4, (8000, "allow"): 8}


def test_many_small_batches_keep_few_parts_and_the_same_totals():
    """An open window's partial aggregates are merged as they pile up (checkpoints snapshot them)."""
    rows = random_rows(9, n=2000, span=120)
    agg = WindowAggregator(60, 600)
    out: list[pa.Table] = []
    for i in range(0, len(rows), 5):  # 400 batches into two windows
        out += agg.add(enriched(rows[i:i + 5]))
    assert agg.open_windows == 2
    assert sum(len(parts) for parts in agg.pending.values()) <= 2 * MERGE_PARTS < 400 // 10
    out += agg.flush()
    assert emitted_totals(out) == expected_totals(rows, 60)
