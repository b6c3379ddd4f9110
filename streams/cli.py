"""The `crosspaths` command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from streams.settings import Settings, get_settings


def _settings() -> Settings:
    return get_settings()


def _fail(message: str) -> None:
    click.secho(message, fg="red", err=True)
    sys.exit(1)


@click.group()
def main() -> None:
    """Crosspaths: privacy-first crossings and k-anonymized statistics on Kafka."""


# --------------------------------------------------------------------------- broker
@main.group()
def broker() -> None:
    """A local single-node Kafka broker (Java 17+ and Maven needed)."""


@broker.command("start")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the broker.")
def broker_start(timeout: float) -> None:
    """Fetch the jars once, format storage once, start the broker; return when it answers."""
    from streams import broker as b

    try:
        click.echo(b.start(_settings(), timeout_s=timeout))
    except b.BrokerError as exc:
        _fail(str(exc))


@broker.command("stop")
def broker_stop() -> None:
    """Stop the local broker."""
    from streams import broker as b

    click.echo(b.stop(_settings()))


@broker.command("status")
def broker_status() -> None:
    """Whether the configured cluster answers (exit 1 if not)."""
    from streams import broker as b

    ok, line = b.status(_settings())
    click.echo(line)
    sys.exit(0 if ok else 1)


@broker.command("reset")
def broker_reset() -> None:
    """Stop the local broker and delete its data (the jar cache stays)."""
    from streams import broker as b

    click.echo(b.reset(_settings()))


# --------------------------------------------------------------------------- topics
@main.group()
def topics() -> None:
    """The pipeline's topics."""


@topics.command("create")
def topics_create() -> None:
    """Create every missing topic (idempotent)."""
    from streams.topics import create_topics

    for line in create_topics(_settings()):
        click.echo(line)


@topics.command("list")
def topics_list() -> None:
    """Show the declared topics with their key, retention and cleanup policy."""
    from streams.topics import topic_specs

    s = _settings()
    for spec in topic_specs(s):
        days = "forever" if spec.retention_ms < 0 else f"{spec.retention_ms / 86_400_000:g} d"
        click.echo(f"{s.topic(spec.name):<28} key={spec.key:<16} retention={days:<10} "
                   f"{'compact' if spec.compacted else 'delete'}{'  (internal)' if spec.internal else ''}")


# --------------------------------------------------------------------------- worker
@main.command()
@click.option("--web-port", type=int, default=None, help="Web port of this worker (one per worker).")
@click.option("--loglevel", default="warn", show_default=True,
              type=click.Choice(["crit", "error", "warn", "info", "debug"]))
def worker(web_port: int | None, loglevel: str) -> None:
    """Run a Faust worker (start several, each with its own --web-port, to scale out)."""
    if web_port is not None:
        os.environ["CROSSPATHS_WEB_PORT"] = str(web_port)
        get_settings.cache_clear()
    import faust

    from streams.app import app

    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()


# --------------------------------------------------------------------------- simulate
@main.command()
@click.option("--users", default=1500, show_default=True)
@click.option("--hours", default=2.0, show_default=True, help="Simulated time span, ending now.")
@click.option("--seed", default=7, show_default=True)
@click.option("--malformed-share", default=0.01, show_default=True)
@click.option("--start", default=None, help="RFC 3339 start (default: now minus --hours, on the minute).")
def simulate(users: int, hours: float, seed: int, malformed_share: float, start: str | None) -> None:
    """Produce a simulated city's pings, connection logs and consent changes to Kafka."""
    counts = _simulate(_settings(), users, hours, seed, malformed_share, start)
    click.echo("produced: " + ", ".join(f"{n} {t}" for t, n in counts.items()))


def _simulate(settings: Settings, users: int, hours: float, seed: int, malformed_share: float,
              start: str | None) -> dict[str, int]:
    from kafka import KafkaProducer
    from tqdm import tqdm

    from schemas.timefmt import parse_ts
    from streams.simulator import SimulationParams, simulate_city

    t0 = parse_ts(start) if start else (int(time.time()) // 60) * 60 - hours * 3600
    params = SimulationParams(users=users, hours=hours, seed=seed, malformed_share=malformed_share, start=t0)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20, batch_size=256 * 1024,
                             acks=1, client_id="crosspaths-simulator")
    counts: dict[str, int] = {}
    with tqdm(desc="producing", unit=" msg", mininterval=1.0, file=sys.stderr) as bar:
        for topic, key, value in simulate_city(params):
            producer.send(settings.topic(topic), key=key, value=value)
            counts[topic] = counts.get(topic, 0) + 1
            bar.update()
    producer.flush()
    producer.close()
    return counts


# --------------------------------------------------------------------------- stats
@main.group()
def stats() -> None:
    """Counters and published statistics."""


@stats.command("counters")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats_counters(as_json: bool) -> None:
    """Ingest counters per input topic (all workers), and whether they reconcile."""
    from streams.report import format_counters, read_counters

    counters = read_counters(_settings())
    if as_json:
        click.echo(json.dumps({t: vars(c) | {"reconciles": c.reconciles} for t, c in counters.topics.items()}))
    else:
        click.echo(format_counters(counters))


@stats.command("dead-letters")
def stats_dead_letters() -> None:
    """Dead letters per source topic and reason."""
    from streams.report import dead_letter_reasons

    for (topic, reason), n in sorted(dead_letter_reasons(_settings()).items()):
        click.echo(f"{topic:<18} {reason:<24} {n}")


# --------------------------------------------------------------------------- schemas
@main.group()
def schemas() -> None:
    """The published JSON Schemas of the input records."""


@schemas.command("export")
@click.option("--check", is_flag=True, help="Exit 1 if a file differs from the code instead of writing.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None)
def schemas_export(check: bool, directory: Path | None) -> None:
    """Write schemas/<record>.schema.json from the code (or check they match)."""
    from schemas.events import INPUT_MODELS, schema_text

    folder = directory or Path(__file__).resolve().parent.parent / "schemas"
    stale = []
    for kind in INPUT_MODELS:
        path = folder / f"{kind}.schema.json"
        text = schema_text(kind)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            click.echo(f"wrote {path}")
    if stale:
        _fail(f"out of date: {', '.join(stale)}; run `crosspaths schemas export`")


# --------------------------------------------------------------------------- demo
@main.command()
@click.option("--users", default=1500, show_default=True)
@click.option("--hours", default=2.0, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the worker.")
def demo(users: int, hours: float, seed: int, timeout: float) -> None:
    """The main job: broker, topics, worker, a simulated city, then a summary of what came out."""
    from streams import broker as b
    from streams.demo import run_demo

    settings = _settings()
    try:
        if settings.bootstrap_servers == f"127.0.0.1:{settings.broker_port}":
            click.echo(b.start(settings))
        run_demo(settings, users=users, hours=hours, seed=seed, timeout_s=timeout, simulate=_simulate)
    except b.BrokerError as exc:
        _fail(str(exc))


if __name__ == "__main__":  # pragma: no cover
    main()
