-- summary: Bytes each workload sent to public internet addresses (allowed flows), with its largest destination.
-- param limit int 20: rows to show
-- param namespace str : only workloads of this namespace
WITH per_destination AS (
    SELECT source_workload, source_genai_class, destination,
           sum(bytes_out)::BIGINT AS bytes_out, sum(bytes_in)::BIGINT AS bytes_in, sum(num_flows)::BIGINT AS flows
    FROM flow_windows
    WHERE window_start >= $since AND window_start < $until
      AND date BETWEEN $since_date AND $until_date
      AND dest_kind = 'public' AND action = 'allow'
      AND ($namespace IS NULL OR source_namespace = $namespace)
    GROUP BY ALL)
SELECT source_workload,
       any_value(source_genai_class) AS genai_class,
       sum(bytes_out)::BIGINT AS bytes_out,
       sum(bytes_in)::BIGINT AS bytes_in,
       sum(flows)::BIGINT AS flows,
       count(*) AS destinations,
       arg_max(destination, bytes_out) AS top_destination
FROM per_destination
GROUP BY source_workload
ORDER BY bytes_out DESC, source_workload
LIMIT $limit
