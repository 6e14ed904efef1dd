"""Markdown and self-contained HTML reports of a recommendation run (no external assets)."""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from jobs.policy.model import Recommendation, Rule
from jobs.policy.replay import ReplayResult
from jobs.policy.stability import WorkloadStatus

MAX_LISTED = 200


@dataclass
class RunSummary:
    run_id: str
    rec: Recommendation
    statuses: dict[str, WorkloadStatus]
    gone: list[str]
    replay: ReplayResult | None
    files: list[str]


def _ts(t: int | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _sections(s: RunSummary) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables in report order; both renderers format the same content."""
    rec, rp = s.rec, s.replay
    out: list[tuple[str, list[str], list[list[str]]]] = []
    if rp is not None:
        t = rp.total
        out.append((f"Impact replay {_ts(rp.since)} – {_ts(rp.until)}", ["", "flows", "bytes"], [
            ["allowed", f"{t.flows_allowed:,}", _bytes(t.bytes_allowed)], ["denied", f"{t.flows_denied:,}", _bytes(t.bytes_denied)]]))
    by_ns = defaultdict(list)
    for p in rec.policies:
        by_ns[p.namespace].append(p)
    for ns in sorted(by_ns):
        rows = []
        for p in by_ns[ns]:
            st = s.statuses.get(p.workload)
            c = rp.per_workload.get(p.workload) if rp else None
            rows.append([p.workload, ", ".join(f"{k}={v}" for k, v in p.selector.items()), p.genai, st.status if st else "-",
                         str(len(p.rules)), f"{c.flows_allowed:,}" if c else "-", f"{c.flows_denied:,}" if c else "-", "; ".join(p.notes)])
        out.append((f"Namespace {ns}: workloads", ["workload", "selector", "GenAI", "status", "rules", "replay allowed", "replay denied", "notes"], rows))
        for p in by_ns[ns]:
            st = s.statuses.get(p.workload)
            rule_rows = []
            for r in p.rules:
                c = rp.per_rule.get((p.workload, r.key)) if rp else None
                change = "added" if st and r.key in st.added else ""
                rule_rows.append([r.direction, _peer_text(r), " ".join(x.text() for x in r.ports), f"{r.flows:,}", _bytes(r.bytes),
                                  _ts(r.first_seen), _ts(r.last_seen), f"{c.flows_allowed:,}" if c else "0", change])
            for key in (st.removed if st else []):
                rule_rows.append(["", key, "", "", "", "", "", "", "removed"])
            out.append((f"{p.workload} ({p.policy_name})", ["direction", "peer", "ports", "flows", "bytes", "first seen", "last seen",
                                                           "replay flows", "diff"], rule_rows))
    if s.gone:
        out.append(("Workloads no longer seen (their previous recommendations are dropped)", ["workload"], [[w] for w in s.gone]))
    out.append(("Not allowed by this recommendation: flows that belong to alerts", ["alert", "source", "destination", "port", "flows", "bytes",
                                                                                  "first seen", "last seen"],
                [[e.get("alert_id", ""), e["source"], str(e["destination"]), f"{e['proto']}/{e['dest_port']}", f"{e['flows']:,}", _bytes(e["bytes"]),
                  _ts(e["first_seen"]), _ts(e["last_seen"])] for e in rec.excluded[:MAX_LISTED]]))
    if rp is not None:
        denied = sorted(rp.denied, key=lambda c: -c["flows"])
        out.append(("Replay: denied flows", ["source", "destination", "port", "flows", "bytes", "denied at", "alert", "already denied"],
                    [[c["source"], str(c["destination"]), f"{c['proto']}/{c['dest_port']}", f"{c['flows']:,}", _bytes(c["bytes"]),
                      "+".join(c["denied_at"]), c["alert_id"] or "", "yes" if c["observed_denied"] else ""] for c in denied[:MAX_LISTED]]))
    out.append(("Denied by the current policy (not learned)", ["source", "destination", "port", "flows"],
                [[e["source"], str(e["destination"]), f"{e['proto']}/{e['dest_port']}", f"{e['flows']:,}"] for e in rec.denied_observed[:MAX_LISTED]]))
    out.append(("Not expressible as NetworkPolicy", ["source", "destination", "port", "reason"],
                [[e["source"], str(e["destination"]), f"{e['proto']}/{e['dest_port']}", e.get("reason", "")] for e in rec.unsupported[:MAX_LISTED]]))
    out.append(("Rejected workloads (no policy emitted)", ["workload", "reason"], [[r["workload"], r["reason"]] for r in rec.rejected]))
    return out


def _peer_text(r: Rule) -> str:
    text = r.peer.describe()
    return f"{text} ({', '.join(r.domains)})" if r.domains else text


def _md_cell(text: str) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def markdown(s: RunSummary) -> str:
    rec = s.rec
    lines = [f"# Policy recommendations {s.run_id}", "",
             f"Learned from flows {_ts(rec.since)} – {_ts(rec.until)}: {len(rec.policies)} workloads, "
             f"{sum(len(p.rules) for p in rec.policies)} rules, {len(rec.excluded)} anomalous edges excluded.", "",
             "Files: " + ", ".join(f"`{f}`" for f in s.files), ""]
    for title, header, rows in _sections(s):
        lines += [f"## {_md_cell(title)}", ""]
        if not rows:
            lines += ["none", ""]
            continue
        lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        if len(rows) >= MAX_LISTED:
            lines.append(f"\n(first {MAX_LISTED} listed)")
        lines.append("")
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;font-size:.9em;text-align:left}th{background:#f2f2f2}"
        "h2{margin-top:1.5em;font-size:1.1em}")


def html_report(s: RunSummary) -> str:
    e = html.escape
    rec = s.rec
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{e('Policy recommendations ' + s.run_id)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e('Policy recommendations ' + s.run_id)}</h1>",
             f"<p>{e(f'Learned from flows {_ts(rec.since)} – {_ts(rec.until)}: {len(rec.policies)} workloads, ')}"
             f"{e(str(sum(len(p.rules) for p in rec.policies)))} rules, {len(rec.excluded)} anomalous edges excluded.</p>",
             "<p>Files: " + ", ".join(f"<code>{e(f)}</code>" for f in s.files) + "</p>"]
    for title, header, rows in _sections(s):
        parts.append(f"<h2>{e(title)}</h2>")
        if not rows:
            parts.append("<p>none</p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
