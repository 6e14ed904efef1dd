"""Kafka broker access: the embedded broker and topic administration."""
