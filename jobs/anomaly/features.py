"""What detection reads from the lake: per-workload bucket features and destination history.

Everything is one DuckDB query per question over ``flow_windows`` (and ``flows`` for
the number of source pods); the results come back as Arrow/numpy columns, so the
cost grows with the number of (workload, bucket) rows, not with Python loops.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.query.views import query_table

CATEGORIES = ("llm_api", "model_hub", "package_registry", "object_storage", "cloud_metadata", "unknown")
"""Destination categories outside the cluster (the enrichment's ``dest_category`` values)."""

# Used when the lake has no dest_category column: registrable-domain suffixes per category.
LLM_API_DOMAINS = ("openai.com", "anthropic.com", "mistral.ai", "cohere.ai", "cohere.com", "groq.com", "together.xyz",
                   "together.ai", "fireworks.ai", "perplexity.ai", "deepseek.com", "x.ai", "openrouter.ai",
                   "replicate.com", "generativelanguage.googleapis.com", "aiplatform.googleapis.com",
                   "openai.azure.com", "bedrock-runtime.amazonaws.com")
MODEL_HUB_DOMAINS = ("huggingface.co", "hf.co", "ollama.ai", "ollama.com", "modelscope.cn", "civitai.com", "kaggle.com",
                     "ngc.nvidia.com", "replicate.delivery")
PACKAGE_REGISTRY_DOMAINS = ("pypi.org", "pythonhosted.org", "github.com", "githubusercontent.com", "npmjs.org",
                            "registry.npmjs.org", "docker.io", "ghcr.io", "quay.io", "anaconda.org", "anaconda.com",
                            "crates.io", "golang.org", "proxy.golang.org")
OBJECT_STORAGE_PATTERN = r"(^|\.)s3([.-][a-z0-9-]+)*\.amazonaws\.com$|(^|\.)storage\.googleapis\.com$|\.blob\.core\.windows\.net$|\.r2\.cloudflarestorage\.com$"

COUNTS = ("bytes_out", "bytes_in", "packets_out", "flows", "ext_bytes_out", "ext_flows", "public_bytes_out",
          "destinations", "ports", "dest_ports", *(f"cat_{c}" for c in CATEGORIES))


def _suffix_regex(domains: tuple[str, ...]) -> str:
    return r"(^|\.)(" + "|".join(d.replace(".", r"\.") for d in domains) + r")$"


def category_sql(columns: set[str]) -> str:
    """SQL expression for a flow_windows row's destination category.

    Uses the enrichment's ``dest_category`` when the lake has it, else a small domain list.
    """
    fallback = (
        "CASE WHEN dest_kind = 'cloud_metadata' THEN 'cloud_metadata' "
        f"WHEN regexp_matches(destination, '{_suffix_regex(LLM_API_DOMAINS)}') THEN 'llm_api' "
        f"WHEN regexp_matches(destination, '{_suffix_regex(MODEL_HUB_DOMAINS)}') THEN 'model_hub' "
        f"WHEN regexp_matches(destination, '{_suffix_regex(PACKAGE_REGISTRY_DOMAINS)}') THEN 'package_registry' "
        f"WHEN regexp_matches(destination, '{OBJECT_STORAGE_PATTERN}') THEN 'object_storage' "
        "ELSE 'unknown' END"
    )
    known = "dest_category" if "dest_category" in columns else "NULL"
    return f"CASE WHEN dest_kind = 'in_cluster' THEN 'in_cluster' ELSE coalesce({known}, {fallback}) END"


def provider_sql() -> str:
    """SQL expression for the provider of a destination: its registrable domain (last two labels), or the address."""
    return ("CASE WHEN regexp_matches(destination, '^[0-9.:a-fA-F]+$') THEN destination "
            "ELSE regexp_extract(destination, '([^.]+\\.[^.]+)$', 1) END")


def columns_of(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    return set(query_table(con, f"SELECT * FROM {view} LIMIT 0").column_names)


class LakeReader:
    """Queries over one DuckDB connection with the lake views."""

    def __init__(self, con: duckdb.DuckDBPyConnection, bucket: int) -> None:
        self.con = con
        self.bucket = bucket
        self.category = category_sql(columns_of(con, "flow_windows"))

    def _source(self, lo: int, hi: int, extra: str = "") -> str:
        return (f"SELECT *, {self.category} AS category FROM flow_windows "
                f"WHERE window_start >= {int(lo)} AND window_start < {int(hi)} AND source_namespace <> '-' {extra}")

    def time_range(self) -> tuple[int, int] | None:
        row = query_table(self.con, "SELECT min(window_start) AS lo, max(window_end) AS hi FROM flow_windows").to_pylist()[0]
        return None if row["lo"] is None else (int(row["lo"]), int(row["hi"]))

    def bucket_features(self, lo: int, hi: int) -> pa.Table:
        """One row per (source workload, bucket) with traffic in [lo, hi)."""
        b = self.bucket
        cats = ", ".join(f"coalesce(sum(bytes_out) FILTER (category = '{c}'), 0)::DOUBLE AS cat_{c}" for c in CATEGORIES)
        sql = f"""
            SELECT source_workload AS workload, (window_start // {b}) * {b} AS bucket,
                   any_value(source_namespace) AS namespace, any_value(source_genai_class) AS genai_class,
                   any_value(cluster) AS cluster,
                   sum(bytes_out)::DOUBLE AS bytes_out, sum(bytes_in)::DOUBLE AS bytes_in,
                   sum(packets_out)::DOUBLE AS packets_out, sum(num_flows)::DOUBLE AS flows,
                   coalesce(sum(bytes_out) FILTER (dest_kind <> 'in_cluster'), 0)::DOUBLE AS ext_bytes_out,
                   coalesce(sum(num_flows) FILTER (dest_kind <> 'in_cluster'), 0)::DOUBLE AS ext_flows,
                   coalesce(sum(bytes_out) FILTER (dest_kind = 'public'), 0)::DOUBLE AS public_bytes_out,
                   count(DISTINCT destination)::DOUBLE AS destinations,
                   count(DISTINCT dest_port)::DOUBLE AS ports,
                   count(DISTINCT (destination, dest_port))::DOUBLE AS dest_ports,
                   {cats}
            FROM ({self._source(lo, hi)}) GROUP BY 1, 2 ORDER BY 1, 2"""
        return query_table(self.con, sql)

    def source_pods(self, lo: int, hi: int) -> pa.Table:
        """Distinct reporting source pods per (workload, bucket), from the flows table."""
        b = self.bucket
        return query_table(self.con, f"""
            SELECT source_workload AS workload, (end_time // {b}) * {b} AS bucket,
                   count(DISTINCT source_name)::DOUBLE AS pods
            FROM flows WHERE counted AND end_time >= {int(lo)} AND end_time < {int(hi)}
                 AND source_namespace <> '-' AND source_name IS NOT NULL
            GROUP BY 1, 2""")

    def new_external_rows(self, lo: int, hi: int, base_lo: int, forget: pa.Table) -> pa.Table:
        """External rows of [lo, hi) to destinations the workload did not reach in [base_lo, lo).

        Pairs in ``forget`` (workload, destination: earlier alerts) do not count as known, so an
        incident stays visible in later periods instead of being learned as normal.
        """
        self.con.register("__forget_pairs", forget)
        try:
            return query_table(self.con, f"""
                WITH known AS (
                    SELECT DISTINCT source_workload AS workload, destination
                    FROM flow_windows WHERE window_start >= {int(base_lo)} AND window_start < {int(lo)}
                         AND source_namespace <> '-' AND dest_kind <> 'in_cluster'
                    EXCEPT SELECT workload, destination FROM __forget_pairs),
                rows AS ({self._source(lo, hi, "AND dest_kind <> 'in_cluster'")})
                SELECT source_workload AS workload, destination, dest_port, any_value(dest_kind) AS dest_kind,
                       any_value(category) AS category, any_value({provider_sql()}) AS provider, window_start,
                       sum(bytes_out)::DOUBLE AS bytes_out, sum(bytes_in)::DOUBLE AS bytes_in,
                       sum(num_flows)::DOUBLE AS flows, max(last_seen) AS last_seen, min(first_seen) AS first_seen
                FROM rows r ANTI JOIN known k ON r.source_workload = k.workload AND r.destination = k.destination
                GROUP BY source_workload, destination, dest_port, window_start""")
        finally:
            self.con.unregister("__forget_pairs")

    def known_destinations(self, lo: int, hi: int) -> pa.Table:
        """(workload, destination, provider, dest_kind) seen leaving the cluster in [lo, hi)."""
        return query_table(self.con, f"""
            SELECT DISTINCT source_workload AS workload, destination, {provider_sql()} AS provider, dest_kind, category
            FROM ({self._source(lo, hi, "AND dest_kind <> 'in_cluster'")})""")

    def scan_pairs(self, workload: str, lo: int, hi: int, limit: int = 20) -> list[dict]:
        """Most-probed destinations of one workload (evidence for a scan alert)."""
        return query_table(self.con, f"""
            SELECT destination, count(DISTINCT dest_port) AS ports, sum(num_flows) AS flows,
                   sum(CASE WHEN action = 'deny' THEN num_flows ELSE 0 END) AS denied
            FROM flow_windows WHERE source_workload = ? AND window_start >= {int(lo)} AND window_start < {int(hi)}
            GROUP BY 1 ORDER BY ports DESC, flows DESC LIMIT {int(limit)}""", [workload]).to_pylist()


def as_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns as numpy arrays (strings as object arrays)."""
    return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
