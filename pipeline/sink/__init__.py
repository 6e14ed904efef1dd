"""Parquet sink: Kafka topics to the Hive-partitioned lake, exactly once."""
