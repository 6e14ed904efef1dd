"""Lake maintenance: compaction of small files, retention of date partitions."""
