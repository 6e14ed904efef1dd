"""Node agent: flow-log sources and shipping to the broker."""
