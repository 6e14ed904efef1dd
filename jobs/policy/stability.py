"""Stability of recommendations across runs, and the diff against the previous run.

The state file keeps, per workload, the rule keys of the last run and how many consecutive
runs produced exactly those rules. One run with a rule set is ``learning``; after that it is
``stabilizing`` until it has stayed the same for ``stable_runs`` runs, then ``stable``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from jobs.policy.model import Recommendation

STATE_VERSION = 1


@dataclass
class WorkloadStatus:
    status: str  # learning, stabilizing, stable
    unchanged_runs: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    new_workload: bool = False


def status_for(unchanged_runs: int, stable_runs: int) -> str:
    if unchanged_runs >= stable_runs:
        return "stable"
    return "learning" if unchanged_runs <= 1 else "stabilizing"


def load_state(path: Path) -> dict:
    if not path.exists():
        return {"version": STATE_VERSION, "runs": 0, "workloads": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"policy state {path} is not valid JSON ({exc}); delete it to start learning again") from None
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"policy state {path} has version {state.get('version')!r}, expected {STATE_VERSION}")
    return state


def advance(state: dict, rec: Recommendation, stable_runs: int, run_id: str) -> tuple[dict, dict[str, WorkloadStatus], list[str]]:
    """The new state, each workload's status and diff, and the workloads that disappeared since the last run."""
    previous = state.get("workloads", {})
    workloads: dict[str, dict] = {}
    statuses: dict[str, WorkloadStatus] = {}
    for policy in rec.policies:
        keys = sorted(r.key for r in policy.rules)
        before = previous.get(policy.workload)
        if before is None:
            runs, added, removed = 1, keys, []
        else:
            old = set(before["rules"])
            added, removed = sorted(set(keys) - old), sorted(old - set(keys))
            runs = before["unchanged_runs"] + 1 if not added and not removed else 1
        workloads[policy.workload] = {"rules": keys, "unchanged_runs": runs, "last_run": run_id}
        statuses[policy.workload] = WorkloadStatus(status_for(runs, stable_runs), runs, added if before else [], removed, before is None)
    gone = sorted(set(previous) - set(workloads))
    return {"version": STATE_VERSION, "runs": state.get("runs", 0) + 1, "last_run": run_id, "workloads": workloads}, statuses, gone


def save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)
