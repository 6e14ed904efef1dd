"""Tests for the synthetic cluster: inventory shape and flow-log generation."""

from __future__ import annotations

import ipaddress
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.agent.sources.synthetic import SyntheticCluster, Workload
from pipeline.schema import arrow_schema, enum_values, required_columns

FLOWLOG = "flowlog.v1"
DAY = 1_717_200_000 - 1_717_200_000 % 86_400  # a UTC midnight
START = DAY + 12 * 3600
END = START + 600
RATE = 150.0
BATCH = 20_000


@pytest.fixture(scope="module")
def cluster() -> SyntheticCluster:
    return SyntheticCluster(seed=7)


@pytest.fixture(scope="module")
def batches(cluster: SyntheticCluster) -> list[pa.Table]:
    return list(cluster.generate(START, END, rate=RATE, batch_rows=BATCH))


@pytest.fixture(scope="module")
def flows(batches: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(batches)


@pytest.fixture(scope="module")
def rows(flows: pa.Table) -> dict[str, list]:
    return flows.to_pydict()


@pytest.fixture(scope="module")
def pods(cluster: SyntheticCluster) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in cluster.inventory()["items"]}


# ---- schema and basic invariants -------------------------------------------


def test_tables_have_exact_schema_and_size(batches: list[pa.Table]) -> None:
    schema = arrow_schema(FLOWLOG)
    assert len(batches) > 1
    for table in batches:
        assert table.schema.equals(schema, check_metadata=True)
        assert 0 < table.num_rows <= BATCH
    # full tables, one row short when that keeps the two reports of a pod-to-pod flow together
    assert all(t.num_rows in (BATCH, BATCH - 1) for t in batches[:-1])


def test_both_reports_of_a_flow_stay_in_one_table(cluster: SyntheticCluster) -> None:
    tables = list(cluster.generate(START, START + 60, rate=RATE, batch_rows=101))
    assert len(tables) > 50
    for table in tables:
        first = table.slice(0, 1).to_pylist()[0]
        is_second_report = first["reporter"] == "dst" and first["source_type"] == "wep"
        assert not is_second_report, "a dst report was split from its src report"
        last = table.slice(table.num_rows - 1, 1).to_pylist()[0]
        wants_partner = last["reporter"] == "src" and last["dest_type"] == "wep" and last["action"] == "allow"
        assert not wants_partner or table is tables[-1]


def test_required_columns_are_never_null(flows: pa.Table) -> None:
    for column in required_columns(FLOWLOG):
        assert flows.column(column).null_count == 0, column
    for column in ("source_name_aggr", "source_namespace", "dest_name_aggr", "dest_namespace", "proto", "cluster"):
        assert pc.min(pc.utf8_length(flows.column(column))).as_py() >= 1, column


def test_enum_columns_use_schema_values(flows: pa.Table) -> None:
    for column in ("source_type", "dest_type", "action", "reporter"):
        allowed = set(enum_values(FLOWLOG, column))
        assert set(pc.unique(flows.column(column)).to_pylist()) <= allowed, column
    assert set(pc.unique(flows.column("proto")).to_pylist()) == {"tcp", "udp"}
    assert set(pc.unique(flows.column("reporter")).to_pylist()) == {"src", "dst"}
    assert pc.unique(flows.column("cluster")).to_pylist() == ["demo"]


