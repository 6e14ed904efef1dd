"""Real-time synthetic traffic: what a node agent would ship for the current time, second by second."""

from __future__ import annotations

import threading
import time

from pipeline.agent.agent import FlowAgent


def publish_live(agent: FlowAgent, cluster, rate: float, stop: threading.Event, on_publish=None) -> int:
    """Publish ``cluster``'s traffic for each elapsed second until ``stop`` is set; returns flows published."""
    published = 0
    cursor = int(time.time())
    while not stop.is_set():
        now = int(time.time())
        if now <= cursor:
            stop.wait(0.2)
            continue
        for table in cluster.generate(cursor, now, rate=rate):
            agent.publish(table)
            published += table.num_rows
            if on_publish is not None:
                on_publish(table.num_rows)
        cursor = now
        agent.poll()
    agent.finish()
    return published
