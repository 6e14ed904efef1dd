"""`flowctl detect` and `flowctl eval detect`."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import typer
from rich.console import Console

from pipeline import metrics

err = Console(stderr=True)


def _sinks(settings, output: str | None, webhook: str | None):
    from jobs.anomaly.delivery import JsonlAlertSink, KafkaAlertSink, LakeAlertSink, WebhookAlertSink, kafka_settings

    url = webhook or settings.detect_webhook_url
    sinks = [WebhookAlertSink(url)] if url else []  # first: a bad URL fails before anything is opened
    sinks.append(LakeAlertSink(settings.lake))
    if output:
        sinks.append(JsonlAlertSink(output))
    kafka = kafka_settings(settings)
    if kafka is not None:
        sinks.append(KafkaAlertSink(kafka))
    return sinks


def parse_interval(text: str, bucket: int, option: str = "--interval") -> int:
    """Seconds of a detection interval (30s, 5m, 1h …); it must be a whole number of ``bucket`` seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (ValueError, IndexError):
        raise ValueError(f"{option} must look like 30s, 5m or 1h, got {text!r}") from None
    if value < bucket or value % bucket:
        raise ValueError(f"{option} must be a whole number of detection buckets ({bucket} s), got {text!r}")
    return value


def _check_lake(lake: str) -> None:
    from pipeline.sink.lake import is_object_store

    if not is_object_store(lake) and not Path(lake).is_dir():
        raise ValueError(f"the lake {lake} does not exist (pass --lake, or build one with `flowctl demo` or the pipeline)")


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the loop finishes the current period, delivers and exits 0."""
    stop = threading.Event()

    def handler(signum, _frame) -> None:
        err.print(f"flowctl detect: {signal.Signals(signum).name} received, stopping after this period",
                  markup=False, highlight=False, soft_wrap=True)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    return stop


def register(app: typer.Typer) -> None:
    """Add `detect` and `eval detect` to the flowctl app."""

    @app.command()
    def detect(
        ctx: typer.Context,
        since: str = typer.Option("-1h", help="Start of the period to score (ISO 8601, epoch or relative like -2h)."),
        until: str = typer.Option("now", help="End of the period to score."),
        lake: str | None = typer.Option(None, "--lake", help="Lake root (default: the global --lake / FLOWCTL_LAKE)."),
        output: str | None = typer.Option(None, "--output", "-o",
                                          help="Also keep the alerts in this JSON Lines file: one line per alert id, "
                                               "updated in place by later runs."),
        interval: str | None = typer.Option(None, help="Keep running: after --since..--until, score each following "
                                                       "INTERVAL (e.g. 5m) once it has ended; SIGTERM stops cleanly."),
        runs: int | None = typer.Option(None, min=1, help="With --interval: stop after this many periods."),
        webhook: str | None = typer.Option(None, help="POST every alert as JSON to this URL (retries in the background)."),
        retrain: bool = typer.Option(False, help="Retrain the multivariate models instead of reusing the saved ones."),
    ) -> None:
        """Score a period's egress against the baseline before it; publish alerts (lake, alerts.v1, file, webhook)."""
        from jobs.anomaly.detect import DetectOptions, NothingToScore, deliver, detect_lake, summarize
        from pipeline.timeparse import parse_time

        settings = ctx.obj if lake is None else ctx.obj.with_overrides(lake=lake)
        start, end = parse_time(since), parse_time(until)
        if end <= start:
            raise ValueError(f"--until ({until}) must be after --since ({since})")
        every = parse_interval(interval, settings.detect_bucket_seconds) if interval else None
        if runs is not None and every is None:
            raise ValueError("--runs needs --interval")
        _check_lake(settings.lake)
        if every is not None:
            metrics.serve(settings.metrics_port)
        stop = _stop_on_signals() if every is not None else threading.Event()
        sinks = _sinks(settings, output, webhook)
        failures: list[str] = []
        done = 0
        try:
            while True:
                options = DetectOptions.from_settings(settings, start, end, retrain=retrain)
                try:
                    result = detect_lake(settings.lake, options, settings.state_dir)
                except NothingToScore as exc:
                    if every is None:
                        raise
                    metrics.DETECT_RUNS.labels("nothing_to_score").inc()
                    err.print(f"{exc}; trying again next period", markup=False, highlight=False, soft_wrap=True)
                else:
                    failures += deliver(result, sinks)
                    metrics.DETECT_RUNS.labels("scored").inc()
                    metrics.DETECT_LAST_PERIOD_END.set(end)
                    for a in result.alerts:
                        metrics.DETECT_ALERTS.labels(a["severity"]).inc()
                    err.print(result.message + (f" {summarize(result.alerts)}" if result.alerts else ""),
                              markup=False, highlight=False, soft_wrap=True)
                    for a in result.alerts:
                        print(f"{a['severity']:<8} {a['detector']:<30} {a['id']}  {a['reason']}", flush=True)
                done += 1
                if every is None or stop.is_set() or (runs is not None and done >= runs):
                    break
                retrain = False
                start, end = end, end + every
                if stop.wait(max(0.0, end - time.time())):
                    break
        finally:
            for sink in sinks:
                lost = sink.close()
                if lost:
                    metrics.DETECT_UNDELIVERED.labels(sink.name).inc(lost)
                    failures.append(f"{sink.name}: {lost} alerts not delivered")
        if failures and every is None:
            raise ValueError("alert delivery failed: " + "; ".join(failures))
        for line in failures:
            err.print(f"flowctl detect: {line}", markup=False, highlight=False, soft_wrap=True)

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
            helped = [d for d in s["contributors"] if d not in s["detectors"]]
            print(f"{s['scenario']:<18} {state:<9} alerts {s['alerts']:>2}  false positives {s['false_positives']:>2}  "
                  f"time to detect {ttd:>7}  {','.join(s['detectors'])}"
                  + (f" (+{','.join(helped)})" if helped else "")
                  + (f", first: {s['first_detector']}" if s["first_detector"] and helped else ""))
        print(f"\n{'detector':<31} {'findings':>8} {'alerts':>6} {'named':>5} {'helped':>6} {'first':>5} {'alone':>5} {'fp':>3}")
        for d in figures["detectors"]:
            print(f"{d['detector']:<31} {d['findings']:>8} {d['alerts']:>6} {d['incidents_named']:>5} "
                  f"{d['incidents_contributed']:>6} {d['incidents_first']:>5} {d['incidents_only']:>5} {d['false_positives']:>3}")
        print("(findings: before merging and folding; named/helped/first/alone: incidents the detector named, had a "
              "finding in, caught first, caught with no other detector)")
        print(f"recall {figures['recall']:.3f}  precision {figures['precision']:.3f}  alerts on benign changes "
              f"{figures['benign_alerts']}  (build {figures['seconds_build']:.0f}s, detect {figures['seconds_detect']:.0f}s)")

    app.add_typer(eval_app, name="eval")
