-- summary: Workloads that moved the most bytes (sent + received), with their peers and flows.
-- param limit int 20: rows to show
-- param namespace str : only workloads of this namespace
SELECT source_workload,
       any_value(source_genai_class) AS genai_class,
       sum(bytes_out)::BIGINT AS bytes_out,
       sum(bytes_in)::BIGINT AS bytes_in,
       sum(num_flows)::BIGINT AS flows,
       count(DISTINCT destination) AS peers
FROM flow_windows
WHERE window_start >= $since AND window_start < $until
  AND date BETWEEN $since_date AND $until_date
  AND ($namespace IS NULL OR source_namespace = $namespace)
GROUP BY source_workload
ORDER BY sum(bytes_out) + sum(bytes_in) DESC, source_workload
LIMIT $limit
