-- summary: Denied flows by the network policy that denied them (each reporting end names its own policy).
-- param limit int 50: rows to show
-- param namespace str : only flows from workloads of this namespace
WITH denied AS (
    -- The policies that say deny; else the last one evaluated; else a placeholder, so no denied flow is left out.
    SELECT unnest(CASE WHEN len(list_filter(policies, lambda p: split_part(p, '|', 4) = 'deny')) > 0
                       THEN list_filter(policies, lambda p: split_part(p, '|', 4) = 'deny')
                       WHEN len(policies) > 0 THEN [policies[-1]]
                       ELSE ['||(no policy recorded)||'] END) AS policy,
           reporter, source_workload, destination, dest_port, num_flows, end_time
    FROM flows
    WHERE end_time >= $since AND end_time < $until
      AND date BETWEEN $since_date AND $until_date
      AND action = 'deny'
      AND ($namespace IS NULL OR source_namespace = $namespace))
SELECT split_part(policy, '|', 3) AS policy,
       split_part(policy, '|', 2) AS tier,
       reporter,
       source_workload,
       destination,
       dest_port AS port,
       sum(num_flows)::BIGINT AS flows,
       to_timestamp(max(end_time)) AS last_seen
FROM denied
GROUP BY ALL
ORDER BY flows DESC, policy, source_workload, destination
LIMIT $limit
