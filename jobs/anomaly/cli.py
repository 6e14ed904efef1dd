"""`flowctl detect` and `flowctl eval detect`."""

from __future__ import annotations

import time

import typer
from rich.console import Console

err = Console(stderr=True)


def _sinks(settings, output: str | None, append: bool, webhook: str | None):
    from jobs.anomaly.delivery import JsonlAlertSink, KafkaAlertSink, LakeAlertSink, WebhookAlertSink, kafka_settings

    sinks = [LakeAlertSink(settings.lake)]
    if output:
        sinks.append(JsonlAlertSink(output, append=append))
    kafka = kafka_settings(settings)
    if kafka is not None:
        sinks.append(KafkaAlertSink(kafka))
    url = webhook or settings.detect_webhook_url
    if url:
        sinks.append(WebhookAlertSink(url))
    return sinks


def _parse_interval(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (ValueError, IndexError):
        raise ValueError(f"--interval must look like 30s, 5m or 1h, got {text!r}") from None
    if value < 60:
        raise ValueError("--interval must be at least 1 minute")
    return value


def register(app: typer.Typer) -> None:
    """Add `detect` and `eval detect` to the flowctl app."""

    @app.command()
    def detect(
        ctx: typer.Context,
        since: str = typer.Option("-1h", help="Start of the period to score (ISO 8601, epoch or relative like -2h)."),
        until: str = typer.Option("now", help="End of the period to score."),
        lake: str | None = typer.Option(None, "--lake", help="Lake root (default: the global --lake / FLOWCTL_LAKE)."),
        output: str | None = typer.Option(None, "--output", "-o", help="Also write the alerts as JSON Lines to this file."),
        interval: str | None = typer.Option(None, help="Keep running: score every INTERVAL (e.g. 5m) the period that just ended."),
        webhook: str | None = typer.Option(None, help="POST every alert as JSON to this URL (retries in the background)."),
        retrain: bool = typer.Option(False, help="Retrain the multivariate models instead of reusing the saved ones."),
    ) -> None:
        """Score a period's egress against the baseline before it; publish alerts (lake, alerts.v1, file, webhook)."""
        from jobs.anomaly.detect import DetectOptions, deliver, detect_lake, summarize
        from pipeline.timeparse import parse_time

        settings = ctx.obj if lake is None else ctx.obj.with_overrides(lake=lake)
        start, end = parse_time(since), parse_time(until)
        if end <= start:
            raise ValueError(f"--until ({until}) must be after --since ({since})")
        every = _parse_interval(interval) if interval else None
        sinks = _sinks(settings, output, append=every is not None, webhook=webhook)
        try:
            while True:
                options = DetectOptions.from_settings(settings, start, end, retrain=retrain)
                result = detect_lake(settings.lake, options, settings.state_dir)
                failures = deliver(result, sinks)
                err.print(result.message + (f" {summarize(result.alerts)}" if result.alerts else ""),
                          markup=False, highlight=False)
                for a in result.alerts:
                    print(f"{a['severity']:<8} {a['detector']:<30} {a['id']}  {a['reason']}")
                if every is None:
                    if failures:
                        raise ValueError("alert delivery failed: " + "; ".join(failures))
                    return
                retrain = False
                start, end = end, end + every
                time.sleep(max(0.0, end - time.time()))
        finally:
            for sink in sinks:
                sink.close()

    eval_app = typer.Typer(help="Evaluate jobs on labelled synthetic scenarios.", no_args_is_help=True)

    @eval_app.command("detect")
    def eval_detect(
        days: int = typer.Option(3, help="Days of benign baseline before the scored day."),
        rate: float = typer.Option(8.0, help="Mean synthetic flow records per second."),
        seed: int = typer.Option(21, help="Seed of the synthetic cluster."),
        workdir: str = typer.Option(".flowctl/eval-detect", help="Where the scenario lakes are built (replaced)."),
        json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object."),
    ) -> None:
        """Build labelled scenarios (benign changes + one incident each), run detection, print precision/recall."""
        import orjson

        from jobs.anomaly.scenarios import evaluate

        if days < 2:
            raise ValueError("--days must be at least 2 (the volume baseline needs whole days)")
        ev = evaluate(workdir, days=days, rate=rate, seed=seed)
        figures = ev.as_dict()
        if json_out:
            print(orjson.dumps(figures).decode())
            return
        for s in figures["scenarios"]:
            ttd = "-" if s["time_to_detect_s"] is None else f"{s['time_to_detect_s'] / 60:.0f} min"
            state = "benign" if s["detected"] is None else ("detected" if s["detected"] else "MISSED")
            print(f"{s['scenario']:<16} {state:<9} alerts {s['alerts']:>2}  false positives {s['false_positives']:>2}  "
                  f"time to detect {ttd:>7}  {','.join(s['detectors'])}")
        print(f"recall {figures['recall']:.3f}  precision {figures['precision']:.3f}  alerts on benign changes "
              f"{figures['benign_alerts']}  (build {figures['seconds_build']:.0f}s, detect {figures['seconds_detect']:.0f}s)")

    app.add_typer(eval_app, name="eval")