def test_times_are_in_range_and_chronological(batches: list[pa.Table], flows: pa.Table) -> None:
    end = flows.column("end_time").to_numpy()
    start = flows.column("start_time").to_numpy()
    assert end.min() >= START and end.max() < END
    assert np.all(np.diff(end) >= 0), "records are not in event-time order"
    duration = end - start
    assert duration.min() >= 1 and duration.max() <= 60
    # start_time stays in the aligned 60 s aggregation interval that ends at or after end_time
    assert np.all(start >= (end - 1) // 60 * 60)
    # rate is roughly respected (noon factor ~1.34, +/-25 %)
    expected = RATE * 1.34 * (END - START)
    assert 0.75 * expected < flows.num_rows < 1.25 * expected


def test_counters_are_consistent(flows: pa.Table) -> None:
    c = {
        name: flows.column(name).to_numpy()
        for name in ("bytes_in", "bytes_out", "packets_in", "packets_out", "num_flows")
    }
    started = flows.column("num_flows_started").to_numpy()
    completed = flows.column("num_flows_completed").to_numpy()
    assert c["num_flows"].min() >= 1 and c["num_flows"].max() <= 50
    assert np.all((started >= 0) & (started <= c["num_flows"]))
    assert np.all((completed >= 0) & (completed <= c["num_flows"]))
    for direction in ("in", "out"):
        nbytes, packets = c[f"bytes_{direction}"], c[f"packets_{direction}"]
        assert np.all((nbytes == 0) == (packets == 0))
        sent = nbytes > 0
        assert np.all(packets[sent] >= np.ceil(nbytes[sent] / 1500))
        assert np.all(nbytes[sent] >= 40 * packets[sent])
    assert flows.column("source_port").null_count == flows.num_rows
    assert flows.column("dest_port").null_count == 0


def test_byte_counts_are_heavy_tailed_and_inference_answers_are_bigger(flows: pa.Table) -> None:
    out = flows.column("bytes_out").to_numpy()
    assert out.max() > 1000 * np.median(out)
    src = pc.equal(flows.column("reporter"), "src")
    from_rag = pc.starts_with(flows.column("source_name"), "rag-api-")
    to_vllm = pc.equal(flows.column("dest_service_name"), "vllm")
    calls = flows.filter(pc.and_(src, pc.and_(from_rag, to_vllm)))
    assert calls.num_rows > 50
    assert np.median(calls.column("bytes_in").to_numpy()) > np.median(calls.column("bytes_out").to_numpy())


# ---- determinism -------------------------------------------------------------


def test_same_seed_gives_identical_tables(batches: list[pa.Table]) -> None:
    again = list(SyntheticCluster(seed=7).generate(START, END, rate=RATE, batch_rows=BATCH))
    assert len(again) == len(batches)
    assert all(a.equals(b) for a, b in zip(again, batches, strict=True))


def test_different_seed_gives_different_tables(flows: pa.Table) -> None:
    other = pa.concat_tables(SyntheticCluster(seed=8).generate(START, END, rate=RATE, batch_rows=BATCH))
    assert not other.equals(flows)
    assert set(pc.unique(other.column("source_name")).to_pylist()) != set(
        pc.unique(flows.column("source_name")).to_pylist()
    )


def test_stream_does_not_depend_on_batching_or_range_split(cluster: SyntheticCluster, flows: pa.Table) -> None:
    small = pa.concat_tables(cluster.generate(START, END, rate=RATE, batch_rows=7_777))
    assert small.equals(flows)
    mid = START + 290  # not aligned on the 60 s chunks
    split = pa.concat_tables(
        list(cluster.generate(START, mid, rate=RATE, batch_rows=BATCH))
        + list(cluster.generate(mid, END, rate=RATE, batch_rows=BATCH))
    )
    assert split.equals(flows)


# ---- flow semantics ----------------------------------------------------------


def _pod_to_pod(rows: dict[str, list], reporter: str) -> Counter:
    keys: Counter = Counter()
    for i in range(len(rows["reporter"])):
        if rows["reporter"][i] != reporter or rows["source_type"][i] != "wep" or rows["dest_type"][i] != "wep":
            continue
        if reporter == "src" and rows["action"][i] == "deny":
            continue  # denied at the source by an egress policy: the destination never sees it
        sent, received = ("bytes_out", "bytes_in") if reporter == "src" else ("bytes_in", "bytes_out")
        psent, preceived = ("packets_out", "packets_in") if reporter == "src" else ("packets_in", "packets_out")
        keys[
            (
                rows["start_time"][i],
                rows["end_time"][i],
                rows["source_name"][i],
                rows["dest_name"][i],
                rows["dest_port"][i],
                rows["proto"][i],
                rows["num_flows"][i],
                rows[sent][i],
                rows[received][i],
                rows[psent][i],
                rows[preceived][i],
            )
        ] += 1
    return keys


def test_pod_to_pod_flows_are_reported_by_both_ends(rows: dict[str, list]) -> None:
    src = _pod_to_pod(rows, "src")
    dst = _pod_to_pod(rows, "dst")
    assert sum(src.values()) > 1000
    assert src == dst


def test_reporter_host_is_the_reporting_pods_node(rows: dict[str, list], pods: dict[str, dict]) -> None:
    for i in range(0, len(rows["reporter"]), 7):
        side = "source" if rows["reporter"][i] == "src" else "dest"
        assert rows[f"{side}_type"][i] == "wep"
        pod = pods[rows[f"{side}_name"][i]]
        assert rows["host"][i] == pod["spec"]["nodeName"]


def test_outside_endpoints_use_calico_network_vocabulary(flows: pa.Table) -> None:
    for side, reporter in (("source", "dst"), ("dest", "src")):
        net = flows.filter(pc.equal(flows.column(f"{side}_type"), "net"))
        assert net.num_rows > 0
        assert set(pc.unique(net.column(f"{side}_namespace")).to_pylist()) == {"-"}
        assert set(pc.unique(net.column(f"{side}_name_aggr")).to_pylist()) <= {"pub", "pvt"}
        assert net.column(f"{side}_name").null_count == net.num_rows
        assert net.column(f"{side}_labels").null_count == net.num_rows
        assert set(pc.unique(net.column("reporter")).to_pylist()) == {reporter}
    llm = flows.filter(pc.equal(pc.list_element(flows.column("dest_domains"), 0), "api.openai.com"))
    assert llm.num_rows > 0
    assert set(pc.unique(llm.column("dest_name_aggr")).to_pylist()) == {"pub"}
    assert set(pc.unique(llm.column("dest_port")).to_pylist()) == {443}
    assert all(not ipaddress.ip_address(ip).is_private for ip in pc.unique(llm.column("dest_ip")).to_pylist())
    ingress = flows.filter(pc.equal(flows.column("source_name_aggr"), "pub"))
    assert set(pc.unique(ingress.column("dest_port")).to_pylist()) <= {80, 443}


def _owner(pod: dict) -> str:
    """Workload (Deployment, StatefulSet, DaemonSet or Job) that owns a pod."""
    owner = pod["metadata"]["ownerReferences"][0]
    return owner["name"].rsplit("-", 1)[0] if owner["kind"] == "ReplicaSet" else owner["name"]


def test_expected_edges_exist(rows: dict[str, list], pods: dict[str, dict]) -> None:
    def workload(side: str, i: int) -> str:
        name = rows[f"{side}_name"][i]
        return _owner(pods[name]) if name else rows[f"{side}_name_aggr"][i]

    edges = {
        (workload("source", i), workload("dest", i), rows["dest_port"][i], rows["proto"][i])
        for i in range(len(rows["reporter"]))
    }
    for edge in [
        ("pub", "ingress-nginx-controller", 443, "tcp"),
        ("ingress-nginx-controller", "frontend", 8080, "tcp"),
        ("ingress-nginx-controller", "rag-api", 8080, "tcp"),
        ("frontend", "cart", 8080, "tcp"),
        ("checkout", "payments", 8080, "tcp"),
        ("cart", "redis", 6379, "tcp"),
        ("checkout", "postgres", 5432, "tcp"),
        ("rag-api", "vllm", 8000, "tcp"),
        ("rag-api", "qdrant", 6333, "tcp"),
        ("rag-api", "pub", 443, "tcp"),
        ("frontend", "coredns", 53, "udp"),
        ("prometheus", "node-exporter", 9100, "tcp"),
        ("prometheus", "vllm", 8000, "tcp"),
        ("ray-worker", "ray-head", 6379, "tcp"),
    ]:
        assert edge in edges, edge
    assert not any(src == "postgres" and dst in {"pub", "pvt"} for src, dst, _, _ in edges)


def test_service_columns_describe_a_service(flows: pa.Table) -> None:
    via = flows.filter(pc.is_valid(flows.column("dest_service_name")))
    assert via.num_rows > 0
    for column in ("dest_service_namespace", "dest_service_port", "dest_service_port_num"):
        assert via.column(column).null_count == 0
    dns = flows.filter(pc.equal(flows.column("dest_service_name"), "kube-dns"))
    assert set(pc.unique(dns.column("dest_service_namespace")).to_pylist()) == {"kube-system"}
    assert set(pc.unique(dns.column("dest_service_port")).to_pylist()) == {"dns", "dns-tcp"}


def test_some_flows_are_denied_with_policy_hits(flows: pa.Table) -> None:
    deny = flows.filter(pc.equal(flows.column("action"), "deny"))
    assert 0 < deny.num_rows < 0.05 * flows.num_rows
    hits = [p for ps in deny.column("policies").to_pylist() for p in ps]
    assert "0|default|default.deny-notebooks|deny|0" in hits
    assert all(h.split("|")[3] == "deny" for h in hits)
    allow = flows.filter(pc.equal(flows.column("action"), "allow")).slice(0, 2000)
    for hit in (p for ps in allow.column("policies").to_pylist() for p in ps):
        assert len(hit.split("|")) == 5 and hit.split("|")[3] == "allow"
    assert deny.column("bytes_out").to_numpy().max() < 2000


def test_daily_curve_peaks_in_the_afternoon(cluster: SyntheticCluster) -> None:
    def hour_count(hour: int) -> int:
        lo = DAY + hour * 3600
        return sum(t.num_rows for t in cluster.generate(lo, lo + 3600, rate=10.0))

    trough, peak = hour_count(3), hour_count(15)
    assert peak > 3 * trough


# ---- inventory ----------------------------------------------------------------


def test_inventory_looks_like_kubectl_output(cluster: SyntheticCluster) -> None:
    inv = json.loads(json.dumps(cluster.inventory()))
    assert inv["apiVersion"] == "v1" and inv["kind"] == "List"
    names = [p["metadata"]["name"] for p in inv["items"]]
    assert len(names) == len(set(names))
    cidr = ipaddress.ip_network("10.244.0.0/16")
    ips = [p["status"]["podIP"] for p in inv["items"]]
    assert len(ips) == len(set(ips))
    for pod in inv["items"]:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        assert pod["kind"] == "Pod" and pod["apiVersion"] == "v1"
        assert meta["uid"] and meta["namespace"] and meta["labels"]
        (owner,) = meta["ownerReferences"]
        assert owner["kind"] in {"ReplicaSet", "StatefulSet", "DaemonSet", "Job"} and owner["controller"]
        assert spec["nodeName"] and spec["containers"]
        for container in spec["containers"]:
            assert container["image"] and container["ports"]
            assert "requests" in container["resources"] and "limits" in container["resources"]
        assert status["phase"] == "Running"
        assert ipaddress.ip_address(status["podIP"]) in cidr
        assert ipaddress.ip_address(status["hostIP"]) in ipaddress.ip_network("10.0.0.0/24")
        if owner["kind"] == "ReplicaSet":
            rs_hash = meta["labels"]["pod-template-hash"]
            assert owner["name"].endswith("-" + rs_hash)
            assert meta["name"].startswith(owner["name"] + "-") and len(meta["name"]) == len(owner["name"]) + 6
        elif owner["kind"] == "StatefulSet":
            assert meta["name"] == f"{owner['name']}-{meta['labels']['apps.kubernetes.io/pod-index']}"
        elif owner["kind"] == "Job":
            assert meta["labels"]["job-name"] == owner["name"]
    nodes = {p["spec"]["nodeName"] for p in inv["items"]}
    assert len(nodes) == 4


def test_flow_pod_names_exist_in_inventory(rows: dict[str, list], pods: dict[str, dict]) -> None:
    seen = 0
    for side in ("source", "dest"):
        pairs = set(
            zip(
                rows[f"{side}_type"],
                rows[f"{side}_name"],
                rows[f"{side}_namespace"],
                rows[f"{side}_ip"],
                rows[f"{side}_name_aggr"],
                strict=True,
            )
        )
        for kind, name, namespace, ip, aggr in pairs:
            if kind != "wep":
                continue
            seen += 1
            pod = pods[name]
            assert pod["metadata"]["namespace"] == namespace
            assert pod["status"]["podIP"] == ip
            assert aggr.endswith("-*") and name.startswith(aggr[:-1])
    assert seen > 30


def test_flow_labels_are_the_pod_labels(rows: dict[str, list], pods: dict[str, dict]) -> None:
    for i in range(0, len(rows["source_name"]), 11):
        if rows["source_type"][i] == "wep":
            assert dict(rows["source_labels"][i]) == pods[rows["source_name"][i]]["metadata"]["labels"]
        if rows["dest_type"][i] == "wep":
            assert dict(rows["dest_labels"][i]) == pods[rows["dest_name"][i]]["metadata"]["labels"]


def test_genai_pods_request_gpus(cluster: SyntheticCluster, pods: dict[str, dict]) -> None:
    by_workload: dict[tuple[str, str], Workload] = {(w.namespace, w.name): w for w in cluster.workloads}
    assert {w.genai for w in cluster.workloads} == {"inference", "training", "notebook", "agent/app", "none"}
    for name in ("vllm", "tgi", "triton", "llama3-8b-predictor", "ollama", "jupyter", "ray-worker", "finetune-llama3"):
        assert any(w.name == name and w.gpus > 0 for w in cluster.workloads), name
    images = {w.name: w.image for w in cluster.workloads}
    assert images["vllm"].startswith("vllm/vllm-openai")
    assert images["tgi"].startswith("ghcr.io/huggingface/text-generation-inference")
    assert images["triton"].startswith("nvcr.io/nvidia/tritonserver")
    gpu_pods = 0
    for pod in pods.values():
        workload = by_workload[(pod["metadata"]["namespace"], _owner(pod))]
        gpus = sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in pod["spec"]["containers"])
        requested = sum(int(c["resources"]["requests"].get("nvidia.com/gpu", 0)) for c in pod["spec"]["containers"])
        assert gpus == requested == workload.gpus
        gpu_pods += gpus > 0
    assert gpu_pods >= 10
    kserve = [p for p in pods.values() if "serving.kserve.io/inferenceservice" in p["metadata"]["labels"]]
    assert kserve and all(
        int(c["resources"]["requests"]["nvidia.com/gpu"]) >= 1 for p in kserve for c in p["spec"]["containers"]
    )
    jupyter = [p for p in pods.values() if p["metadata"]["labels"].get("app.kubernetes.io/name") == "jupyter"]
    assert jupyter and jupyter[0]["metadata"]["namespace"] == "genai-dev"
    ray = {p["metadata"]["labels"].get("ray.io/node-type") for p in pods.values()} - {None}
    assert ray == {"head", "worker"}


