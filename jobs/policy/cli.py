"""`flowctl recommend`: least-privilege network policies from the lake's flows."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def recommend(
        ctx: typer.Context,
        since: str | None = typer.Option(None, help="Start of the learning period (ISO 8601, epoch or -7d; default: "
                                                    "--until minus recommend_lookback_hours)."),
        until: str = typer.Option("now", help="End of the learning period."),
        output: Path = typer.Option(..., "--output", "-o", help="Directory for the YAML files and the reports."),
        lake: str | None = typer.Option(None, help="Lake root (default: the configured lake)."),
        exclude: Path | None = typer.Option(None, help="Alerts JSONL whose flows are excluded from the allow rules (besides the lake's alerts table)."),
        replay_since: str | None = typer.Option(None, help="Start of the impact replay period (default: the learning period)."),
        replay_until: str | None = typer.Option(None, help="End of the impact replay period."),
        merge_cidrs: bool | None = typer.Option(None, "--merge-cidrs/--no-merge-cidrs",
                                                help="Merge outside addresses into covering prefixes where evidence supports it "
                                                     "(setting recommend_merge_cidrs, default on)."),
        merge_min_addresses: int | None = typer.Option(None, help="Outside addresses in one merge block before they merge into their "
                                                                  "covering prefix (setting recommend_merge_min_addresses, default 4)."),
        merge_prefix: int | None = typer.Option(None, help="Merge block and widest merged prefix, IPv4 (IPv6: same host bits) "
                                                           "(setting recommend_merge_prefix, default 24)."),
        min_port_range: int | None = typer.Option(None, help="Adjacent ports seen before a rule uses a port range (endPort) "
                                                             "(setting recommend_min_port_range, default 8)."),
        open_ingress_sources: int | None = typer.Option(None, help="Distinct outside source addresses before ingress opens to any "
                                                                   "address (setting recommend_open_ingress_sources, default 16)."),
        stable_runs: int | None = typer.Option(None, help="Unchanged runs before a recommendation is 'stable' (setting recommend_stable_runs, default 3)."),
        tier: str | None = typer.Option(None, help="Calico tier of the Calico policies (setting recommend_tier, default flowctl)."),
        domain_mode: str | None = typer.Option(None, help="Calico egress to named outside destinations: inline (destination.domains), "
                                                          "networkset (GlobalNetworkSet allowedEgressDomains) or nets (addresses only) "
                                                          "(setting recommend_domain_mode, default inline)."),
        guardrails: bool | None = typer.Option(None, "--guardrails/--no-guardrails",
                                               help="Write the AdminNetworkPolicy guardrails (setting recommend_guardrails, default on)."),
        approved_domain: list[str] = typer.Option([], help="Approved LLM/API domain for the GenAI egress guardrail (repeatable; "
                                                           "replaces recommend_approved_domains)."),
        no_lake_rows: bool = typer.Option(False, "--no-lake-rows", help="Do not write the policy_recommendations lake table."),
    ) -> None:
        """Recommend least-privilege NetworkPolicies (plus Calico and AdminNetworkPolicy guardrails) from observed flows,
        with evidence, stability, and an impact replay on historical flows."""
        from rich.console import Console

        from jobs.policy.model import Options
        from jobs.policy.run import recommend as run
        from pipeline.query.views import connect
        from pipeline.timeparse import parse_time

        settings = ctx.obj
        end = parse_time(until)
        start = parse_time(since) if since else end - int(settings.recommend_lookback_hours * 3600)
        if end <= start:
            raise ValueError(f"--until ({until}) must be after --since ({since or start})")
        rs = parse_time(replay_since) if replay_since else None
        ru = parse_time(replay_until) if replay_until else None
        options = Options.from_settings(settings, merge_cidrs=merge_cidrs, merge_min_addresses=merge_min_addresses,
                                        merge_prefix=merge_prefix, min_port_range=min_port_range,
                                        open_ingress_sources=open_ingress_sources, stable_runs=stable_runs, tier=tier,
                                        domain_mode=domain_mode, guardrails=guardrails, approved_domains=approved_domain)
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
