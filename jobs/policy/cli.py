"""`flowctl recommend`: least-privilege network policies from the lake's flows."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def recommend(
        ctx: typer.Context,
        since: str = typer.Option(..., help="Start of the learning period (ISO 8601, epoch or -7d)."),
        until: str = typer.Option("now", help="End of the learning period."),
        output: Path = typer.Option(..., "--output", "-o", help="Directory for the YAML files and the reports."),
        lake: str | None = typer.Option(None, help="Lake root (default: the configured lake)."),
        exclude: Path | None = typer.Option(None, help="Alerts JSONL whose flows are excluded from the allow rules (besides the lake's alerts table)."),
        replay_since: str | None = typer.Option(None, help="Start of the impact replay period (default: the learning period)."),
        replay_until: str | None = typer.Option(None, help="End of the impact replay period."),
        merge_min_addresses: int = typer.Option(4, help="Outside addresses in one /24 before they merge into their covering prefix."),
        min_port_range: int = typer.Option(8, help="Adjacent ports seen before a rule uses a port range (endPort)."),
        open_ingress_sources: int = typer.Option(16, help="Distinct outside source addresses before ingress opens to any address."),
        stable_runs: int = typer.Option(3, help="Unchanged runs before a recommendation is 'stable'."),
        tier: str = typer.Option("flowctl", help="Calico tier of the Calico policies."),
        approved_domain: list[str] = typer.Option([], help="Approved LLM/API domain for the GenAI egress guardrail (repeatable)."),
        no_lake_rows: bool = typer.Option(False, help="Do not write the policy_recommendations lake table."),
    ) -> None:
        """Recommend least-privilege NetworkPolicies (plus Calico and AdminNetworkPolicy guardrails) from observed flows,
        with evidence, stability, and an impact replay on historical flows."""
        from rich.console import Console

        from jobs.policy.model import Options
        from jobs.policy.run import recommend as run
        from pipeline.query.views import connect
        from pipeline.timeparse import parse_time

        settings = ctx.obj
        start, end = parse_time(since), parse_time(until)
        if end <= start:
            raise ValueError(f"--until ({until}) must be after --since ({since})")
        rs = parse_time(replay_since) if replay_since else None
        ru = parse_time(replay_until) if replay_until else None
        options = Options(merge_min_addresses=merge_min_addresses, min_port_range=min_port_range, open_ingress_sources=open_ingress_sources,
                          tier=tier, stable_runs=stable_runs, approved_domains=tuple(approved_domain))
        lake_root = lake or settings.lake
        if "://" not in lake_root and not Path(lake_root, "flows").is_dir():
            raise ValueError(f"no flows in lake {lake_root}: nothing to learn from")
        err = Console(stderr=True)
        con = connect(lake_root)
        result = run(con, lake_root, start, end, output, Path(settings.state_dir), options, exclude_file=exclude, replay_since=rs,
                     replay_until=ru, write_lake=not no_lake_rows, progress=lambda m: err.print(m, markup=False, highlight=False))
        s = result.summary
        t = s.replay.total if s.replay else None
        print(f"{len(s.rec.policies)} workloads, {sum(len(p.rules) for p in s.rec.policies)} rules, {result.objects} objects validated; "
              f"{len(s.rec.excluded)} anomalous edges excluded; {len(s.rec.rejected)} workloads rejected")
        if t is not None:
            print(f"replay: {t.flows_allowed:,} flows allowed, {t.flows_denied:,} denied")
        print(f"written to {result.output} (report.html, report.md, YAML)")