# ---- anomalies --------------------------------------------------------------


@pytest.fixture(scope="module")
def incident_window(cluster: SyntheticCluster) -> tuple[pa.Table, pa.Table, list[dict]]:
    lo, hi = DAY + 9 * 3600, DAY + 10 * 3600
    with_incidents = pa.concat_tables(cluster.generate(lo, hi, rate=20.0, anomalies=True))
    plain = pa.concat_tables(cluster.generate(lo, hi, rate=20.0, anomalies=False))
    return with_incidents, plain, cluster.ground_truth_anomalies(lo, hi)


def test_anomalies_are_injected_and_described(incident_window) -> None:
    table, plain, truth = incident_window
    lo, hi = DAY + 9 * 3600, DAY + 10 * 3600
    kinds = {t["kind"]: t for t in truth}
    assert set(kinds) == {"cloud_metadata_access", "exfiltration", "beaconing", "port_scan"}
    for incident in truth:
        assert {"namespace", "name_aggr", "kind", "start", "end", "dest"} <= set(incident)
        assert lo <= incident["start"] <= incident["end"] < hi
    assert table.num_rows == plain.num_rows + sum(t["rows"] for t in truth)
    end = table.column("end_time").to_numpy()
    assert end.min() >= lo and end.max() < hi and np.all(np.diff(end) >= 0)

    imds = table.filter(pc.equal(table.column("dest_ip"), "169.254.169.254"))
    assert imds.num_rows > 0 and set(imds.column("dest_port").to_pylist()) == {80}
    assert set(imds.column("dest_type").to_pylist()) == {"net"}
    assert set(imds.column("dest_name_aggr").to_pylist()) == {"pvt"}
    assert set(imds.column("source_name_aggr").to_pylist()) == {kinds["cloud_metadata_access"]["name_aggr"]}
    assert imds.column("source_name_aggr")[0].as_py().startswith("vllm-")

    exfil = table.filter(pc.equal(table.column("dest_ip"), "203.0.113.77"))
    assert pc.sum(exfil.column("bytes_out")).as_py() > 3e9
    assert exfil.column("source_name_aggr")[0].as_py().startswith("tgi-")

    beacon = table.filter(pc.equal(table.column("source_name_aggr"), kinds["beaconing"]["name_aggr"]))
    beacon = beacon.filter(pc.equal(beacon.column("dest_ip"), kinds["beaconing"]["dest_ip"]))
    gaps = np.diff(beacon.column("end_time").to_numpy())
    assert len(gaps) > 20 and np.all(np.abs(gaps - 60) <= 2)

    scan = table.filter(pc.equal(table.column("source_name_aggr"), "jupyter-*"))
    scan = scan.filter(
        pc.and_(
            pc.greater_equal(scan.column("end_time"), kinds["port_scan"]["start"]),
            pc.less_equal(scan.column("end_time"), kinds["port_scan"]["end"]),
        )
    )
    assert len(pc.unique(scan.column("dest_port"))) > 100
    assert all(ip.startswith("10.244.") for ip in kinds["port_scan"]["targets"])


def test_no_anomalies_unless_asked(incident_window) -> None:
    _, plain, _ = incident_window
    for ip in ("169.254.169.254", "203.0.113.77", "198.51.100.23"):
        assert pc.sum(pc.equal(plain.column("dest_ip"), ip)).as_py() == 0
    jupyter = plain.filter(pc.equal(plain.column("source_name_aggr"), "jupyter-*"))
    assert len(pc.unique(jupyter.column("dest_port"))) < 20


def test_empty_range_yields_nothing(cluster: SyntheticCluster) -> None:
    assert list(cluster.generate(START, START)) == []
    assert cluster.ground_truth_anomalies(START, START) == []
