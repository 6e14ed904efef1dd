-- summary: Where GenAI workloads (inference, training, notebooks, agents) connect outside the cluster, by namespace: LLM APIs, model hubs, object storage.
-- param limit int 50: rows to show
-- param namespace str : only workloads of this namespace
SELECT source_namespace AS namespace,
       source_workload,
       any_value(source_genai_class) AS genai_class,
       @destination_columns@,
       any_value(dest_kind) AS dest_kind,
       sum(bytes_out)::BIGINT AS bytes_out,
       sum(bytes_in)::BIGINT AS bytes_in,
       sum(num_flows)::BIGINT AS flows,
       to_timestamp(min(first_seen)) AS first_seen,
       to_timestamp(max(last_seen)) AS last_seen
FROM flow_windows
WHERE window_start >= $since AND window_start < $until
  AND date BETWEEN $since_date AND $until_date
  AND source_genai_class <> 'none' AND dest_kind <> 'in_cluster'
  AND ($namespace IS NULL OR source_namespace = $namespace)
GROUP BY ALL
ORDER BY namespace, bytes_out DESC, source_workload
LIMIT $limit
