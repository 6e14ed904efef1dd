-- summary: Destinations a workload talked to in the time range but not in the N days before it.
-- param days int 7: days of history before --since that count as "seen"
-- param limit int 50: rows to show
-- param namespace str : only workloads of this namespace
WITH recent AS (
    SELECT source_workload, destination, any_value(dest_kind) AS dest_kind, min(dest_port) AS port,
           min(first_seen) AS first_seen, sum(bytes_out)::BIGINT AS bytes_out, sum(num_flows)::BIGINT AS flows
    FROM flow_windows
    WHERE window_start >= $since AND window_start < $until
      AND date BETWEEN $since_date AND $until_date
      AND ($namespace IS NULL OR source_namespace = $namespace)
    GROUP BY source_workload, destination),
seen_before AS (
    SELECT DISTINCT source_workload, destination
    FROM flow_windows
    WHERE window_start >= $since - $days * 86400 AND window_start < $since
      AND date BETWEEN $history_date AND $since_date)
SELECT source_workload, destination, dest_kind, port,
       to_timestamp(first_seen) AS first_seen, bytes_out, flows
FROM recent ANTI JOIN seen_before USING (source_workload, destination)
ORDER BY first_seen, source_workload, destination
LIMIT $limit
