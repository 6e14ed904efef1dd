-- summary: Bytes sent from each namespace (rows) to each namespace or kind of outside destination (columns).
-- param namespace str : only traffic from this namespace
-- pivot: source_namespace destination bytes_out
SELECT source_namespace,
       CASE WHEN dest_kind = 'in_cluster' THEN dest_namespace ELSE '(' || dest_kind || ')' END AS destination,
       sum(bytes_out)::BIGINT AS bytes_out
FROM flow_windows
WHERE window_start >= $since AND window_start < $until
  AND date BETWEEN $since_date AND $until_date
  AND ($namespace IS NULL OR source_namespace = $namespace)
GROUP BY ALL
ORDER BY source_namespace, destination
