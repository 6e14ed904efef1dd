"""The streaming side: validation, enrichment and windowing of flow batches."""
